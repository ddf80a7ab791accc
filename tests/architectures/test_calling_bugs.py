"""Bugs in how models are called, made by breaking real library calls the way users do.

Each test runs a correct call next to the broken one: the correct call must stay quiet and the
broken one must be named, with the evidence attndbg gives. Bugs that attndbg cannot see from
what the call hands to attention are marked ``xfail`` with the reason, so the list of what is
caught and what is not stays honest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from arch_sweep import build, cache_argument, cache_of, padded_ids  # noqa: E402
from arch_zoo import BY_NAME  # noqa: E402
from conftest import loud_findings  # noqa: E402
from transformers import AttentionInterface  # noqa: E402

import attndbg  # noqa: E402
from attndbg.recording.recorder import Calls  # noqa: E402
from attndbg.recording.sources import compare_eager  # noqa: E402
from attndbg.report import Severity  # noqa: E402

LLAMA, BERT = BY_NAME["llama"], BY_NAME["bert"]


def _record(model: torch.nn.Module, **inputs) -> Calls:
    with torch.no_grad(), attndbg.capture(model) as calls:
        model(**inputs)
    return calls


def _inputs(arch, side: str) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    return padded_ids(arch, side, torch.Generator().manual_seed(0))


@contextmanager
def substituted_sdpa(kernel: Callable) -> Iterator[None]:
    """Register ``kernel`` as the library's "sdpa" attention, as users do to plug in their own
    kernel; the original is restored afterwards."""
    original = AttentionInterface._global_mapping["sdpa"]
    AttentionInterface.register("sdpa", kernel)
    try:
        yield
    finally:
        AttentionInterface.register("sdpa", original)


def _sdpa_forward():  # noqa: ANN202
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def _prefill(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """The cache after ``ids``, as the keyword the model's forward takes it by."""
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask, use_cache=True)
    return {cache_argument(model): cache_of(output), "use_cache": True}


def _chunked(model: torch.nn.Module, ids: torch.Tensor, mask, split: int = 8) -> Calls:  # noqa: ANN001
    """Prefill ``ids[:, :split]``, then record the rest as one chunk against the cache."""
    cache = _prefill(model, ids[:, :split], mask[:, :split])
    return _record(model, input_ids=ids[:, split:], attention_mask=mask, **cache)


def test_inverted_attention_mask() -> None:
    """``attention_mask = 1 - mask`` (1 = pad, the opposite of what HF means): the padding is
    attended and the text is masked."""
    model = build(BERT, "sdpa")
    ids, mask = _inputs(BERT, "right")
    assert not loud_findings(attndbg.diagnose(_record(model, input_ids=ids, attention_mask=mask)))
    found = loud_findings(attndbg.diagnose(_record(model, input_ids=ids, attention_mask=1 - mask)))
    assert "MSK004" in found, found
    # with 1 = pad the longest sequence (no padding) has nothing left to attend to
    assert found["MSK001"][0].evidence["first"][0] == [0, 0]


def test_float_01_mask_is_added() -> None:
    """A 4-D float 0/1 mask (``mask[:, None, None, :].float()``) is taken as an additive bias by
    the library: +1 on kept keys, 0 on padding — nothing is masked."""
    model = build(LLAMA, "sdpa")
    ids, mask = _inputs(LLAMA, "right")
    causal = torch.ones(12, 12).tril()[None, None]
    keep = causal.bool() & mask[:, None, None, :].bool()
    assert not loud_findings(attndbg.diagnose(_record(model, input_ids=ids, attention_mask=keep)))
    found = loud_findings(attndbg.diagnose(_record(model, input_ids=ids, attention_mask=keep.float())))
    assert "MSK003" in found and found["MSK003"][0].severity is Severity.ERROR, found
    assert "only 0s and 1s" in found["MSK003"][0].message


def test_scale_removed() -> None:
    """``attention.scaling = 1.0`` (a port that drops 1/sqrt(d)): logits spread √d too wide."""
    model = build(LLAMA, "sdpa")
    ids, mask = _inputs(LLAMA, "right")
    assert not loud_findings(attndbg.diagnose(_record(model, input_ids=ids, attention_mask=mask)))
    for layer in model.layers:
        layer.self_attn.scaling = 1.0
    found = loud_findings(attndbg.diagnose(_record(model, input_ids=ids, attention_mask=mask)))
    assert "SCL001" in found, found
    evidence = found["SCL001"][0].evidence
    assert evidence["scale"] == 1.0 and evidence["head_dim"] == 8


