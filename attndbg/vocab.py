"""Every word the pipeline passes around, defined once.

Stages, severities, fail-on levels, mask semantics, causal alignments, stage statuses, the
saved artefacts that hypotheses are scored against, and the hypothesis labels themselves.
Each is a ``str`` enum: it compares equal to its value, serialises as its value, and a
misspelt member is an ``AttributeError`` at import time instead of a silently dead branch.

This module imports nothing from attndbg (nor torch): everything may import it.
"""

from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """A ``str`` enum that prints as its value on every Python version (3.10's ``str(Enum)``
    and 3.12's ``format(Enum)`` would otherwise print ``Class.MEMBER``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(str(member.value) for member in cls)


class Stage(Word):
    """The pipeline's stages, in the order they run."""

    SHAPES = "shapes"
    NUMERICS = "numerics"
    SCALING = "scaling"
    MASK = "mask"
    SOFTMAX = "softmax"
    PATTERNS = "patterns"
    GRADIENTS = "gradients"


STAGES: tuple[str, ...] = Stage.values()


class StageStatus(Word):
    OK = "ok"
    FINDINGS = "findings"
    SKIPPED = "skipped"  # an earlier stage blocked the case
    NOT_REQUESTED = "not-requested"  # the gradient stage without --grad


class Severity(Word):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return FAIL_ON_RANK[self.value]


class FailOn(Word):
    """The lowest severity that makes a run exit 1 (``never``: always exit 0)."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    NEVER = "never"


FAIL_ON_RANK: dict[str, int] = {"info": 1, "warning": 2, "error": 3, "never": 99}


class MaskSemantics(Word):
    """How a stored mask is read: True/1 = attend, True/1 = ignore, or added to the scores."""

    KEEP = "keep"
    DROP = "drop"
    ADDITIVE = "additive"


class CausalAlign(Word):
    """Where the causal diagonal starts when q_len != k_len (SDPA: upper-left)."""

    UPPER_LEFT = "upper-left"
    LOWER_RIGHT = "lower-right"


class Artefact(Word):
    """A tensor the user saved from their own attention, which hypotheses are scored against."""

    WEIGHTS = "weights"
    SCORES = "scores"
    OUT = "out"


class Statistic(Word):
    """A family of statistics that a check reads (``Check.reads``); the statistics pass computes
    only the families that the selected checks read."""

    ROWS = "rows"  # per-row softmax, logit and mask statistics of the reference attention
    OUTPUT = "output"  # the reference output P·V (its non-finite values)
    HEAD_GRAM = "head-gram"  # the similarity of heads' attention maps
    SAVED = "saved"  # the user's saved weights/scores/out, measured against every hypothesis


class Reading(Word):
    """A hypothesis about the user's code: the assumed reading or one alternative.

    Created in :mod:`attndbg.stats` (one per competing reading), described in
    :mod:`attndbg.hypotheses`, matched in the checks.
    """

    REFERENCE = "reference"
    NO_SCALE = "no scale"
    SCALE_1_D = "scale 1/d"
    SCALE_1_SQRT_D = "scale 1/sqrt(d)"
    MASK_AS_KEEP = "mask as keep"
    MASK_AS_DROP = "mask as drop"
    MASK_AS_ADDITIVE = "mask as additive"
    MASK_IGNORED = "mask ignored"
    NOT_CAUSAL = "not causal"
    CAUSAL = "causal"
    CAUSAL_LOWER_RIGHT = "causal lower-right"
    SOFTMAX_OVER_QUERIES = "softmax over queries"
    # measured by attndbg.stats.readings, only when a saved artefact does not match the assumed reading
    FITTED_SCALE = "fitted scale"
    DROPOUT = "dropout"
    SOFTMAX_TWICE = "softmax twice"
    SOFTMAX_OVER_HEADS = "softmax over heads"
    WEIGHTS_TRANSPOSED = "weights transposed"
    GQA_REPEAT = "kv heads tiled"

    @classmethod
    def mask_as(cls, semantics: MaskSemantics | str) -> Reading:
        return cls(f"mask as {semantics}")
