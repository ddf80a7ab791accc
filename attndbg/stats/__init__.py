"""The statistics pass: every forward statistic from one sweep over query-row chunks.

For each (batch, group of heads, chunk of query rows) the scores are computed once
(``(q·scale) @ kᵀ``) and each *reducer* reduces what it needs from them: row max and
log-sum-exp, entropy as ``lse − Σ p·s`` (no ``log p``), max weight, coverage of the mask,
sink/diagonal/previous-token mass, non-finite counts, ``P·V`` for the output check. After the
sweep, the head-similarity Gram matrix (duplicate heads) and — only when the user saved their
own ``scores``/``weights``/``out`` — the error of each competing hypothesis (scale, mask
convention, causal flag, softmax axis) against them. No float tensor of shape
(batch, heads, q_len, k_len) is ever held: a chunk is sized to fit ``ctx.max_memory``.

Work follows selection: each reducer belongs to a family (:class:`attndbg.vocab.Statistic`)
and runs only when a running check declares it in ``Check.reads`` (row statistics always run).

Adding a statistic = adding a reducer:

1. subclass :class:`Reducer` in ``reducers.py`` (or a new module), set ``family``;
2. ``start``: allocate, e.g. ``self.acc.per_row("my_stat")`` — a (B, H, Lq) float32 tensor —
   or put anything in ``self.acc.totals``;
3. ``scores(chunk)`` reads the chunk before the softmax (``chunk.scores``, ``chunk.bias``,
   ``chunk.high``/``chunk.low``); ``weights(chunk)`` after it (``chunk.weights``,
   ``chunk.live``, ``chunk.max_weight``, ``chunk.shift``, ``chunk.dot``); write at
   ``chunk.at`` = (batch, heads slice, rows slice) — blocks of rows run on several threads,
   so write only there, and guard anything shared; ``finish()`` runs after the last chunk;
4. append the class to ``REDUCERS``; per-row results named in ``ROW_STATISTICS`` become
   fields of :class:`AttentionStats` (add the field), totals are read in ``driver.py``.

Modules: ``chunks`` (sizing, Chunk, Accumulator, Reducer), ``reducers`` (the reference
pass's reducers), ``driver`` (the loop), ``saved`` (hypotheses against saved artefacts),
``readings`` (readings with a fitted parameter — scale, dropout — or a changed computation,
measured only when the assumed reading does not match),
``locate`` (first non-finite value), ``heads`` (per-head aggregates), ``result``.
"""

from attndbg.stats.chunks import Accumulator, Chunk, Reducer, chunk_rows, chunk_shape
from attndbg.stats.driver import compute_stats, wants
from attndbg.stats.heads import head_summary, heads_over_batch
from attndbg.stats.reducers import REDUCERS
from attndbg.stats.result import AttentionStats
from attndbg.stats.saved import Hypothesis, build_hypotheses, safe_softmax

__all__ = [
    "REDUCERS",
    "Accumulator",
    "AttentionStats",
    "Chunk",
    "Hypothesis",
    "Reducer",
    "build_hypotheses",
    "chunk_rows",
    "chunk_shape",
    "compute_stats",
    "head_summary",
    "heads_over_batch",
    "safe_softmax",
    "wants",
]
