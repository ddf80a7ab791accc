"""Gradient machinery shared by ``inspect --grad`` (GRD checks) and ``attndbg gradcheck``.

The reference attention lives in :mod:`attndbg.attention`.
"""

from __future__ import annotations

import math

import torch


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
