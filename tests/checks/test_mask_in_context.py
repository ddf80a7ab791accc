"""Mask checks on masks built the way library code builds them: which fully masked rows are
padding (also in blocked local-attention layouts), when a mix of -inf and finite fills matters
(MSK007), and when a cached step's mask was not extended for the new tokens (MSK008).

Every tensor is made with the ops the models use (torch.where / addition of finfo.min masks as
GPT-Neo does, LongT5's own block-local mask builder, Hugging Face's zero padding of a short 2-D
mask), and every trigger sits next to the correct call that must stay quiet.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import loud_findings as loud

import attndbg
from attndbg.report import Report, Severity

FLOAT_MIN = torch.finfo(torch.float32).min
D = 8


def qkv(b: int, lq: int, lk: int, h: int = 4, seed: int = 0, hk: int | None = None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, D, generator=g)
    k = torch.randn(b, hk or h, lk, D, generator=g)
    v = torch.randn(b, hk or h, lk, D, generator=g)
    return q, k, v


def attention_mask(lengths: list[int], total: int, left: bool = False) -> torch.Tensor:
    """Hugging Face's 2-D attention_mask: 1 for tokens, 0 for padding."""
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        if left:
            mask[row, total - n :] = 1
        else:
            mask[row, :n] = 1
    return mask


def diagnose_eager(q, k, v, bias: torch.Tensor) -> Report:  # noqa: ANN001
    """The textbook eager attention with an additive bias, then attndbg on what it was given."""
    scores = q @ k.transpose(-1, -2) * D**-0.5 + bias
    out = torch.softmax(scores, dim=-1) @ v
    return attndbg.diagnose(q, k, v, mask=bias, out=out)


def finding(report: Report, code: str):  # noqa: ANN201
    matches = [f for f in report.findings if f.code == code]
    assert matches, [f.code for f in report.findings]
    return matches[0]


# ---- MSK007: -inf next to finite fills ---------------------------------------------------------


def gpt_neo_bias(mask: torch.Tensor) -> torch.Tensor:
    """GPT-Neo's eager path: the causal mask filled with finfo.min by torch.where, then the
    padding mask's finfo.min added; where both hide a key the sum overflows to -inf."""
    length = mask.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    causal_bias = torch.where(causal, 0.0, FLOAT_MIN)[None, None]
    padding_bias = (1.0 - mask[:, None, None, :].float()) * FLOAT_MIN
    bias = causal_bias + padding_bias
    assert bool(torch.isneginf(bias).any()) and bool((bias == FLOAT_MIN).any())  # the mix is there
    return bias


def test_mixed_fill_with_only_padding_queries_fully_masked_is_quiet() -> None:
    q, k, v = qkv(2, 12, 12)
    report = diagnose_eager(q, k, v, gpt_neo_bias(attention_mask([12, 7], 12, left=True)))
    assert not loud(report), loud(report)
    mixed = finding(report, "MSK007")
    assert mixed.severity is Severity.INFO and "padding queries" in mixed.message
    assert mixed.evidence["fully_masked_rows"] == 5 and mixed.evidence["at_real_tokens"] == 0


def test_mixed_fill_without_fully_masked_rows_is_quiet() -> None:
    """Two code paths, one filling -inf and one finfo.min, in a right-padded encoder batch:
    every query row attends to something, so both fills give the masked keys 0 weight."""
    q, k, v = qkv(2, 12, 12, seed=1)
    keep = attention_mask([10, 7], 12).bool()[:, None, None, :]
    bias = torch.zeros(2, 1, 1, 12)
    bias[:1] = bias[:1].masked_fill(~keep[:1], float("-inf"))
    bias[1:] = bias[1:].masked_fill(~keep[1:], FLOAT_MIN)
    report = diagnose_eager(q, k, v, bias)
    assert not loud(report), loud(report)
    assert "no query row is fully masked" in finding(report, "MSK007").message


