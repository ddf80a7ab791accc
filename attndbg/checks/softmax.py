"""Stage 5 — softmax: the user's weights are a distribution over keys; the output matches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from attndbg.hypotheses import (
    DESCRIPTION,
    evidence,
    explained,
    tolerance,
    verdict,
    weights_after_dropout,
    weights_explained_by,
)
from attndbg.registry import Check, Hit
from attndbg.report import Severity
from attndbg.vocab import Artefact, Reading, Statistic

if TYPE_CHECKING:
    from attndbg.context import CaseContext

SUM_TOLERANCE = {"float64": 1e-6, "float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


def _sum_tolerance(ctx: CaseContext) -> float:
    return SUM_TOLERANCE.get(str(ctx.raw["weights"].dtype).replace("torch.", ""), 1e-3)


def _row_problems(ctx: CaseContext):
    """Rows whose sum is neither 1 nor 0 (0 is SDPA's answer for a fully masked row)."""
    import torch

    stats = ctx.stats
    sums = stats.user_row_sum
    assert sums is not None  # the check reads Statistic.SAVED and runs only on saved weights
    tol = _sum_tolerance(ctx)
    bad = (sums - 1).abs() > tol
    bad &= ~(stats.fully_masked & (sums.abs() <= tol))
    finite = torch.isfinite(sums)
    # a row holding NaN is not a normalisation problem: NUM001/NUM002 report it as a NaN row
    weights = ctx.user_weights
    assert weights is not None  # as the sums above
    nan_rows = torch.isnan(weights).any(-1).expand_as(sums)
    return bad & finite & ~nan_rows, sums


def _dropout_p(ctx: CaseContext) -> float | None:
    """The dropout the weights carry: declared, or the one the DROPOUT reading found."""
    if ctx.settings.dropout_p:
        return ctx.settings.dropout_p
    if explained(ctx, {Reading.DROPOUT}):
        fits = ctx.stats.fits
        assert fits is not None  # the DROPOUT reading is measured with the fits
        return fits.dropout_p
    return None


def _columns_sum_to_one(ctx: CaseContext) -> tuple[bool, float]:
    stats = ctx.stats
    cols = stats.user_col_sum
    assert cols is not None  # as above
    live = cols.abs() > _sum_tolerance(ctx)
    if not bool(live.any()):
        return False, 0.0
    deviation = float((cols[live] - 1).abs().max())
    return deviation <= _sum_tolerance(ctx) * max(1, ctx.sizes["Lq"]) ** 0.5, deviation


class RowsDoNotSumToOne(Check):
    """Rows of the saved weights do not sum to 1 along the key axis."""

    code = "SMX001"
    name = "rows-not-normalized"
    severity = Severity.ERROR
    reports = frozenset({Reading.DROPOUT})
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    superseded_by = ("SMX002",)
    rationale = (
        "Each query row of attention weights is a probability distribution over keys and sums "
        "to 1 (or 0 for a fully masked row under PyTorch 2.13's SDPA). Rows that do not — "
        "tolerance 1e-4 in float32, 5e-3 in float16, 3e-2 in bfloat16 — mean a missing or "
        "partial normalisation: exp without the division, dropout applied before saving, a "
        "mask applied after the softmax, or renormalisation over the wrong set."
    )
    fix = """
weights = torch.softmax(scores, dim=-1)          # normalise over keys (the last axis)
assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-4)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has("weights") or ctx.settings.dropout_p:
            return  # declared dropout: rows need not sum to 1; the weights are verified against it
        v = explained(ctx, {Reading.DROPOUT})
        if v:
            fits = ctx.stats.fits
            # the DROPOUT reading matches only with a fitted p (and its share of zeros)
            assert fits is not None and fits.dropout_p is not None and fits.dropout_zero_share is not None
            yield Hit(
                f"{v.sentence()}: dropout with p ≈ {fits.dropout_p:.3g} ({fits.dropout_zero_share:.1%} "
                "of the weights are exactly 0, the rest scaled by "
                f"{1 / (1 - fits.dropout_p):.4g}) was applied before the weights were saved, and "
                "dropout_p is not declared",
                {
                    **evidence(v),
                    "dropout_p": fits.dropout_p,
                    "zero_share": fits.dropout_zero_share,
                    "weights_counted": fits.dropout_weights,
                },
                fix="""
# declare it, so that attndbg verifies the weights against the dropout:
save_file(tensors, path, metadata={"dropout_p": str(p)})
# or save the probabilities before F.dropout(weights, p)
""",
            )
            return
        if weights_explained_by(ctx):
            return  # the check of that reading names the cause
        bad, sums = _row_problems(ctx)
        if not bad.any():
            return
        values = sums[bad]
        yield Hit(
            f"{int(bad.sum())} of {bad.numel()} rows of the saved weights do not sum to 1 over the "
            f"keys (sums from {float(values.min()):.4g} to {float(values.max()):.4g})",
            {
                "rows": int(bad.sum()),
                "of": bad.numel(),
                "min_sum": float(values.min()),
                "max_sum": float(values.max()),
                "first": bad.nonzero()[0].tolist(),
                "tolerance": _sum_tolerance(ctx),
            },
        )


AXIS_READINGS = {
    Reading.SOFTMAX_OVER_QUERIES: """
weights = torch.softmax(scores, dim=-1)   # over keys; not dim=-2 / dim=1
""",
    Reading.SOFTMAX_OVER_HEADS: """
weights = torch.softmax(scores, dim=-1)   # over keys; dim=1 of (batch, heads, q, k) is the heads
""",
    Reading.WEIGHTS_TRANSPOSED: """
tensors["weights"] = weights.contiguous()   # (batch, heads, q_len, k_len), not .transpose(-1, -2)
""",
}


class SoftmaxWrongAxis(Check):
    """The saved weights were normalised over the query axis instead of the key axis."""

    code = "SMX002"
    name = "softmax-wrong-axis"
    severity = Severity.ERROR
    reports = frozenset(AXIS_READINGS)
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    rationale = (
        "softmax(scores, dim=-2) (or dim=1 on 3-D scores, or a transposed layout) normalises each "
        "key's column over the queries: columns sum to 1, rows do not, and every query's output "
        "is a wrong mix of values. The check compares row sums and column sums of the saved "
        "weights, and, with Q and K, recomputes softmax over the query axis to confirm. With Q "
        "and K it also names a softmax over the heads axis (dim=1 of 4-D scores) and weights "
        "saved transposed (keys × queries), from saved weights or the output."
    )
    fix = """
weights = torch.softmax(scores, dim=-1)   # over keys; not dim=-2 / dim=1
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        v = explained(ctx, set(AXIS_READINGS))
        if v:
            ev = evidence(v)
            if ctx.has("weights"):
                ev["rows_not_summing_to_one"] = int(_row_problems(ctx)[0].sum())
            reading = v.explained_by
            assert reading is not None  # explained() returns a verdict explained by one of the readings
            yield Hit(v.sentence(), ev, fix=AXIS_READINGS[reading])
            return
        if not ctx.has("weights"):
            return
        bad, sums = _row_problems(ctx)
        columns_ok, deviation = _columns_sum_to_one(ctx)
        if bad.any() and columns_ok:
            yield Hit(
                f"columns of the saved weights sum to 1 (max deviation {deviation:.2g}) but "
                f"{int(bad.sum())} of {bad.numel()} rows do not: softmax ran over the query axis",
                {
                    "column_sum_deviation": deviation,
                    "rows": int(bad.sum()),
                    "of": bad.numel(),
                    "decided_from": "row and column sums",
                },
            )


class WeightsOutOfRange(Check):
    """Saved weights fall outside [0, 1]."""

    code = "SMX003"
    name = "weights-out-of-range"
    severity = Severity.ERROR
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    rationale = (
        "Probabilities lie in [0, 1]. Negative weights or weights above 1 mean the tensor saved "
        "as weights is not a softmax output: raw scores, log-probabilities (log_softmax), or "
        "weights after a subtraction or dropout rescaling (dropout scales kept weights by "
        "1/(1-p), which can exceed 1)."
    )
    fix = """
weights = torch.softmax(scores, dim=-1)        # not log_softmax, not the raw scores
# dropout: save the weights *before* F.dropout(weights, p) if you want probabilities
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has("weights"):
            return
        stats = ctx.stats
        lo, hi = stats.user_min, stats.user_max
        if lo is None or hi is None:
            return
        slack = _sum_tolerance(ctx)
        p = _dropout_p(ctx)
        top = 1 / (1 - p) if p else 1.0  # dropout rescales the kept weights by 1/(1 − p)
        if lo < -slack or hi > top + slack:
            hint = " (log-probabilities?)" if hi <= 0 else " (raw scores?)" if lo < -slack and hi > 1 else ""
            yield Hit(
                f"the saved weights range from {lo:.4g} to {hi:.4g}, outside [0, 1]{hint}",
                {"min": lo, "max": hi},
            )


OWN_READINGS = {
    Reading.SOFTMAX_TWICE: """
weights = torch.softmax(scores, dim=-1)    # once; F.scaled_dot_product_attention already applies it
out = weights @ v                          # not torch.softmax(weights, -1) @ v
""",
    Reading.GQA_REPEAT: """
# query head h shares KV head h // (n_heads // n_kv_heads): interleave, do not tile
k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)     # not k.repeat(1, n_rep, 1, 1)
v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
# or: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
""",
}


class OutputDiffers(Check):
    """The saved output (or weights) differ from the reference attention, for no single reason."""

    code = "SMX004"
    name = "output-differs"
    severity = Severity.ERROR
    reports = frozenset(OWN_READINGS)
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    superseded_by = ("SMX001", "SMX002", "SMX003")
    rationale = (
        "The output of attention is weights @ V. The check compares the user's saved output with "
        "their own saved weights times V (catches a V from the wrong projection or layout) and "
        "with the reference F.scaled_dot_product_attention recomputed in float32, reporting the "
        "max error of each; saved weights are compared with the reference weights the same way. "
        "Tolerance: 5e-4 on weights in float32 (2e-3 float16, 1.6e-2 bfloat16), and 4 × that × "
        "max|V| on outputs. When one specific cause (missing scale, mask convention, causal "
        "flag, wrong axis, unnormalised rows) explains the difference, that check reports it "
        "and this one stays quiet. Two causes are named here: softmax applied twice, and "
        "grouped-query KV heads tiled with repeat() where they must be interleaved."
    )
    fix = """
ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal)
print((out.float() - ref).abs().max())          # expect ~1e-6 in float32, ~1e-3 in float16
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has_qkv:
            return
        stats = ctx.stats
        named = explained(ctx, set(OWN_READINGS))
        if named:
            reading = named.explained_by
            assert reading is not None  # as in the check above
            yield Hit(named.sentence(), evidence(named), fix=OWN_READINGS[reading])
            return
        weights_reading = weights_explained_by(ctx)
        out_vs_weights = stats.user_out_vs_weights
        if ctx.settings.dropout_p and not weights_after_dropout(ctx):
            out_vs_weights = None  # weights saved before the dropout that made the output
        consistent = out_vs_weights is not None and out_vs_weights <= tolerance(ctx, Artefact.OUT)
        v = verdict(ctx, Artefact.OUT)
        if out_vs_weights is not None and not consistent and not weights_reading:
            ev = {"error_vs_weights_at_v": out_vs_weights, "tolerance": tolerance(ctx, Artefact.OUT)}
            message = f"the saved output differs from the saved weights @ v by up to {out_vs_weights:.3g}"
            if v is not None:
                message += f" (reference error {v.reference_error:.3g})"
                ev["error_vs_reference"] = v.reference_error
            yield Hit(message, ev)
            return
        if v is not None:
            ev = {"error_vs_reference": v.reference_error, "tolerance": v.tolerance}
            if out_vs_weights is not None:
                ev["error_vs_weights_at_v"] = out_vs_weights
            if weights_reading and consistent:
                return  # the output is the saved weights @ v, whose reading names the cause
            if not (v.reference_matches or v.explained_by):
                yield Hit(self._message("output", v), {**ev, **evidence(v)})
                return
        w = verdict(ctx, Artefact.WEIGHTS)
        if w is None or w.reference_matches or w.explained_by:
            return
        yield Hit(self._message("weights", w), evidence(w))

    @staticmethod
    def _message(what: str, v) -> str:  # noqa: ANN001
        message = f"the saved {what} differ from the reference attention by up to {v.reference_error:.3g}"
        if v.best != Reading.REFERENCE:
            message += (
                f"; the closest reading is {DESCRIPTION[v.best]} "
                f"(error {v.best_error:.3g}), so more than one thing differs"
            )
        return message
