"""Readings beyond one-factor-at-a-time: a fitted scale, dropout, a second softmax, a softmax
over heads, weights saved transposed, and grouped-query heads tiled with ``repeat``.

The one-factor hypotheses of the statistics pass test fixed alternatives (no scale, 1/d, a
mask read another way…). The readings here either need a parameter estimated from the saved
artefacts first — the applied scale, the dropout probability — or change the computation in a
way no single setting expresses. They are measured only when a saved artefact does not match
the assumed reading, or when ``dropout_p`` is declared (the weights are then verified against
it), so clean cases pay nothing. Each adds its max error to ``stats.hypotheses`` under its
:class:`~attndbg.vocab.Reading`, which the checks quote like any other reading.

* Scale: within a row, ``log w_j = scale · (q·k_j) + bias_j − lse``, so a least-squares slope
  of ``log w − bias`` on ``q·k`` (centred per row) is the applied scale, exactly; saved scores
  give it as ``Σ s·x / Σ x²``; an output alone is fitted by :func:`attndbg.scales.fit_log_scale`.
* Dropout with probability p: every weight is 0 or ``reference / (1 − p)``; among weights large
  enough to tell 0 from their kept value, the share of zeros estimates p.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from attndbg.attention import MASKED_BIAS
from attndbg.scales import SAME_SCALE, fit_log_scale
from attndbg.stats.chunks import chunk_rows
from attndbg.stats.saved import build_hypotheses, safe_softmax
from attndbg.vocab import Artefact, Reading

if TYPE_CHECKING:
    from attndbg.context import CaseContext
    from attndbg.stats.result import AttentionStats

_TINY_WEIGHT = 1e-7  # log-weights below this carry rounding, not the scale
_SEARCH_ROWS = 64  # query rows per sample for fitting a scale from an output alone


@dataclass
class Fits:
    """Parameters estimated from the saved artefacts, quoted by the findings."""

    scale: float | None = None
    scale_from: str | None = None
    dropout_p: float | None = None
    dropout_zero_share: float | None = None
    dropout_weights: int = 0


def _needs_readings(ctx: CaseContext, stats: AttentionStats) -> bool:
    """A saved artefact that the assumed reading does not match, or declared dropout."""
    from attndbg.hypotheses import tolerance

    if not ctx.has_qkv:
        return False
    if ctx.settings.dropout_p and ctx.has(Artefact.WEIGHTS):
        return True
    for artefact, errors in stats.hypotheses.items():
        if errors.get(Reading.REFERENCE, 0.0) > tolerance(ctx, artefact, stats):
            return True
    return False


def add_readings(ctx: CaseContext, stats: AttentionStats) -> None:
    """Measure the readings of this module against the saved artefacts (see the docstring)."""
    if not _needs_readings(ctx, stats):
        return
    fits = Fits()
    accumulators = _first_pass(ctx, stats)
    fits.scale, fits.scale_from = _fitted_scale(ctx, accumulators)
    declared = ctx.settings.dropout_p
    dropout = _dropout_estimate(accumulators, declared)
    if dropout is not None:
        fits.dropout_p, fits.dropout_zero_share, fits.dropout_weights = dropout
    _second_pass(ctx, stats, fits, accumulators)
    stats.fits = fits


# ---- chunks ------------------------------------------------------------------------------------


@dataclass
class SavedChunk:
    """One chunk of query rows: q·kᵀ, the assumed bias, and the saved artefacts' rows."""

    b: int
    rows: slice
    raw: torch.Tensor  # (H, rows, Lk) unscaled q·kᵀ
    bias: torch.Tensor | None  # the assumed reading's additive bias (mask + causal)
    weights: torch.Tensor | None  # saved, (H or 1, rows, Lk) float32
    scores: torch.Tensor | None
    out: torch.Tensor | None


def _chunks(ctx: CaseContext) -> Iterator[SavedChunk]:
    sizes = ctx.sizes
    # a reading holds about twice the temporaries of the reference pass (raw scores, reference
    # weights and its own weights), so half the rows keep a chunk within the budget
    step = max(1, chunk_rows(ctx) // 2)
    for b in range(sizes["B"]):
        kb = ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2)
        for start in range(0, sizes["Lq"], step):
            rows = slice(start, min(sizes["Lq"], start + step))
            raw = torch.matmul(ctx.q[min(b, ctx.q.shape[0] - 1), :, rows], kb)
            yield SavedChunk(
                b,
                rows,
                raw,
                ctx.combined_bias(b, rows, ctx.mask_semantics, ctx.causal_align),
                _saved(ctx.user_weights, b, rows, ctx.device),
                _saved(ctx.user_scores, b, rows, ctx.device),
                None if ctx.out is None else ctx.out[min(b, ctx.out.shape[0] - 1), :, rows],
            )