def test_substituted_kernel_that_inverts_the_mask() -> None:
    def inverting(module, query, key, value, attention_mask, **kwargs):  # noqa: ANN001, ANN202
        flipped = None if attention_mask is None else ~attention_mask
        return _sdpa_forward()(module, query, key, value, flipped, **kwargs)

    model = build(LLAMA, "sdpa")
    ids, mask = _inputs(LLAMA, "left")
    with substituted_sdpa(inverting):
        found = loud_findings(attndbg.diagnose(_record(model, input_ids=ids, attention_mask=mask)))
    assert "MSK004" in found and found["MSK004"][0].severity is Severity.ERROR, found


def test_substituted_kernel_that_uses_is_causal_instead_of_the_mask() -> None:
    """A kernel that replaces the library's mask with ``is_causal=q_len > 1``: in a chunked
    prefill PyTorch aligns the causal mask to the upper left, so the chunk never sees the cache
    (the cache offset is ignored)."""

    def causal_only(module, query, key, value, attention_mask, scaling=None, **kwargs):  # noqa: ANN001, ANN202
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        out = F.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    model = build(LLAMA, "sdpa")
    ids, mask = _inputs(LLAMA, "right")
    assert not loud_findings(attndbg.diagnose(_chunked(model, ids, mask)))
    with substituted_sdpa(causal_only):
        found = loud_findings(attndbg.diagnose(_chunked(model, ids, mask)))
    assert "MSK006" in found, found
    assert "q_len 4 != k_len 12" in found["MSK006"][0].message


def test_substituted_kernel_that_drops_the_mask_is_caught_by_compare_eager(tmp_path: Path) -> None:
    """A kernel that passes no mask makes a self-consistent SDPA call (nothing in it says padding
    was there), but ``capture --compare-eager`` shows it: the weights it implies differ from the
    library's eager attention."""

    def dropping(module, query, key, value, attention_mask, **kwargs):  # noqa: ANN001, ANN202
        return _sdpa_forward()(module, query, key, value, None, **kwargs)

    build(BERT, "sdpa").save_pretrained(tmp_path)
    text = {"text": None, "input_file": _padded_input(tmp_path)}
    rows = compare_eager(str(tmp_path), **text)
    assert max(r["max_weight_difference"] for r in rows) < 1e-4
    with substituted_sdpa(dropping):
        rows = compare_eager(str(tmp_path), **text)
    assert min(r["max_weight_difference"] for r in rows) > 0.05, rows


def _padded_input(folder: Path) -> Path:
    from safetensors.torch import save_file

    ids, mask = _inputs(BERT, "right")
    path = folder / "padded.safetensors"
    save_file({"input_ids": ids, "attention_mask": mask}, str(path))
    return path


@pytest.mark.parametrize("new_tokens", [1, 4], ids=["decode", "chunk"])
def test_mask_not_extended_during_manual_generation(new_tokens: int) -> None:
    """A hand-written generation loop that passes the prefill's 2-D attention_mask again
    instead of appending ones: the library pads the short mask with 0, so the new tokens'
    own positions are hidden in every sequence."""
    model = build(LLAMA, "sdpa")
    ids, mask = _inputs(LLAMA, "left")
    new = torch.randint(3, 100, (2, new_tokens), generator=torch.Generator().manual_seed(1))
    extended = torch.cat([mask, torch.ones_like(new)], dim=-1)
    correct = _record(model, input_ids=new, attention_mask=extended, **_prefill(model, ids, mask))
    assert not loud_findings(attndbg.diagnose(correct))
    calls = _record(model, input_ids=new, attention_mask=mask, **_prefill(model, ids, mask))
    assert calls[0].mask is not None and not bool(calls[0].mask[..., -1].any())  # the bug is there
    found = loud_findings(attndbg.diagnose(calls))
    assert set(found) == {"MSK008"}, found
    evidence = found["MSK008"][0].evidence
    assert evidence["hidden_keys"] == list(range(12, 12 + new_tokens)) and evidence["samples"] == 2


def test_own_4d_mask_ignores_the_cache_offset() -> None:
    """A hand-built 4-D causal mask for a chunk after 8 cached tokens, ``tril()`` of (4, 12)
    without the offset: the chunk never sees the cache."""
    model = build(LLAMA, "sdpa")
    ids, mask = _inputs(LLAMA, "right")
    padding = mask[:, None, None, :].bool()
    cache = _prefill(model, ids[:, :8], mask[:, :8])
    aligned = torch.ones(4, 12, dtype=torch.bool).tril(8)[None, None] & padding
    assert not loud_findings(
        attndbg.diagnose(_record(model, input_ids=ids[:, 8:], attention_mask=aligned, **cache))
    )
    cache = _prefill(model, ids[:, :8], mask[:, :8])
    upper_left = torch.ones(4, 12, dtype=torch.bool).tril()[None, None] & padding
    found = loud_findings(
        attndbg.diagnose(_record(model, input_ids=ids[:, 8:], attention_mask=upper_left, **cache))
    )
    assert "MSK006" in found, found
    assert "upper left" in found["MSK006"][0].message
