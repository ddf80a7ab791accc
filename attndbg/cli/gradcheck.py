"""`attndbg gradcheck`: gradients of a file's tensors, or a conformance sweep of an attention."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attndbg.cli import options as opt
from attndbg.cli.output import ReportOutput, emit, finish, progress

if TYPE_CHECKING:
    from rich.table import Table

    from attndbg.gradcheck.sweep import SweepReport


def gradcheck(
    path: Annotated[Path | None, typer.Argument(help="safetensors file: gradients on its tensors.")] = None,
    impl: Annotated[
        str | None, typer.Option(help="Your attention: module:function or path/to/file.py:function.")
    ] = None,
    level: Annotated[opt.Level, typer.Option(help="How many shapes to sweep.")] = opt.Level.default,
    quick: Annotated[bool, typer.Option("--quick", help="Same as --level quick.")] = False,
    thorough: Annotated[bool, typer.Option("--thorough", help="Same as --level thorough.")] = False,
    causal_align: Annotated[
        opt.Align, typer.Option(help="Causal reference alignment.")
    ] = opt.Align.upper_left,
    lenient: Annotated[bool, typer.Option(help="Twice the error bounds.")] = False,
    device: opt.Device = "cpu",
    output_format: Annotated[
        opt.OutputFormat, typer.Option("--format", help="rich or json.")
    ] = opt.OutputFormat.rich,
    output: opt.Output = None,
) -> None:
    """Gradient checks: of a file's tensors, of your attention function (--impl), or, with no
    argument, of this PyTorch's own SDPA backends on this device."""
    from attndbg.engine import resolve_device

    device = resolve_device(device)
    if impl is None and path is not None:
        from attndbg.engine import Options, run_cases
        from attndbg.loader import iter_cases

        options = Options(device=device, grad=True, select=["GRD"])
        report = run_cases(iter_cases([path]), options, inputs=[str(path)])
        finish(report, ReportOutput(output_format, output))
    from attndbg.gradcheck.files import file_cases
    from attndbg.gradcheck.sweep import load_implementation, sdpa_backends, sweep

    chosen = "quick" if quick else "thorough" if thorough else level.value
    targets = [("", load_implementation(impl))] if impl else sdpa_backends(device)
    reports = []
    with progress(len(targets)) as advance:
        for label, target in targets:
            advance(label or target.name)
            report = sweep(target, chosen, device, causal_align.value, lenient)
            if path is not None:
                file_cases(report, target, path, device, causal_align.value)
            reports.append(report)
    if output_format == opt.OutputFormat.json:
        import json

        data = [r.to_dict() for r in reports]
        emit(json.dumps(data[0] if impl else data, indent=2) + "\n", output)
    else:
        from rich.console import Console

        from attndbg.render.gradcheck import render_sweep

        console = Console(highlight=False)
        for report in reports:
            render_sweep(report, console)
            console.print()
        if not impl:
            console.print(_backend_table(reports))
    raise typer.Exit(max(r.exit_code() for r in reports))


def _backend_table(reports: list[SweepReport]) -> Table:
    """Where PyTorch's backends disagree: what each does with a fully masked row, what it refuses."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="SDPA backends", header_style="bold", box=None, title_justify="left")
    for column in ("backend", "passed", "failed", "refused", "fully masked row"):
        table.add_column(column)
    for report in reports:
        counts = report.counts()
        masked = [r for r in report.results if r.scenario == "fully-masked-row"]
        if any(r.verdict == "refused" for r in masked):
            behaviour = "refused"
        elif any(r.verdict == "fail" for r in masked):
            behaviour = "; ".join(sorted({reason for r in masked for reason in r.reasons}))[:80]
        else:
            behaviour = "zeros (as the reference)"
        table.add_row(
            escape(report.implementation),
            str(counts.get("pass", 0)),
            str(counts.get("fail", 0)),
            str(counts.get("refused", 0)),
            behaviour,
        )
    return table
