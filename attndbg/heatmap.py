"""Attention maps to look at: one head's weights, max-pooled to a size that fits, with the
masked cells marked — computed in query-row chunks, never the full map for long sequences.
Data only; render/heatmap.py draws it in the terminal and as PNG."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attndbg.attention import MASKED_BIAS
from attndbg.context import CaseContext
from attndbg.report import Heatmap


def _labels(ctx: CaseContext, batch: int, n: int, step: int) -> list[str]:
    """This batch row's tokens when a capture recorded them (metadata ``tokens``), else positions."""
    rows = ctx.case.tokens or []
    tokens = rows[batch] if batch < len(rows) else None
    if tokens and step == 1 and len(tokens) >= n:
        return tokens[:n]
    return [str(i * step) for i in range(math.ceil(n / step))]


def head_weights(ctx: CaseContext, batch: int, head: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, masked) for one head and a slice of query rows, (rows, Lk)."""
    from attndbg.stats import safe_softmax

    bias = ctx.combined_bias(batch, rows, ctx.mask_semantics, ctx.causal_align)
    if bias is not None:
        bias = (
            bias[head]
            if bias.dim() == 3 and bias.shape[0] > 1
            else bias.reshape(-1, bias.shape[-1])
            if bias.dim() == 2
            else bias[0]
        )
    if bias is None and not ctx.has_qkv and ctx.user_scores is not None:
        # scores saved after a mask was applied (eager capture): its fills are the masked cells
        s = ctx.user_scores
        saved = s[min(batch, s.shape[0] - 1), min(head, s.shape[1] - 1), rows].float()
        bias = torch.where(saved <= MASKED_BIAS, float("-inf"), 0.0)
    if ctx.user_weights is not None:
        w = ctx.user_weights
        weights = w[min(batch, w.shape[0] - 1), min(head, w.shape[1] - 1), rows].float()
        masked = (
            torch.zeros_like(weights, dtype=torch.bool)
            if bias is None
            else (bias <= MASKED_BIAS).expand_as(weights)
        )
        return weights, masked  # NaN and ±inf stay: the renderers draw them as broken cells
    if ctx.has_qkv:
        assert ctx.q is not None and ctx.k is not None
        q = ctx.q[min(batch, ctx.q.shape[0] - 1), head, rows] * ctx.scale
        logits = q @ ctx.k[min(batch, ctx.k.shape[0] - 1), head].T
    else:
        scores = ctx.user_scores
        assert scores is not None  # a case without q/k/v has saved scores (or weights, handled above)
        logits = scores[min(batch, scores.shape[0] - 1), min(head, scores.shape[1] - 1), rows].float()
    masked = torch.zeros_like(logits, dtype=torch.bool)
    if bias is not None:
        logits = logits + bias
        masked = (bias <= MASKED_BIAS).expand_as(logits)
    weights, _ = safe_softmax(logits)
    return weights, masked


def build_heatmap(
    ctx: CaseContext, batch: int = 0, head: int = 0, max_rows: int = 32, max_cols: int = 64
) -> Heatmap:
    """One head's map, max-pooled: a cell is NaN when any weight it pools is NaN (``amax``
    propagates NaN), so a broken row stays visible however far the map is pooled."""
    lq, lk = ctx.sizes["Lq"], ctx.sizes["Lk"]
    row_step = max(1, math.ceil(lq / max_rows))
    col_step = max(1, math.ceil(lk / max_cols))
    pooled_rows, masked_rows = [], []
    chunk = max(row_step, (4 << 20) // max(lk, 1) // row_step * row_step)
    for start in range(0, lq, chunk):
        rows = slice(start, min(lq, start + chunk))
        weights, masked = head_weights(ctx, batch, head, rows)
        pad_r = (-weights.shape[0]) % row_step
        pad_c = (-weights.shape[1]) % col_step
        w = torch.nn.functional.pad(weights, (0, pad_c, 0, pad_r), value=0.0)
        m = torch.nn.functional.pad(masked.float(), (0, pad_c, 0, pad_r), value=1.0)
        r, c = w.shape[0] // row_step, w.shape[1] // col_step
        pooled_rows.append(w.reshape(r, row_step, c, col_step).amax(dim=(1, 3)))
        masked_rows.append(m.reshape(r, row_step, c, col_step).amin(dim=(1, 3)) > 0.5)
    weights = torch.cat(pooled_rows) if pooled_rows else torch.zeros(0, 0)
    masked = torch.cat(masked_rows) if masked_rows else torch.zeros(0, 0, dtype=torch.bool)
    heatmap = Heatmap(
        case=ctx.case.name,
        batch=batch,
        head=head,
        weights=[[round(x, 6) for x in row] for row in weights.cpu().tolist()],  # tolist: no 0-d tensors
        masked=masked.cpu().tolist(),
        row_step=row_step,
        col_step=col_step,
        q_len=lq,
        k_len=lk,
        source="saved weights" if ctx.user_weights is not None else "recomputed",
    )
    heatmap.row_labels = _labels(ctx, batch, lq, row_step)
    heatmap.col_labels = _labels(ctx, batch, lk, col_step)
    return heatmap


@dataclass
class Difference:
    case: str
    head: int
    heatmap: Heatmap  # of a − b (pooled by max |Δ| sign-preserving)
    largest: list[dict]  # [{"row": i, "key": j, "a": …, "b": …, "delta": …}]
    max_abs: float


def difference(a: CaseContext, b: CaseContext, head: int = 0, batch: int = 0, top: int = 5) -> Difference:
    """The difference of two weight sets for one head (full resolution up to 4096², chunked)."""
    lq, lk = a.sizes["Lq"], a.sizes["Lk"]
    if (lq, lk) != (b.sizes["Lq"], b.sizes["Lk"]):
        from attndbg.errors import InputError

        raise InputError(
            f"cannot compare: {a.case.name} is {lq}×{lk}, {b.case.name} is {b.sizes['Lq']}×{b.sizes['Lk']}"
        )
    entries: list[dict] = []
    rows_per = max(1, (4 << 20) // max(lk, 1))
    for start in range(0, lq, rows_per):
        rows = slice(start, min(lq, start + rows_per))
        wa, _ = head_weights(a, batch, head, rows)
        wb, _ = head_weights(b, batch, head, rows)
        delta = (wa - wb).flatten()
        k = min(top, delta.numel())
        # a NaN on one side (or both) is the largest difference there is
        values, index = delta.abs().nan_to_num(nan=math.inf).topk(k)
        for value, flat in zip(values.tolist(), index.tolist()):
            i, j = divmod(flat, lk)
            entries.append(
                {
                    "row": start + i,
                    "key": j,
                    "a": float(wa[i, j]),
                    "b": float(wb[i, j]),
                    "delta": float(wa[i, j] - wb[i, j]),
                    "abs": value,
                }
            )
    entries.sort(key=lambda e: -e["abs"])
    largest = [{k: v for k, v in e.items() if k != "abs"} for e in entries[:top]]
    heat = build_heatmap(a, batch, head)
    other = build_heatmap(b, batch, head)
    heat.weights = [[x - y for x, y in zip(ra, rb)] for ra, rb in zip(heat.weights, other.weights)]
    heat.source = "difference of pooled maxima"
    return Difference(a.case.name, head, heat, largest, entries[0]["abs"] if entries else 0.0)
