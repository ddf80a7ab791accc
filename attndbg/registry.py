"""The check registry: one table of codes, like a linter's rule table.

A check is a subclass of :class:`Check` in one of the modules of ``attndbg.checks``.
Defining the class registers it; a malformed check (bad code, a code in the wrong
family, a missing rationale or fix) fails at import time, not in a user's run.
Check modules import torch only inside functions, so ``attndbg rules`` stays fast.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from attndbg.errors import UsageError
from attndbg.report import STAGES, Severity
from attndbg.vocab import Reading, Stage, Statistic

if TYPE_CHECKING:
    from attndbg.context import CaseContext

FAMILY_STAGE: dict[str, Stage] = {
    "SHP": Stage.SHAPES,
    "NUM": Stage.NUMERICS,
    "SCL": Stage.SCALING,
    "MSK": Stage.MASK,
    "SMX": Stage.SOFTMAX,
    "PAT": Stage.PATTERNS,
    "GRD": Stage.GRADIENTS,
}
CHECK_MODULES = STAGES  # attndbg.checks.<stage> holds the checks of that stage
_CODE = re.compile(r"^(?P<family>[A-Z]{3})\d{3}$")
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

REGISTRY: dict[str, Check] = {}


@dataclass
class Hit:
    """What a check found; the engine turns it into a :class:`~attndbg.report.Finding`."""

    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: Severity | None = None  # overrides the check's default when the evidence is weaker
    fix: str | None = None  # overrides the generic fix when a tailored one is known
    head: int | None = None
    blocking: bool = False  # later stages are meaningless after this


class Check:
    """Base class: set the class attributes, write the docstring, implement ``evaluate``."""

    code: ClassVar[str]
    name: ClassVar[str]
    severity: ClassVar[Severity]
    rationale: ClassVar[str]
    fix: ClassVar[str]
    thresholds: ClassVar[dict[str, float]] = {}  # tunable in [tool.attndbg.thresholds]
    reads: ClassVar[frozenset[Statistic]] = frozenset()  # statistics the check reads from the pass
    # Codes whose finding names the cause more precisely: when one of them fires on a case,
    # this check's findings are dropped (and they run whenever this check is selected).
    superseded_by: ClassVar[tuple[str, ...]] = ()
    # A shape check whose hit can block the later stages: it runs even when not selected.
    can_block: ClassVar[bool] = False
    # Readings of the saved artefacts that this check names when they match: every reading the
    # hypotheses can prove is named by some check, whatever subset of weights/scores/out exists.
    reports: ClassVar[frozenset[Reading]] = frozenset()
    # Reported only by `attndbg gradcheck --impl` (it needs the implementation, not saved
    # tensors): `inspect` never runs it, and its triggers live in the gradcheck corpus.
    gradcheck_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        match = _CODE.match(getattr(cls, "code", ""))
        if not match or match["family"] not in FAMILY_STAGE:
            raise TypeError(f"{cls.__name__}: code {getattr(cls, 'code', None)!r} is not valid")
        if not _NAME.match(getattr(cls, "name", "")):
            raise TypeError(f"{cls.__name__}: name must be kebab-case")
        if cls.__module__.rsplit(".", 1)[-1] != FAMILY_STAGE[match["family"]]:
            raise TypeError(f"{cls.code} belongs in attndbg.checks.{FAMILY_STAGE[match['family']]}")
        for attribute in ("rationale", "fix", "__doc__"):
            if not (getattr(cls, attribute, None) or "").strip():
                raise TypeError(f"{cls.code}: missing {attribute}")
        if not isinstance(cls.severity, Severity):
            raise TypeError(f"{cls.code}: severity must be a Severity")
        if cls.code in REGISTRY:
            raise TypeError(f"{cls.code} is registered twice")
        REGISTRY[cls.code] = cls()

    @property
    def stage(self) -> Stage:
        return FAMILY_STAGE[self.code[:3]]

    @property
    def summary(self) -> str:
        return (self.__doc__ or "").strip().splitlines()[0]

    def limit(self, ctx: CaseContext, name: str) -> float:
        """A threshold: the project's override from [tool.attndbg.thresholds], else the default."""
        return float(ctx.thresholds.get(self.code, {}).get(name, self.thresholds[name]))

    def evaluate(self, ctx: CaseContext) -> Iterable[Hit]:
        raise NotImplementedError


def load_checks() -> dict[str, Check]:
    for module in CHECK_MODULES:
        importlib.import_module(f"attndbg.checks.{module}")
    for check in REGISTRY.values():
        unknown = [code for code in check.superseded_by if code not in REGISTRY or code == check.code]
        if unknown:
            raise TypeError(f"{check.code}: superseded_by names {unknown}, not another check")
    return dict(sorted(REGISTRY.items(), key=lambda item: (STAGES.index(item[1].stage), item[0])))


def checks_for_stage(stage: str) -> Iterator[Check]:
    for check in load_checks().values():
        if check.stage == stage:
            yield check


def supersedes(code: str) -> list[str]:
    """The codes that ``code`` silences when it fires (the inverse of ``superseded_by``),
    for ``attndbg explain``."""
    return [other.code for other in load_checks().values() if code in other.superseded_by]


@dataclass(frozen=True)
class Plan:
    """Which checks run on a case and which of them report: the selected checks, plus the
    shape checks that can block, plus every check that may supersede a selected one."""

    run: tuple[Check, ...]  # in pipeline order
    reported: frozenset[str]

    @property
    def reads(self) -> frozenset[Statistic]:
        """The statistics the running checks read: what the statistics pass must compute."""
        return frozenset().union(*(check.reads for check in self.run))

    def for_stage(self, stage: str) -> list[Check]:
        return [check for check in self.run if check.stage == stage]


def plan_checks(select: list[str], ignore: list[str], grad: bool = True) -> Plan:
    checks = load_checks()
    reported = {code for code in checks if is_selected(code, select, ignore)}
    if not grad:
        reported = {code for code in reported if checks[code].stage != Stage.GRADIENTS}
    needed = set(reported) | {code for code, check in checks.items() if check.can_block}
    pending = list(needed)
    while pending:
        for other in checks[pending.pop()].superseded_by:
            if other not in needed:
                needed.add(other)
                pending.append(other)
    return Plan(tuple(check for code, check in checks.items() if code in needed), frozenset(reported))


def parse_codes(spec: Iterable[str] | str | None) -> list[str]:
    """Split ``"SHP,MSK00 PAT004"`` into upper-case prefixes and check each names a code."""
    if spec is None:
        return []
    parts = [spec] if isinstance(spec, str) else list(spec)
    prefixes = [p.strip().upper() for part in parts for p in re.split(r"[,\s]+", part) if p.strip()]
    known = load_checks()
    for prefix in prefixes:
        if prefix != "ALL" and not any(code.startswith(prefix) for code in known):
            raise UsageError(f"unknown check code or prefix {prefix!r}; `attndbg rules` lists them")
    return prefixes


def is_selected(code: str, select: list[str], ignore: list[str]) -> bool:
    """Longest matching prefix wins, as in ruff: ``--select MSK --ignore MSK004``."""

    def best(prefixes: list[str]) -> int:
        lengths = [0 if p == "ALL" else len(p) for p in prefixes if p == "ALL" or code.startswith(p)]
        return max(lengths, default=-1)

    selected = best(select) if select else 0
    if selected < 0:
        return False
    ignored = best(ignore)
    return ignored < 0 or selected > ignored
