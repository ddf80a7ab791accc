"""Gradient machinery shared by ``inspect --grad`` (GRD checks) and ``attndbg gradcheck``.

The reference is plain math attention with F.scaled_dot_product_attention's semantics
(bool mask = attend, float mask added, causal aligned to the upper left unless asked
otherwise, rows with nothing to attend give zeros), in whatever dtype it is handed.
"""

from __future__ import annotations

import math

import torch


def causal_keep(
    lq: int, lk: int, align: str = "upper-left", device: str | torch.device = "cpu"
) -> torch.Tensor:
    offset = lk - lq if align == "lower-right" else 0
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(offset)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    align: str = "upper-left",
    softmax_dim: int = -1,
) -> torch.Tensor:
    """Math attention; ``softmax_dim=-2`` and ``scale`` let the sweep name what a bug matches."""
    if k.shape[-3] != q.shape[-3] and k.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
    if is_causal:
        keep = causal_keep(*scores.shape[-2:], align, q.device)
    if mask is not None and mask.dtype == torch.bool:
        keep = keep & mask
    elif mask is not None:
        scores = scores + mask.to(scores.dtype)
    scores = scores.masked_fill(~keep, float("-inf"))
    dead = ~torch.isfinite(scores).any(dim=softmax_dim, keepdim=True) if softmax_dim == -1 else None
    if dead is not None:
        scores = scores.masked_fill(dead, 0.0)
    weights = torch.softmax(scores, dim=softmax_dim)
    if dead is not None:
        weights = weights.masked_fill(dead, 0.0)
    weights = torch.nan_to_num(weights, nan=0.0) if softmax_dim != -1 else weights
    return torch.matmul(weights, v)


def additive_then_nan_to_num(q, k, v, keep, scale=None):  # noqa: ANN001, ANN201
    """The classic hand-rolled pattern: -inf *added* to the scores, NaN patched after softmax."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, float("-inf"))
    weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + bias, dim=-1)
    return torch.matmul(torch.nan_to_num(weights), v)


def masked_fill_then_nan_to_num(q, k, v, keep, scale=None):  # noqa: ANN001, ANN201
    """The same with masked_fill: its backward zeroes the masked positions, so no NaN flows."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (torch.matmul(q, k.transpose(-1, -2)) * scale).masked_fill(~keep, float("-inf"))
    return torch.matmul(torch.nan_to_num(torch.softmax(scores, dim=-1)), v)


def gradients(fn, q, k, v, upstream, **kwargs) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
    """(out, dq, dk, dv) of ``fn`` with one shared upstream gradient."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, **kwargs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    zeros = [torch.zeros_like(t) for t in (q, k, v)]
    if out.numel() == 0:  # an empty query sequence: nothing flows back
        return (out.detach(), *zeros)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), upstream.to(out.dtype), allow_unused=True)
    return (out.detach(), *(g if g is not None else z for g, z in zip((dq, dk, dv), zeros)))


def rms(t: torch.Tensor) -> float:
    t = t.double()
    return math.sqrt(float((t * t).mean())) if t.numel() else 0.0
