"""The report: plain dataclasses that the engine fills and the renderers read.

Nothing here imports torch, Rich or Typer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from attndbg.vocab import FAIL_ON_RANK, STAGES, Severity

__all__ = ["FAIL_ON_RANK", "STAGES", "Severity"]  # re-exported: renderers import them from here

SCHEMA_VERSION = 1


def count_by_severity(findings: list[Finding]) -> dict[str, int]:
    counts = {s.value: 0 for s in Severity}
    for finding in findings:
        counts[finding.severity.value] += 1
    return counts


@dataclass
class Heatmap:
    case: str
    batch: int
    head: int
    weights: list[list[float]]  # pooled (rows, cols), max over each block (NaN if any is NaN)
    masked: list[list[bool]]  # every key of the block is masked
    row_step: int  # query rows per cell
    col_step: int  # keys per cell
    q_len: int
    k_len: int
    source: str  # "saved weights" | "recomputed"
    row_labels: list[str] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.weights), len(self.weights[0]) if self.weights else 0


@dataclass
class Location:
    """A line of the user's code that a finding is about, as ``attndbg capture`` recorded it."""

    file: str  # relative to the directory of the capture when it was below it
    line: int
    function: str = ""
    code: str = ""  # the line's text, stripped

    def to_dict(self) -> dict[str, str | int]:
        return {"file": self.file, "line": self.line, "function": self.function, "code": self.code}

    def __str__(self) -> str:
        return f"{self.file}:{self.line}  {self.code}".rstrip()


@dataclass
class Finding:
    code: str
    name: str
    severity: Severity
    stage: str
    message: str
    evidence: dict[str, Any]
    fix: str
    case: str = ""
    head: int | None = None
    baselined: bool = False  # present in --baseline: reported, but does not fail the run
    heatmap: Heatmap | None = None  # a small picture of the head the finding is about
    location: Location | None = None  # the step of the user's code it is about (captures)

    def fingerprint(self, file: str) -> str:
        """The baseline key: the file relative to its project root, so it does not depend on
        the folder attndbg runs from or on how the path was typed."""
        from attndbg._io import project_relative

        return f"{project_relative(file)}::{self.case}::{self.code}::{self.head}"


@dataclass
class StageResult:
    name: str
    status: str  # "ok" | "findings" | "skipped" | "not-requested"
    seconds: float = 0.0
    reason: str = ""


@dataclass
class TensorSummary:
    role: str
    key: str
    shape: list[int]
    dtype: str
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    nan: int
    posinf: int
    neginf: int


@dataclass
class HeadStats:
    """Statistics of one head's attention, averaged over its informative rows (≥ 4 attended
    keys, not at a padding position) and the batch, from the chunked pass; the PAT checks and
    the report's table read it."""

    head: int
    entropy: float
    entropy_ratio: float
    max_weight: float
    collapsed_share: float
    uniform_share: float
    sink_mass: float
    diagonal_mass: float
    previous_mass: float
    max_logit: float
    logit_std: float
    next_mass: float = 0.0
    rows: int = 0  # informative rows that the means are over; 0 = no statistic for this head
    padding_rows: int = 0  # (batch, query) rows at padding positions, left out of the means

    @property
    def positional_mass(self) -> float:
        """Mass on the token itself, its neighbours and the first token: a positional head
        (BERT's layer 0 has previous-token heads) is sharp on purpose."""
        return self.diagonal_mass + self.previous_mass + self.next_mass + self.sink_mass


@dataclass
class CaseReport:
    name: str
    file: str
    source: str = ""
    layout: str = ""
    shapes: dict[str, list[int]] = field(default_factory=dict)
    dtype: str = ""
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)
    guesses: list[str] = field(default_factory=list)
    tensors: list[TensorSummary] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    heads: list[HeadStats] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return count_by_severity(self.findings)


@dataclass
class Report:
    inputs: list[str] = field(default_factory=list)
    cases: list[CaseReport] = field(default_factory=list)
    fail_on: str = "error"

    @property
    def findings(self) -> list[Finding]:
        return [f for case in self.cases for f in case.findings]

    def counts(self) -> dict[str, int]:
        return count_by_severity(self.findings)

    def __rich__(self) -> Any:
        """``rich.print(report)`` and Rich-aware notebooks draw the terminal report."""
        from attndbg.render.rich_report import report_renderable

        return report_renderable(self)

    def _repr_html_(self) -> str:
        """Jupyter draws the report as the terminal would, in colour."""
        from attndbg.render.rich_report import recorded

        return recorded(self, colour=True).export_html(inline_styles=True)

    def exit_code(self, fail_on: str | None = None) -> int:
        threshold = FAIL_ON_RANK[fail_on or self.fail_on]
        failing = (f for f in self.findings if not f.baselined)
        return 1 if any(f.severity.rank >= threshold for f in failing) else 0

    def codes(self) -> list[str]:
        return sorted({f.code for f in self.findings})

    def to_dict(self, timings: bool = True, cases: bool = True) -> dict[str, Any]:
        """The JSON document as plain data; ``cases=False`` leaves the cases list empty, for a
        renderer that converts one case at a time (:meth:`case_dicts`)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "attndbg", "version": _version()},
            "inputs": list(self.inputs),
            "cases": list(self.case_dicts(timings)) if cases else [],
            "summary": {**self.counts(), "cases": len(self.cases), "fail_on": self.fail_on},
            "exit_code": self.exit_code(),
        }

    def case_dicts(self, timings: bool = True) -> Iterator[dict[str, Any]]:
        """Each case as plain data, converted when asked for."""
        for case in self.cases:
            data = _plain(case)
            if not timings:
                for stage in data["stages"]:
                    stage["seconds"] = None
            yield data


def _plain(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _version() -> str:
    from attndbg import __version__

    return __version__
