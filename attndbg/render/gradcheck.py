"""Rich rendering of a conformance sweep (attndbg gradcheck --impl / no argument)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attndbg.gradcheck.sweep import Result, SweepReport

MARK = {
    "pass": ("✓", "green"),
    "fail": ("✗", "bold red"),
    "error": ("!", "bold red"),
    "refused": ("–", "dim"),
    "skipped": ("·", "dim"),
}


def sweep_table(report: SweepReport) -> Table:
    dtypes = list(dict.fromkeys(r.dtype for r in report.results))
    table = Table(
        header_style="bold",
        box=None,
        title_justify="left",
        title=f"{report.implementation} on {report.device}",
    )
    table.add_column("case")
    for dtype in dtypes:
        table.add_column(dtype, justify="left", no_wrap=True)
    table.caption = "cells: max error of the output / of the gradients, against the float64 reference"
    by_case: dict[str, dict[str, Result]] = {}
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


def render_sweep(report: SweepReport, console: Console) -> None:
    console.print(Text(f"convention: {report.convention}", style="dim"))
    console.print(Text(f"causal reference aligned {report.causal_align}", style="dim"))
    console.print(sweep_table(report))
    for result in report.results:
        if result.verdict in ("fail", "error"):
            console.print(
                Text(f"  {result.scenario} [{result.dtype}]: " + "; ".join(result.reasons), style="red")
            )
    refused = [r for r in report.results if r.verdict == "refused"]
    if refused:
        reasons = sorted({r.reasons[0] for r in refused if r.reasons})
        console.print(Text(f"  refused {len(refused)} case(s): " + " | ".join(reasons)[:300], style="dim"))
    console.print(Text(f"mask perturbation: {report.mask_perturbation} — {report.notes[0]}"))
    console.print(Text(f"float64 gradcheck: {report.gradcheck_float64} — {report.notes[1]}"))
    for diagnosis in report.diagnoses:
        text = Text()
        text.append(f"diagnosis {diagnosis.code}: ", style="bold red")
        text.append(diagnosis.message)
        if diagnosis.scenarios:
            text.append(f" (cases: {', '.join(sorted(set(diagnosis.scenarios)))})", style="dim")
        console.print(text)
    counts = report.counts()
    summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    console.print(Text(f"{summary} → exit {report.exit_code()}", style="bold"))
