"""Stage 3 — scaling: the 1/√d factor, score spread, saturation and logit growth."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from attndbg.hypotheses import evidence, explained
from attndbg.registry import Check, Hit
from attndbg.report import Severity
from attndbg.scales import describe_scale
from attndbg.vocab import Reading, Statistic

if TYPE_CHECKING:
    from attndbg.context import CaseContext

LOGIT_GROWTH = 50.0  # Gemma 2 soft-caps attention logits at 50; QK-clip methods cap near 100
LOGIT_RUNAWAY = 100.0
SPREAD_FLOOR = 0.05  # score std below this makes every row within ±5% of uniform
UNSCALED_SPREAD = 3.0  # logit std above this with scale 1 saturates softmax
# A declared scale is a decision (T5 uses 1, μP uses 1/d): it is a finding only when the attention
# it yields shows the damage a wrong scale does — most rows one-hot, or every row near uniform.
SATURATED_MAX_WEIGHT = 0.9  # median row's largest weight: the row is close to one-hot
FLAT_ENTROPY_RATIO = 0.98  # median row's entropy / log(keys): within a few % of uniform
LAYER_SHARE = 0.5  # of heads above the logit threshold: growth of the layer, not one sharp head


def _median_spread(ctx: CaseContext) -> float:
    import torch

    std = ctx.stats.logit_std[ctx.stats.n_kept > 1]
    return float(torch.median(std)) if std.numel() else 0.0


def _median_row(ctx: CaseContext) -> dict[str, float]:
    """The median row's largest weight and entropy ratio, over rows with ≥ 4 attended keys."""
    import torch

    stats = ctx.stats
    rows = stats.n_kept >= 4
    if not bool(rows.any()):
        return {"max_weight": 0.0, "entropy_ratio": 0.0}
    ratio = stats.entropy[rows] / torch.log(stats.n_kept[rows])
    return {
        "max_weight": float(torch.median(stats.max_weight[rows])),
        "entropy_ratio": float(torch.median(ratio)),
    }


class MissingScale(Check):
    """Scores are not multiplied by 1/√d before softmax."""

    code = "SCL001"
    name = "missing-scale"
    severity = Severity.ERROR
    reports = frozenset({Reading.NO_SCALE})
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    rationale = (
        "With unit-variance q and k, q·k has variance d, so for d = 64 the logits spread ~8× "
        "wider than intended: softmax saturates to near one-hot, gradients through it vanish, "
        "and training plateaus. When the user saved weights, scores or output, the check "
        "recomputes them with and without the scale and reports which matches (error "
        "tolerance by dtype: 5e-4 for float32 weights, 2e-3 for float16, 1.6e-2 for "
        "bfloat16). Without them it only flags an explicit scale of 1.0 whose logits spread "
        f"wider than std {UNSCALED_SPREAD} (models that pre-scale q stay quiet)."
    )
    fix = """
scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
# or let PyTorch do it:
out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale defaults to 1/sqrt(d)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has_qkv:
            return
        v = explained(ctx, {Reading.NO_SCALE})
        if v:
            yield Hit(v.sentence() + f" (d = {ctx.sizes['D']})", evidence(v))
            return
        d = ctx.sizes["D"]
        if ctx.settings.scale is not None and math.isclose(ctx.scale, 1.0) and d > 1:
            spread = _median_spread(ctx)
            median = _median_row(ctx)
            if spread > UNSCALED_SPREAD and median["max_weight"] > SATURATED_MAX_WEIGHT:
                yield Hit(
                    f"scale is 1.0 for head dim {d} and the logits spread with median std "
                    f"{spread:.3g}, so the median row puts {median['max_weight']:.3g} on one key; "
                    f"with 1/√{d} they would spread {spread / math.sqrt(d):.3g}",
                    {
                        "scale": ctx.scale,
                        "head_dim": d,
                        "median_logit_std": spread,
                        "median_max_weight": median["max_weight"],
                        "decided_from": "statistics (no saved weights/scores/out)",
                    },
                    severity=Severity.WARNING,
                )


class WrongScale(Check):
    """The scale is applied twice (1/d) or is otherwise not 1/√d."""

    code = "SCL002"
    name = "wrong-scale"
    severity = Severity.ERROR
    reports = frozenset({Reading.SCALE_1_D, Reading.SCALE_1_SQRT_D, Reading.FITTED_SCALE})
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    rationale = (
        "A scale of 1/d instead of 1/√d — typically q pre-divided by √d and SDPA's default scale "
        "applied again — shrinks the logits by another √d, flattening attention toward uniform "
        "(see also SCL004). Saved weights/scores/out decide it by recomputation; a scale given "
        "in metadata that equals 1/d is reported as a warning (μP uses 1/d on purpose)."
    )
    fix = """
