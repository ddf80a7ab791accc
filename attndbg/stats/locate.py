"""Locating the first non-finite value: one row recomputed, only when the pass found some."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from attndbg.stats.saved import safe_softmax

if TYPE_CHECKING:
    from attndbg.context import CaseContext


def first_column(ctx: CaseContext, stage: str, row: list[int]) -> int:
    """Column of the first non-finite value in one (batch, head, query) row, recomputed."""
    b, h, i = row
    if stage == "output":
        out = reference_row(ctx, b, h, i)
        return int((~torch.isfinite(out)).nonzero()[0]) if bool((~torch.isfinite(out)).any()) else 0
    if ctx.has_qkv:
        assert ctx.q is not None and ctx.k is not None
        q = ctx.q[min(b, ctx.q.shape[0] - 1), h, i] * ctx.scale
        scores = ctx.k[min(b, ctx.k.shape[0] - 1), h] @ q
    else:
        us = ctx.user_scores
        assert us is not None  # a case without q/k/v has weights or scores
        scores = us[min(b, us.shape[0] - 1), min(h, us.shape[1] - 1), i].float()
    bad = ~torch.isfinite(scores) if ctx.has_qkv else torch.isnan(scores) | torch.isposinf(scores)
    return int(bad.nonzero()[0]) if bool(bad.any()) else 0


def reference_row(ctx: CaseContext, b: int, h: int, i: int) -> torch.Tensor:
    rows = slice(i, i + 1)
    q = ctx.q[min(b, ctx.q.shape[0] - 1), h : h + 1, rows] * ctx.scale
    logits = torch.matmul(q, ctx.k[min(b, ctx.k.shape[0] - 1), h : h + 1].transpose(-1, -2))
    bias = ctx.combined_bias(b, rows, ctx.mask_semantics, ctx.causal_align)
    if bias is not None:
        logits = logits + (bias[h : h + 1] if bias.shape[0] > 1 else bias)
    probs, _ = safe_softmax(logits)
    return torch.matmul(probs, ctx.v[min(b, ctx.v.shape[0] - 1), h : h + 1])[0, 0]
