"""Attention implementations for the conformance sweep: one correct, one per classic bug."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def correct(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
    )


def seeds_style(query, key, value, mask=None):
    """The seeds' hand-rolled attention: masked_fill(mask == 0, -inf), softmax, nan_to_num."""
    d_k = query.size(-1)
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1))
    return torch.matmul(weights, value), weights


def _math(
    query,
    key,
    value,
    attn_mask=None,
    is_causal=False,
    scale=None,
    dim=-1,
    additive_inf=False,
    align="upper-left",
):
    scale = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    lq, lk = scores.shape[-2:]
    keep = torch.ones(lq, lk, dtype=torch.bool, device=query.device)
    if is_causal:
        keep = keep.tril(lk - lq if align == "lower-right" else 0)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        keep = keep & attn_mask
    elif attn_mask is not None:
        scores = scores + attn_mask
    if additive_inf:
        bias = torch.zeros(keep.shape, dtype=scores.dtype, device=query.device).masked_fill(
            ~keep, float("-inf")
        )
        scores = scores + bias
    else:
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=dim))
    return torch.matmul(weights, value)


def missing_scale(query, key, value, attn_mask=None, is_causal=False):
    return _math(query, key, value, attn_mask, is_causal, scale=1.0)


def wrong_axis(query, key, value, attn_mask=None, is_causal=False):
    return _math(query, key, value, attn_mask, is_causal, dim=-2)


def additive_inf_nan_to_num(query, key, value, attn_mask=None, is_causal=False):
    return _math(query, key, value, attn_mask, is_causal, additive_inf=True)


def lower_right_causal(query, key, value, attn_mask=None, is_causal=False):
    return _math(query, key, value, attn_mask, is_causal, align="lower-right")


def leaky_mask(query, key, value, attn_mask=None, is_causal=False):
    """Masks by multiplying the weights after the softmax and renormalising: the forward looks
    right, but NaN in a masked value still flows through 0 · NaN."""
    scale = 1 / math.sqrt(query.size(-1))
    weights = torch.softmax(torch.matmul(query, key.transpose(-2, -1)) * scale, dim=-1)
    lq, lk = weights.shape[-2:]
    keep = torch.ones(lq, lk, dtype=torch.bool, device=query.device)
    if is_causal:
        keep = keep.tril()
    if attn_mask is not None:
        keep = keep & (attn_mask if attn_mask.dtype == torch.bool else attn_mask > -1e4)
    weights = weights * keep
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    return torch.matmul(weights, value)


class _HalfBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value):  # noqa: ANN001, ANN205
        ctx.save_for_backward(query, key, value)
        return F.scaled_dot_product_attention(query, key, value)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        query, key, value = ctx.saved_tensors
        with torch.enable_grad():
            q, k, v = (t.detach().requires_grad_() for t in (query, key, value))
            out = F.scaled_dot_product_attention(q, k, v)
            dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
        return dq * 0.5, dk, dv  # the bug: dQ is halved


def wrong_backward(query, key, value):
    """A custom autograd.Function whose forward is right and whose backward is not."""
    return _HalfBackward.apply(query, key, value)


def float32_softmax(query, key, value, attn_mask=None, is_causal=False):
    """Correct, with the softmax computed in float32 on purpose (as Hugging Face's eager
    attention does): handed float64 it narrows to float32 inside."""
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.size(-1))
    lq, lk = scores.shape[-2:]
    if is_causal:
        scores = scores.masked_fill(~torch.ones(lq, lk, dtype=torch.bool).tril(), float("-inf"))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    elif attn_mask is not None:
        scores = scores + attn_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value)


def finite_fill(query, key, value, mask=None):
    """Correct on every row that has a key; -1e4 fill: rows with nothing to attend are a
    uniform average of the values."""
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), -1e4)
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def no_bfloat16(query, key, value):
    """An older helper that rejects bfloat16 with a TypeError of its own."""
    if query.dtype == torch.bfloat16:
        raise TypeError("bfloat16 is not supported by this helper")
    return F.scaled_dot_product_attention(query, key, value)