def _saved(tensor: torch.Tensor | None, b: int, rows: slice, device: str) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor[min(b, tensor.shape[0] - 1), :, rows].to(device, torch.float32)


def _softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    if dim == -1:
        return safe_softmax(logits)[0]
    return torch.nan_to_num(torch.softmax(logits, dim=dim), nan=0.0)


def _with_bias(logits: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return logits if bias is None else logits + bias


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a - b).abs()
    diff = diff[torch.isfinite(diff)]
    return float(diff.max()) if diff.numel() else 0.0


class _Recorder:
    def __init__(self, stats: AttentionStats) -> None:
        self.stats = stats

    def __call__(self, artefact: Artefact, label: Reading, value: float) -> None:
        table = self.stats.hypotheses.setdefault(artefact, {})
        table[label] = max(table.get(label, 0.0), value)

    def probabilities(self, ctx: CaseContext, chunk: SavedChunk, label: Reading, probs: torch.Tensor) -> None:
        """Errors of a reading given as weights: against saved weights, and via ``@ v`` the output."""
        if chunk.weights is not None:
            self(Artefact.WEIGHTS, label, _max_error(probs, chunk.weights))
        if chunk.out is not None:
            out = torch.matmul(probs, ctx.v[min(chunk.b, ctx.v.shape[0] - 1)])
            self(Artefact.OUT, label, _max_error(out, chunk.out))


# ---- first pass: fixed readings and the accumulators of the fits ---------------------------------


@dataclass
class _Accumulators:
    weights_sxy: float = 0.0
    weights_sxx: float = 0.0
    scores_sxy: float = 0.0
    scores_sxx: float = 0.0
    distinct: int = 0  # weights whose kept value is far from 0
    zeros: int = 0
    kept_sum: float = 0.0  # Σ saved weight over the distinct, non-zero entries
    reference_sum: float = 0.0  # Σ reference weight over the same entries


