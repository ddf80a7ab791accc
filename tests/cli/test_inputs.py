"""Inputs and outputs the way users give them: folders, unexpanded globs, `module:function` from the
current folder, `-h`/`-V`; no folder created and no input overwritten behind the user's back."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

FIXTURES = ROOT / "fixtures"


def test_short_help_and_version() -> None:
    assert "Usage: attndbg" in run_cli("-h").stdout
    assert "Usage: attndbg inspect" in run_cli("inspect", "-h").stdout
    version = run_cli("-V")
    assert version.returncode == 0 and version.stdout.startswith("attndbg ")


def test_a_folder_means_the_safetensors_files_below_it(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(FIXTURES / "clean_basic.safetensors", tmp_path / "a" / "one.safetensors")
    shutil.copy(FIXTURES / "clean_causal.safetensors", tmp_path / "a" / "b" / "two.safetensors")
    (tmp_path / "a" / "notes.txt").write_text("not a tensor file")
    result = run_cli("inspect", str(tmp_path / "a"), "-q")
    assert result.returncode == 0, result.stderr
    assert "2 cases" in result.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("inspect", str(empty))
    assert result.returncode == 2 and "no .safetensors files" in result.stderr


def test_a_pattern_that_matched_nothing_says_so(tmp_path: Path) -> None:
    result = run_cli("inspect", str(tmp_path / "saved" / "*.safetensors"))
    assert result.returncode == 2
    assert "matched no file" in result.stderr and "Traceback" not in result.stderr


def test_capture_imports_a_factory_from_the_current_folder(tmp_path: Path) -> None:
    shutil.copy(ROOT / "tests" / "models" / "factories.py", tmp_path / "mymodels.py")
    # -P: no script folder on sys.path, as for the installed console script
    code = "import sys\nfrom attndbg.cli import main\nsys.argv[0] = 'attndbg'\nmain()\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "calls.safetensors"
    result = subprocess.run(
        [sys.executable, "-P", "-c", code, "capture", "mymodels:healthy", "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert out.exists() and "attention call(s) written" in result.stdout


def test_outputs_never_create_folders_or_overwrite_inputs(tmp_path: Path) -> None:
    fixture = str(FIXTURES / "clean_basic.safetensors")
    missing = tmp_path / "no" / "such" / "folder"
    capture = run_cli("capture", "tests/models/factories.py:healthy", "-o", str(missing / "c.safetensors"))
    assert capture.returncode == 2 and "does not exist" in capture.stderr
    show = run_cli("show", fixture, "--png", str(missing / "map.png"))
    assert show.returncode == 2 and "does not exist" in show.stderr
    assert not (tmp_path / "no").exists()
    inputs = tmp_path / "inputs.safetensors"
    shutil.copy(fixture, inputs)
    before = inputs.read_bytes()
    for args in (
        ("show", str(inputs), "--png", str(inputs)),
        ("inspect", str(inputs), "--html", str(inputs)),
        ("inspect", str(inputs), "--write-baseline", str(inputs)),
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and "refusing to overwrite an input" in result.stderr, args
    assert inputs.read_bytes() == before


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_png_is_sized_to_its_content_and_pooled_axes_count_positions(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import torch

    from attndbg.case import Case
    from attndbg.context import CaseContext
    from attndbg.heatmap import build_heatmap
    from attndbg.render.heatmap import png_figure, save_png

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 18, 8, generator=g) for _ in range(3))
    tokens = [f"tok{i}" for i in range(18)]
    small = build_heatmap(CaseContext(Case("eighteen", "m", {"q": q, "k": k, "v": v}, tokens=[tokens])))
    width, height = png_size(save_png([small], tmp_path / "one.png"))
    assert width >= 800 and height >= 600  # 18 labelled tokens need room
    q, k, v = (torch.randn(1, 1, 500, 8, generator=g) for _ in range(3))
    pooled = build_heatmap(CaseContext(Case("long", "m", {"q": q, "k": k, "v": v})), max_rows=25, max_cols=50)
    assert pooled.col_step == 10 and pooled.row_step == 20
    figure = png_figure([pooled])
    figure.canvas.draw()
    axes = figure.axes[0]
    xs = [int(t.get_text()) for t in axes.get_xticklabels() if t.get_text()]
    ys = [int(t.get_text()) for t in axes.get_yticklabels() if t.get_text()]
    assert max(xs) >= 400 and all(x % 10 == 0 for x in xs), xs  # positions, not cell indices
    assert max(ys) >= 400 and all(y % 20 == 0 for y in ys), ys
    assert axes.get_xlabel() == "key position"


@pytest.mark.parametrize("scale", ["-1", "0", "nan"])
def test_a_scale_that_is_not_positive_is_refused(scale: str) -> None:
    result = run_cli("inspect", str(FIXTURES / "clean_basic.safetensors"), "--scale", scale)
    assert result.returncode == 2 and "--scale" in result.stderr and "positive" in result.stderr


def test_inspecting_a_model_says_its_inputs_were_invented() -> None:
    result = run_cli("inspect", "tests/models/factories.py:healthy")
    assert result.returncode == 0, result.stderr
    assert "assumed: inputs invented by attndbg" in " ".join(result.stdout.split())
    assert "--text" in result.stdout
