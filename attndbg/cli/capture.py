"""`attndbg capture`: run a model once and save every attention call it makes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attndbg.cli import options as opt
from attndbg.cli.output import spinner
from attndbg.cli.paths import check_output, import_from_cwd

if TYPE_CHECKING:
    from rich.table import Table

    from attndbg.recording.recorder import Calls


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
    device: opt.Device = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
) -> None:
    """Load a model, run one input through it, and record every attention call."""
    from rich.console import Console

    from attndbg.engine import resolve_device
    from attndbg.recording.sources import capture_source

    import_from_cwd()
    check_output(output, "-o", [weights, input_file])
    device = resolve_device(device)
    inputs: dict[str, Any] = dict(
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
    with spinner(f"running {source}"):
        calls = capture_source(source, attn_implementation=attn_implementation, **inputs)
        calls.save(output)
    console = Console(highlight=False)
    console.print(_calls_table(calls))
    for note in calls.notes:
        console.print(f"assumed: {note}", style="dim italic")
    console.print(f"{len(calls)} attention call(s) written to {output}")
    if compare_eager_:
        dtype = str(calls[0].q.dtype).removeprefix("torch.") if len(calls) and calls[0].q is not None else ""
        console.print(_eager_table(source, inputs, dtype or "float32"))


# sdpa and eager round differently and the difference grows layer by layer; a wrong mask or
# scale in one path moves weights by 1e-2 or more. Half precision rounds at ~1e-3 per op.
EAGER_TOLERANCE = {"float32": 1e-3, "float64": 1e-3, "float16": 2e-2, "bfloat16": 2e-2}


def _eager_table(source: str, inputs: dict[str, Any], dtype: str) -> Table:
    """HF: the same input through eager attention, per layer differences from sdpa, and a verdict."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from attndbg.recording.sources import compare_eager

    with spinner("comparing sdpa and eager"):
        rows = compare_eager(source, **inputs)
    tolerance = EAGER_TOLERANCE.get(dtype, 1e-3)
    table = Table(title="eager vs sdpa", header_style="bold", box=None, title_justify="left")
    for column in ("layer", "max |Δ weights|", "max |Δ output|", "verdict"):
        table.add_column(column, justify="right" if column.startswith("max") else "left")
    differing = 0
    for row in rows:
        worst = max(row["max_weight_difference"], row["max_output_difference"])
        differing += worst > tolerance
        table.add_row(
            escape(row["layer"]),
            f"{row['max_weight_difference']:.2e}",
            f"{row['max_output_difference']:.2e}",
            "equal" if worst <= tolerance else Text("not equal", style="bold red"),
        )
    verdict = (
        f"{differing} of {len(rows)} layer(s) differ" if differing else f"all {len(rows)} layer(s) equal"
    )
    table.caption = f"{verdict} (tolerance {tolerance:g} on weights and outputs, {dtype})"
    table.caption_justify = "left"
    return table


def _longest(names: list[str]) -> int:
    return max((len(name) for name in names), default=4)


def _calls_table(calls: Calls) -> Table:
    from collections import Counter

    from rich.markup import escape
    from rich.table import Table

    table = Table(header_style="bold", box=None)
    # The case name is what the user types into --case: keep it whole, let shapes fold instead.
    table.add_column("case", no_wrap=True, overflow="ellipsis", min_width=min(32, _longest(calls.names())))
    for column in ("kind", "q, k, v", "weights", "mask", "causal", "scale"):
        table.add_column(column, overflow="fold")

    def shape(tensor: Any) -> str:
        return "×".join(map(str, tensor.shape)) if tensor is not None else "—"

    for name, call in zip(calls.names(), calls):
        shapes = [shape(call.q), shape(call.k), shape(call.v)]
        # hand-written attention without a scale step is checked against 1/√d, as SDPA's default
        unsaid = "none" if call.kind == "traced" else "default"
        scale = f"{call.scale:.4g}" if call.scale is not None else unsaid
        qkv = shapes[0] if len(set(shapes)) == 1 else " / ".join(shapes)
        table.add_row(
            escape(name), call.kind, qkv, shape(call.weights), shape(call.mask), str(call.is_causal), scale
        )
    kinds = Counter(call.kind for call in calls)
    reasons = Counter(note for call in calls for note in call.notes)
    lines = [", ".join(f"{n} {kind}" for kind, n in kinds.items())]
    lines += [f"{n} call(s): {escape(note)}" for note, n in reasons.items()]
    table.caption = "\n".join(lines)
    table.caption_justify = "left"
    return table
