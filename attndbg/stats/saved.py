"""The user's saved weights/scores/out: sums, range, masked and future mass, and the max error
of every hypothesis (scale, mask convention, causal flag, softmax axis) against them.

A second pass over query-row chunks, run only when such artefacts exist and a running check
reads them (``Statistic.SAVED``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from attndbg.attention import MASKED_BIAS
from attndbg.stats.chunks import chunk_rows
from attndbg.vocab import Artefact, CausalAlign, MaskSemantics, Reading

if TYPE_CHECKING:
    from attndbg.context import CaseContext
    from attndbg.stats.result import AttentionStats


@dataclass(frozen=True)
class Hypothesis:
    label: Reading
    scale: float
    mask: MaskSemantics | None  # semantics to read the mask with; None = no mask applied
    causal: CausalAlign | None
    axis: str = "keys"  # the softmax axis: "keys" or "queries"


def safe_softmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last axis that gives zeros (not NaN) for rows that are all -inf,
    as PyTorch 2.13's SDPA does; returns (probabilities, log-sum-exp)."""
    row_max = logits.amax(-1, keepdim=True)
    shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(logits - shift)
    total = exp.sum(-1, keepdim=True)
    probs = exp / torch.where(total > 0, total, torch.ones_like(total))
    lse = (shift + torch.log(total)).squeeze(-1)
    return probs, lse


def build_hypotheses(ctx: CaseContext) -> list[Hypothesis]:
    """The assumed reading of the case first, then one-factor-at-a-time alternatives."""
    scale = ctx.scale
    mask = ctx.mask_semantics
    causal = ctx.causal_align
    hyps = [Hypothesis(Reading.REFERENCE, scale, mask, causal)]
    d = ctx.sizes["D"]
    scales = ((Reading.NO_SCALE, 1.0), (Reading.SCALE_1_D, 1.0 / d), (Reading.SCALE_1_SQRT_D, d**-0.5))
    for label, alt in scales:
        if not math.isclose(alt, scale, rel_tol=1e-6):
            hyps.append(Hypothesis(label, alt, mask, causal))
    if mask is not None:
        for semantics in MaskSemantics:
            if semantics != mask:
                hyps.append(Hypothesis(Reading.mask_as(semantics), scale, semantics, causal))
        hyps.append(Hypothesis(Reading.MASK_IGNORED, scale, None, causal))
    if causal:
        hyps.append(Hypothesis(Reading.NOT_CAUSAL, scale, mask, None))
        if ctx.sizes["Lq"] != ctx.sizes["Lk"]:
            hyps.append(Hypothesis(Reading.CAUSAL_LOWER_RIGHT, scale, mask, CausalAlign.LOWER_RIGHT))
    else:
        hyps.append(Hypothesis(Reading.CAUSAL, scale, mask, CausalAlign.UPPER_LEFT))
    hyps.append(Hypothesis(Reading.SOFTMAX_OVER_QUERIES, scale, mask, causal, axis="queries"))
    return hyps


def saved_pass(ctx: CaseContext, stats: AttentionStats) -> None:
    """The user's saved weights/scores/out: sums, range, masked and future mass, and the max
    error of every hypothesis. Runs only when such artefacts exist (small cases, in practice)."""
    sizes = ctx.sizes
    B, H, Lq, Lk = sizes["B"], sizes["Hq"], sizes["Lq"], sizes["Lk"]
    device = ctx.device
    rows_per_chunk = chunk_rows(ctx)
    user_w, user_s, user_out = ctx.user_weights, ctx.user_scores, ctx.out
    has_qkv = ctx.has_qkv
    zero = torch.zeros((), device=device)

    def per_row() -> torch.Tensor:
        return torch.zeros((B, H, Lq), dtype=torch.float32, device=device)

    hyps = build_hypotheses(ctx) if has_qkv else []
    errors: dict[Artefact, dict[Reading, float]] = {}
    row_sum = user_masked = user_above = col_sum = None
    user_min, user_max = math.inf, -math.inf
    out_vs_weights = 0.0 if (user_w is not None and user_out is not None and has_qkv) else None
    if user_w is not None:
        row_sum, user_masked, user_above = per_row(), per_row(), per_row()
        col_sum = torch.zeros(B, H, Lk, dtype=torch.float64, device=device)
    col_lse = None
    if user_w is not None and any(h.axis == "queries" for h in hyps):
        col_lse = _column_lse(ctx, hyps[0], rows_per_chunk)

    def record(artefact: Artefact, label: Reading, value: float) -> None:
        table = errors.setdefault(artefact, {})
        table[label] = max(table.get(label, 0.0), value)

    j_idx = torch.arange(Lk, device=device)
    for b in range(B):
        for start in range(0, Lq, rows_per_chunk):
            stop = min(Lq, start + rows_per_chunk)
            rows = slice(start, stop)
            i_idx = torch.arange(start, stop, device=device)
            raw = None
            if has_qkv:
                assert ctx.q is not None and ctx.k is not None
                raw = torch.matmul(
                    ctx.q[min(b, ctx.q.shape[0] - 1), :, rows],
                    ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2),
                )
            if user_w is not None:
                assert row_sum is not None and col_sum is not None
                assert user_masked is not None and user_above is not None
                bias = ctx.combined_bias(b, rows, ctx.mask_semantics, ctx.causal_align)
                w = user_w[min(b, user_w.shape[0] - 1), :, rows].to(device, torch.float32).expand(H, -1, -1)
                finite_w = torch.where(torch.isfinite(w), w, zero)
                row_sum[b, :, rows] = finite_w.sum(-1)
                col_sum[b] += finite_w.sum(1).to(torch.float64)
                finite = torch.isfinite(w)
                if bool(finite.any()):
                    user_min = min(user_min, float(w[finite].min()))
                    user_max = max(user_max, float(w[finite].max()))
                if bias is not None:
                    user_masked[b, :, rows] = (finite_w * (bias <= MASKED_BIAS)).sum(-1)
                upper = j_idx[None, :] > i_idx[:, None]
                user_above[b, :, rows] = (finite_w * upper).sum(-1)
                if out_vs_weights is not None and user_out is not None:
                    v = ctx.v[min(b, ctx.v.shape[0] - 1)]
                    o = user_out[min(b, user_out.shape[0] - 1), :, rows]
                    diff = (torch.matmul(finite_w, v) - o).abs()
                    diff = diff[torch.isfinite(diff)]
                    if diff.numel():
                        out_vs_weights = max(out_vs_weights, float(diff.max()))
            for hyp in hyps:
                _score_hypothesis(ctx, hyp, b, rows, raw, user_w, user_s, user_out, col_lse, record)

    if row_sum is not None and col_sum is not None and user_masked is not None and user_above is not None:
        stats.user_row_sum = row_sum.cpu()
        stats.user_col_sum = col_sum.cpu().to(torch.float32)
        stats.user_min = user_min if user_min != math.inf else None
        stats.user_max = user_max if user_max != -math.inf else None
        stats.user_masked_mass = user_masked.cpu()
        stats.user_above_diagonal = user_above.cpu()
    stats.user_out_vs_weights = out_vs_weights
    stats.hypotheses = errors


