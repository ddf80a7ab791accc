"""Terminal heatmaps in every console a user has: no colour, 16 colours, 256 colours; 80 and 200
columns. Without colour the levels are glyphs, so a map never turns into an empty grid."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from rich.console import Console

from attndbg.case import Case
from attndbg.context import CaseContext
from attndbg.heatmap import build_heatmap
from attndbg.loader import iter_cases
from attndbg.render.heatmap import GLYPHS, MASKED, heatmap_renderable

WIDTHS = (80, 200)


def rendered(renderable, width: int, colours: str | None) -> tuple[str, str]:  # noqa: ANN001
    """(plain text, what the terminal receives). The styled text is the console's own output,
    not ``export_text(styles=True)``, which re-renders cached styles in whatever colour system
    rendered them first."""
    sink = io.StringIO()
    console = Console(
        width=width, record=True, file=sink, color_system=colours, force_terminal=colours is not None
    )
    console.print(renderable)
    return console.export_text(), sink.getvalue()


@pytest.fixture(scope="module")
def masked_rows_map():  # noqa: ANN201
    ctx = CaseContext(next(iter_cases([ROOT / "fixtures" / "MSK001_fully_masked_rows.safetensors"])))
    return build_heatmap(ctx, batch=1, head=2)


def grid_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:3].strip().isdigit()]


@pytest.mark.parametrize("width", WIDTHS)
def test_without_colour_levels_are_glyphs_and_masked_cells_dots(masked_rows_map, width: int) -> None:  # noqa: ANN001
    plain, styled = rendered(heatmap_renderable(masked_rows_map), width, None)
    rows = grid_rows(plain)
    assert len(rows) == 12
    for row in rows[:8]:  # sample 1 attends its first 8 keys: every kept weight is drawn
        cells = row.strip().split(" ", 1)[1][:16]
        assert set(cells) <= set(GLYPHS[1:]), row
        assert row.rstrip().endswith(MASKED * 8)
    for row in rows[8:]:  # its last 4 query rows see nothing
        assert row.strip().split(" ", 1)[1] == MASKED * 24
    legend = plain.splitlines()[-1]
    assert "".join(g * 2 for g in GLYPHS[1:]) in legend and "masked" in legend
    assert "38;" not in styled and "48;" not in styled  # no colour at all
    assert not re.search("\x1b\\[2m[^\x1b]*[░▒▓█]", styled)  # glyphs are not dimmed with their labels


@pytest.mark.parametrize("width", WIDTHS)
def test_256_colours_draw_backgrounds_not_glyphs(masked_rows_map, width: int) -> None:  # noqa: ANN001
    plain, styled = rendered(heatmap_renderable(masked_rows_map), width, "256")
    assert not set("".join(grid_rows(plain))) & set(GLYPHS[1:])
    # Background colours; Rich caches a style's ANSI codes on the instance, so a style first drawn
    # by a truecolor console elsewhere in the process keeps its 24-bit code here.
    assert "\x1b[48;5;" in styled or "\x1b[48;2;" in styled


@pytest.mark.parametrize("width", WIDTHS)
def test_16_colours_keep_more_than_three_levels(masked_rows_map, width: int) -> None:  # noqa: ANN001
    # Viridis folded onto 16 colours leaves about three; the glyph carries the level.
    plain, styled = rendered(heatmap_renderable(masked_rows_map), width, "standard")
    used = set("".join(grid_rows(plain))) & set(GLYPHS[1:])
    assert len(used) > 3, used
    assert "\x1b[3" in styled  # and the glyphs are coloured


def test_pooled_column_labels_are_whole_positions() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 300, 8, generator=g) for _ in range(3))
    heat = build_heatmap(CaseContext(Case("long", "m", {"q": q, "k": k, "v": v})), max_rows=16, max_cols=48)
    assert heat.col_step > 1
    plain, _ = rendered(heatmap_renderable(heat), 80, None)
    axis = plain.splitlines()[1].split()
    positions = [int(label) for label in axis]
    assert positions[0] == 0 and len(positions) >= 4
    assert all(p % heat.col_step == 0 and p < 300 for p in positions), axis
    assert all(b - a == positions[1] - positions[0] for a, b in zip(positions, positions[1:]))


def test_a_report_written_to_a_file_keeps_its_heatmaps(tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    fixture = ROOT / "fixtures" / "PAT004_attention_sink.safetensors"
    result = run_cli("inspect", str(fixture), "-o", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    assert "PAT004" in text and "█" in text and "\x1b[" not in text
