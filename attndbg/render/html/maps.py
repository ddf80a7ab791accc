"""The attention maps an HTML report embeds: every head of every embedded batch row, max-pooled
by the core (``attndbg.heatmap.build_heatmap``) to a size that keeps the file bounded, packed as
base64 so that a browser can decode them without a library.

Weights travel as little-endian float16 (about 3 significant digits, enough for a tooltip and a
log scale down to 1e-7; NaN and ±inf travel as they are, for the page to draw as broken cells),
all maps of a case in one zlib stream (the browser inflates it with its own
``DecompressionStream``; MiniLM's maps shrink from 330 to about 210 KiB); masked cells as a
bitmap, stored once per batch row when every head shares it (masks broadcast over heads almost
always).
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attndbg.case import Case

# About 2.7 bytes of HTML per cell: 1.5 M cells keep a report of a large model near 4 MB.
REPORT_CELL_BUDGET = 1_500_000
MAX_SIDE = 96  # cells per axis of one map: finer than that is no longer readable on a screen
MIN_SIDE = 8
MAX_BATCHES = 8


@dataclass
class CaseMaps:
    """Pooled weights of every head of the first ``len(labels)`` batch rows of one case."""

    case: str
    file: str
    batch_size: int  # batch rows in the case
    batches: int  # batch rows embedded: the first ones, at most MAX_BATCHES
    heads: int
    q_len: int
    k_len: int
    row_step: int  # query rows per cell
    col_step: int  # keys per cell
    rows: int
    cols: int
    source: str  # "saved weights" | "recomputed"
    labels: list[dict[str, list[str]]] = field(default_factory=list)  # per batch: rows, cols
    weights: str = ""  # base64 of zlib(float16 LE [batch][head][row][col])
    masked: list[list[str]] = field(default_factory=list)  # [batch][head] or [batch][shared]: bits

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def side_for(maps: int, cell_budget: int) -> int:
    """Cells per axis so that ``maps`` square maps fit in ``cell_budget`` cells."""
    side = math.isqrt(max(cell_budget // max(maps, 1), 1))
    return max(MIN_SIDE, min(MAX_SIDE, side))


def collect_maps(
    case: Case,
    *,
    device: str = "cpu",
    cell_budget: int = REPORT_CELL_BUDGET,
    max_batches: int = MAX_BATCHES,
) -> CaseMaps | None:
    """The maps of one case, or None when it has nothing to draw (no q/k/v, weights or scores,
    or shapes that leave attention undefined)."""
    import numpy as np

    from attndbg.context import CaseContext, ShapeProblem
    from attndbg.heatmap import build_heatmap

    ctx = CaseContext(case, device=device)
    try:
        if not (ctx.has_qkv or ctx.has("weights") or ctx.has("scores")):
            return None
        sizes = ctx.sizes
        batches = min(sizes["B"], max_batches)
        heads = sizes["Hq"]
        if 0 in (batches, heads, sizes["Lq"], sizes["Lk"]):
            return None
        side = side_for(batches * heads, cell_budget)
        maps = [
            [build_heatmap(ctx, b, h, max_rows=side, max_cols=side) for h in range(heads)]
            for b in range(batches)
        ]
    except (ShapeProblem, RuntimeError, IndexError, ValueError):
        return None  # the diagnosis names the shape problem; there is no map to draw
    first = maps[0][0]
    rows, cols = first.shape
    result = CaseMaps(
        case=case.name,
        file=str(case.file),
        batch_size=sizes["B"],
        batches=batches,
        heads=heads,
        q_len=first.q_len,
        k_len=first.k_len,
        row_step=first.row_step,
        col_step=first.col_step,
        rows=rows,
        cols=cols,
        source=first.source,
    )
    with np.errstate(over="ignore"):  # saved weights may hold huge values: float16 makes them inf
        stacked = np.asarray([[m.weights for m in per_head] for per_head in maps], dtype="<f2")
    result.weights = _pack(zlib.compress(stacked.tobytes(), 9))
    for b, per_head in enumerate(maps):
        first = per_head[0]
        rows_labels, cols_labels = first.row_labels, first.col_labels
        if b > 0 and _first_row_tokens_only(case):
            rows_labels = [str(i * first.row_step) for i in range(rows)]
            cols_labels = [str(j * first.col_step) for j in range(cols)]
        result.labels.append({"rows": rows_labels, "cols": cols_labels})
        bitmaps = [_pack(np.packbits(np.asarray(m.masked, dtype=bool)).tobytes()) for m in per_head]
        result.masked.append(bitmaps[:1] if len(set(bitmaps)) == 1 else bitmaps)
    return result


def collect_all(cases: Sequence[Case], *, device: str = "cpu") -> list[CaseMaps]:
    """The maps of every case that has one, sharing the report's cell budget."""
    budget = REPORT_CELL_BUDGET // max(1, len(cases))
    return [m for case in cases if (m := collect_maps(case, device=device, cell_budget=budget)) is not None]


def _first_row_tokens_only(case: Case) -> bool:
    """A capture from text records the tokens of its first sequence (a flat list): other batch
    rows hold other sentences, so their maps are labelled by position, not with those tokens."""
    tokens = case.tokens
    return tokens is not None and len(tokens) > 0 and all(isinstance(t, str) for t in tokens)


def _pack(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
