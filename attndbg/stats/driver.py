"""The driver: one sweep over query-row chunks under the memory budget, feeding each reducer.

Per chunk the scores of a group of heads are computed once (``(q·scale) @ kᵀ``); the
reducers read them before the softmax, the driver forms exp(S − m) and its row sums in place,
and the reducers read those. No float tensor of shape (B, H, Lq, Lk) is ever held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from attndbg.attention import MASKED_BIAS
from attndbg.stats.chunks import (
    CHUNK_ELEMENTS,
    TEMPORARIES_PER_ELEMENT,
    Accumulator,
    Batch,
    Chunk,
    Reducer,
    Workspace,
    chunk_rows,
    chunk_shape,
)
from attndbg.stats.readings import add_readings
from attndbg.stats.reducers import GRAM_ROWS, REDUCERS, row_positions
from attndbg.stats.result import ROW_STATISTICS, AttentionStats
from attndbg.stats.saved import saved_pass
from attndbg.vocab import Artefact, Statistic

if TYPE_CHECKING:
    from attndbg.context import CaseContext


def wants(ctx: CaseContext, family: Statistic) -> bool:
    """Whether a running check reads ``family`` (everything, outside the engine)."""
    return ctx.wanted is None or family in ctx.wanted


def compute_stats(ctx: CaseContext) -> AttentionStats:
    """The reference pass over every chunk, then — only if the user saved scores, weights or
    an output, and a running check reads them — the pass that scores them."""
    stats = reference_pass(ctx)
    saved = ctx.has_qkv and any(ctx.has(r) for r in Artefact) or ctx.has(Artefact.WEIGHTS)
    if saved and wants(ctx, Statistic.SAVED):
        saved_pass(ctx, stats)
        add_readings(ctx, stats)  # fitted scale, dropout, …: only when the assumed reading fails
    return stats


def reference_pass(ctx: CaseContext, threads: int | None = None) -> AttentionStats:
    """Every row statistic from one sweep. On the CPU, blocks of query rows are shared among
    Python threads (``threads``, default torch's thread count; see :func:`in_parallel`), each
    running torch on its share of the threads — one each, up to ``MAX_WORKERS``: one thread
    per block keeps the element-wise passes free of a fork/join per operation and does not
    collapse when another process takes a core, as torch's own threads do."""
    sizes = ctx.sizes
    B, H, Lq, Lk = sizes["B"], sizes["Hq"], sizes["Lq"], sizes["Lk"]
    has_qkv = ctx.has_qkv
    if threads is None:
        threads = torch.get_num_threads() if str(ctx.device) == "cpu" else 1
    workers = min(threads, MAX_WORKERS)  # each holds one chunk's temporaries at a time
    heads_per_chunk, rows_per_chunk = chunk_shape(ctx, workers) if has_qkv else (H, chunk_rows(ctx))
    acc = Accumulator((B, H, Lq), ctx.device)
    acc.totals.update(
        nonfinite={"scores": 0, "weights": 0, "output": 0},
        first_nonfinite={},
        head_gram=torch.zeros(B, H, H, dtype=torch.float64, device=ctx.device),
        out=None,
    )
    if has_qkv or ctx.user_scores is not None:
        # settle every cached reading before reducers and threads start, in the order a chunk
        # reads them (the report lists assumptions in the order they were made)
        _ = ctx.scale if has_qkv else None
        ctx.combined_bias(0, slice(0, 1), ctx.mask_semantics, ctx.causal_align)
    reducers = [make(ctx, acc) for make in REDUCERS if _runs(ctx, make)]
    for reducer in reducers:
        reducer.start()
    acc.per_row(*(name for name in ROW_STATISTICS if name not in acc.rows))
    gram_stride = max(1, Lq // GRAM_ROWS)
    starts = range(0, Lq, rows_per_chunk)
    blocks = [(b, slice(start, min(Lq, start + rows_per_chunk))) for b in range(B) for start in starts]
    if not has_qkv and ctx.user_scores is None:
        for b, rows in blocks:  # saved weights alone: cheap, and their Gram sum is shared
            _weights_only_chunk(ctx, acc, b, rows, gram_stride)
    else:
        batches = [_batch(ctx, b) for b in range(B)]

        workspace = Workspace()

        def reduce_block(block: tuple[int, slice]) -> None:
            # every head group of a row block in turn, so that reducers may combine heads per row
            b, rows = block
            for h0 in range(0, H, heads_per_chunk):
                heads = slice(h0, min(H, h0 + heads_per_chunk))
                for chunk in _chunks(ctx, batches[b], heads, rows, workspace):
                    _reduce_chunk(ctx, reducers, chunk, workspace)

        in_parallel(reduce_block, blocks, threads)
    chunks = len(blocks) * -(-H // heads_per_chunk)
    for reducer in reducers:
        reducer.finish()
    return AttentionStats(
        source="reference" if has_qkv else ("scores" if ctx.user_scores is not None else "weights"),
        chunk_rows=rows_per_chunk,
        chunks=chunks,
        chunk_bytes=rows_per_chunk * heads_per_chunk * Lk * 4 * TEMPORARIES_PER_ELEMENT,
        n_keys=Lk,
        out=acc.totals["out"],
        head_gram=acc.totals["head_gram"].cpu(),
        nonfinite=acc.totals["nonfinite"],
        first_nonfinite=acc.totals["first_nonfinite"],
        **_on_cpu(acc.rows),
    )


# Python threads beyond this share the interpreter lock for each chunk's few dozen calls more
# than they gain; the threads past it go to torch inside each worker instead.
MAX_WORKERS = 8


def in_parallel(function: Callable[[Any], None], tasks: Sequence[Any], threads: int) -> None:
    """``function`` on every task, shared among up to ``MAX_WORKERS`` Python threads that
    split ``threads`` between them (torch single-threaded inside each while ``threads`` ≤
    ``MAX_WORKERS``; torch's thread count restored after); in order on this thread when one
    worker is enough, or when a torch mode is active here (a profiler, a FLOP counter, a
    recorder): modes are per thread, and must see every operation."""
    workers = min(threads, len(tasks), MAX_WORKERS)
    if workers <= 1 or _torch_mode_active():
        for task in tasks:
            function(task)
        return
    per_worker = max(1, threads // workers)

    def run(task: Any) -> None:
        with torch.no_grad():  # grad mode is per thread too; statistics never need autograd
            function(task)

    previous = torch.get_num_threads()
    torch.set_num_threads(per_worker)  # threads started from here on inherit it
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(per_worker,)) as pool:
            for _ in pool.map(run, tasks):  # re-raises a worker's exception here
                pass
    finally:
        torch.set_num_threads(previous)


def _torch_mode_active() -> bool:
    stacks = ("_len_torch_function_stack", "_len_torch_dispatch_stack")
    return any(getattr(torch._C, name, lambda: 1)() for name in stacks)


def _on_cpu(rows: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {name: tensor.cpu() for name, tensor in rows.items()}


def _runs(ctx: CaseContext, reducer: type[Reducer]) -> bool:
    """Row statistics always run (they clean the scores for the rest). P·V only with q/k/v,
    and in the engine only when the output could overflow: it is a convex combination of
    finite values, so |out| ≤ Σ_j e_j·|v_j| ≤ Lk · max|v| bounds every partial sum."""
    if reducer.family == Statistic.OUTPUT:
        if not (ctx.has_qkv and wants(ctx, Statistic.OUTPUT)):
            return False
        return ctx.wanted is None or output_may_overflow(ctx)
    return reducer.family == Statistic.ROWS or wants(ctx, reducer.family)


def output_may_overflow(ctx: CaseContext) -> bool:
    v = ctx.v
    largest = max(float(v.amax()), -float(v.amin())) if v.numel() else 0.0  # no |v| temporary
    return not largest * max(ctx.sizes["Lk"], 1) < torch.finfo(torch.float32).max / 4


def _batch(ctx: CaseContext, b: int) -> Batch:
    if not ctx.has_qkv:
        return Batch(b, None, None, None)
    q = ctx.q[min(b, ctx.q.shape[0] - 1)]  # scaled per block: no copy of q
    kt = ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2)  # a view: BLAS reads it as Kᵀ
    return Batch(b, q, kt, ctx.v[min(b, ctx.v.shape[0] - 1)])


def _chunks(
    ctx: CaseContext, batch: Batch, heads: slice, block: slice, workspace: Workspace
) -> Iterator[Chunk]:
    """The scores of a block of rows — one product, from q·kᵀ, or the user's saved scores —
    handed on in slices of rows small enough to stay in cache through every element-wise pass
    (on a GPU, whole: its cache is not the limit)."""
    scores = _product(ctx, batch, heads, block, workspace)
    n_heads, n_rows, n_keys = scores.shape
    step = n_rows if str(ctx.device) != "cpu" else max(1, CHUNK_ELEMENTS // max(1, n_heads * n_keys))
    for first in range(0, n_rows, step):
        rows = slice(block.start + first, block.start + min(n_rows, first + step))
        yield _chunk(ctx, batch, heads, rows, block, scores[:, first : first + step])


def _product(
    ctx: CaseContext, batch: Batch, heads: slice, block: slice, workspace: Workspace
) -> torch.Tensor:
    """(q·scale)·kᵀ for a group of heads and a block of rows, or the saved scores there."""
    if batch.q is not None and batch.kt is not None:
        q, kt = batch.q[heads, block] * ctx.scale, batch.kt[heads]
        out = workspace.take("scores", (q.shape[0], q.shape[1], kt.shape[-1]), q.device)
        return torch.matmul(q, kt, out=out)
    saved = ctx.user_scores
    assert saved is not None
    return (
        saved[min(batch.index, saved.shape[0] - 1), :, block]
        .to(ctx.device, torch.float32)
        .expand(ctx.sizes["Hq"], -1, -1)[heads]
        .clone()
    )


def _chunk(
    ctx: CaseContext, batch: Batch, heads: slice, rows: slice, block: slice, scores: torch.Tensor
) -> Chunk:
    """One chunk with its row max/min (amax and amin beat aminmax by ~20x on CPU, torch 2.13)
    and the bias of the reading."""
    chunk = Chunk(batch, heads, rows, scores, high=scores.amax(-1), low=scores.amin(-1), block=block)
    bias = ctx.combined_bias(batch.index, rows, ctx.mask_semantics, ctx.causal_align)
    if bias is not None and bias.dim() == 3 and bias.shape[0] > 1:
        bias = bias[heads]
    if bias is None and batch.q is None and bool((scores <= MASKED_BIAS).any()):
        # scores saved after a mask was applied (eager capture): fills are masked keys, not logits
        bias = torch.where(scores <= MASKED_BIAS, float("-inf"), 0.0)
    chunk.bias = bias
    return chunk


def _reduce_chunk(ctx: CaseContext, reducers: list[Reducer], chunk: Chunk, workspace: Workspace) -> None:
    """The softmax of a chunk and what the reducers read of it: torch's fused softmax (one
    kernel for exp and the row sums, ~2× cheaper than ``torch.exp`` alone on CPU), its row max
    (= 1/Σ exp(S − m): the log-sum-exp without a second exp) and Σ p·(S − m) for the entropy."""
    for reducer in reducers:
        reducer.scores(chunk)
    zero = torch.zeros((), device=chunk.scores.device)
    if chunk.bias is None:
        logits, row_max = chunk.scores, chunk.high
    else:
        logits = chunk.scores.add_(chunk.bias)
        row_max = logits.amax(-1)
    live = torch.isfinite(row_max)
    shift = torch.where(live, row_max, zero)
    logits = logits.sub_(shift[..., None])
    weights = workspace.take("weights", tuple(logits.shape), logits.device)
    torch.ops.aten._softmax.out(logits, -1, False, out=weights)  # torch.softmax, into the buffer
    if str(ctx.device) != "cpu" or not bool(live.all()):
        weights.masked_fill_(~live[..., None], 0.0)  # a row with nothing to attend: NaN → 0
    if chunk.bias is not None:
        logits.clamp_(min=-1e30)  # -inf → -1e30: its weight is 0 and 0·(-1e30) is not NaN
    chunk.scores = zero  # the scores were shifted in place: no reducer may read them now
    chunk.shift, chunk.live, chunk.weights = shift, live, weights
    chunk.max_weight = weights.amax(-1)
    chunk.dot = torch.mul(weights, logits, out=logits).sum(-1)
    for reducer in reducers:
        reducer.weights(chunk)


def _weights_only_chunk(ctx: CaseContext, acc: Accumulator, b: int, rows: slice, stride: int) -> None:
    """Statistics straight from saved weights, for cases without q/k/v or scores."""
    H = ctx.sizes["Hq"]
    st, gram = acc.rows, acc.totals["head_gram"]
    uw = ctx.user_weights
    assert uw is not None
    probs = uw[min(b, uw.shape[0] - 1), :, rows].to(ctx.device, torch.float32).expand(H, -1, -1)
    probs = torch.where(torch.isfinite(probs), probs, torch.zeros((), device=ctx.device)).clamp_min(0)
    kept = probs > 0
    st["n_kept"][b, :, rows] = kept.sum(-1).to(torch.float32).clamp_min(1)
    st["entropy"][b, :, rows] = -(torch.special.xlogy(probs, probs)).sum(-1)
    st["max_weight"][b, :, rows] = probs.amax(-1)
    st["sink"][b, :, rows] = probs[..., 0]
    for name, (target, valid) in row_positions(ctx, rows, ctx.device).items():
        picked = probs.gather(-1, target.expand(H, -1)[..., None])[..., 0]
        st[name][b, :, rows] = torch.where(valid, picked, torch.zeros((), device=ctx.device))
    first_sample = -rows.start % stride
    if first_sample < rows.stop - rows.start:
        flat = probs[:, first_sample::stride].reshape(H, -1).to(torch.float64)
        gram[b] += flat @ flat.T
