"""attndbg.watch on a small real GPT trained for a few steps: sampled steps, per-head numbers,
alerts at the step a fault is injected, the JSON-lines log, and no activation kept."""

from __future__ import annotations

import gc
import json
import warnings
import weakref

import pytest
import torch
from watch_model import TinyGPT, random_batches

import attndbg
from attndbg.errors import UsageError
from attndbg.watch import AttentionAlert, AttentionWarning, Thresholds
from attndbg.watch.log import LOG_SCHEMA_VERSION, read_log
from attndbg.watch.reduce import METRICS


def train(model, watcher, steps, lr=3e-3, before_step=None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step, (ids, targets) in enumerate(random_batches(steps)):
        if before_step:
            before_step(step, model)
        loss = model(ids, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        watcher.step()
    return losses


def test_records_sampled_steps_only_with_per_head_statistics(tmp_path):
    torch.manual_seed(0)
    model = TinyGPT()
    log = tmp_path / "run.jsonl"
    with attndbg.watch(model, every=3, log=log) as watcher:
        losses = train(model, watcher, steps=10)
    assert losses[-1] < losses[0]  # it trained
    records = read_log(log)
    header, steps = records[0], [r for r in records if r["type"] == "step"]
    assert header["schema_version"] == LOG_SCHEMA_VERSION and header["every"] == 3
    assert [r["step"] for r in steps] == [0, 3, 6, 9]
    assert records[-1] == {"type": "end", "steps": 10, "sampled": 4, "alerts": 0}
    for record in steps:
        assert [layer["name"] for layer in record["layers"]] == ["blocks.0.attn", "blocks.1.attn"]
        for layer in record["layers"]:
            assert layer["kind"] == "sdpa" and layer["heads"] == 4
            for metric in METRICS:
                assert len(layer[metric]) == 4
            assert all(0.0 < e <= 1.0 for e in layer["entropy"])
            assert all(0.0 < m < 50 for m in layer["max_logit"])
            assert layer["nonfinite"] == [0] * 4 and layer["fully_masked"] == [0] * 4
    assert not watcher.alerts


def test_non_sampled_steps_run_no_recording(monkeypatch):
    import attndbg.watch.monitor as monitor

    reduced = []
    original = monitor.reduce_call

    def counting(call, name, **options):
        reduced.append(name)
        return original(call, name, **options)

    monkeypatch.setattr(monitor, "reduce_call", counting)
    torch.manual_seed(0)
    model = TinyGPT()
    hooks = []

    def count_hooks(step, model):
        hooks.append(sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()))

    with attndbg.watch(model, every=4, on_alert="ignore") as watcher:
        train(model, watcher, steps=9, before_step=count_hooks)
    assert len(reduced) == 3 * 2  # steps 0, 4, 8; two layers each
    assert [step for step, count in enumerate(hooks) if count] == [0, 4, 8]  # the model is untouched between
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()) == 0


def test_entropy_matches_the_attention_weights():
    """The logged normalised entropy and max logit are those of the softmax the model computed."""
    torch.manual_seed(1)
    model = TinyGPT(layers=1)
    ids = torch.randint(0, 256, (2, 16))
    seen = {}

    def keep_inputs(_module, args, _output):
        seen["x"] = args[0].detach()

    handle = model.blocks[0].attn.register_forward_hook(keep_inputs)
    model.train()
    with attndbg.watch(model, every=1) as watcher:
        model(ids)
        watcher.step()
    handle.remove()
    attn = model.blocks[0].attn
    with torch.no_grad():
        b, n, _ = seen["x"].shape
        q = attn.q_proj(seen["x"]).view(b, n, 4, 16).transpose(1, 2)
        k = attn.k_proj(seen["x"]).view(b, n, 4, 16).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)) / 4.0
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        weights = logits.masked_fill(~causal, float("-inf")).softmax(-1)
        entropy = -(torch.special.xlogy(weights, weights)).sum(-1) / torch.arange(1, n + 1).clamp_min(2).log()
        rows = slice(3, None)  # rows with at least 4 keys
        expected_entropy = entropy[:, :, rows].mean(dim=(0, 2))
        expected_logit = logits.masked_fill(~causal, 0).abs()[:, :, rows].amax(dim=(0, 2, 3))
    layer = watcher.last["blocks.0.attn"]
    assert layer.metrics["entropy"] == pytest.approx(expected_entropy.tolist(), rel=1e-4)
    assert layer.metrics["max_logit"] == pytest.approx(expected_logit.tolist(), rel=1e-4)


