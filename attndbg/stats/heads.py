"""Per-head aggregates of the row statistics: what the PAT checks and the report's table read."""

from __future__ import annotations

import torch

from attndbg.report import HeadStats
from attndbg.stats.result import AttentionStats

_HEAD_MEANS = (
    "entropy",
    "entropy_ratio",
    "max_weight",
    "collapsed_share",
    "uniform_share",
    "sink_mass",
    "diagonal_mass",
    "previous_mass",
    "next_mass",
    "logit_std",
)


def head_summary(
    stats: AttentionStats,
    padding: torch.Tensor | None = None,
    collapsed_at: float = 0.95,
    uniform_at: float = 0.99,
) -> list[list[HeadStats]]:
    """Per-(batch, head) aggregates of the row statistics, indexed ``[batch][head]``.

    Only rows with at least 4 attended keys count (not the first rows of a causal map, nor
    fully masked rows): with one or two keys any row looks sharp, sink-like or flat. Nor do
    the query rows that ``padding`` ((B or 1, Lq) bool, see
    :func:`attndbg.attention.padding_queries`) marks: a padded batch discards their outputs,
    and their weights are whatever the padding token's query or the mask's fill makes them.
    Read only when q_len == k_len (self-attention over the whole sequence); otherwise every
    row counts.
    """
    n = stats.n_kept
    B, H, Lq = n.shape
    real = torch.ones(B, 1, Lq, dtype=torch.bool)
    # Only where query i's own key is key i: in a cached step, a chunk or cross-attention a
    # hidden key says nothing sure about a query (a decode step whose mask was not extended
    # hides every new token's own key, MSK008; grouped heads may be packed on the query axis).
    if padding is not None and stats.n_keys == Lq and padding.shape[0] in (1, B) and padding.shape[-1] == Lq:
        real = ~padding.cpu().reshape(-1, 1, Lq).expand(B, 1, Lq)
    informative = (n >= 4) & real
    log_n = torch.log(n.clamp_min(2))
    ratio = torch.where(n > 1, stats.entropy / log_n, torch.ones_like(n))
    per_row = {
        "entropy": stats.entropy,
        "entropy_ratio": ratio,
        "max_weight": stats.max_weight,
        "collapsed_share": (stats.max_weight > collapsed_at).float(),
        "uniform_share": (ratio > uniform_at).float(),
        "sink_mass": stats.sink,
        "diagonal_mass": stats.diagonal,
        "previous_mass": stats.previous,
        "next_mass": stats.next,
        "logit_std": stats.logit_std,
    }
    summary = []
    for b in range(B):
        left_out = Lq - int(real[b].sum())
        heads = []
        for h in range(H):
            rows = informative[b, h]
            count = int(rows.sum())
            means = {name: float(t[b, h][rows].mean()) if count else 0.0 for name, t in per_row.items()}
            top = float(stats.max_logit[b, h][rows].max()) if count else 0.0
            heads.append(HeadStats(head=h, rows=count, padding_rows=left_out, max_logit=top, **means))
        summary.append(heads)
    return summary


def heads_over_batch(stats: AttentionStats, padding: torch.Tensor | None = None) -> list[HeadStats]:
    """Per-head statistics: ``head_summary`` averaged over the batch, weighted by informative
    rows (max_logit is the maximum), padding query rows left out. Heads with no informative
    row keep zeros and ``rows`` 0."""
    per_batch = head_summary(stats, padding)
    heads = []
    for h in range(stats.n_kept.shape[1]):
        samples = [batch[h] for batch in per_batch]
        total = sum(s.rows for s in samples)
        means = {name: sum(getattr(s, name) * s.rows for s in samples) / (total or 1) for name in _HEAD_MEANS}
        top = max((s.max_logit for s in samples), default=0.0)
        left_out = sum(s.padding_rows for s in samples)
        heads.append(HeadStats(head=h, rows=total, padding_rows=left_out, max_logit=top, **means))
    return heads