def _first_pass(ctx: CaseContext, stats: AttentionStats) -> _Accumulators:
    from attndbg.hypotheses import WEIGHT_TOLERANCE

    acc = _Accumulators()
    record = _Recorder(stats)
    sizes = ctx.sizes
    transposable = ctx.user_weights is not None and sizes["Lq"] == sizes["Lk"] and sizes["Lq"] > 1
    tiled_k = tiled_v = None
    if ctx.enable_gqa and 1 < sizes["Hk"] < sizes["Hq"]:
        # repeat() tiles the KV heads (query head h reads KV head h mod Hk); SDPA's enable_gqa
        # and Hugging Face's repeat_kv interleave them (query head h reads KV head h // group)
        group = sizes["Hq"] // sizes["Hk"]
        tiled_k = ctx._to_bhsd("k").repeat(1, group, 1, 1)
        tiled_v = ctx._to_bhsd("v").repeat(1, group, 1, 1)
    weights_dtype = str(ctx.raw["weights"].dtype).replace("torch.", "") if ctx.has("weights") else ""
    distinct_at = 20 * WEIGHT_TOLERANCE.get(weights_dtype, 1e-4)
    for chunk in _chunks(ctx):
        logits = _with_bias(chunk.raw * ctx.scale, chunk.bias)
        reference = _softmax(logits)
        record.probabilities(ctx, chunk, Reading.SOFTMAX_TWICE, torch.softmax(reference, dim=-1))
        if sizes["Hq"] > 1:
            record.probabilities(ctx, chunk, Reading.SOFTMAX_OVER_HEADS, _softmax(logits, dim=0))
        uw = ctx.user_weights
        if transposable and uw is not None:
            saved_t = uw[min(chunk.b, uw.shape[0] - 1), :, :, chunk.rows].transpose(-1, -2)
            record(Artefact.WEIGHTS, Reading.WEIGHTS_TRANSPOSED, _max_error(reference, saved_t.float()))
        if tiled_k is not None and tiled_v is not None:
            kt = tiled_k[min(chunk.b, tiled_k.shape[0] - 1)].transpose(-1, -2)
            q = ctx.q[min(chunk.b, ctx.q.shape[0] - 1), :, chunk.rows]
            probs = _softmax(_with_bias(torch.matmul(q, kt) * ctx.scale, chunk.bias))
            if chunk.weights is not None:
                record(Artefact.WEIGHTS, Reading.GQA_REPEAT, _max_error(probs, chunk.weights))
            if chunk.out is not None:
                out = torch.matmul(probs, tiled_v[min(chunk.b, tiled_v.shape[0] - 1)])
                record(Artefact.OUT, Reading.GQA_REPEAT, _max_error(out, chunk.out))
        kept = torch.ones_like(chunk.raw, dtype=torch.bool)
        bias = torch.zeros((), device=chunk.raw.device)
        if chunk.bias is not None:
            kept = (chunk.bias > MASKED_BIAS).expand_as(chunk.raw)
            bias = torch.where(torch.isfinite(chunk.bias), chunk.bias, torch.zeros_like(chunk.bias))
        if chunk.weights is not None:
            w = chunk.weights.expand_as(chunk.raw)
            valid = kept & torch.isfinite(w) & (w > _TINY_WEIGHT)
            y = torch.where(valid, torch.log(w.clamp_min(_TINY_WEIGHT)) - bias, 0.0).double()
            x = torch.where(valid, chunk.raw, 0.0).double()
            n = valid.sum(-1).double()
            sx, sy = x.sum(-1), y.sum(-1)
            several = n > 1
            n_safe = n.clamp_min(1)
            acc.weights_sxy += float(((x * y).sum(-1) - sx * sy / n_safe)[several].sum())
            acc.weights_sxx += float(((x * x).sum(-1) - sx * sx / n_safe)[several].sum())
            distinct = (reference > distinct_at) & torch.isfinite(w)
            zero = distinct & (w.abs() <= distinct_at / 20)
            nonzero = distinct & ~zero
            acc.distinct += int(distinct.sum())
            acc.zeros += int(zero.sum())
            acc.kept_sum += float(torch.where(nonzero, w, 0.0).sum())
            acc.reference_sum += float(torch.where(nonzero, reference, 0.0).sum())
        if chunk.scores is not None:
            s = chunk.scores.expand_as(chunk.raw)
            valid = kept & torch.isfinite(s) & (s.abs() < 1e3)
            y = torch.where(valid, s - bias, 0.0).double()
            x = torch.where(valid, chunk.raw, 0.0).double()
            acc.scores_sxy += float((x * y).sum())
            acc.scores_sxx += float((x * x).sum())
    return acc


def _fitted_scale(ctx: CaseContext, acc: _Accumulators) -> tuple[float | None, str | None]:
    if acc.weights_sxx > 0:
        return acc.weights_sxy / acc.weights_sxx, "weights"
    if acc.scores_sxx > 0:
        return acc.scores_sxy / acc.scores_sxx, "scores"
    if ctx.out is not None:
        return _scale_from_out(ctx), "out"
    return None, None


def _scale_from_out(ctx: CaseContext) -> float:
    """The scale whose attention reproduces the saved output best, on a sample of rows. The
    best, not the first named scale within tolerance: where attention is near uniform, several
    scales are within tolerance, and the fitted scale competes with the other readings on error."""
    sizes = ctx.sizes
    rows = slice(0, min(sizes["Lq"], _SEARCH_ROWS))
    samples = []
    for b in range(min(sizes["B"], 2)):
        raw = torch.matmul(
            ctx.q[min(b, ctx.q.shape[0] - 1), :, rows],
            ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2),
        )
        bias = ctx.combined_bias(b, rows, ctx.mask_semantics, ctx.causal_align)
        out = ctx.out
        assert out is not None  # fitted from an output only when one was saved
        samples.append((raw, bias, ctx.v[min(b, ctx.v.shape[0] - 1)], out[min(b, out.shape[0] - 1), :, rows]))

    def error(scale: float) -> float:
        return max(
            _max_error(torch.matmul(_softmax(_with_bias(raw * scale, bias)), v), out)
            for raw, bias, v, out in samples
        )

    return fit_log_scale(error, sizes["D"], sizes["Hq"])