# Scale once: either pre-scale q and pass scale=1.0, or leave it to SDPA
out = F.scaled_dot_product_attention(q, k, v)                                  # 1/sqrt(d)
out = F.scaled_dot_product_attention(q * q.size(-1) ** -0.5, k, v, scale=1.0)  # same thing
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has_qkv:
            return
        d = ctx.sizes["D"]
        v = explained(ctx, {Reading.SCALE_1_D, Reading.SCALE_1_SQRT_D, Reading.FITTED_SCALE})
        if v:
            fits = ctx.stats.fits
            fitted = fits.scale if fits is not None and v.best == Reading.FITTED_SCALE else None
            applied = fitted if fitted is not None else (1.0 / d if v.best == Reading.SCALE_1_D else d**-0.5)
            message = (
                f"the saved {v.artefact} match attention with scale "
                f"{describe_scale(applied, d, ctx.sizes['Hq'])} with max error {v.best_error:.2g}; "
                f"with the assumed scale {ctx.scale:.4g} the error is {v.reference_error:.2g} (d = {d})"
            )
            ev = {**evidence(v), "applied_scale": applied, "assumed_scale": ctx.scale, "head_dim": d}
            if fits is not None and fitted is not None:
                ev["fitted_from"] = fits.scale_from
            yield Hit(message, ev)
            return
        if ctx.settings.scale is not None and d > 1 and math.isclose(ctx.scale, 1.0 / d, rel_tol=1e-3):
            median = _median_row(ctx)
            if median["entropy_ratio"] <= FLAT_ENTROPY_RATIO:
                return  # μP: a declared 1/d whose logits still spread (the data backs the setting)
            yield Hit(
                f"scale is {ctx.scale:.4g} = 1/d for head dim {d}, not 1/√d = {d**-0.5:.4g}, and "
                f"attention is flat: the median row's entropy is {median['entropy_ratio']:.3g} of "
                "uniform's (applied twice? μP's 1/d needs q/k that spread the logits)",
                {
                    "scale": ctx.scale,
                    "head_dim": d,
                    "expected": d**-0.5,
                    "median_entropy_ratio": median["entropy_ratio"],
                    "decided_from": "the scale setting and the statistics",
                },
                severity=Severity.WARNING,
            )