def noisy(query, key, value):
    """Correct, but warns on every call."""
    import warnings

    warnings.warn("this attention is deprecated", UserWarning, stacklevel=2)
    return F.scaled_dot_product_attention(query, key, value)


def hf_style(query, key, value, attention_mask=None):
    """Hugging Face's eager convention: an additive float mask, softmax in float32."""
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.size(-1))
    if attention_mask is not None:
        scores = scores + attention_mask
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), value)


def scale_twice(query, key, value, attn_mask=None, is_causal=False):
    """q is pre-scaled by 1/sqrt(d) and the scores are divided by sqrt(d) again."""
    return _math(query / math.sqrt(query.size(-1)), key, value, attn_mask, is_causal)


def causal_off_by_one(query, key, value, is_causal=False):
    """Its own causal mask keeps one key too many (tril(1))."""
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.size(-1))
    if is_causal:
        lq, lk = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(lq, lk, dtype=torch.bool).tril(1), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def mask_after_softmax(query, key, value, mask=None):
    """Multiplies the weights by the mask after the softmax and does not renormalise."""
    weights = torch.softmax(torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.size(-1)), dim=-1)
    if mask is not None:
        weights = weights * mask
    return torch.matmul(weights, value)


def ignores_scale(query, key, value, scale=None):
    """Takes a scale and drops it."""
    return F.scaled_dot_product_attention(query, key, value)


# ---- calling conventions: key padding masks, modules, layouts ------------------------------
def key_padding_only(query, key, value, key_padding_mask=None):
    """nn.MultiheadAttention's convention, (batch, k_len) True = padding, masked_fill + nan_to_num."""
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1)) @ value


def key_padding_ignored(query, key, value, key_padding_mask=None):
    """Takes a key padding mask and never applies it."""
    return torch.softmax(query @ key.transpose(-2, -1) / math.sqrt(query.size(-1)), dim=-1) @ value


def sequence_first(query, key, value, attn_mask=None, num_heads=1):
    """(L, B, E) inputs, heads merged into E and folded into the batch for bmm, as
    nn.MultiheadAttention does; attn_mask (L, S) or (B·heads, L, S), bool True = attend."""
    lq, b, e = query.shape

    def fold(x):  # noqa: ANN001, ANN202
        return x.reshape(x.shape[0], b * num_heads, x.shape[-1] // num_heads).transpose(0, 1)

    scores = torch.bmm(fold(query), fold(key).transpose(1, 2)) / math.sqrt(e // num_heads)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    out = torch.bmm(torch.nan_to_num(torch.softmax(scores, dim=-1)), fold(value))
    return out.transpose(0, 1).reshape(lq, b, num_heads * out.shape[-1])


def weak_fill(query, key, value, attn_mask=None):
    """Masks by adding -100 to the scores (Swin's shifted-window mask)."""
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if attn_mask is not None:
        keep = attn_mask if attn_mask.dtype == torch.bool else attn_mask > -1e4
        scores = scores + torch.zeros(keep.shape, dtype=scores.dtype).masked_fill(~keep, -100.0)
    return torch.softmax(scores, dim=-1) @ value


class ModuleAttention(torch.nn.Module):
    """A module whose forward is the attention, with a head size of its own (scale fixed at
    construction)."""

    def __init__(self) -> None:
        super().__init__()
        self.head_dim = 8
        self.scale = self.head_dim**-0.5

    def forward(self, q, k, v, attn_mask=None):  # noqa: ANN001, ANN201
        scores = q @ k.transpose(-2, -1) * self.scale
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            scores = scores + attn_mask
        return torch.nan_to_num(torch.softmax(scores, dim=-1)) @ v


module_instance = ModuleAttention()


class NeedsArguments(torch.nn.Module):
    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, q, k, v):  # noqa: ANN001, ANN201
        return F.scaled_dot_product_attention(q, k, v)


def any_leading_axes(query, key, value):
    """einsum over (..., seq, heads, head_dim) with no scale: it runs as attention in more than
    one layout, and matches plain attention in none."""
    scores = torch.einsum("...qhd,...khd->...hqk", query, key)
    return torch.einsum("...hqk,...khd->...qhd", torch.softmax(scores, dim=-1), value)
