"""Reading the user's own scores/weights/out: which hypothesis about their code matches.

The statistics pass measured, for each saved artefact, the max error of every
hypothesis (the assumed reading, no scale, 1/d, mask read as keep/drop/additive, causal
flipped, softmax over queries). A verdict says whether the assumed reading matches and,
if not, which alternative does — the numbers a finding quotes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attndbg.vocab import Artefact, Reading

if TYPE_CHECKING:
    from attndbg.context import CaseContext
    from attndbg.stats import AttentionStats

# Max-abs-error tolerances on probabilities, by the dtype the artefact was saved in.
# float32 allows weights printed/rounded to 4 decimals (a hand-computed example, as in the
# clean_seeds_example fixture).
WEIGHT_TOLERANCE = {"float64": 1e-6, "float32": 5e-4, "float16": 2e-3, "bfloat16": 1.6e-2}
DESCRIPTION: dict[Reading, str] = {
    Reading.REFERENCE: "the assumed reading",
    Reading.NO_SCALE: "softmax(q·kᵀ) without the 1/√d scale",
    Reading.SCALE_1_D: "the scale applied twice (1/d)",
    Reading.SCALE_1_SQRT_D: "the default 1/√d scale",
    Reading.MASK_AS_KEEP: "the mask read as True/1 = attend",
    Reading.MASK_AS_DROP: "the mask read as True/1 = ignore",
    Reading.MASK_AS_ADDITIVE: "the mask added to the scores",
    Reading.MASK_IGNORED: "no mask at all",
    Reading.NOT_CAUSAL: "no causal mask",
    Reading.CAUSAL: "a causal mask",
    Reading.CAUSAL_LOWER_RIGHT: "a causal mask aligned to the lower right",
    Reading.SOFTMAX_OVER_QUERIES: "softmax over the query axis",
    Reading.FITTED_SCALE: "attention with the scale fitted to them",
    Reading.DROPOUT: "dropout of the reference weights (each 0 or weight/(1 − p))",
    Reading.SOFTMAX_TWICE: "softmax applied twice (softmax of the attention weights)",
    Reading.SOFTMAX_OVER_HEADS: "softmax over the heads axis",
    Reading.WEIGHTS_TRANSPOSED: "the reference weights transposed (keys × queries)",
    Reading.GQA_REPEAT: "KV heads tiled with repeat() (query head h reads KV head h mod n_kv)",
}
assert set(DESCRIPTION) == set(Reading), "every reading needs a description"


@dataclass
class Verdict:
    artefact: Artefact
    errors: dict[Reading, float]
    tolerance: float
    reference_error: float
    best: Reading
    best_error: float

    @property
    def reference_matches(self) -> bool:
        return self.reference_error <= self.tolerance

    @property
    def explained_by(self) -> Reading | None:
        """The alternative that matches when the assumed reading does not."""
        if self.reference_matches or self.best_error > self.tolerance or self.best == Reading.REFERENCE:
            return None
        return self.best

    def sentence(self, label: Reading | None = None) -> str:
        label = label or self.best
        return (
            f"the saved {self.artefact} match {DESCRIPTION[label]} with max error "
            f"{self.errors[label]:.2g}; with {DESCRIPTION[Reading.REFERENCE]} the error is "
            f"{self.reference_error:.2g}"
        )


def tolerance(ctx: CaseContext, artefact: Artefact, stats: AttentionStats | None = None) -> float:
    """``stats`` while the statistics are being computed (``ctx.stats`` is not set yet)."""
    # the coarser of the artefact's precision and q·k's: a float32 softmax of bfloat16 scores
    # (LLaMA-style eager attention) carries bfloat16's rounding in its float32 weights
    dtypes = [ctx.raw[role].dtype for role in (artefact, "q", "k") if role in ctx.raw]
    base = max(WEIGHT_TOLERANCE.get(str(dtype).replace("torch.", ""), 1e-4) for dtype in dtypes)
    if artefact == Artefact.OUT:
        return base * max(1.0, float(ctx.v.abs().max())) * 4
    if artefact == Artefact.SCORES:
        return base * max(1.0, float((stats or ctx.stats).max_logit.max())) * 4
    return base


def verdict(ctx: CaseContext, artefact: Artefact) -> Verdict | None:
    if not ctx.has_qkv or not ctx.has(artefact):
        return None
    errors = ctx.stats.hypotheses.get(artefact)
    if not errors or Reading.REFERENCE not in errors:
        return None
    if ctx.settings.dropout_p:
        # dropout makes the output random: only the weights can be verified, saved after the
        # dropout (each 0 or reference/(1 − p)) or before it (the probabilities)
        if artefact != Artefact.WEIGHTS or Reading.DROPOUT not in errors:
            return None
        errors = dict(errors)
        dropped = errors.pop(Reading.DROPOUT)
        errors[Reading.REFERENCE] = min(errors[Reading.REFERENCE], dropped)
    best = min(errors, key=lambda k: (errors[k], k != Reading.REFERENCE))
    reference = errors[Reading.REFERENCE]
    return Verdict(artefact, errors, tolerance(ctx, artefact), reference, best, errors[best])


def weights_explained_by(ctx: CaseContext) -> Reading | None:
    """The reading that explains the saved weights, when one other than the assumed does: the
    weights' other symptoms (row sums, weight on masked or future keys) are its consequences."""
    v = verdict(ctx, Artefact.WEIGHTS)
    return v.explained_by if v is not None else None


def weights_after_dropout(ctx: CaseContext) -> bool:
    """Do the saved weights carry dropout (each 0 or reference/(1 − p))? Then out = weights @ v."""
    errors = ctx.stats.hypotheses.get(Artefact.WEIGHTS, {})
    return Reading.DROPOUT in errors and errors[Reading.DROPOUT] <= tolerance(ctx, Artefact.WEIGHTS)


def verdicts(ctx: CaseContext) -> list[Verdict]:
    found = [verdict(ctx, a) for a in (Artefact.WEIGHTS, Artefact.OUT, Artefact.SCORES)]
    return [v for v in found if v is not None]


def explained(ctx: CaseContext, labels: set[Reading]) -> Verdict | None:
    """The first saved artefact whose mismatch is explained by one of ``labels``."""
    for v in verdicts(ctx):
        if v.explained_by in labels:
            return v
    return None


def evidence(v: Verdict) -> dict[str, Any]:
    return {
        "artefact": v.artefact,
        "matches": v.best,
        "error_matching": v.best_error,
        "error_assumed": v.reference_error,
        "tolerance": v.tolerance,
        "errors": {k: round(e, 6) for k, e in sorted(v.errors.items(), key=lambda kv: kv[1])},
    }


def explained_as(
    ctx: CaseContext, labels: set[Reading], consequence: str
) -> tuple[str, dict[str, Any]] | None:
    """Message and evidence of a finding that names the reading explaining a saved artefact:
    what matched, then ``consequence`` (what it means for the user's code)."""
    v = explained(ctx, labels)
    return None if v is None else (f"{v.sentence()}: {consequence}", evidence(v))
