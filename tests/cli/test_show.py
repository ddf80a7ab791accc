"""attndbg show: terminal heatmaps at fixed widths, max-pooling, PNG, differences, HTML export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from rich.console import Console
from safetensors.torch import save_file

from attndbg.case import Case
from attndbg.context import CaseContext
from attndbg.heatmap import build_heatmap, difference
from attndbg.loader import iter_cases
from attndbg.render.heatmap import difference_renderable, grid_renderable, heatmap_renderable


def fx(name: str) -> Path:
    return ROOT / "fixtures" / f"{name}.safetensors"


def render(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"), color_system="truecolor")  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_single_head_structure_and_masked_cells() -> None:
    ctx = CaseContext(next(iter_cases([fx("MSK001_fully_masked_rows")])))
    heat = build_heatmap(ctx, batch=1, head=2)
    assert heat.shape == (12, 12) and heat.row_step == heat.col_step == 1
    text = render(heatmap_renderable(heat), 80)
    lines = text.splitlines()
    assert lines[0].startswith("MSK001_fully_masked_rows · batch 1 · head 2 · 12×12")
    rows = [line for line in lines if line[:2].strip().isdigit()]
    assert len(rows) == 12
    # sample 1 pads its last 4 keys, and its last 4 query rows see nothing: all dots
    assert rows[0].rstrip().endswith("·" * 8)
    assert rows[11].strip() == "11 " + "·" * 24 or set(rows[11].split(None, 1)[1]) == {"·"}
    assert "masked" in lines[-1]


def test_grid_fits_the_width() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 40, 8, generator=g) for _ in range(3))
    ctx = CaseContext(Case("wide", "m", {"q": q, "k": k, "v": v}))
    maps = [build_heatmap(ctx, 0, h, max_rows=16, max_cols=40) for h in range(4)]
    wide = render(grid_renderable(maps, 200), 200)
    assert any(all(f"head {h}" in line for h in range(4)) for line in wide.splitlines())
    narrow = render(grid_renderable(maps, 80), 80)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    titles = [line for line in narrow.splitlines() if "─ head " in line]
    assert len(titles) >= 2  # wrapped onto several rows


def test_long_sequences_are_max_pooled_and_say_so() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 100, 8, generator=g) for _ in range(3))
    ctx = CaseContext(Case("long", "m", {"q": q, "k": k, "v": v}))
    heat = build_heatmap(ctx, 0, 0, max_rows=32, max_cols=48)
    assert heat.row_step == 4 and heat.col_step == 3 and heat.shape == (25, 34)
    weights = torch.softmax(q[0, 0] @ k[0, 0].T / 8**0.5, dim=-1)
    padded = torch.nn.functional.pad(weights, (0, 2, 0, 0))
    pooled = padded.reshape(25, 4, 34, 3).amax(dim=(1, 3))
    assert torch.allclose(torch.tensor(heat.weights), pooled, atol=1e-5)
    assert "4 query rows × 3 keys per cell, max-pooled" in render(heatmap_renderable(heat), 120)


def test_difference_lists_the_largest_changes(tmp_path: Path) -> None:
    base = torch.full((1, 1, 6, 6), 1 / 6)
    changed = base.clone()
    changed[0, 0, 2] = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    changed[0, 0, 4] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.2, 0.8])
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"weights": changed}, str(a))
    save_file({"weights": base}, str(b))
    d = difference(*(CaseContext(next(iter_cases([p]))) for p in (a, b)), top=3)
    top = d.largest[0]
    assert (top["row"], top["key"]) == (4, 5) and top["delta"] == pytest.approx(0.8 - 1 / 6, abs=1e-6)
    assert {(e["row"], e["key"]) for e in d.largest[1:]} <= {(2, 0), (4, 0), (4, 1), (4, 2), (4, 3)}
    assert d.max_abs == pytest.approx(0.8 - 1 / 6, abs=1e-6)
    result = run_cli("show", str(a), str(b))
    assert result.returncode == 0 and "query    4 key    5" in result.stdout
    # which file is A: both files hold a case called "a"/"b" by stem, the paths say it
    assert f"A = {a}::a" in result.stdout and f"B = {b}::b" in result.stdout


def test_small_differences_are_not_printed_as_zero(tmp_path: Path) -> None:
    base = torch.full((1, 1, 4, 4), 0.25)
    nudged = base.clone()
    nudged[0, 0, 1] = torch.tensor([0.25 + 3e-5, 0.25 - 3e-5, 0.25, 0.25])
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"weights": nudged}, str(a))
    save_file({"weights": base}, str(b))
    d = difference(*(CaseContext(next(iter_cases([p]))) for p in (a, b)), top=2)
    text = render(difference_renderable(d, (str(a), str(b))), 80)
    assert "+0.0000" not in text and "Δ +3.00e-05" in text and "Δ -3.00e-05" in text


def test_png_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    one, grid = tmp_path / "one.png", tmp_path / "grid.png"
    assert (
        run_cli("show", str(fx("MSK001_fully_masked_rows")), "--batch", "1", "--png", str(one)).returncode
        == 0
    )
    assert (
        run_cli("show", str(fx("PAT004_attention_sink")), "--head", "all", "--png", str(grid)).returncode == 0
    )
    for path in (one, grid):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width_one = int.from_bytes(one.read_bytes()[16:20], "big")
    width_grid = int.from_bytes(grid.read_bytes()[16:20], "big")
    assert width_grid > 2 * width_one  # four heads side by side


def test_findings_carry_a_heatmap_and_html_export(tmp_path: Path) -> None:
    result = run_cli("inspect", str(fx("PAT001_collapsed_head")), "--format", "json")
    finding = json.loads(result.stdout)["cases"][0]["findings"][0]
    assert finding["code"] == "PAT001" and finding["heatmap"]["head"] == 0
    assert len(finding["heatmap"]["weights"]) == 12
    html, svg = tmp_path / "r.html", tmp_path / "r.svg"
    run_cli("inspect", str(fx("PAT001_collapsed_head")), "--html", str(html), "--svg", str(svg), "-q")
    page = html.read_text()
    assert "PAT001" in page and 'id="attndbg-report"' in page  # the interactive report
    assert svg.read_text().lstrip().startswith("<svg")


def test_show_rejects_bad_arguments() -> None:
    path = str(fx("clean_basic"))
    assert run_cli("show", path, "--head", "99").returncode == 2
    assert run_cli("show", path, "--head", "x").returncode == 2
    assert run_cli("show", path, path, path).returncode == 2
    assert run_cli("show", path, "--case", "nope*").returncode == 2