def test_mixed_fill_with_a_fully_masked_real_token_is_a_warning() -> None:
    """GPT-Neo's masks plus a query-side mask that hides a real token's row (a token dropped by
    a bug): that row averages the finfo.min keys or turns NaN, depending on the fill it got."""
    q, k, v = qkv(2, 12, 12, seed=2)
    bias = gpt_neo_bias(attention_mask([12, 7], 12, left=True))
    dropped = torch.zeros(2, 1, 12, 1, dtype=torch.bool)
    dropped[0, 0, 5] = True
    bias = bias.masked_fill(dropped, float("-inf"))
    found = loud(diagnose_eager(q, k, v, bias))
    assert found["MSK007"][0].evidence["at_real_tokens"] == 1, found
    assert "real tokens" in found["MSK007"][0].message
    assert found["MSK001"][0].evidence["first"] == [[0, 5]]


# ---- MSK001: padding queries in LongT5's blocked local attention -------------------------------


def longt5_local(lengths: list[int], total: int, block: int = 4, inverted: bool = False) -> torch.Tensor:
    """LongT5's encoder mask as its local attention applies it: (batch·blocks, 1, block,
    3·block), additive with -1e10 (modeling_longt5.LongT5LocalAttention)."""
    longt5 = pytest.importorskip("transformers.models.longt5.modeling_longt5")
    mask = attention_mask(lengths, total)
    mask = 1 - mask if inverted else mask
    local = longt5._get_local_attention_mask(mask, block, torch.device("cpu"))  # (B, 1, n, l, 3l)
    local = local[:, 0].reshape(-1, 1, block, 3 * block)
    return torch.where(local > 0, 0.0, -1e10)


@pytest.mark.parametrize("lengths", [[12, 7], [16, 9, 5]], ids=["one-padding-block", "two-padding-blocks"])
def test_longt5_padding_queries_are_padding(lengths: list[int]) -> None:
    total = max(lengths)
    bias = longt5_local(lengths, total)
    q, k, v = qkv(bias.shape[0], 4, 12, seed=3)
    report = diagnose_eager(q, k, v, bias)
    assert not loud(report), loud(report)
    rows = finding(report, "MSK001").evidence
    assert rows["rows"] == rows["at_padding_positions"] == sum(total - n for n in lengths)


def test_longt5_with_an_inverted_attention_mask_stays_loud() -> None:
    """``1 - attention_mask``: the longest sample's blocks have no key at all, and the shorter
    sample's hidden run now leads its blocks; neither is padding running on from a block."""
    bias = longt5_local([12, 7], 12, inverted=True)
    q, k, v = qkv(bias.shape[0], 4, 12, seed=3)
    evidence = loud(diagnose_eager(q, k, v, bias))["MSK001"][0].evidence
    assert evidence["first"][:4] == [[0, 0], [0, 1], [0, 2], [0, 3]], evidence
    assert evidence["rows"] - evidence["at_padding_positions"] >= 12  # sample 0's three blocks


def test_longt5_layout_still_names_a_fully_masked_real_token() -> None:
    bias = longt5_local([12, 7], 12)
    bias[0, :, 1, :] = -1e10  # block 0, query 1: a real token whose row a bug masked
    q, k, v = qkv(bias.shape[0], 4, 12, seed=4)
    found = loud(diagnose_eager(q, k, v, bias))
    evidence = found["MSK001"][0].evidence
    assert evidence["rows"] - evidence["at_padding_positions"] == 1 and evidence["first"] == [[0, 1]]


# ---- MSK008: the 2-D mask not extended for a cached step ---------------------------------------


def cached_step(prefill: torch.Tensor, new: int, extended: bool, window: int | None = None) -> torch.Tensor:
    """The bool (B, 1, new, cached + new) mask of a cached step, built as Hugging Face does: the
    2-D mask (extended with ones, or not and then padded with zeros to the key length) and a
    lower-right causal mask, banded when ``window`` is set."""
    batch, cached = prefill.shape
    if extended:
        mask = torch.cat([prefill, prefill.new_ones(batch, new)], dim=-1)
    else:
        mask = F.pad(prefill, (0, new), value=0)
    total = cached + new
    position = torch.arange(cached, total)[:, None]
    key = torch.arange(total)[None, :]
    causal = key <= position
    if window is not None:
        causal &= key > position - window
    return causal[None, None] & mask.bool()[:, None, None, :]


