"""The command line: thin Typer commands over the loader, engine and renderers.

Module level imports nothing heavy: ``attndbg --help``, ``rules`` and ``explain`` never
import torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from attndbg import __version__
from attndbg.errors import AttndbgError, UsageError

app = typer.Typer(
    name="attndbg",
    help="Find the attention bugs that never raise: layouts, scaling, masks, softmax, NaN rows.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err_console = Console(stderr=True)


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"
    never = "never"


class OutputFormat(str, Enum):
    rich = "rich"
    json = "json"
    sarif = "sarif"


class MaskSemantics(str, Enum):
    keep = "keep"
    drop = "drop"
    additive = "additive"


def _version(value: bool) -> None:
    if value:
        print(f"attndbg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """attndbg inspects saved Q/K/V/mask tensors and reports what is wrong with the attention."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"--max-memory {text!r}: expected a size such as 512MiB or 2G")
    number, unit = float(match[1]), (match[2] or "").lower().rstrip("b").rstrip("i")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]
    size = int(number * factor)
    if size < 1 << 20:
        raise UsageError(f"--max-memory {text!r}: at least 1MiB is needed")
    return size


@app.command()
def inspect(
    paths: Annotated[list[Path], typer.Argument(help="safetensors files holding one or more cases.")],
    case: Annotated[
        str | None, typer.Option("--case", help="Only cases whose name matches this glob.")
    ] = None,
    layout: Annotated[
        str | None, typer.Option(help="Layout of q/k/v/out, e.g. bhsd, bshd, bsd, sbd.")
    ] = None,
    causal: Annotated[bool | None, typer.Option("--causal/--no-causal", help="Override is_causal.")] = None,
    scale: Annotated[float | None, typer.Option(help="Override the softmax scale.")] = None,
    mask_semantics: Annotated[MaskSemantics | None, typer.Option(help="How to read the mask.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto [default: cpu].")] = None,
    max_memory: Annotated[
        str | None, typer.Option(help="Memory budget for score chunks, e.g. 512MiB [default: 1GiB].")
    ] = None,
    grad: Annotated[bool, typer.Option(help="Also run the gradient stage.")] = False,
    select: Annotated[
        list[str] | None, typer.Option(help="Only these codes or prefixes (SHP, MSK00, PAT004).")
    ] = None,
    ignore: Annotated[list[str] | None, typer.Option(help="Skip these codes or prefixes.")] = None,
    fail_on: Annotated[
        FailOn | None,
        typer.Option(help="Exit 1 when a finding is at or above this severity [default: error]."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="pyproject.toml to read [tool.attndbg] from (default: nearest).")
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="Findings listed in this baseline file do not fail the run.")
    ] = None,
    write_baseline: Annotated[
        Path | None, typer.Option(help="Write every finding of this run to a baseline file, exit 0.")
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="Also save the Rich report, heatmaps included, as HTML.")
    ] = None,
    svg: Annotated[Path | None, typer.Option(help="Also save the Rich report as SVG.")] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Report format.")
    ] = OutputFormat.rich,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the report to this file.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="One line per finding, then the summary.")
    ] = False,
    timings: Annotated[bool, typer.Option("--timings/--no-timings", help="Stage seconds in JSON.")] = True,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Run the diagnostic pipeline on saved attention tensors."""
    from attndbg.case import Settings, parse_layout
    from attndbg.config import load_config, validate_thresholds
    from attndbg.engine import Options, resolve_device, run_cases
    from attndbg.loader import load_case, plan_cases
    from attndbg.registry import parse_codes

    project = load_config(config)
    if project.thresholds:
        validate_thresholds(project.thresholds, f"{project.path} [tool.attndbg.thresholds]")

    overrides = Settings(
        is_causal=causal,
        scale=scale,
        layout=parse_layout(layout, "--layout") if layout else None,
        mask_semantics=mask_semantics.value if mask_semantics else None,
    )
    options = Options(
        device=resolve_device(device or project.device or "cpu"),
        max_memory=parse_size(max_memory or project.max_memory or "1GiB"),
        select=parse_codes(select if select else project.select),
        ignore=parse_codes(ignore if ignore else project.ignore),
        grad=grad,
        fail_on=fail_on.value if fail_on else (project.fail_on or "error"),
        thresholds=project.thresholds,
        baseline=read_baseline(baseline) if baseline else set(),
    )
    finish = functools.partial(
        _finish,
        output_format=output_format,
        output=output,
        quiet=quiet,
        timings=timings,
        write_baseline=write_baseline,
        html=html,
        svg=svg,
    )
    if output is not None and output.resolve() in {p.resolve() for p in paths}:
        raise UsageError(f"-o {output}: refusing to overwrite an input file")
    from attndbg.recording.sources import is_model_source

    model_sources = [str(p) for p in paths if is_model_source(str(p))]
    if model_sources:
        report = _inspect_models(model_sources, options, overrides, case)
        return finish(report)
    plans = plan_cases(list(paths), case, overrides)

    stream = output_format == OutputFormat.rich and output is None and write_baseline is None
    console = Console(highlight=False)
    on_case = None
    if stream:
        from attndbg.render.rich_report import case_renderable

        def on_case(case_report):  # noqa: ANN001 - a small callback
            console.print(case_renderable(case_report, quiet=quiet), soft_wrap=quiet)

    with _progress(len(plans)) as advance:

        def cases():
            for plan in plans:
                advance(f"{plan.file.name}::{plan.name}")
                yield load_case(plan)

        report = run_cases(cases(), options, inputs=[str(p) for p in paths], on_case=on_case)

    finish(report, streamed=stream)


def _inspect_models(sources: list[str], options, overrides, case_glob):  # noqa: ANN001, ANN202
    """`inspect SOURCE`: capture with default inputs, then inspect the calls in memory."""
    import fnmatch

    from attndbg.engine import run_cases
    from attndbg.recording.sources import capture_source

    cases = []
    for source in sources:
        with _spinner(f"running {source}"):
            calls = capture_source(source, device=options.device)
        for captured in calls.cases():
            if case_glob and not fnmatch.fnmatchcase(captured.name, case_glob):
                continue
            captured.file = source
            captured.settings = overrides.merged_over(captured.settings)
            cases.append(captured)
    return run_cases(cases, options, inputs=sources)


def read_baseline(path: Path) -> set[str]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        fingerprints = data["findings"]
    except FileNotFoundError:
        raise UsageError(f"--baseline {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"--baseline {path}: not an attndbg baseline file") from None
    return {entry["fingerprint"] for entry in fingerprints}


def _write_baseline(report, path: Path) -> None:  # noqa: ANN001
    import json

    entries = [
        {
            "fingerprint": f.fingerprint(case.file),
            "code": f.code,
            "severity": f.severity.value,
            "message": f.message,
        }
        for case in report.cases
        for f in case.findings
    ]
    text = json.dumps({"attndbg_baseline": 1, "findings": entries}, indent=2) + "\n"
    _emit(text, path)


def _recorded(report, quiet: bool = False, colour: bool = False) -> Console:  # noqa: ANN001
    """The Rich report rendered into a recording console (120 columns), for files."""
    from attndbg.render.rich_report import render_rich

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


def _finish(
    report,
    output_format,
    output,
    quiet,
    timings,
    write_baseline=None,
    streamed=False,  # noqa: ANN001, ANN202
    html=None,
    svg=None,
):
    if html is not None or svg is not None:
        recorder = _recorded(report, colour=True)
        if html is not None:
            _emit(recorder.export_html(clear=False), html)
        if svg is not None:
            _emit(recorder.export_svg(title="attndbg", clear=False), svg)
    if write_baseline is not None:
        _write_baseline(report, write_baseline)
        raise typer.Exit(0)
    if output_format == OutputFormat.sarif:
        from attndbg.render.sarif import render_sarif

        _emit(render_sarif(report), output)
    elif output_format == OutputFormat.json:
        from attndbg.render.json_report import render_json

        _emit(render_json(report, timings=timings), output)
    elif streamed:
        from attndbg.render.rich_report import summary_text

        console = Console(highlight=False)
        if not quiet:
            console.print()
        console.print(summary_text(report))
    elif output is None:
        from attndbg.render.rich_report import render_rich

        render_rich(report, Console(highlight=False), quiet=quiet)
    else:
        _emit(_recorded(report, quiet=quiet).export_text(), output)
    raise typer.Exit(report.exit_code())


@contextlib.contextmanager
def _progress(total: int):
    """A progress bar over cases on stderr, only on an interactive terminal (never in CI)."""
    if not err_console.is_terminal or os.environ.get("CI") or total < 2:
        yield lambda description: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("inspecting", total=total)
        started = [False]

        def advance(description: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, description=description)

        yield advance


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    directory = output.resolve().parent
    if not directory.is_dir():
        raise UsageError(f"-o {output}: directory {directory} does not exist")
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; a report is an ordinary file
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    err_console.print(f"report written to {output}", style="dim")


@app.command()
def capture(
    source: Annotated[str, typer.Argument(help="HF model directory, .pt2 program, or module:function.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="safetensors file to write.")],
    weights: Annotated[
        Path | None, typer.Option(help="State dict for a factory (safetensors or weights-only .pt).")
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option(help="Input text, through the checkpoint's tokenizer (repeatable).")
    ] = None,
    seq_len: Annotated[int, typer.Option(help="Random token ids: sequence length.")] = 16,
    batch: Annotated[int, typer.Option(help="Random token ids: batch size.")] = 2,
    input_file: Annotated[
        Path | None, typer.Option("--input", help="safetensors file of named model inputs.")
    ] = None,
    layers: Annotated[str | None, typer.Option(help="Only calls from modules matching this glob.")] = None,
    max_calls: Annotated[int | None, typer.Option(help="Keep at most this many calls.")] = None,
    attn_implementation: Annotated[
        str, typer.Option(help="HF attention implementation: sdpa or eager.")
    ] = "sdpa",
    compare_eager_: Annotated[
        bool, typer.Option("--compare-eager", help="HF: also run eager and compare per layer.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Load a model, run one input through it, and record every attention call."""
    from attndbg.engine import resolve_device
    from attndbg.recording.sources import capture_source, compare_eager

    device = resolve_device(device)
    options = dict(
        weights=weights,
        text=text,
        seq_len=seq_len,
        batch=batch,
        input_file=input_file,
        layers=layers,
        max_calls=max_calls,
        device=device,
        seed=seed,
    )
    with _spinner(f"running {source}"):
        calls = capture_source(source, attn_implementation=attn_implementation, **options)
        calls.save(output)
    console = Console(highlight=False)
    console.print(_calls_table(calls))
    console.print(f"{len(calls)} attention call(s) written to {output}")
    if compare_eager_:
        from rich.table import Table

        with _spinner("comparing sdpa and eager"):
            rows = compare_eager(source, **options)
        table = Table(title="eager vs sdpa", header_style="bold", box=None, title_justify="left")
        for column in ("layer", "max |Δ weights|", "max |Δ output|"):
            table.add_column(column, justify="left" if column == "layer" else "right")
        for row in rows:
            table.add_row(
                row["layer"], f"{row['max_weight_difference']:.2e}", f"{row['max_output_difference']:.2e}"
            )
        console.print(table)