def scale_queries_at(step_to_break, factor=60.0):
    def hook(step, model):
        if step == step_to_break:
            with torch.no_grad():
                model.blocks[1].attn.q_proj.weight.mul_(factor)

    return hook


def test_forced_collapse_raises_at_the_step_it_happens(tmp_path):
    torch.manual_seed(0)
    model = TinyGPT()
    log = tmp_path / "run.jsonl"
    watcher = attndbg.watch(model, every=1, log=log, on_alert="raise")
    with pytest.raises(AttentionAlert) as raised, watcher:
        train(model, watcher, steps=12, before_step=scale_queries_at(7))
    alert = raised.value.alert
    assert alert.step == 7 and alert.layer == "blocks.1.attn"
    assert alert.kind in ("logit-growth", "entropy-collapse")
    records = read_log(log)  # the log was written before the raise, and closed by the with block
    alerts = [r for r in records if r["type"] == "alert"]
    assert {a["step"] for a in alerts} == {7}
    assert {a["layer"] for a in alerts} == {"blocks.1.attn"}
    assert {"logit-growth", "entropy-collapse"} <= {a["kind"] for a in alerts}
    assert records[-1]["type"] == "end" and records[-1]["steps"] == 7


def test_healthy_run_raises_no_alert_and_warn_mode_warns_on_a_fault():
    torch.manual_seed(0)
    model = TinyGPT()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionWarning)
        with attndbg.watch(model, every=2) as watcher:
            train(model, watcher, steps=12)
    torch.manual_seed(0)
    model = TinyGPT()
    with pytest.warns(AttentionWarning, match="blocks.1.attn"), attndbg.watch(model, every=2) as watcher:
        train(model, watcher, steps=8, before_step=scale_queries_at(4))


def test_first_non_finite_names_step_layer_head_and_tensor():
    torch.manual_seed(0)
    model = TinyGPT()
    received = []

    def poison(step, model):
        if step == 5:
            with torch.no_grad():
                model.blocks[0].attn.k_proj.weight[16 * 2 + 3, 0] = float("nan")  # a row of head 2

    with attndbg.watch(model, every=1, on_alert=received.append) as watcher:
        for step, (ids, _) in enumerate(random_batches(8)):
            poison(step, model)
            with torch.no_grad():
                model.train()
                model(ids)
            watcher.step()
    nonfinite = [a for a in received if a.kind == "non-finite"]
    assert len(nonfinite) == 1  # the first one only, though NaN spreads to every later step
    alert = nonfinite[0]
    assert (alert.step, alert.layer, alert.head, alert.details["tensor"]) == (5, "blocks.0.attn", 2, "k")
    assert alert.severity == "error"


def test_catalogue_error_is_an_alert_and_findings_are_deduplicated(tmp_path):
    from models.factories import float_mask

    model = float_mask()  # a float 0/1 padding mask added to the scores (MSK003, an error)
    model.train()
    log = tmp_path / "run.jsonl"
    with attndbg.watch(model, every=1, log=log, on_alert="ignore") as watcher:
        for _ in range(3):
            model(torch.randint(0, 50, (2, 16))).sum().backward()
            watcher.step()
    records = read_log(log)
    findings = [r for r in records if r["type"] == "finding"]
    assert sorted((f["layer"], f["code"], f["step"]) for f in findings) == [
        ("blocks.0", "MSK003", 0),
        ("blocks.1", "MSK003", 0),
    ]
    kinds = [(a.kind, a.layer, a.details["code"]) for a in watcher.alerts]
    assert kinds == [("catalogue-error", "blocks.0", "MSK003"), ("catalogue-error", "blocks.1", "MSK003")]