def _column_lse(ctx: CaseContext, hyp: Hypothesis, rows_per_chunk: int) -> torch.Tensor:
    """Log-sum-exp over the query axis, per key column, for the wrong-axis hypothesis."""
    B, H, Lq, Lk = (ctx.sizes[k] for k in ("B", "Hq", "Lq", "Lk"))
    col = torch.full((B, H, Lk), float("-inf"), device=ctx.device)
    for b in range(B):
        for start in range(0, Lq, rows_per_chunk):
            rows = slice(start, min(Lq, start + rows_per_chunk))
            logits = _hyp_logits(ctx, hyp, b, rows)
            col[b] = torch.logaddexp(col[b], torch.logsumexp(logits, dim=1))
    return col


def _hyp_logits(
    ctx: CaseContext, hyp: Hypothesis, b: int, rows: slice, raw: torch.Tensor | None = None
) -> torch.Tensor:
    if raw is None:
        raw = torch.matmul(
            ctx.q[min(b, ctx.q.shape[0] - 1), :, rows],
            ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2),
        )
    logits = raw * hyp.scale
    bias = ctx.combined_bias(b, rows, hyp.mask, hyp.causal)
    return logits if bias is None else logits + bias


def _score_hypothesis(
    ctx: CaseContext,
    hyp: Hypothesis,
    b: int,
    rows: slice,
    raw: torch.Tensor | None,
    user_w: torch.Tensor | None,
    user_s: torch.Tensor | None,
    user_out: torch.Tensor | None,
    col_lse: torch.Tensor | None,
    record: Callable[[Artefact, Reading, float], None],
) -> None:
    logits = _hyp_logits(ctx, hyp, b, rows, raw)
    if hyp.axis == "queries":
        if col_lse is None:
            return
        probs = torch.exp(logits - col_lse[b][:, None, :])
        probs = torch.nan_to_num(probs, nan=0.0)
    else:
        probs, _ = safe_softmax(logits)
    if user_w is not None:
        w = user_w[min(b, user_w.shape[0] - 1), :, rows].to(ctx.device, torch.float32)
        diff = (probs - w).abs()
        diff = diff[torch.isfinite(diff)]
        record(Artefact.WEIGHTS, hyp.label, float(diff.max()) if diff.numel() else 0.0)
    if user_s is not None and raw is not None and hyp.axis == "keys" and hyp.causal == ctx.causal_align:
        s = user_s[min(b, user_s.shape[0] - 1), :, rows].to(ctx.device, torch.float32)
        raw_scaled = raw * hyp.scale
        comparable = torch.isfinite(s) & (s.abs() < 1e3) & torch.isfinite(logits)
        diff = (raw_scaled - s).abs()[comparable.expand_as(raw_scaled)]
        if hyp.mask == ctx.mask_semantics:
            record(Artefact.SCORES, hyp.label, float(diff.max()) if diff.numel() else 0.0)
    if user_out is not None:
        o = user_out[min(b, user_out.shape[0] - 1), :, rows]
        diff = (torch.matmul(probs, ctx.v[min(b, ctx.v.shape[0] - 1)]) - o).abs()
        diff = diff[torch.isfinite(diff)]
        record(Artefact.OUT, hyp.label, float(diff.max()) if diff.numel() else 0.0)