def _calls_table(calls):  # noqa: ANN001, ANN202
    from collections import Counter

    from rich.table import Table

    table = Table(header_style="bold", box=None)
    for column in ("case", "kind", "q", "k", "v", "mask", "causal", "scale"):
        table.add_column(column, overflow="fold", no_wrap=column != "case")
    names = calls.names()
    for name, call in zip(names, calls):

        def shape(t):  # noqa: ANN001, ANN202
            return "×".join(map(str, t.shape)) if t is not None else "—"

        scale = f"{call.scale:.4g}" if call.scale is not None else "default"
        table.add_row(
            name,
            call.kind,
            shape(call.q if call.q is not None else call.weights),
            shape(call.k),
            shape(call.v),
            shape(call.mask),
            str(call.is_causal),
            scale,
        )
    kinds = Counter(call.kind for call in calls)
    table.caption = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    return table


@contextlib.contextmanager
def _spinner(message: str):
    if not err_console.is_terminal or os.environ.get("CI"):
        yield
        return
    with err_console.status(message):
        yield


@app.command()
def show(
    paths: Annotated[list[Path], typer.Argument(help="A file to draw; two files to draw their difference.")],
    case: Annotated[str | None, typer.Option(help="Case name or glob (default: the first case).")] = None,
    layer: Annotated[str | None, typer.Option(help="Alias of --case for captures, e.g. '*layer.3*'.")] = None,
    head: Annotated[str, typer.Option(help="Head index, or 'all' for a grid.")] = "0",
    batch: Annotated[int, typer.Option(help="Batch index.")] = 0,
    rows: Annotated[int, typer.Option(help="Max rows of cells (longer sequences are max-pooled).")] = 32,
    cols: Annotated[int, typer.Option(help="Max columns of cells.")] = 48,
    png: Annotated[Path | None, typer.Option(help="Also save a PNG (needs attndbg[plot]).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Draw attention weights as a heatmap (recomputed from Q/K/V/mask unless weights were saved)."""
    from attndbg.context import CaseContext
    from attndbg.engine import resolve_device
    from attndbg.heatmap import build_heatmap, difference
    from attndbg.loader import load_case, plan_cases
    from attndbg.render.heatmap import difference_renderable, grid_renderable, heatmap_renderable, save_png

    if len(paths) > 2:
        raise UsageError("show takes one file, or two to compare")
    device = resolve_device(device)
    pattern = case or layer

    def context(path: Path) -> CaseContext:
        plans = plan_cases([path], pattern)
        ctx = CaseContext(load_case(plans[0]), device=device)
        if not (ctx.has_qkv or ctx.has("weights") or ctx.has("scores")):
            raise UsageError(f"{path}: case {ctx.case.name} has nothing to draw")
        return ctx

    first = context(paths[0])
    heads_total = first.sizes["Hq"]
    if head == "all":
        heads = list(range(heads_total))
    else:
        try:
            heads = [int(head)]
        except ValueError:
            raise UsageError(f"--head {head!r}: a head index or 'all'") from None
        if not 0 <= heads[0] < heads_total:
            raise UsageError(f"--head {heads[0]}: case {first.case.name} has {heads_total} heads")
    if not 0 <= batch < first.sizes["B"]:
        raise UsageError(f"--batch {batch}: case {first.case.name} has batch {first.sizes['B']}")
    console = Console(highlight=False)
    if len(paths) == 2:
        diff = difference(first, context(paths[1]), head=heads[0], batch=batch)
        console.print(difference_renderable(diff))
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


class Level(str, Enum):
    quick = "quick"
    default = "default"
    thorough = "thorough"


class Align(str, Enum):
    upper_left = "upper-left"
    lower_right = "lower-right"


@app.command()
def gradcheck(
    path: Annotated[Path | None, typer.Argument(help="safetensors file: gradients on its tensors.")] = None,
    impl: Annotated[
        str | None, typer.Option(help="Your attention: module:function or path/to/file.py:function.")
    ] = None,
    level: Annotated[Level, typer.Option(help="How many shapes to sweep.")] = Level.default,
    quick: Annotated[bool, typer.Option("--quick", help="Same as --level quick.")] = False,
    thorough: Annotated[bool, typer.Option("--thorough", help="Same as --level thorough.")] = False,
    causal_align: Annotated[Align, typer.Option(help="Causal reference alignment.")] = Align.upper_left,
    lenient: Annotated[bool, typer.Option(help="Twice the error bounds.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="rich or json.")
    ] = OutputFormat.rich,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the report here.")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of internal errors.")] = False,
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
        return _finish(report, output_format, output, quiet=False, timings=True)
    from attndbg.gradcheck.sweep import load_implementation, sdpa_backends, sweep

    chosen = "quick" if quick else "thorough" if thorough else level.value
    targets = [("", load_implementation(impl))] if impl else sdpa_backends(device)
    reports = []
    with _progress(len(targets)) as advance:
        for label, target in targets:
            advance(label or target.name)
            report = sweep(target, chosen, device, causal_align.value, lenient)
            if path is not None:
                _file_cases(report, target, path, device, causal_align.value)
            reports.append(report)
    if output_format == OutputFormat.json:
        import json

        data = [r.to_dict() for r in reports]
        _emit(json.dumps(data[0] if impl else data, indent=2) + "\n", output)
    else:
        from attndbg.render.gradcheck import render_sweep

        console = Console(highlight=False)
        for report in reports:
            render_sweep(report, console)
            console.print()
        if not impl:
            console.print(_backend_table(reports))
    raise typer.Exit(max(r.exit_code() for r in reports))


def _file_cases(report, target, path: Path, device: str, align: str) -> None:  # noqa: ANN001
    """The file's own tensors as one more case of the sweep, in their stored dtype."""
    import torch

    from attndbg.attention import reference_attention
    from attndbg.context import CaseContext
    from attndbg.gradcheck.sweep import Result
    from attndbg.loader import iter_cases

    for case in iter_cases([path]):
        ctx = CaseContext(case, device=device)
        if not ctx.has_qkv:
            continue
        dtype = case.tensors["q"].dtype if case.tensors["q"].is_floating_point() else torch.float32
        keep = None
        if ctx.mask4d is not None and ctx.mask_semantics != "additive":
            keep = ctx.keep_mask(ctx.mask4d).to(device)
        q, k, v = ctx.q.to(dtype), ctx.k.to(dtype), ctx.v.to(dtype)
        try:
            out = target(q, k, v, keep=keep, causal=ctx.is_causal and keep is None)
            ref = reference_attention(
                q.double(),
                k.double(),
                v.double(),
                mask=None if keep is None else keep,
                is_causal=ctx.is_causal and keep is None,
                scale=ctx.scale,
                align=align,
            )
            error = float((out.double() - ref).abs().max()) if out.numel() else 0.0
            bound = 1e-5 if dtype == torch.float32 else 2e-2
            verdict = "pass" if error <= bound * max(1.0, float(v.abs().max())) else "fail"
            reasons = [] if verdict == "pass" else [f"out: max error {error:.2e} on the file's tensors"]
        except Exception as exc:
            verdict, error, reasons = "error", None, [f"{type(exc).__name__}: {exc}"]
        report.results.append(
            Result(
                f"file:{case.name}",
                str(dtype).replace("torch.", ""),
                verdict,
                forward_error=error,
                reasons=reasons,
            )
        )


def _backend_table(reports):  # noqa: ANN001, ANN202
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


@app.command()
def rules(
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Table or JSON.")
    ] = OutputFormat.rich,
) -> None:
    """List every check: code, name, stage, default severity."""
    from attndbg.registry import load_checks

    checks = load_checks()
    if output_format == OutputFormat.json:
        import json

        data = [
            {
                "code": c.code,
                "name": c.name,
                "stage": c.stage,
                "severity": c.severity.value,
                "summary": c.summary,
                "thresholds": dict(c.thresholds),
                "rationale": c.rationale,
                "fix": c.fix.strip(),
            }
            for c in checks.values()
        ]
        print(json.dumps(data, indent=2))
        return
    from rich.table import Table

    table = Table(header_style="bold", box=None)
    for column in ("code", "name", "stage", "severity", "summary"):
        table.add_column(column)
    for c in checks.values():
        table.add_row(c.code, c.name, c.stage, c.severity.value, c.summary)
    Console().print(table)


@app.command()
def explain(code: Annotated[str, typer.Argument(help="A check code, e.g. MSK003.")]) -> None:
    """Print one check's rationale and fix."""
    from rich.padding import Padding
    from rich.syntax import Syntax
    from rich.text import Text

    from attndbg.registry import load_checks

    checks = load_checks()
    check = checks.get(code.strip().upper())
    if check is None:
        close = [c for c in checks if c.startswith(code.strip().upper()[:3])]
        hint = f"; codes in that family: {', '.join(close)}" if close else "; `attndbg rules` lists them"
        raise UsageError(f"no check {code!r}{hint}")
    console = Console()
    console.print(Text(f"{check.code} {check.name}", style="bold"))
    console.print(Text(f"stage {check.stage} · default severity {check.severity.value}", style="dim"))
    console.print(Text(check.summary, style="italic"))
    console.print()
    console.print(Padding(Text(check.rationale), (0, 0, 0, 2)))
    console.print()
    if check.thresholds:
        values = ", ".join(f"{name} = {value:g}" for name, value in check.thresholds.items())
        console.print(Text(f"Thresholds: {values}", style="bold"))
        example = next(iter(check.thresholds))
        console.print(
            Padding(
                Text(
                    f"override in pyproject.toml: [tool.attndbg.thresholds] "
                    f"{check.code} = {{ {example} = … }}",
                    style="dim",
                ),
                (0, 0, 0, 2),
            )
        )
        console.print()
    console.print(Text("Fix:", style="bold"))
    console.print(
        Padding(
            Syntax(check.fix.strip(), "python", theme="ansi_dark", background_color="default"),
            (0, 0, 0, 2),
        )
    )


def _is_click_exception(exc: BaseException) -> bool:
    return "click" in type(exc).__module__ and (hasattr(exc, "show") or type(exc).__name__ == "Abort")


def main() -> None:
    """Console-script entry point: map every way out to the documented exit codes."""
    debug = "--debug" in sys.argv or bool(os.environ.get("ATTNDBG_DEBUG"))
    try:
        code = app(standalone_mode=False)
    except AttndbgError as exc:
        err_console.print(f"attndbg: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        err_console.print("attndbg: interrupted")
        code = 130
    except Exception as exc:  # attndbg's own failure: one line unless --debug
        if _is_click_exception(exc):  # bad option or missing argument (Typer vendors Click)
            if type(exc).__name__ == "Abort":
                err_console.print("attndbg: interrupted")
                sys.exit(130)
            exc.show(file=sys.stderr)
            sys.exit(2)
        if debug:
            raise
        err_console.print(
            f"attndbg: internal error: {type(exc).__name__}: {exc} — please report it at "
            "https://github.com/attndbg/attndbg/issues with the output of --debug",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        code = 3
    sys.exit(code if isinstance(code, int) else 0)