def test_no_activation_is_kept_after_the_step():
    torch.manual_seed(0)
    model = TinyGPT(layers=1)
    refs = []

    def remember_query(_module, _args, output):
        refs.append(weakref.ref(output))

    model.blocks[0].attn.q_proj.register_forward_hook(remember_query)
    with attndbg.watch(model, every=1) as watcher:
        train(model, watcher, steps=2)
        gc.collect()
        assert refs and all(ref() is None for ref in refs)
    assert watcher.last["blocks.0.attn"].heads == 4


def test_auto_step_counts_training_forwards_and_skips_eval():
    torch.manual_seed(0)
    model = TinyGPT(layers=1)
    ids = torch.randint(0, 256, (2, 8))
    with attndbg.watch(model, every=2, auto_step=True) as watcher:
        for _ in range(5):
            model.train()
            model(ids)
            model.eval()
            model(ids)
    assert watcher.step_index == 5 and watcher._sampled == 3


def test_multi_head_attention_is_watched():
    from models.factories import encoder_layer

    model = encoder_layer()
    model.train()
    with attndbg.watch(model, every=1) as watcher:
        model(torch.randn(2, 10, 32)).sum().backward()
        watcher.step()
    assert {layer.kind for layer in watcher.last.values()} == {"multi_head_attention"}


class HandWritten(torch.nn.Module):
    """nanoGPT's manual path: scores, a causal masked_fill, softmax, P·V — no SDPA."""

    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.qkv, self.sdpa = torch.nn.Linear(32, 96), sdpa

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
        if self.sdpa:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum()
        scores = (q @ k.transpose(-2, -1)) * (1.0 / 8**0.5)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        return (weights @ v).sum()


def test_hand_written_attention_is_traced_and_reads_like_sdpa():
    readings = {}
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(0))
    for sdpa in (False, True):
        torch.manual_seed(0)
        model = HandWritten(sdpa)
        with attndbg.watch(model, every=1) as watcher:
            model(x).backward()
            watcher.step()
        (layer,) = watcher.last.values()
        readings[layer.kind] = layer.metrics
    assert set(readings) == {"traced", "sdpa"}
    for metric in ("entropy", "max_logit", "max_weight", "sink_mass"):
        assert readings["traced"][metric] == pytest.approx(readings["sdpa"][metric], rel=1e-4, abs=1e-6)


def test_thresholds_are_configurable_and_checked():
    torch.manual_seed(0)
    model = TinyGPT(layers=1)
    with attndbg.watch(model, every=1, on_alert="ignore", thresholds={"max_logit": 0.5}) as watcher:
        train(model, watcher, steps=1)
    assert {a.kind for a in watcher.alerts} == {"logit-growth"}
    assert watcher.alerts[0].details == {"rule": "bound", "bound": 0.5}
    with pytest.raises(UsageError, match="unknown watch threshold 'max_logits'"):
        attndbg.watch(model, thresholds={"max_logits": 1})
    with pytest.raises(UsageError, match="every=0"):
        attndbg.watch(model, every=0)
    with pytest.raises(UsageError, match="on_alert"):
        attndbg.watch(model, on_alert="explode")
    assert Thresholds().max_logit == 50.0


