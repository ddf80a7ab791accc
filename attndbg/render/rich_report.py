"""The terminal report, built from Rich renderables."""

from __future__ import annotations

import math
import os
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from attndbg.render.code import CodeBlock
from attndbg.report import CaseReport, Finding, Report, Severity, TensorSummary

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
STATUS_MARK = {
    "ok": ("✓", "green"),
    "findings": ("!", "yellow"),
    "skipped": ("-", "dim"),
    "not-requested": ("·", "dim"),
}


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    return f"{value:.2e}" if magnitude >= 1e5 or magnitude < 1e-3 else f"{value:.4g}"


def _evidence(evidence: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return _num(value)
        if isinstance(value, list) and len(value) > 8:
            return "[" + ", ".join(fmt(v) for v in value[:8]) + ", …]"
        if isinstance(value, list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
        return str(value)

    return "  ".join(
        f"{key}={fmt(value)}" for key, value in evidence.items() if not key.startswith("backends")
    )


def tensor_table(tensors: list[TensorSummary], case_name: str = "") -> Table:
    """Per tensor statistics. A capture's keys repeat the case name (``layer.3.attn.q``): shown
    without it, so the table keeps its width at 80 columns."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    prefix = f"{case_name}." if case_name else ""

    def key(t: TensorSummary) -> str:
        return t.key.removeprefix(prefix) if prefix else t.key

    show_key = any(key(t) != t.role for t in tensors)
    columns = [
        "role",
        *(["tensor"] if show_key else []),
        "shape",
        "dtype",
        "min",
        "max",
        "mean",
        "std",
        "nan/inf",
    ]
    for column in columns:
        numeric = column in ("min", "max", "mean", "std")
        table.add_column(
            column,
            justify="right" if numeric else "left",
            no_wrap=column in ("shape", "dtype") or numeric,
            overflow="fold" if column == "tensor" else "ellipsis",
        )
    for t in tensors:
        bad = t.nan + t.posinf + t.neginf
        nonfinite = Text(f"{t.nan}/{t.posinf + t.neginf}", style="red" if bad else "dim")
        row: list[str | Text] = [
            t.role,
            *([key(t)] if show_key else []),
            "×".join(map(str, t.shape)) or "scalar",
            t.dtype,
            _short(t.min),
            _short(t.max),
            _short(t.mean),
            _short(t.std),
            nonfinite,
        ]
        table.add_row(*row)
    return table


def _short(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    return f"{value:.3g}"


def head_table(case: CaseReport) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
    columns = (
        "head",
        "entropy",
        "H/log n",
        "max w",
        "collapsed",
        "uniform",
        "sink",
        "diag",
        "prev",
        "max logit",
    )
    for column in columns:
        table.add_column(column, justify="right")
    flagged = {f.head for f in case.findings if f.head is not None}
    for h in case.heads:
        style = "yellow" if h.head in flagged else ""
        table.add_row(
            str(h.head),
            f"{h.entropy:.3f}",
            f"{h.entropy_ratio:.2f}",
            f"{h.max_weight:.2f}",
            f"{h.collapsed_share:.0%}",
            f"{h.uniform_share:.0%}",
            f"{h.sink_mass:.2f}",
            f"{h.diagonal_mass:.2f}",
            f"{h.previous_mass:.2f}",
            _num(h.max_logit),
            style=style,
        )
    left_out = max((h.padding_rows for h in case.heads), default=0)
    if left_out:
        table.caption = f"{left_out} padding query rows left out (their own key is masked for every query)"
        table.caption_justify = "left"
        table.caption_style = "dim"
    return table


def stage_line(case: CaseReport) -> Text:
    text = Text("stages  ")
    skipped = [s for s in case.stages if s.status == "skipped"]
    for stage in case.stages:
        if stage.status == "skipped":
            continue
        mark, style = STATUS_MARK.get(stage.status, ("?", ""))
        count = sum(1 for f in case.findings if f.stage == stage.name)
        label = f"{mark} {stage.name}" + (f" ({count})" if count else "")
        text.append(label, style=SEVERITY_STYLE[_worst(case, stage.name)] if count else style)
        text.append("  ")
    if skipped:
        names = ", ".join(s.name for s in skipped)
        text.append(f"skipped after {skipped[0].reason}: {names}", style="dim")
    return text


def _worst(case: CaseReport, stage: str) -> str:
    ranks = [f.severity for f in case.findings if f.stage == stage]
    return max(ranks, key=lambda s: s.rank).value


def finding_block(finding: Finding, show_fix: bool = True, indent: int = 0) -> RenderableType:
    """One finding; its fix is a :class:`CodeBlock`, so print the result with ``crop=False``."""
    style = SEVERITY_STYLE[finding.severity.value]
    head = Text()
    head.append(f"{finding.severity.value:<7} ", style=style)
    head.append(f"{finding.code} ", style="bold")
    if finding.baselined:
        head.append("(baseline) ", style="dim")
    head.append(f"{finding.name}", style="dim")
    if finding.head is not None:
        head.append(f"  head {finding.head}", style="dim")
    body = indent + 8
    parts: list[RenderableType] = [
        Padding(head, (0, 0, 0, indent)),
        Padding(Text(finding.message), (0, 0, 0, body)),
        *([Padding(Text(str(finding.location), style="cyan"), (0, 0, 0, body))] if finding.location else []),
    ]
    if finding.evidence:
        parts.append(Padding(Text("evidence: " + _evidence(finding.evidence), style="dim"), (0, 0, 0, body)))
    if finding.heatmap is not None:
        from attndbg.render.heatmap import heatmap_renderable

        parts.append(Padding(heatmap_renderable(finding.heatmap, cell=1, title=False), (0, 0, 0, body)))
    if show_fix and finding.fix:
        parts.append(CodeBlock(finding.fix, indent=body))
    return Group(*parts)


def case_renderable(case: CaseReport, quiet: bool = False) -> RenderableType:
    if quiet:
        lines = [
            Text(
                f"{case.file}::{case.name}: {f.severity.value} {f.code}"
                f"{' (baseline)' if f.baselined else ''} {f.message}",
                style="dim" if f.baselined else SEVERITY_STYLE[f.severity.value],
            )
            for f in _ordered(case.findings)
        ]
        return Group(*lines)
    counts = case.counts()
    title = Text()
    title.append(f"case {case.name}", style="bold")
    title.append(f"  {case.file}", style="dim")
    if case.source and case.source != case.name:
        title.append(f"  source: {case.source}", style="dim")
    parts: list[RenderableType] = [Text(""), title]
    if case.tensors:
        parts.append(Padding(tensor_table(case.tensors, case.name), (0, 0, 0, 2)))
    settings = {k: v for k, v in case.settings.items() if k != "origins"}
    meta = Text("  ")
    meta.append(f"layout {case.layout or '—'}  dtype {case.dtype}  device {case.device}  ", style="dim")
    meta.append(
        "  ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in settings.items()),
        style="dim",
    )
    parts.append(meta)
    for guess in case.guesses:
        parts.append(Text(f"  assumed: {guess}", style="dim italic"))
    parts.append(Padding(stage_line(case), (0, 0, 0, 2)))
    if case.heads and any(f.stage == "patterns" or f.head is not None for f in case.findings):
        parts.append(Padding(head_table(case), (0, 0, 0, 2)))
    for finding in _ordered(case.findings):
        parts.append(finding_block(finding, indent=2))
    if not case.findings:
        parts.append(Text("  no findings", style="green"))
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if summary:
        parts.append(Text(f"  {summary}", style="dim"))
    return Group(*parts)


def _ordered(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-f.severity.rank, f.code))


def summary_text(report: Report) -> Text:
    counts = report.counts()
    text = Text()
    text.append(f"{len(report.cases)} case{'s' if len(report.cases) != 1 else ''}: ")
    for severity in Severity:
        n = counts[severity.value]
        text.append(
            f"{n} {severity.value}{'s' if n != 1 else ''}",
            style=SEVERITY_STYLE[severity.value] if n else "dim",
        )
        text.append("  ")
    code = report.exit_code()
    text.append(f"(fail-on {report.fail_on}: exit {code})", style="dim")
    return text


def print_case(console: Console, case: CaseReport, quiet: bool = False) -> None:
    """One case; ``crop=False`` so that fix snippets overflow rather than being cut."""
    console.print(case_renderable(case, quiet=quiet), soft_wrap=quiet, crop=False)


def recorded(report: Report, quiet: bool = False, colour: bool = False) -> Console:
    """The report rendered into a recording console (120 columns), for files and notebooks."""
    with open(os.devnull, "w") as sink:
        console = Console(
            record=True,
            width=120,
            file=sink,
            force_terminal=colour or None,
            color_system="truecolor" if colour else None,
        )
        render_rich(report, console, quiet=quiet)
    return console


def report_renderable(report: Report) -> RenderableType:
    """The whole report as one renderable (``Report.__rich__``)."""
    return Group(*(case_renderable(case) for case in report.cases), Text(""), summary_text(report))


def render_rich(report: Report, console: Console, quiet: bool = False) -> None:
    for case in report.cases:
        print_case(console, case, quiet=quiet)
    if not quiet:
        console.print()
    console.print(summary_text(report))
