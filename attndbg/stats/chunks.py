"""Chunk sizing under the memory budget, the chunk that reducers read, and the reducer API."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from attndbg.vocab import Statistic

if TYPE_CHECKING:
    from attndbg.context import CaseContext

# float32 temporaries alive at once per score element in the reference pass: the scores
# (shifted in place), their exponentials, and with a mask the bias and one masked product.
TEMPORARIES_PER_ELEMENT = 4
CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32 scores per chunk: stays in cache with its exp
_MIN_ROWS = 128  # rows per product while it stays small: fewer make the matmul slower
PRODUCT_ELEMENTS = 1 << 22  # 16 MiB of float32 scores: long keys get fewer rows, not more memory
_FEWEST_ROWS = 16


def chunk_rows(ctx: CaseContext, workers: int = 1) -> int:
    """Query rows of all heads whose temporaries fit in ``ctx.max_memory`` (shared by
    ``workers`` threads, each with its own chunk)."""
    heads, lk = ctx.sizes["Hq"], max(ctx.sizes["Lk"], 1)
    per_row = heads * lk * 4 * TEMPORARIES_PER_ELEMENT
    return max(1, min(ctx.sizes["Lq"], ctx.max_memory // max(1, workers) // per_row))


def chunk_shape(ctx: CaseContext, workers: int = 1) -> tuple[int, int]:
    """(heads, rows) per product: about ``CHUNK_ELEMENTS`` scores per head group, so that the
    scores and their softmax stay in cache between the passes; rows shrink as keys grow, so
    that a product stays under ``PRODUCT_ELEMENTS`` whatever the length; never more than the
    memory budget."""
    heads, lk, lq = ctx.sizes["Hq"], max(ctx.sizes["Lk"], 1), max(ctx.sizes["Lq"], 1)
    budget_rows = chunk_rows(ctx, workers)
    if str(ctx.device) != "cpu":
        return heads, budget_rows  # a GPU wants few, large launches; its cache is not the limit
    rows = min(lq, budget_rows, _MIN_ROWS, max(_FEWEST_ROWS, PRODUCT_ELEMENTS // lk))
    group = max(1, min(heads, CHUNK_ELEMENTS // (rows * lk)))
    if group == heads:
        rows = min(lq, budget_rows, max(rows, CHUNK_ELEMENTS // (heads * lk)))
    while group > 1 and group * rows * lk * 4 * TEMPORARIES_PER_ELEMENT * workers > ctx.max_memory:
        group -= 1
    return group, max(1, rows)


class Workspace(threading.local):
    """Float32 buffers of one thread, reused from chunk to chunk. A product or a softmax of a
    few MiB allocated afresh for every chunk is page-faulted in again whenever the allocator
    has handed the memory back to the system (measured: a quarter more CPU time for the pass,
    depending on what else the process allocated)."""

    def take(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self.__dict__.get(name)
        if buffer is None or buffer.numel() < numel or buffer.device != device:
            buffer = torch.empty(numel, device=device)
            self.__dict__[name] = buffer
        return buffer[:numel].view(shape)


@dataclass
class Batch:
    """One sample's inputs, normalised once: k transposed (q is scaled per block, not copied)."""

    index: int
    q: torch.Tensor | None  # (H, Lq, D), not yet scaled
    kt: torch.Tensor | None  # (H, D, Lk)
    v: torch.Tensor | None  # (H, Lk, Dv)


@dataclass
class Chunk:
    """A block of (heads, query rows) of one sample, as the driver hands it to the reducers.

    One product (``block`` rows of a group of heads) is cut into chunks of rows that stay in
    cache; the chunks of a block come in row order, and every head group of a block before the
    next block. Before the softmax (``Reducer.scores``): ``scores`` are the scaled logits, non-finite
    values already counted and NaN turned to -inf, ``high``/``low`` their row max/min (0 where
    not finite), ``bias`` the mask and causal bias of the assumed reading (None without).
    After it (``Reducer.weights``): ``weights`` the softmax of the logits (rows with nothing to
    attend are 0), ``live`` rows with something to attend, ``shift`` the row max subtracted,
    ``max_weight`` each row's largest weight (1/Σ exp(S − shift)), ``dot`` = Σ p·(S − shift).
    """

    batch: Batch
    heads: slice
    rows: slice
    scores: torch.Tensor
    high: torch.Tensor
    low: torch.Tensor
    block: slice  # the rows of the product this chunk is a slice of
    bias: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    live: torch.Tensor | None = None
    max_weight: torch.Tensor | None = None
    dot: torch.Tensor | None = None

    @property
    def at(self) -> tuple[int, slice, slice]:
        """Index of this chunk in a (B, H, Lq, …) accumulator."""
        return self.batch.index, self.heads, self.rows

    @property
    def n_heads(self) -> int:
        return int(self.heads.stop) - int(self.heads.start)


@dataclass
class Accumulator:
    """Where reducers write: per-row (B, H, Lq) float32 tensors by name, plus named totals."""

    shape: tuple[int, int, int]
    device: str
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)

    def per_row(self, *names: str, fill: float = 0.0) -> None:
        for name in names:
            self.rows[name] = torch.full(self.shape, fill, dtype=torch.float32, device=self.device)


class Reducer:
    """One family of statistics, reduced chunk by chunk.

    Subclass, set ``family`` (the reducer runs only when a running check reads it) and
    override what you need: ``start`` allocates in the accumulator, ``scores`` reads a chunk
    before the softmax, ``weights`` after it, ``finish`` runs once after the last chunk.
    Reducers run in the order of ``REDUCERS``; a reducer must not modify the chunk's tensors
    except where its docstring says so (the numerics reducer cleans the scores first).
    Blocks of rows are reduced on several threads at once, each block's chunks in order by one
    thread: write results at ``chunk.at`` only, and keep per-block state keyed by the block.
    """

    family: ClassVar[Statistic] = Statistic.ROWS

    def __init__(self, ctx: CaseContext, acc: Accumulator) -> None:
        self.ctx = ctx
        self.acc = acc

    def start(self) -> None:
        """Allocate this reducer's outputs."""

    def scores(self, chunk: Chunk) -> None:
        """Read a chunk's scores and bias, before the softmax."""

    def weights(self, chunk: Chunk) -> None:
        """Read a chunk's exponentials and row totals, after the softmax."""

    def finish(self) -> None:
        """Finish after the last chunk (second passes, totals)."""
