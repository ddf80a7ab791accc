"""`attndbg trend LOG`: summarise a run that ``attndbg.watch`` logged (no torch is imported)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from attndbg.cli import options as opt
from attndbg.cli.output import err_console


class TrendFormat(str, Enum):
    rich = "rich"
    json = "json"


def trend(
    log: Annotated[Path, typer.Argument(help="A JSON-lines log written by attndbg.watch(log=...).")],
    fmt: Annotated[TrendFormat, typer.Option("--format", help="Summary format.")] = TrendFormat.rich,
    png: Annotated[Path | None, typer.Option(help="Also save the curves as a PNG.")] = None,
    fail_on: Annotated[
        opt.FailOn, typer.Option(help="Exit 1 when an alert at or above this severity fired.")
    ] = opt.FailOn.WARNING,
    width: Annotated[int, typer.Option(min=8, help="Characters per sparkline.")] = 40,
) -> None:
    """Summarise a training run logged by attndbg.watch: sparklines per layer, alerts.

    Per layer, the max logit and the min entropy over heads at each sampled step; the alerts
    with their step; exit 1 when an alert at or above --fail-on fired."""
    from rich.console import Console

    from attndbg.watch.trend import load_trend

    summary = load_trend(log, fail_on.value)
    if fmt is TrendFormat.json:
        print(json.dumps(summary.to_dict(fail_on.value), indent=2))
    else:
        from attndbg.render.trend import trend_renderable

        console = Console(highlight=False)
        console.print(trend_renderable(summary, width, console.width))
    if png:
        from attndbg.render.trend import write_png

        write_png(summary, png)
        err_console.print(f"PNG written to {png}", style="dim")
    raise typer.Exit(summary.exit_code(fail_on.value))