def _dropout_estimate(acc: _Accumulators, declared: float | None) -> tuple[float, float, int] | None:
    """(p, share of zeros, weights counted): p is the declared probability, else the one the
    kept weights' rescaling 1/(1 − p) implies."""
    if acc.distinct == 0 or acc.reference_sum <= 0:
        return None
    zero_share = acc.zeros / acc.distinct
    if declared:
        return declared, zero_share, acc.distinct
    rescale = acc.kept_sum / acc.reference_sum
    if rescale <= 1.0 + 1e-3 or acc.zeros == 0:
        return None
    return 1.0 - 1.0 / rescale, zero_share, acc.distinct


def dropout_share_plausible(p: float, zero_share: float, count: int) -> bool:
    """Is the share of zeroed weights what Bernoulli(p) dropout gives, within 4 standard errors?"""
    spread = 4 * math.sqrt(max(p * (1 - p), 1e-12) / max(count, 1)) + 0.02
    return abs(zero_share - p) <= spread


# ---- second pass: readings with fitted parameters ---------------------------------------------


def _second_pass(ctx: CaseContext, stats: AttentionStats, fits: Fits, acc: _Accumulators) -> None:
    record = _Recorder(stats)
    scale = fits.scale
    tried = [ctx.scale, 1.0, 1.0 / max(ctx.sizes["D"], 1), max(ctx.sizes["D"], 1) ** -0.5]
    if scale is not None and (
        not math.isfinite(scale)
        or scale <= 0
        or any(math.isclose(scale, t, rel_tol=SAME_SCALE) for t in tried)
    ):
        scale = None
    p = fits.dropout_p if fits.dropout_p is not None and 0 < fits.dropout_p < 1 else None
    dropout_ok = p is not None
    if p is not None and not dropout_share_plausible(p, fits.dropout_zero_share or 0.0, fits.dropout_weights):
        record(Artefact.WEIGHTS, Reading.DROPOUT, 1.0)
        dropout_ok = False
    if scale is None and not dropout_ok:
        return
    # with dropout declared, every one-factor reading of the weights is dropout-aware too, so
    # that a mask left out of dropped weights is named as such
    alternatives = (
        [h for h in build_hypotheses(ctx) if h.axis == "keys"]
        if dropout_ok and ctx.settings.dropout_p
        else []
    )
    dropped_errors: dict[Reading, float] = {}
    for chunk in _chunks(ctx):
        if scale is not None:
            probs = _softmax(_with_bias(chunk.raw * scale, chunk.bias))
            record.probabilities(ctx, chunk, Reading.FITTED_SCALE, probs)
            if chunk.scores is not None:
                comparable = torch.isfinite(chunk.scores) & (chunk.scores.abs() < 1e3)
                bias = 0.0 if chunk.bias is None else torch.where(torch.isfinite(chunk.bias), chunk.bias, 0.0)
                fitted = (chunk.raw * scale + bias).expand_as(chunk.raw)
                diff = (fitted - chunk.scores).abs()[comparable.expand_as(fitted)]
                record(Artefact.SCORES, Reading.FITTED_SCALE, float(diff.max()) if diff.numel() else 0.0)
        if dropout_ok and p is not None and chunk.weights is not None:
            reference = _softmax(_with_bias(chunk.raw * ctx.scale, chunk.bias))
            record(Artefact.WEIGHTS, Reading.DROPOUT, _dropout_error(chunk.weights, reference, p))
            for hyp in alternatives[1:]:  # [0] is the reference, measured just above
                bias = ctx.combined_bias(chunk.b, chunk.rows, hyp.mask, hyp.causal)
                probs = _softmax(_with_bias(chunk.raw * hyp.scale, bias))
                error = _dropout_error(chunk.weights, probs, p)
                dropped_errors[hyp.label] = max(dropped_errors.get(hyp.label, 0.0), error)
    table = stats.hypotheses.get(Artefact.WEIGHTS, {})
    for label, error in dropped_errors.items():
        table[label] = min(table.get(label, error), error)


def _dropout_error(saved: torch.Tensor, probs: torch.Tensor, p: float) -> float:
    """Max over entries of the distance to dropout of ``probs``: to 0, or to probs/(1 − p)."""
    w = saved.expand_as(probs)
    error = torch.minimum(w.abs(), (w - probs / (1 - p)).abs())
    error = error[torch.isfinite(error)]
    return float(error.max()) if error.numel() else 0.0
