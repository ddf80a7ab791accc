"""The statistics pass: every forward statistic from one sweep over query-row chunks.

For each (batch, chunk of query rows) the scores of all heads are computed once
(``q_chunk @ kᵀ``), and everything the checks need is reduced from them at once:
row max and log-sum-exp, entropy as ``lse − Σ p·s`` (no ``log p``), max weight,
coverage of the mask, sink/diagonal/previous-token mass, non-finite counts,
``P·V`` for the output check, a head-similarity Gram matrix, and — only when the
user saved their own ``scores``/``weights``/``out`` — the error of each competing
hypothesis (scale, mask convention, causal flag, softmax axis) against them.

No float tensor of shape (batch, heads, q_len, k_len) is ever held: a chunk's
rows are chosen so that its temporaries fit in ``ctx.max_memory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from attndbg.context import MASKED_BIAS

if TYPE_CHECKING:
    from attndbg.context import CaseContext

# float32 temporaries alive at once per score element in the reference pass (scores, biased
# logits, exp, probabilities, masks and products), measured, rounded up.
_TEMPORARIES_PER_ELEMENT = 8
_GRAM_ROWS = 2048  # rows sampled per (batch, head) for the duplicate-head similarity


@dataclass(frozen=True)
class Hypothesis:
    label: str
    scale: float
    mask: str | None  # semantics to read the mask with, "none" to drop it, None = no mask
    causal: str | None  # None, "upper-left" or "lower-right"
    axis: str = "keys"


@dataclass
class AttentionStats:
    """Per-row statistics (tensors of shape (B, H, Lq), float32, on the CPU) and totals."""

    source: str
    chunk_rows: int
    chunks: int
    chunk_bytes: int
    max_logit: torch.Tensor  # max |scaled logit| over attended keys
    absmax_raw: torch.Tensor
    logit_mean: torch.Tensor
    logit_std: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor
    max_weight: torch.Tensor
    sink: torch.Tensor
    diagonal: torch.Tensor
    previous: torch.Tensor
    next: torch.Tensor
    n_kept: torch.Tensor
    masked_mass: torch.Tensor
    above_diagonal: torch.Tensor
    n_keys: int
    out: torch.Tensor | None
    head_gram: torch.Tensor  # (B, H, H) Σ p_h·p_g over the sampled rows
    nonfinite: dict[str, int] = field(default_factory=dict)
    first_nonfinite: dict[str, list[int]] = field(default_factory=dict)
    user_row_sum: torch.Tensor | None = None
    user_col_sum: torch.Tensor | None = None
    user_min: float | None = None
    user_max: float | None = None
    user_masked_mass: torch.Tensor | None = None
    user_above_diagonal: torch.Tensor | None = None
    user_out_vs_weights: float | None = None
    hypotheses: dict[str, dict[str, float]] = field(default_factory=dict)
    hypothesis_specs: dict[str, Hypothesis] = field(default_factory=dict)

    @property
    def fully_masked(self) -> torch.Tensor:
        return self.n_kept == 0

    def best(self, artefact: str) -> tuple[str, float] | None:
        errors = self.hypotheses.get(artefact)
        if not errors:
            return None
        label = min(errors, key=lambda k: (errors[k], k != "reference"))
        return label, errors[label]


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
    causal = "upper-left" if ctx.is_causal else None
    hyps = [Hypothesis("reference", scale, mask, causal)]
    d = ctx.sizes["D"]
    for label, alt in (("no scale", 1.0), ("scale 1/d", 1.0 / d), ("scale 1/sqrt(d)", d**-0.5)):
        if not math.isclose(alt, scale, rel_tol=1e-6):
            hyps.append(Hypothesis(label, alt, mask, causal))
    if mask is not None:
        for alt in ("keep", "drop", "additive"):
            if alt != mask:
                hyps.append(Hypothesis(f"mask as {alt}", scale, alt, causal))
        hyps.append(Hypothesis("mask ignored", scale, "none", causal))
    if causal:
        hyps.append(Hypothesis("not causal", scale, mask, None))
        if ctx.sizes["Lq"] != ctx.sizes["Lk"]:
            hyps.append(Hypothesis("causal lower-right", scale, mask, "lower-right"))
    else:
        hyps.append(Hypothesis("causal", scale, mask, "upper-left"))
    hyps.append(Hypothesis("softmax over queries", scale, mask, causal, axis="queries"))
    return hyps


def chunk_rows(ctx: CaseContext) -> int:
    heads, lk = ctx.sizes["Hq"], max(ctx.sizes["Lk"], 1)
    per_row = heads * lk * 4 * _TEMPORARIES_PER_ELEMENT
    return max(1, min(ctx.sizes["Lq"], ctx.max_memory // per_row))


def _bias(ctx: CaseContext, b: int, rows: slice, mask: str | None, causal: str | None) -> Any:
    bias = None
    if mask not in (None, "none"):
        bias = ctx.mask_bias(b, rows, mask)
    if causal:
        causal_bias = ctx.causal_bias(rows, causal)
        bias = causal_bias if bias is None else bias + causal_bias
    return bias


def _first_index(bad: torch.Tensor, prefix: tuple[int, int]) -> list[int]:
    idx = bad.nonzero()[0].tolist()  # (h, i, j) within the chunk
    return [prefix[0], idx[0], prefix[1] + idx[1], idx[2]]


def compute_stats(ctx: CaseContext) -> AttentionStats:  # noqa: C901 - one pass, on purpose
    sizes = ctx.sizes
    B, H, Lq, Lk = sizes["B"], sizes["Hq"], sizes["Lq"], sizes["Lk"]
    rows_per_chunk = chunk_rows(ctx)
    device = ctx.device

    def per_row(fill: float = 0.0) -> torch.Tensor:
        return torch.full((B, H, Lq), fill, dtype=torch.float32, device=device)

    st = {
        name: per_row()
        for name in [
            "max_logit",
            "absmax_raw",
            "logit_mean",
            "logit_std",
            "lse",
            "entropy",
            "max_weight",
            "sink",
            "diagonal",
            "previous",
            "next",
            "n_kept",
            "masked_mass",
            "above_diagonal",
        ]
    }
    user_w = ctx.user_weights
    user_s = ctx.user_scores
    user_out = ctx.out
    has_qkv = ctx.has_qkv
    out = torch.zeros(B, H, Lq, sizes["Dv"], dtype=torch.float32, device=device) if has_qkv else None
    gram = torch.zeros(B, H, H, dtype=torch.float64, device=device)
    gram_stride = max(1, Lq // _GRAM_ROWS)
    nonfinite = {"scores": 0, "weights": 0, "output": 0}
    first: dict[str, list[int]] = {}

    hyps = (
        build_hypotheses(ctx)
        if has_qkv and (user_w is not None or user_s is not None or user_out is not None)
        else []
    )
    errors: dict[str, dict[str, float]] = {}
    row_sum = col_sum = user_masked = user_above = None
    user_min, user_max = math.inf, -math.inf
    out_vs_weights = 0.0 if (user_w is not None and user_out is not None and has_qkv) else None
    if user_w is not None:
        row_sum = per_row()
        user_masked = per_row()
        user_above = per_row()
        col_sum = torch.zeros(B, H, Lk, dtype=torch.float64, device=device)
    col_lse = None
    if any(h.axis == "queries" for h in hyps) and user_w is not None:
        col_lse = _column_lse(ctx, hyps[0], rows_per_chunk)

    def record(artefact: str, label: str, value: float) -> None:
        table = errors.setdefault(artefact, {})
        table[label] = max(table.get(label, 0.0), value)

    chunks = 0
    j_idx = torch.arange(Lk, device=device)
    offset = Lk - Lq if Lk > Lq else 0
    for b in range(B):
        for start in range(0, Lq, rows_per_chunk):
            stop = min(Lq, start + rows_per_chunk)
            rows = slice(start, stop)
            chunks += 1
            i_idx = torch.arange(start, stop, device=device)
            raw = None
            if has_qkv:
                raw = torch.matmul(
                    ctx.q[min(b, ctx.q.shape[0] - 1), :, rows],
                    ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2),
                )
                scaled = raw * ctx.scale
            elif user_s is not None:
                scaled = user_s[min(b, user_s.shape[0] - 1), :, rows].to(device, torch.float32)
                scaled = scaled.expand(H, -1, -1)
            else:
                scaled = None

            bias = _bias(ctx, b, rows, ctx.mask_semantics, "upper-left" if ctx.is_causal else None)
            if scaled is not None:
                bad = ~torch.isfinite(scaled) & ~(scaled == float("-inf"))
                if bad.any():
                    nonfinite["scores"] += int(bad.sum())
                    first.setdefault("scores", _first_index(bad, (b, start)))
                logits = scaled if bias is None else scaled + bias
                probs, lse = safe_softmax(logits)
            else:
                probs = user_w[min(b, user_w.shape[0] - 1), :, rows].to(device, torch.float32)
                probs = probs.expand(H, -1, -1)
                logits = torch.log(probs)
                lse = torch.zeros(probs.shape[:2], device=device)

            if bias is None:
                kept = torch.ones((1, 1, Lk), dtype=torch.bool, device=device)
                masked_hard = None
            else:
                kept = bias > MASKED_BIAS
                masked_hard = ~kept
            n_kept = kept.sum(-1).to(torch.float32).expand(H, stop - start)
            st["n_kept"][b, :, rows] = n_kept

            bad = torch.isnan(probs)
            if bad.any():
                nonfinite["weights"] += int(bad.sum())
                first.setdefault("weights", _first_index(bad, (b, start)))
            finite_logits = torch.where(torch.isfinite(logits), logits, torch.zeros((), device=device))
            entropy = lse - (probs * finite_logits).sum(-1)
            entropy = torch.where(n_kept > 0, entropy, torch.zeros((), device=device))
            st["lse"][b, :, rows] = lse
            st["entropy"][b, :, rows] = entropy.clamp_min(0)
            st["max_weight"][b, :, rows] = probs.amax(-1)
            st["sink"][b, :, rows] = probs[..., 0]
            for name, shift in (("diagonal", 0), ("previous", -1), ("next", 1)):
                target = i_idx + offset + shift
                valid = (target >= 0) & (target < Lk)
                gathered = probs.gather(-1, target.clamp(0, Lk - 1).expand(H, -1).unsqueeze(-1)).squeeze(-1)
                st[name][b, :, rows] = torch.where(valid, gathered, torch.zeros((), device=device))
            upper = j_idx[None, :] > i_idx[:, None]
            st["above_diagonal"][b, :, rows] = (probs * upper).sum(-1)
            if masked_hard is not None:
                st["masked_mass"][b, :, rows] = (probs * masked_hard).sum(-1)

            if scaled is not None:
                kept_b = kept.expand_as(scaled)
                finite_scaled = torch.where(torch.isfinite(scaled), scaled, torch.zeros((), device=device))
                kept_abs = torch.where(kept_b, finite_scaled.abs(), torch.zeros((), device=device))
                st["max_logit"][b, :, rows] = kept_abs.amax(-1)
                st["absmax_raw"][b, :, rows] = finite_scaled.abs().amax(-1)
                count = kept_b.sum(-1).clamp_min(1)
                masked_scaled = torch.where(kept_b, finite_scaled, torch.zeros((), device=device))
                mean = masked_scaled.sum(-1) / count
                var = (
                    torch.where(
                        kept_b,
                        (finite_scaled - mean[..., None]) ** 2,
                        torch.zeros((), device=device),
                    )
                ).sum(-1) / count
                st["logit_mean"][b, :, rows] = mean
                st["logit_std"][b, :, rows] = var.sqrt()

            sample = (i_idx % gram_stride) == 0
            if sample.any():
                flat = probs[:, sample].reshape(H, -1).to(torch.float64)
                gram[b] += flat @ flat.T

            if has_qkv:
                out_chunk = torch.matmul(probs, ctx.v[min(b, ctx.v.shape[0] - 1)])
                out[b, :, rows] = out_chunk
                bad = ~torch.isfinite(out_chunk)
                if bad.any():
                    nonfinite["output"] += int(bad.sum())
                    first.setdefault("output", _first_index(bad, (b, start)))

            if user_w is not None:
                w = user_w[min(b, user_w.shape[0] - 1), :, rows].to(device, torch.float32).expand(H, -1, -1)
                finite_w = torch.where(torch.isfinite(w), w, torch.zeros((), device=device))
                row_sum[b, :, rows] = finite_w.sum(-1)
                col_sum[b] += finite_w.sum(1).to(torch.float64)
                if torch.isfinite(w).any():
                    user_min = min(user_min, float(w[torch.isfinite(w)].min()))
                    user_max = max(user_max, float(w[torch.isfinite(w)].max()))
                if masked_hard is not None:
                    user_masked[b, :, rows] = (finite_w * masked_hard).sum(-1)
                user_above[b, :, rows] = (finite_w * upper).sum(-1)
                if out_vs_weights is not None:
                    v = ctx.v[min(b, ctx.v.shape[0] - 1)]
                    o = user_out[min(b, user_out.shape[0] - 1), :, rows]
                    diff = (torch.matmul(finite_w, v) - o).abs()
                    diff = diff[torch.isfinite(diff)]
                    if diff.numel():
                        out_vs_weights = max(out_vs_weights, float(diff.max()))

            for hyp in hyps:
                _score_hypothesis(ctx, hyp, b, rows, raw, user_w, user_s, user_out, col_lse, record)

    stats = AttentionStats(
        source="reference" if has_qkv else ("scores" if user_s is not None else "weights"),
        chunk_rows=rows_per_chunk,
        chunks=chunks,
        chunk_bytes=rows_per_chunk * H * Lk * 4 * _TEMPORARIES_PER_ELEMENT,
        n_keys=Lk,
        out=out,
        head_gram=gram.cpu(),
        nonfinite=nonfinite,
        first_nonfinite=first,
        **{name: tensor.cpu() for name, tensor in st.items()},
    )
    if user_w is not None:
        stats.user_row_sum = row_sum.cpu()
        stats.user_col_sum = col_sum.cpu().to(torch.float32)
        stats.user_min = user_min if user_min != math.inf else None
        stats.user_max = user_max if user_max != -math.inf else None
        stats.user_masked_mass = user_masked.cpu()
        stats.user_above_diagonal = user_above.cpu()
    stats.user_out_vs_weights = out_vs_weights
    stats.hypotheses = errors
    stats.hypothesis_specs = {h.label: h for h in hyps}
    return stats


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
    bias = _bias(ctx, b, rows, hyp.mask, hyp.causal)
    return logits if bias is None else logits + bias


def _score_hypothesis(ctx, hyp, b, rows, raw, user_w, user_s, user_out, col_lse, record) -> None:
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
        record("weights", hyp.label, float(diff.max()) if diff.numel() else 0.0)
    if user_s is not None and hyp.axis == "keys" and hyp.causal == ("upper-left" if ctx.is_causal else None):
        s = user_s[min(b, user_s.shape[0] - 1), :, rows].to(ctx.device, torch.float32)
        raw_scaled = raw * hyp.scale
        comparable = torch.isfinite(s) & (s.abs() < 1e3) & torch.isfinite(logits)
        diff = (raw_scaled - s).abs()[comparable.expand_as(raw_scaled)]
        if hyp.mask == ctx.mask_semantics:
            record("scores", hyp.label, float(diff.max()) if diff.numel() else 0.0)
    if user_out is not None:
        o = user_out[min(b, user_out.shape[0] - 1), :, rows]
        diff = (torch.matmul(probs, ctx.v[min(b, ctx.v.shape[0] - 1)]) - o).abs()
        diff = diff[torch.isfinite(diff)]
        record("out", hyp.label, float(diff.max()) if diff.numel() else 0.0)


def head_summary(
    stats: AttentionStats, collapsed_at: float = 0.95, uniform_at: float = 0.99
) -> list[dict[str, float]]:
    """Per-(batch, head) aggregates of the row statistics.

    Only rows with at least 4 attended keys count (not the first rows of a causal map, nor
    fully masked rows): with one or two keys any row looks sharp, sink-like or flat.
    """
    n = stats.n_kept
    informative = n >= 4
    log_n = torch.log(n.clamp_min(2))
    ratio = torch.where(n > 1, stats.entropy / log_n, torch.ones_like(n))
    heads = []
    B, H, _ = n.shape
    for b in range(B):
        for h in range(H):
            rows = informative[b, h]
            count = int(rows.sum())

            def mean(
                t: torch.Tensor, rows: torch.Tensor = rows, count: int = count, b: int = b, h: int = h
            ) -> float:
                return float(t[b, h][rows].mean()) if count else 0.0

            heads.append(
                {
                    "batch": b,
                    "head": h,
                    "rows": count,
                    "entropy": mean(stats.entropy),
                    "entropy_ratio": mean(ratio),
                    "max_weight": mean(stats.max_weight),
                    "collapsed_share": mean((stats.max_weight > collapsed_at).float()),
                    "uniform_share": mean((ratio > uniform_at).float()),
                    "sink_mass": mean(stats.sink),
                    "diagonal_mass": mean(stats.diagonal),
                    "previous_mass": mean(stats.previous),
                    "next_mass": mean(stats.next),
                    "max_logit": float(stats.max_logit[b, h][rows].max()) if count else 0.0,
                    "logit_std": mean(stats.logit_std),
                }
            )
    return heads