class SaturatedSoftmax(Check):
    """Attention logits have grown large enough to saturate softmax."""

    code = "SCL003"
    name = "logit-growth"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    thresholds = {"logit_growth": LOGIT_GROWTH, "runaway": LOGIT_RUNAWAY, "layer_share": LAYER_SHARE}
    rationale = (
        f"When |scaled logit| exceeds {LOGIT_GROWTH:g} — the value at which Gemma 2 soft-caps "
        f"attention logits; QK-clip methods cap near {LOGIT_RUNAWAY:g} — softmax is one-hot to "
        "machine precision, its gradient is ~0, and the growth tends to feed on itself "
        "(attention-logit growth, Dehghani et al. 2023). The check reports every head whose "
        "largest attended logit is above the threshold. Growth is a trend across training "
        "steps, and a few sharp heads are what trained models have (BERT's previous-token and "
        f"delimiter heads reach |logit| 60–110): while fewer than {LAYER_SHARE:.0%} of a case's "
        "heads are above the threshold the finding is an info; when most heads are, it is a "
        "warning, and an error when logits pass the runaway value and most of those rows are "
        "one-hot."
    )
    fix = """
# QK-norm keeps logits bounded (ViT-22B, OLMo 2):
q, k = self.q_norm(q), self.k_norm(k)          # nn.LayerNorm(head_dim) / nn.RMSNorm(head_dim)
# or soft-cap the logits (Gemma 2):
scores = 50.0 * torch.tanh(scores / 50.0)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has_qkv:
            return
        stats = ctx.stats
        per_head = stats.max_logit.amax(dim=(0, 2))
        growth, runaway = self.limit(ctx, "logit_growth"), self.limit(ctx, "runaway")
        hot = [h for h in range(per_head.numel()) if float(per_head[h]) > growth]
        if hot:
            worst = max(hot, key=lambda h: float(per_head[h]))
            top = float(per_head[worst])
            saturated = float((stats.max_weight[:, hot] > 0.999).float().mean())
            share = len(hot) / per_head.numel()
            broad = share >= self.limit(ctx, "layer_share")
            message = (
                f"{len(hot)} of {per_head.numel()} heads have |scaled logit| above {growth:g} "
                f"(largest {top:.3g} in head {worst}); {saturated:.0%} of their rows put > 0.999 "
                "weight on one key"
            )
            if broad:
                severity = Severity.ERROR if top > runaway and saturated > 0.5 else Severity.WARNING
            else:
                severity = Severity.INFO
                message += (
                    "; a few sharp heads are normal in a trained model, so watch whether these "
                    "logits grow from one checkpoint to the next"
                )
            yield Hit(
                message,
                {
                    "heads": hot,
                    "max_logit": {h: round(float(per_head[h]), 2) for h in hot},
                    "threshold": growth,
                    "saturated_rows": saturated,
                    "share_of_heads": round(share, 4),
                },
                severity=severity,
                head=worst,
            )


class NearZeroSpread(Check):
    """Scores barely vary, so attention is uniform by construction."""

    code = "SCL004"
    name = "near-zero-spread"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    thresholds = {"spread_floor": SPREAD_FLOOR}
    rationale = (
        f"If the scaled scores of a row vary by less than {SPREAD_FLOOR} (std), every weight is "
        "within about 5% of 1/n: the layer averages its values whatever the input. Causes: q or "
        "k collapsed to tiny values (bad init, a norm with zero gain), the scale applied twice, "
        "or q/k detached. Reported per head with q and k's std."
    )
    fix = """
# Check the projections' init and any norm gains feeding q/k:
nn.init.xavier_uniform_(self.q_proj.weight); nn.init.xavier_uniform_(self.k_proj.weight)
print(q.std(), k.std())   # expect O(1) per element before scaling
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has_qkv or ctx.sizes["Lk"] < 4:
            return
        stats = ctx.stats
        live = stats.n_kept >= 4
        flat = []
        floor = self.limit(ctx, "spread_floor")
        for h in range(stats.logit_std.shape[1]):
            rows = stats.logit_std[:, h][live[:, h]]
            if rows.numel() and float(rows.mean()) < floor:
                flat.append((h, float(rows.mean())))
        if flat:
            yield Hit(
                f"{len(flat)} of {stats.logit_std.shape[1]} heads have scaled-score std below "
                f"{floor} (smallest {min(s for _, s in flat):.2g}); q std "
                f"{float(ctx.q.std()):.3g}, k std {float(ctx.k.std()):.3g}, scale {ctx.scale:.4g}",
                {
                    "heads": [h for h, _ in flat],
                    "score_std": {h: round(s, 5) for h, s in flat},
                    "q_std": float(ctx.q.std()),
                    "k_std": float(ctx.k.std()),
                    "threshold": floor,
                },
                head=flat[0][0],
            )
