"""`attndbg inspect`: run the diagnostic pipeline on saved tensors or on a model source."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attndbg.cli import options as opt
from attndbg.cli.output import ReportOutput, finish, progress, spinner
from attndbg.cli.paths import check_output, expand_inputs, import_from_cwd
from attndbg.errors import UsageError

if TYPE_CHECKING:
    from attndbg.case import Settings
    from attndbg.engine import Options
    from attndbg.render.html import CaseMaps
    from attndbg.report import Report


def inspect(
    paths: Annotated[list[Path], typer.Argument(help="safetensors files holding one or more cases.")],
    case: opt.CaseGlob = None,
    layout: opt.Layout = None,
    causal: opt.Causal = None,
    scale: opt.Scale = None,
    mask_semantics: opt.MaskMeaning = None,
    device: opt.DeviceOrConfig = None,
    max_memory: opt.MaxMemory = None,
    grad: opt.Grad = False,
    select: opt.Select = None,
    ignore: opt.Ignore = None,
    fail_on: opt.FailOnOption = None,
    config: opt.ConfigFile = None,
    baseline: opt.Baseline = None,
    write_baseline: opt.WriteBaseline = None,
    html: opt.Html = None,
    svg: opt.Svg = None,
    output_format: opt.Format = opt.OutputFormat.rich,
    output: opt.Output = None,
    quiet: opt.Quiet = False,
    timings: opt.Timings = True,
) -> None:
    """Run the diagnostic pipeline on saved attention tensors."""
    from attndbg.case import Settings, parse_layout
    from attndbg.config import load_config, validate_thresholds
    from attndbg.engine import Options, resolve_device
    from attndbg.registry import parse_codes

    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise UsageError(f"--scale {scale}: the softmax scale must be a positive number (default 1/sqrt(d))")

    project = load_config(config)
    if project.thresholds:
        validate_thresholds(project.thresholds, f"{project.path} [tool.attndbg.thresholds]")
    overrides = Settings(
        is_causal=causal,
        scale=scale,
        layout=parse_layout(layout, "--layout") if layout else None,
        mask_semantics=mask_semantics,
    )
    run = Options(
        device=resolve_device(device or project.device or "cpu"),
        max_memory=opt.parse_size(max_memory or project.max_memory or "1GiB"),
        select=parse_codes(select if select else project.select),
        ignore=parse_codes(ignore if ignore else project.ignore),
        grad=grad,
        fail_on=fail_on.value if fail_on else (project.fail_on or "error"),
        thresholds=project.thresholds,
        baseline=_read_baseline(baseline),
    )
    paths = expand_inputs(paths)
    for target, option in (
        (output, "-o"),
        (write_baseline, "--write-baseline"),
        (html, "--html"),
        (svg, "--svg"),
    ):
        if target is not None:
            check_output(target, option, [*paths, baseline, config])
    out = ReportOutput(output_format, output, quiet, timings, write_baseline, html, svg)

    from attndbg.recording.sources import is_model_source

    model_sources = [str(p) for p in paths if is_model_source(str(p))]
    if model_sources:
        import_from_cwd()
        report, maps = _inspect_models(model_sources, run, overrides, case, draw=html is not None)
        finish(report, out, maps=maps)
    _inspect_files(paths, case, run, overrides, out)


def _read_baseline(path: Path | None) -> set[str]:
    if path is None:
        return set()
    from attndbg.baseline import read_baseline

    return read_baseline(path)


def _inspect_files(
    paths: list[Path], case_glob: str | None, run: Options, overrides: Settings, out: ReportOutput
) -> None:
    """Saved tensors: cases load one at a time and, on a terminal, print as they finish."""
    from rich.console import Console

    from attndbg.engine import run_cases
    from attndbg.loader import plan_cases, read_cases

    plans = plan_cases(list(paths), case_glob, overrides)
    on_case = None
    if out.to_terminal:
        from attndbg.render.rich_report import print_case

        console = Console(highlight=False)

        def on_case(case_report):  # noqa: ANN001 - a small callback
            print_case(console, case_report, quiet=out.quiet)

    maps: list[CaseMaps] = []
    with progress(len(plans)) as advance:

        def cases():  # noqa: ANN202 - a generator of Case
            for plan, loaded in read_cases(plans):
                advance(f"{plan.file.name}::{plan.name}")
                if out.html is not None:  # the heatmaps of the interactive report, while loaded
                    from attndbg.render.html import REPORT_CELL_BUDGET, collect_maps

                    budget = REPORT_CELL_BUDGET // len(plans)
                    drawn = collect_maps(loaded, device=run.device, cell_budget=budget)
                    maps.extend([drawn] if drawn is not None else [])
                yield loaded

        report = run_cases(cases(), run, inputs=[str(p) for p in paths], on_case=on_case)
    finish(report, out, streamed=out.to_terminal, maps=maps)


INVENTED_INPUTS = (
    "inputs invented by attndbg: the model's own example or seeded random ids/values (seed 0, "
    "batch 2 × 16); `attndbg capture {source} --text … -o FILE` inspects real ones"
)


def _inspect_models(
    sources: list[str], run: Options, overrides: Settings, case_glob: str | None, draw: bool = False
) -> tuple[Report, list[CaseMaps]]:
    """`inspect SOURCE`: capture with default inputs, then inspect the calls in memory; with
    ``draw``, also the heatmaps of the interactive report."""
    import fnmatch

    from attndbg.engine import run_cases
    from attndbg.recording.sources import capture_source

    cases = []
    for source in sources:
        with spinner(f"running {source}"):
            calls = capture_source(source, device=run.device)
        for captured in calls.cases():
            if case_glob and not fnmatch.fnmatchcase(captured.name, case_glob):
                continue
            captured.file = source
            captured.settings = overrides.merged_over(captured.settings)
            captured.notes.append(INVENTED_INPUTS.format(source=source))
            cases.append(captured)
    maps: list[CaseMaps] = []
    if draw:
        from attndbg.render.html import collect_all

        maps = collect_all(cases, device=run.device)
    return run_cases(cases, run, inputs=sources), maps
