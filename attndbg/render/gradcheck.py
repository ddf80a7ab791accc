"""Rendering of conformance sweeps (attndbg gradcheck --impl / no argument): Rich, JSON and
SARIF, from finished :class:`~attndbg.gradcheck.sweep.SweepReport` data. The Rich report leads
with the verdict and the diagnoses, groups repeated failures under them, then shows the table
and counts every criterion that decides the exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from attndbg.gradcheck.sweep import SweepReport

MARK = {
    "pass": ("✓", "green"),
    "fail": ("✗", "bold red"),
    "error": ("!", "bold red"),
    "refused": ("–", "dim"),
    "skipped": ("·", "dim"),
}
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def sweep_table(report: SweepReport) -> Table:
    dtypes = list(dict.fromkeys(r.dtype for r in report.results))
    table = Table(
        header_style="bold",
        box=None,
        title_justify="left",
        title=f"{report.implementation} on {report.device}",
    )
    table.add_column("scenario", no_wrap=True)
    for dtype in dtypes:
        table.add_column(dtype, justify="left", no_wrap=True)
    table.caption = "max error of the output / of the gradients against the float64 reference"
    by_case: dict[str, dict[str, Any]] = {}
    for result in report.results:
        by_case.setdefault(result.scenario, {})[result.dtype] = result
    for case, cells in by_case.items():
        row: list[str | Text] = [case]
        for dtype in dtypes:
            cell = cells.get(dtype)
            if cell is None:
                row.append("")
                continue
            mark, style = MARK[cell.verdict]
            numbers = ""
            if cell.forward_error is not None:
                numbers = f" {cell.forward_error:.0e}"
                if cell.gradient_error is not None:
                    numbers += f"/{cell.gradient_error:.0e}"
            row.append(Text(mark + numbers, style=style))
        table.add_row(*row)
    return table


def verdict_line(report: SweepReport) -> Text:
    code = report.exit_code()
    gating = [d for d in report.diagnoses if _gates(report, d.severity)]
    text = Text()
    if code:
        text.append(f"✗ {report.implementation}: ", style="bold red")
        noun = "diagnosis" if len(gating) == 1 else "diagnoses"
        text.append(f"{len(gating)} {noun} at or above --fail-on {report.fail_on}", style="bold")
    else:
        text.append(f"✓ {report.implementation}: ", style="bold green")
        rest = f" ({len(report.diagnoses)} below --fail-on {report.fail_on})" if report.diagnoses else ""
        text.append("conforms to the reference" + rest, style="bold")
    return text


def _gates(report: SweepReport, severity: str) -> bool:
    from attndbg.report import FAIL_ON_RANK, Severity

    return Severity(severity).rank >= FAIL_ON_RANK[report.fail_on]


def diagnosis_table(report: SweepReport) -> Table:
    """One row per diagnosis: severity, code, then the message with its scenarios and evidence,
    wrapped inside its own column."""
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column()
    for diagnosis in report.diagnoses:
        text = Text(diagnosis.message)
        where = ", ".join(diagnosis.scenarios)
        if diagnosis.dtypes:
            where += f" [{', '.join(diagnosis.dtypes)}]"
        if where:
            text.append(f"\nscenarios: {where}", style="dim")
        if diagnosis.evidence:
            text.append(f"\nevidence: {diagnosis.evidence}", style="dim")
        style = SEVERITY_STYLE[diagnosis.severity]
        table.add_row(Text(f"  {diagnosis.severity}", style=style), Text(diagnosis.code, style=style), text)
    return table


def tally(report: SweepReport) -> Text:
    counts = report.counts()
    total = sum(counts.values())
    parts = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    return Text(
        f"{total} criteria (scenarios × dtypes, mask perturbation, float64 gradcheck): {parts} "
        f"→ exit {report.exit_code()}",
        style="bold",
    )


def sweep_renderable(report: SweepReport) -> Group:
    parts: list[Any] = [verdict_line(report), diagnosis_table(report), Text(""), sweep_table(report)]
    parts.append(Text(f"called as {report.convention}", style="dim"))
    for note in report.passed:
        parts.append(Text(f"  {note}", style="dim"))
    parts.append(Text(f"mask perturbation: {report.mask_perturbation} — {report.notes[0]}"))
    parts.append(Text(f"float64 gradcheck: {report.gradcheck_float64} — {report.notes[1]}"))
    parts.extend(Text(note, style="dim") for note in report.notes[2:])
    refused = [r for r in report.results if r.verdict == "refused"]
    if refused:
        reasons = sorted({r.reasons[0] for r in refused if r.reasons})
        parts.append(Text(f"refused {len(refused)} case(s): " + " | ".join(reasons)[:300], style="dim"))
    parts.append(tally(report))
    return Group(*parts)


def render_sweep(report: SweepReport, console: Console) -> None:
    console.print(sweep_renderable(report))


def sweep_json(reports: list[SweepReport], single: bool) -> str:
    from attndbg.render.json_report import to_json

    data = [r.to_dict() for r in reports]
    return to_json(data[0] if single else data)


def sweep_sarif(reports: list[SweepReport]) -> str:
    """SARIF 2.1.0: one result per diagnosis, its rule from the check registry."""
    from attndbg.render.sarif import LEVEL, rule_entries, sarif_log

    rules = rule_entries(sorted({d.code for r in reports for d in r.diagnoses}))
    index = {rule["id"]: i for i, rule in enumerate(rules)}
    results = []
    for report in reports:
        file = report.implementation.rsplit(":", 1)[0]
        location: dict[str, Any] = {
            "logicalLocations": [{"name": report.implementation, "kind": "function"}],
        }
        if file.endswith(".py"):
            path = Path(file)
            uri = path.as_uri() if path.is_absolute() else path.as_posix()
            location["physicalLocation"] = {"artifactLocation": {"uri": uri}}
        for diagnosis in report.diagnoses:
            results.append(
                {
                    "ruleId": diagnosis.code,
                    "ruleIndex": index[diagnosis.code],
                    "level": LEVEL[diagnosis.severity],
                    "message": {"text": diagnosis.message},
                    "locations": [location],
                    "partialFingerprints": {"attndbg/v1": f"{report.implementation}:{diagnosis.code}"},
                    "properties": {
                        "scenarios": diagnosis.scenarios,
                        "dtypes": diagnosis.dtypes,
                        "evidence": diagnosis.evidence,
                    },
                }
            )
    exit_code = max((r.exit_code() for r in reports), default=0)
    return sarif_log(rules, results, invocations=[{"executionSuccessful": True, "exitCode": exit_code}])
