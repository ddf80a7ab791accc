"""Reading the user's own scores/weights/out: which hypothesis about their code matches.

The statistics pass measured, for each saved artefact, the max error of every
hypothesis (the assumed reading, no scale, 1/d, mask read as keep/drop/additive, causal
flipped, softmax over queries). A verdict says whether the assumed reading matches and,
if not, which alternative does — the numbers a finding quotes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attndbg.context import CaseContext

# Max-abs-error tolerances on probabilities, by the dtype the artefact was saved in.
# float32 allows weights printed/rounded to 4 decimals (the seeds' hand-computed example).
WEIGHT_TOLERANCE = {"float64": 1e-6, "float32": 5e-4, "float16": 2e-3, "bfloat16": 1.6e-2}
ARTEFACT_ROLE = {"weights": "weights", "scores": "scores", "out": "out"}
DESCRIPTION = {
    "reference": "the assumed reading",
    "no scale": "softmax(q·kᵀ) without the 1/√d scale",
    "scale 1/d": "the scale applied twice (1/d)",
    "scale 1/sqrt(d)": "the default 1/√d scale",
    "mask as keep": "the mask read as True/1 = attend",
    "mask as drop": "the mask read as True/1 = ignore",
    "mask as additive": "the mask added to the scores",
    "mask ignored": "no mask at all",
    "not causal": "no causal mask",
    "causal": "a causal mask",
    "causal lower-right": "a causal mask aligned to the lower right",
    "softmax over queries": "softmax over the query axis",
}


@dataclass
class Verdict:
    artefact: str
    errors: dict[str, float]
    tolerance: float
    reference_error: float
    best: str
    best_error: float

    @property
    def reference_matches(self) -> bool:
        return self.reference_error <= self.tolerance

    @property
    def explained_by(self) -> str | None:
        """The alternative that matches when the assumed reading does not."""
        if self.reference_matches or self.best_error > self.tolerance or self.best == "reference":
            return None
        return self.best

    def sentence(self, label: str | None = None) -> str:
        label = label or self.best
        return (
            f"the saved {self.artefact} match {DESCRIPTION.get(label, label)} with max error "
            f"{self.errors[label]:.2g}; with {DESCRIPTION['reference']} the error is "
            f"{self.reference_error:.2g}"
        )


def tolerance(ctx: CaseContext, artefact: str) -> float:
    role = ARTEFACT_ROLE[artefact]
    dtype = str(ctx.raw[role].dtype).replace("torch.", "")
    base = WEIGHT_TOLERANCE.get(dtype, 1e-4)
    if artefact == "out":
        return base * max(1.0, float(ctx.v.abs().max())) * 4
    if artefact == "scores":
        return base * max(1.0, float(ctx.stats.max_logit.max())) * 4
    return base


def verdict(ctx: CaseContext, artefact: str) -> Verdict | None:
    if not ctx.has_qkv or not ctx.has(ARTEFACT_ROLE[artefact]):
        return None
    errors = ctx.stats.hypotheses.get(artefact)
    if not errors or "reference" not in errors:
        return None
    best = min(errors, key=lambda k: (errors[k], k != "reference"))
    return Verdict(artefact, errors, tolerance(ctx, artefact), errors["reference"], best, errors[best])


def verdicts(ctx: CaseContext) -> list[Verdict]:
    found = [verdict(ctx, a) for a in ("weights", "out", "scores")]
    return [v for v in found if v is not None]


def explained(ctx: CaseContext, labels: set[str]) -> Verdict | None:
    """The first saved artefact whose mismatch is explained by one of ``labels``."""
    for v in verdicts(ctx):
        if v.explained_by in labels:
            return v
    return None


def evidence(v: Verdict) -> dict:
    return {
        "artefact": v.artefact,
        "matches": v.best,
        "error_matching": v.best_error,
        "error_assumed": v.reference_error,
        "tolerance": v.tolerance,
        "errors": {k: round(e, 6) for k, e in sorted(v.errors.items(), key=lambda kv: kv[1])},
    }
