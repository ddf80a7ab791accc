"""`attndbg gradcheck`: gradients of a file's tensors, or a conformance sweep of an attention."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attndbg.cli import options as opt
from attndbg.cli.output import ReportOutput, emit, finish, progress
from attndbg.cli.paths import check_output, import_from_cwd
from attndbg.errors import UsageError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

    from attndbg.gradcheck.sweep import SweepReport


def gradcheck(
    path: Annotated[Path | None, typer.Argument(help="safetensors file: gradients on its tensors.")] = None,
    impl: Annotated[
        str | None,
        typer.Option(
            help="Your attention: module:function or path/to/file.py:function; an nn.Module "
            "instance, or a class built with no arguments, works too."
        ),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            help="How --impl takes Q, K, V, when a probe cannot tell: bhld (batch, heads, seq, "
            "head_dim), blhd, lbhd, ble or lbe (heads merged into the channels), (bh)ld, l(bh)d."
        ),
    ] = None,
    level: Annotated[opt.Level, typer.Option(help="How many shapes to sweep.")] = opt.Level.default,
    quick: Annotated[bool, typer.Option("--quick", help="Same as --level quick.")] = False,
    thorough: Annotated[bool, typer.Option("--thorough", help="Same as --level thorough.")] = False,
    causal_align: Annotated[
        opt.CausalAlign, typer.Option(help="Causal reference alignment.")
    ] = opt.CausalAlign.UPPER_LEFT,
    lenient: Annotated[bool, typer.Option(help="Twice the error bounds.")] = False,
    device: opt.Device = "cpu",
    fail_on: opt.FailOnOption = None,
    output_format: opt.Format = opt.OutputFormat.rich,
    output: opt.Output = None,
) -> None:
    """Gradient checks: of a file's tensors, of your attention function (--impl), or, with no
    argument, of this PyTorch's own SDPA backends on this device."""
    from attndbg.engine import resolve_device

    if output is not None:
        check_output(output, "-o", [path])
    if impl is not None:
        import_from_cwd()
    device = resolve_device(device)
    threshold = fail_on.value if fail_on else "error"
    if impl is None and path is not None:
        from attndbg.engine import Options, run_cases
        from attndbg.loader import iter_cases

        options = Options(device=device, grad=True, select=["GRD"], fail_on=threshold)
        gradients = run_cases(iter_cases([path]), options, inputs=[str(path)])
        finish(gradients, ReportOutput(output_format, output))
    from attndbg.gradcheck.diagnose import diagnose
    from attndbg.gradcheck.files import file_cases
    from attndbg.gradcheck.sweep import load_implementation, sdpa_backends, sweep

    chosen = "quick" if quick else "thorough" if thorough else level.value
    if layout is not None and impl is None:
        raise UsageError("--layout applies to --impl only")
    targets = [("", load_implementation(impl, layout))] if impl else sdpa_backends(device)
    reports = []
    with progress(len(targets)) as advance:
        for label, target in targets:
            advance(label or target.name)
            report = sweep(target, chosen, device, causal_align.value, lenient, fail_on=threshold)
            if path is not None:
                file_cases(report, target, path, device, causal_align.value)
                diagnose(target, report, device, causal_align.value)  # the file's cases too
            reports.append(report)
    _deliver(reports, single=impl is not None, output_format=output_format, output=output)
    raise typer.Exit(max(r.exit_code() for r in reports))


def _deliver(
    reports: list[SweepReport], single: bool, output_format: opt.OutputFormat, output: Path | None
) -> None:
    """As inspect does: the chosen format to stdout, or to ``-o`` (Rich as plain text)."""
    import os

    from rich.console import Console, Group

    from attndbg.render.gradcheck import sweep_json, sweep_renderable, sweep_sarif

    if output_format == opt.OutputFormat.json:
        emit(sweep_json(reports, single), output)
        return
    if output_format == opt.OutputFormat.sarif:
        emit(sweep_sarif(reports), output)
        return
    parts: list[RenderableType] = [part for report in reports for part in (sweep_renderable(report), "")]
    if not single:
        parts.append(_backend_table(reports))
    if output is None:
        Console(highlight=False).print(Group(*parts))
        return
    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=120, file=sink)
        console.print(Group(*parts))
    emit(console.export_text(), output)


def _backend_table(reports: list[SweepReport]) -> Table:
    """Where PyTorch's backends disagree: what each does with a fully masked row, what it refuses."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="SDPA backends compared", header_style="bold", box=None, title_justify="left")
    for column in ("backend", "passed", "failed", "refused", "fully masked row"):
        table.add_column(column)
    for report in reports:
        counts = report.counts()
        masked = [r for r in report.results if r.scenario == "fully-masked-row"]
        if any(r.verdict == "refused" for r in masked):
            behaviour = "refused"
        else:
            behaviour = ", ".join(f"{r.dtype}: {r.masked_rows}" for r in masked if r.masked_rows) or "not run"
        table.add_row(
            escape(report.implementation),
            str(counts.get("pass", 0)),
            str(counts.get("fail", 0)),
            str(counts.get("refused", 0)),
            behaviour,
        )
    return table