def sdpa_report(mask: torch.Tensor, seed: int = 5, **shape) -> Report:  # noqa: ANN003
    batch, _, lq, lk = mask.shape
    q, k, v = qkv(batch, lq, lk, seed=seed, **shape)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attndbg.diagnose(q, k, v, mask=mask, out=out)


@pytest.mark.parametrize("new", [1, 4], ids=["decode", "chunk"])
def test_mask_not_extended_is_named(new: int) -> None:
    prefill = attention_mask([12, 7], 12, left=True)
    assert not loud(sdpa_report(cached_step(prefill, new, extended=True)))
    found = loud(sdpa_report(cached_step(prefill, new, extended=False)))
    assert set(found) == {"MSK008"}, found
    assert found["MSK008"][0].evidence["hidden_keys"] == list(range(12, 12 + new))


def test_mask_not_extended_with_grouped_query_heads_packed_on_the_query_axis() -> None:
    """A one-token decode with 4 query heads over 2 K/V heads, packed (B, Hkv, 2, D) as the
    library hands it to SDPA: two query rows, one new key."""
    prefill = attention_mask([12, 7], 12, left=True)
    mask = F.pad(prefill, (0, 1), value=0).bool()[:, None, None, :]
    found = loud(sdpa_report(mask.expand(2, 1, 2, 13), h=2))
    assert set(found) == {"MSK008"} and found["MSK008"][0].evidence["hidden_keys"] == [12], found


def test_sliding_window_steps_are_quiet() -> None:
    prefill = attention_mask([12, 7], 12, left=True)
    for new in (1, 4):
        assert not loud(sdpa_report(cached_step(prefill, new, extended=True, window=6)))


def test_right_padded_chunk_with_a_shorter_sequence_is_quiet() -> None:
    """A right-padded batch prefilled in two chunks with its full 2-D mask: the shorter
    sequence's second chunk is all padding, so its new keys are hidden, but the longer
    sequence sees its own."""
    mask = attention_mask([12, 7], 12).bool()
    causal = torch.arange(12)[None, :] <= torch.arange(8, 12)[:, None]
    assert not loud(sdpa_report(causal[None, None] & mask[:, None, None, :]))


def test_static_cache_chunk_next_to_empty_slots_is_quiet() -> None:
    """A chunk of 4 at positions 8..11 of a 16-slot static cache: slots 12..15 are empty and
    masked in every sample, but the chunk is causal, so its queries see different keys."""
    prefill = attention_mask([8, 5], 8, left=True)
    chunk = cached_step(prefill, 4, extended=True)
    static = F.pad(chunk, (0, 4), value=False)
    assert not loud(sdpa_report(static))


@pytest.mark.parametrize("decoder_tokens", [1, 8])
def test_cross_attention_over_a_max_length_padded_encoder_batch_is_quiet(decoder_tokens: int) -> None:
    """Decoder queries against encoder keys padded to a fixed max_length of 32: every sample
    hides a tail, of a different length in each."""
    encoder = attention_mask([20, 13], 32).bool()[:, None, None, :]
    assert not loud(sdpa_report(encoder.expand(2, 1, decoder_tokens, 32)))
    full = attention_mask([32 - decoder_tokens, 13], 32).bool()[:, None, None, :]
    assert not loud(sdpa_report(full.expand(2, 1, decoder_tokens, 32)))


def test_left_padded_prefill_is_quiet() -> None:
    mask = attention_mask([12, 7], 12, left=True).bool()
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    assert not loud(sdpa_report(causal[None, None] & mask[:, None, None, :]))
