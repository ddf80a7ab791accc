"""Where a report goes: the renderer table, ``-o`` files, the recording console, progress on stderr.

Adding a report format: one entry in ``RENDERERS`` (format → function returning the text) and
one member of ``OutputFormat``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from attndbg.cli.options import OutputFormat
from attndbg.cli.paths import check_output

if TYPE_CHECKING:
    from attndbg.render.html import CaseMaps
    from attndbg.report import Report

err_console = Console(stderr=True)


@dataclass(frozen=True)
class ReportOutput:
    """How ``inspect`` (and ``gradcheck FILE``) deliver their report."""

    format: OutputFormat = OutputFormat.rich
    output: Path | None = None
    quiet: bool = False
    timings: bool = True
    write_baseline: Path | None = None
    html: Path | None = None
    svg: Path | None = None

    @property
    def to_terminal(self) -> bool:
        """The Rich report goes to the terminal, so cases can be printed as they finish."""
        return self.format == OutputFormat.rich and self.output is None and self.write_baseline is None


def _rich_text(report: Report, out: ReportOutput) -> str:
    from attndbg.render.rich_report import recorded

    return recorded(report, quiet=out.quiet).export_text()


def _json(report: Report, out: ReportOutput) -> str:
    from attndbg.render.json_report import render_json

    return render_json(report, timings=out.timings)


def _sarif(report: Report, out: ReportOutput) -> str:
    from attndbg.render.sarif import render_sarif

    return render_sarif(report)


RENDERERS: dict[OutputFormat, Callable[[Report, ReportOutput], str]] = {
    OutputFormat.rich: _rich_text,
    OutputFormat.json: _json,
    OutputFormat.sarif: _sarif,
}


def finish(
    report: Report, out: ReportOutput, streamed: bool = False, maps: Sequence[CaseMaps] = ()
) -> NoReturn:
    """Deliver the report as ``out`` says and exit with its code (0 after --write-baseline);
    ``maps`` are the heatmaps the interactive ``--html`` report embeds."""
    if out.html is not None:
        from attndbg.render.html import render_html

        emit(render_html(report, maps), out.html)
    if out.svg is not None:
        from attndbg.render.rich_report import recorded

        emit(recorded(report, colour=True).export_svg(title="attndbg", clear=False), out.svg)
    if out.write_baseline is not None:
        from attndbg.baseline import baseline_text

        emit(baseline_text(report), out.write_baseline)
        raise typer.Exit(0)
    if out.to_terminal:
        _print_rich(report, out.quiet, streamed)
    else:
        emit(RENDERERS[out.format](report, out), out.output)
    raise typer.Exit(report.exit_code())


def _print_rich(report: Report, quiet: bool, streamed: bool) -> None:
    console = Console(highlight=False)
    if streamed:  # the cases are on screen already: only the summary is left
        from attndbg.render.rich_report import summary_text

        if not quiet:
            console.print()
        console.print(summary_text(report))
    else:
        from attndbg.render.rich_report import render_rich

        render_rich(report, console, quiet=quiet)


def emit(text: str, output: Path | None) -> None:
    """Write ``text`` to stdout, or atomically to ``output`` (whose folder must exist)."""
    if output is None:
        sys.stdout.write(text)
        return
    from attndbg._io import atomic_write_text

    check_output(output, "-o")
    atomic_write_text(output, text)
    err_console.print(f"report written to {output}", style="dim")


def _interactive() -> bool:
    return err_console.is_terminal and not os.environ.get("CI")


@contextlib.contextmanager
def progress(total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar over cases on stderr, only on an interactive terminal (never in CI)."""
    if not _interactive() or total < 2:
        yield lambda description: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("inspecting", total=total)
        started = False

        def advance(description: str) -> None:
            nonlocal started
            if started:
                bar.advance(task)
            started = True
            bar.update(task, description=description)

        yield advance


@contextlib.contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on stderr while a model runs, only on an interactive terminal."""
    if not _interactive():
        yield
        return
    with err_console.status(message):
        yield