def test_a_killed_run_leaves_a_readable_log(tmp_path):
    """Each record is one flushed line: the file of a run that dies mid-way reads up to there."""
    import subprocess
    import sys

    from conftest import ROOT

    log = tmp_path / "killed.jsonl"
    script = f"""
import os, sys, torch
sys.path.insert(0, {str(ROOT / "scripts")!r})
import attndbg
from watch_model import TinyGPT, random_batches
torch.manual_seed(0)
model = TinyGPT(layers=1)
watcher = attndbg.watch(model, every=1, log={str(log)!r}).start()
for step, (ids, targets) in enumerate(random_batches(6)):
    model(ids, targets).backward()
    watcher.step()
    if step == 3:
        os._exit(9)  # no close(), no end record, no interpreter shutdown
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=120)
    assert result.returncode == 9, result.stderr.decode()
    with log.open("a") as handle:
        handle.write('{"type": "step", "st')  # a write cut off by the kill
    records = read_log(log)
    assert [r["type"] for r in records] == ["header"] + ["step"] * 4
    assert json.loads(log.read_text().splitlines()[1])["step"] == 0


def test_a_failing_reduction_never_stops_training(tmp_path, monkeypatch):
    import attndbg.watch.monitor as monitor

    def broken(call, name, **options):
        raise ValueError(f"cannot reduce {name}")

    monkeypatch.setattr(monitor, "reduce_call", broken)
    torch.manual_seed(0)
    model = TinyGPT()
    log = tmp_path / "run.jsonl"
    with (
        pytest.warns(AttentionWarning, match="not reduced") as caught,
        attndbg.watch(model, every=2, log=log) as w,
    ):
        losses = train(model, w, steps=4)
    assert len(losses) == 4 and len([c for c in caught if "not reduced" in str(c.message)]) == 1
    steps = [r for r in read_log(log) if r["type"] == "step"]
    assert [s["step"] for s in steps] == [0, 2]
    assert steps[0]["skipped"] == [
        {"layer": "blocks.0.attn", "error": "ValueError: cannot reduce blocks.0.attn"},
        {"layer": "blocks.1.attn", "error": "ValueError: cannot reduce blocks.1.attn"},
    ]


def test_without_the_catalogue_the_statistics_are_the_same():
    from models.factories import float_mask

    readings = {}
    for catalogue in (True, False):
        model = float_mask()
        model.train()
        with attndbg.watch(model, every=1, catalogue=catalogue, on_alert="ignore") as watcher:
            model(torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))).sum().backward()
            watcher.step()
        readings[catalogue] = ({n: layer.metrics for n, layer in watcher.last.items()}, len(watcher.findings))
    assert readings[True][0] == readings[False][0]
    assert readings[True][1] == 2 and readings[False][1] == 0


def test_capture_on_device_keeps_live_tensors_instead_of_copies():
    import torch.nn.functional as F

    from attndbg.recording.recorder import capture, on_device

    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    with on_device(), capture() as live:
        F.scaled_dot_product_attention(q, k, v)
    with capture() as copied:
        F.scaled_dot_product_attention(q, k, v)
    assert live[0].q.data_ptr() == q.data_ptr() and not live[0].q.requires_grad
    assert copied[0].q.data_ptr() != q.data_ptr() and torch.equal(copied[0].q, q)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_statistics_match_the_cpu_and_nothing_is_skipped(tmp_path):
    readings = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = TinyGPT().to(device)
        with attndbg.watch(model, every=1, log=tmp_path / f"{device}.jsonl") as watcher:
            for ids, targets in random_batches(2):
                model(ids.to(device), targets.to(device)).backward()
                watcher.step()
        readings[device] = watcher.last["blocks.1.attn"].metrics
        assert not [r for r in read_log(tmp_path / f"{device}.jsonl") if r.get("skipped")]
    for metric in ("entropy", "max_logit", "max_weight"):
        assert readings["cuda"][metric] == pytest.approx(readings["cpu"][metric], rel=1e-3, abs=1e-4)


def test_max_batch_reads_the_first_sequences_but_counts_every_nan():
    torch.manual_seed(0)
    model = TinyGPT(layers=1)
    ids = torch.randint(0, 256, (4, 16))
    readings = {}
    for max_batch, batch in ((None, ids[:1]), (1, ids)):
        with attndbg.watch(model, every=1, max_batch=max_batch) as watcher:
            model(batch)
            watcher.step()
        readings[max_batch] = watcher.last["blocks.0.attn"].metrics
    assert readings[1]["entropy"] == pytest.approx(readings[None]["entropy"], rel=1e-5)
    assert readings[1]["max_logit"] == pytest.approx(readings[None]["max_logit"], rel=1e-5)

    def nan_in_last_sequence(_module, _args, output):
        output = output.clone()
        output[3, 5, 0] = float("nan")  # sequence 3, position 5: query head 0
        return output

    model.blocks[0].attn.q_proj.register_forward_hook(nan_in_last_sequence)
    with attndbg.watch(model, every=1, max_batch=1, on_alert="ignore") as watcher:
        model(ids)
        watcher.step()
    (alert,) = [a for a in watcher.alerts if a.kind == "non-finite"]
    assert (alert.head, alert.details["tensor"], alert.details["index"][:3]) == (0, "q", [3, 0, 5])
