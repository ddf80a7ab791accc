"""`attndbg show`: draw attention weights as a heatmap, or the difference of two files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from attndbg.cli import options as opt
from attndbg.cli.output import err_console
from attndbg.cli.paths import check_output
from attndbg.errors import UsageError


def show(
    paths: Annotated[list[Path], typer.Argument(help="A file to draw; two files to draw their difference.")],
    case: Annotated[str | None, typer.Option(help="Case name or glob (default: the first case).")] = None,
    layer: Annotated[str | None, typer.Option(help="Alias of --case for captures, e.g. '*layer.3*'.")] = None,
    head: Annotated[str, typer.Option(help="Head index, or 'all' for a grid.")] = "0",
    batch: Annotated[int, typer.Option(help="Batch index.")] = 0,
    rows: Annotated[int, typer.Option(help="Max rows of cells (longer sequences are max-pooled).")] = 32,
    cols: Annotated[int, typer.Option(help="Max columns of cells.")] = 48,
    png: Annotated[Path | None, typer.Option(help=escape("Also save a PNG (needs attndbg[plot])."))] = None,
    html: Annotated[
        Path | None,
        typer.Option(help="Also write the interactive HTML report of the matching cases, opened here."),
    ] = None,
    device: opt.Device = "cpu",
) -> None:
    """Draw attention weights as a heatmap (recomputed from Q/K/V/mask unless weights were saved)."""
    from rich.console import Console

    from attndbg.context import CaseContext
    from attndbg.engine import resolve_device
    from attndbg.heatmap import build_heatmap, difference
    from attndbg.loader import load_case, plan_cases
    from attndbg.render.heatmap import difference_renderable, grid_renderable, heatmap_renderable, save_png

    if len(paths) > 2:
        raise UsageError("show takes one file, or two to compare")
    for target, option in ((png, "--png"), (html, "--html")):
        if target is not None:
            check_output(target, option, paths)
    device = resolve_device(device)
    pattern = case or layer

    def context(path: Path) -> CaseContext:
        plans = plan_cases([path], pattern)
        ctx = CaseContext(load_case(plans[0]), device=device)
        if not (ctx.has_qkv or ctx.has("weights") or ctx.has("scores")):
            raise UsageError(f"{path}: case {ctx.case.name} has nothing to draw")
        return ctx

    first = context(paths[0])
    heads = _heads(head, first.sizes["Hq"], first.case.name)
    if not 0 <= batch < first.sizes["B"]:
        raise UsageError(f"--batch {batch}: case {first.case.name} has batch {first.sizes['B']}")
    if html is not None:
        if len(paths) == 2:
            raise UsageError("--html draws one file; the difference of two is drawn here and by --png")
        _write_html(paths[0], pattern, (heads[0], batch), device, html)
    console = Console(highlight=False)
    if len(paths) == 2:
        second = context(paths[1])
        diff = difference(first, second, head=heads[0], batch=batch)
        names = (f"{paths[0]}::{first.case.name}", f"{paths[1]}::{second.case.name}")
        console.print(difference_renderable(diff, names), crop=False)
        if png:
            save_png([diff.heatmap], png, diverging=True)
            err_console.print(f"PNG written to {png}", style="dim")
        return
    maps = [build_heatmap(first, batch, h, max_rows=rows, max_cols=cols) for h in heads]
    if len(maps) == 1:
        console.print(heatmap_renderable(maps[0]))
    else:
        per_row = max(1, console.width // (maps[0].shape[1] + max(len(x) for x in maps[0].row_labels) + 4))
        if per_row < 2 and maps[0].shape[1] > 24:
            maps = [
                build_heatmap(first, batch, h, max_rows=rows // 2, max_cols=max(8, console.width // 3))
                for h in heads
            ]
        console.print(grid_renderable(maps, console.width))
    if png:
        save_png(maps, png)
        err_console.print(f"PNG written to {png}", style="dim")


def _write_html(
    path: Path, pattern: str | None, head_batch: tuple[int, int], device: str, target: Path
) -> None:
    """The interactive report of the cases ``pattern`` matches (diagnosed, so the grid has its
    statistics), opened on the first case at ``head_batch``."""
    from attndbg.cli.output import emit
    from attndbg.engine import Options, run_cases
    from attndbg.loader import plan_cases, read_cases
    from attndbg.render.html import collect_all, render_html

    cases = [case for _, case in read_cases(plan_cases([path], pattern))]
    report = run_cases(cases, Options(device=device), inputs=[str(path)])
    emit(render_html(report, collect_all(cases, device=device), open_head=(0, *head_batch)), target)


def _heads(head: str, total: int, case_name: str) -> list[int]:
    """``--head``: one index, or every head for ``all``."""
    if head == "all":
        return list(range(total))
    try:
        index = int(head)
    except ValueError:
        raise UsageError(f"--head {head!r}: a head index or 'all'") from None
    if not 0 <= index < total:
        raise UsageError(f"--head {index}: case {case_name} has {total} heads")
    return [index]
