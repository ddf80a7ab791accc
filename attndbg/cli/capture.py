"""`attndbg capture`: run a model once and save every attention call it makes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attndbg.cli import options as opt
from attndbg.cli.output import spinner

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
    console.print(f"{len(calls)} attention call(s) written to {output}")
    if compare_eager_:
        console.print(_eager_table(source, inputs))


def _eager_table(source: str, inputs: dict[str, Any]) -> Table:
    """HF: the same input through eager attention, per layer differences from sdpa."""
    from rich.table import Table

    from attndbg.recording.sources import compare_eager

    with spinner("comparing sdpa and eager"):
        rows = compare_eager(source, **inputs)
    table = Table(title="eager vs sdpa", header_style="bold", box=None, title_justify="left")
    for column in ("layer", "max |Δ weights|", "max |Δ output|"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for row in rows:
        table.add_row(
            row["layer"], f"{row['max_weight_difference']:.2e}", f"{row['max_output_difference']:.2e}"
        )
    return table


def _calls_table(calls: Calls) -> Table:
    from collections import Counter

    from rich.table import Table

    table = Table(header_style="bold", box=None)
    for column in ("case", "kind", "q", "k", "v", "mask", "causal", "scale"):
        table.add_column(column, overflow="fold", no_wrap=column != "case")

    def shape(tensor: Any) -> str:
        return "×".join(map(str, tensor.shape)) if tensor is not None else "—"

    for name, call in zip(calls.names(), calls):
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
