"""The statistics pass: every forward statistic from one sweep over query-row chunks.

For each (batch, chunk of query rows) the scores of all heads are computed once
(``q_chunk @ kᵀ``), and everything the checks need is reduced from them at once:
row max and log-sum-exp, entropy as ``lse − Σ p·s`` (no ``log p``), max weight,
coverage of the mask, sink/diagonal/previous-token mass, non-finite counts,
``P·V`` for the output check, a head-similarity Gram matrix, and — only when the
user saved their own ``scores``/``weights``/``out`` — the error of each competing
hypothesis (scale, mask convention, causal flag, softmax axis) against them.

No float tensor of shape (batch, heads, q_len, k_len) is ever held: a chunk's
rows are chosen so that its temporaries fit in ``ctx.max_memory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from attndbg.attention import MASKED_BIAS
from attndbg.report import HeadStats
from attndbg.vocab import Artefact, CausalAlign, MaskSemantics, Reading, Statistic

if TYPE_CHECKING:
    from attndbg.context import CaseContext

# float32 temporaries alive at once per score element in the reference pass: the scores
# (shifted in place), their exponentials, and with a mask the bias and one masked product.
_TEMPORARIES_PER_ELEMENT = 4
_GRAM_ROWS = 256  # rows sampled per (batch, head) for the duplicate-head similarity
_CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32 scores per chunk: stays in cache with its exp
_MIN_ROWS = 64  # fewer rows per GEMM wastes the matmul kernel (measured: 32 rows is ~30% slower)


@dataclass(frozen=True)
class Hypothesis:
    label: Reading
    scale: float
    mask: MaskSemantics | None  # semantics to read the mask with; None = no mask applied
    causal: CausalAlign | None
    axis: str = "keys"  # the softmax axis: "keys" or "queries"


@dataclass
class AttentionStats:
    """Per-row statistics (tensors of shape (B, H, Lq), float32, on the CPU) and totals."""

    source: str
    chunk_rows: int
    chunks: int
    chunk_bytes: int
    max_logit: torch.Tensor  # max |scaled logit| over attended keys
    absmax_raw: torch.Tensor
    logit_mean: torch.Tensor
    logit_std: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor
    max_weight: torch.Tensor
    sink: torch.Tensor
    diagonal: torch.Tensor
    previous: torch.Tensor
    next: torch.Tensor
    n_kept: torch.Tensor
    masked_mass: torch.Tensor
    n_keys: int
    out: torch.Tensor | None
    head_gram: torch.Tensor  # (B, H, H) Σ p_h·p_g over the sampled rows
    nonfinite: dict[str, int] = field(default_factory=dict)
    first_nonfinite: dict[str, list[int]] = field(default_factory=dict)
    user_row_sum: torch.Tensor | None = None
    user_col_sum: torch.Tensor | None = None
    user_min: float | None = None
    user_max: float | None = None
    user_masked_mass: torch.Tensor | None = None
    user_above_diagonal: torch.Tensor | None = None
    user_out_vs_weights: float | None = None
    hypotheses: dict[Artefact, dict[Reading, float]] = field(default_factory=dict)

    @property
    def fully_masked(self) -> torch.Tensor:
        return self.n_kept == 0


def safe_softmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last axis that gives zeros (not NaN) for rows that are all -inf,
    as PyTorch 2.13's SDPA does; returns (probabilities, log-sum-exp)."""
    row_max = logits.amax(-1, keepdim=True)
    shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(logits - shift)
    total = exp.sum(-1, keepdim=True)
    probs = exp / torch.where(total > 0, total, torch.ones_like(total))
    lse = (shift + torch.log(total)).squeeze(-1)
    return probs, lse


def build_hypotheses(ctx: CaseContext) -> list[Hypothesis]:
    """The assumed reading of the case first, then one-factor-at-a-time alternatives."""
    scale = ctx.scale
    mask = ctx.mask_semantics
    causal = ctx.causal_align
    hyps = [Hypothesis(Reading.REFERENCE, scale, mask, causal)]
    d = ctx.sizes["D"]
    scales = ((Reading.NO_SCALE, 1.0), (Reading.SCALE_1_D, 1.0 / d), (Reading.SCALE_1_SQRT_D, d**-0.5))
    for label, alt in scales:
        if not math.isclose(alt, scale, rel_tol=1e-6):
            hyps.append(Hypothesis(label, alt, mask, causal))
    if mask is not None:
        for semantics in MaskSemantics:
            if semantics != mask:
                hyps.append(Hypothesis(Reading.mask_as(semantics), scale, semantics, causal))
        hyps.append(Hypothesis(Reading.MASK_IGNORED, scale, None, causal))
    if causal:
        hyps.append(Hypothesis(Reading.NOT_CAUSAL, scale, mask, None))
        if ctx.sizes["Lq"] != ctx.sizes["Lk"]:
            hyps.append(Hypothesis(Reading.CAUSAL_LOWER_RIGHT, scale, mask, CausalAlign.LOWER_RIGHT))
    else:
        hyps.append(Hypothesis(Reading.CAUSAL, scale, mask, CausalAlign.UPPER_LEFT))
    hyps.append(Hypothesis(Reading.SOFTMAX_OVER_QUERIES, scale, mask, causal, axis="queries"))
    return hyps


def chunk_rows(ctx: CaseContext) -> int:
    heads, lk = ctx.sizes["Hq"], max(ctx.sizes["Lk"], 1)
    per_row = heads * lk * 4 * _TEMPORARIES_PER_ELEMENT
    return max(1, min(ctx.sizes["Lq"], ctx.max_memory // per_row))


def chunk_shape(ctx: CaseContext) -> tuple[int, int]:
    """(heads, rows) per chunk: about ``_CHUNK_ELEMENTS`` scores, so that the scores and their
    exponentials stay in cache between the passes, and never more than the memory budget."""
    heads, lk, lq = ctx.sizes["Hq"], max(ctx.sizes["Lk"], 1), max(ctx.sizes["Lq"], 1)
    budget_rows = chunk_rows(ctx)
    if str(ctx.device) != "cpu":
        return heads, budget_rows  # a GPU wants few, large launches; its cache is not the limit
    rows = min(lq, budget_rows, _MIN_ROWS)
    group = max(1, min(heads, _CHUNK_ELEMENTS // (rows * lk)))
    if group == heads:
        rows = min(lq, budget_rows, max(rows, _CHUNK_ELEMENTS // (heads * lk)))
    while group > 1 and group * rows * lk * 4 * _TEMPORARIES_PER_ELEMENT > ctx.max_memory:
        group -= 1
    return group, max(1, rows)


def _first_column(ctx: CaseContext, stage: str, row: list[int]) -> int:
    """Column of the first non-finite value in one (batch, head, query) row, recomputed."""
    b, h, i = row
    if stage == "output":
        out = _reference_row(ctx, b, h, i)
        return int((~torch.isfinite(out)).nonzero()[0]) if bool((~torch.isfinite(out)).any()) else 0
    if ctx.has_qkv:
        q = ctx.q[min(b, ctx.q.shape[0] - 1), h, i] * ctx.scale
        scores = ctx.k[min(b, ctx.k.shape[0] - 1), h] @ q
    else:
        us = ctx.user_scores
        scores = us[min(b, us.shape[0] - 1), min(h, us.shape[1] - 1), i].float()
    bad = ~torch.isfinite(scores) if ctx.has_qkv else torch.isnan(scores) | torch.isposinf(scores)
    return int(bad.nonzero()[0]) if bool(bad.any()) else 0


def _reference_row(ctx: CaseContext, b: int, h: int, i: int) -> torch.Tensor:
    rows = slice(i, i + 1)
    q = ctx.q[min(b, ctx.q.shape[0] - 1), h : h + 1, rows] * ctx.scale
    logits = torch.matmul(q, ctx.k[min(b, ctx.k.shape[0] - 1), h : h + 1].transpose(-1, -2))
    bias = ctx.combined_bias(b, rows, ctx.mask_semantics, ctx.causal_align)
    if bias is not None:
        logits = logits + (bias[h : h + 1] if bias.shape[0] > 1 else bias)
    probs, _ = safe_softmax(logits)
    return torch.matmul(probs, ctx.v[min(b, ctx.v.shape[0] - 1), h : h + 1])[0, 0]


def _head_gram(ctx: CaseContext, gram: torch.Tensor, stride: int, lse: torch.Tensor) -> None:
    """Σ p_h·p_g between heads over every ``stride``-th query row, for duplicate heads."""
    B, Lq = ctx.sizes["B"], ctx.sizes["Lq"]
    causal = ctx.causal_align
    heads, lk = ctx.sizes["Hq"], max(ctx.sizes["Lk"], 1)
    per_chunk = max(1, min(chunk_rows(ctx), _CHUNK_ELEMENTS // (heads * lk)))
    for b in range(B):
        for first in range(0, Lq, per_chunk * stride):
            rows = slice(first, min(Lq, first + per_chunk * stride), stride)
            q = ctx.q[min(b, ctx.q.shape[0] - 1), :, rows] * ctx.scale
            logits = torch.matmul(q, ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2))
            bias = ctx.combined_bias(b, rows, ctx.mask_semantics, causal)
            if bias is not None:
                logits = logits + bias
            row_lse = lse[b, :, rows].to(logits.device)[..., None]
            probs = torch.where(torch.isfinite(row_lse), torch.exp(logits - row_lse), 0.0)
            flat = torch.nan_to_num(probs, nan=0.0).reshape(probs.shape[0], -1)
            gram[b] += (flat @ flat.T).to(torch.float64)


def _first_index(bad: torch.Tensor, prefix: tuple[int, int], head0: int = 0) -> list[int]:
    idx = bad.nonzero()[0].tolist()  # (h, i, j) within the chunk
    return [prefix[0], head0 + idx[0], prefix[1] + idx[1], idx[2]]


def compute_stats(ctx: CaseContext) -> AttentionStats:
    """The reference pass over every chunk, then — only if the user saved scores, weights or
    an output — a second pass that measures them against each hypothesis."""
    stats = _reference_pass(ctx)
    saved = ctx.has_qkv and any(ctx.has(r) for r in Artefact) or ctx.has(Artefact.WEIGHTS)
    if saved and wants(ctx, Statistic.SAVED):
        _user_pass(ctx, stats)
    return stats


def wants(ctx: CaseContext, family: Statistic) -> bool:
    """Whether a running check reads ``family`` (everything, outside the engine)."""
    return ctx.wanted is None or family in ctx.wanted


def _row_positions(
    ctx: CaseContext, start: int, stop: int, offset: int, device: torch.device | str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    i_idx = torch.arange(start, stop, device=device)
    positions = {}
    for name, shift in (("diagonal", 0), ("previous", -1), ("next", 1)):
        target = i_idx + offset + shift
        valid = (target >= 0) & (target < ctx.sizes["Lk"])
        positions[name] = (target.clamp(0, ctx.sizes["Lk"] - 1), valid)
    return positions


def _reference_pass(ctx: CaseContext) -> AttentionStats:  # noqa: C901 - one fused pass, on purpose
    """Per chunk: S = (q·scale)·kᵀ once, then only row reductions and two GEMMs.

    * max weight is 1/l (the arg-max entry of exp(S − m) is exactly 1), sink/diagonal/
      previous/next weights are gathers of single columns;
    * entropy is log l − Σ E·(S − m) / l, one batched dot product;
    * without a mask the logit mean and variance are q-side formulas (q·k̄ and qᵀ(KᵀK)q),
      so no pass over the scores is spent on them;
    * non-finite scores are detected from the row min/max; elements are counted only in
      the rare chunks where a row reduction is not finite.
    """
    sizes = ctx.sizes
    B, H, Lq, Lk = sizes["B"], sizes["Hq"], sizes["Lq"], sizes["Lk"]
    device = ctx.device
    has_qkv = ctx.has_qkv
    heads_per_chunk, rows_per_chunk = chunk_shape(ctx) if has_qkv else (H, chunk_rows(ctx))

    def per_row(fill: float = 0.0) -> torch.Tensor:
        return torch.full((B, H, Lq), fill, dtype=torch.float32, device=device)

    names = [
        *("max_logit", "absmax_raw", "logit_mean", "logit_std", "lse", "entropy", "max_weight"),
        *("sink", "diagonal", "previous", "next", "n_kept", "masked_mass"),
    ]
    st = {name: per_row() for name in names}
    with_output = has_qkv and wants(ctx, Statistic.OUTPUT)
    out = torch.zeros(B, H, Lq, sizes["Dv"], dtype=torch.float32, device=device) if with_output else None
    gram = torch.zeros(B, H, H, dtype=torch.float64, device=device)
    sync_free = str(device) != "cpu"
    bad_scores = torch.zeros(B, H, Lq, dtype=torch.int64, device=device)
    bad_output = torch.zeros(B, H, Lq, dtype=torch.int64, device=device)
    gram_stride = max(1, Lq // _GRAM_ROWS)
    nonfinite = {"scores": 0, "weights": 0, "output": 0}
    first: dict[str, list[int]] = {}
    offset = Lk - Lq if Lk > Lq else 0
    zero = torch.zeros((), device=device)
    causal = ctx.causal_align
    masked = ctx.mask4d is not None or causal is not None
    chunks = 0

    for b in range(B):
        if has_qkv:
            qb = ctx.q[min(b, ctx.q.shape[0] - 1)] * ctx.scale
            kt = ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2)
            vb = ctx.v[min(b, ctx.v.shape[0] - 1)]
            if not masked:
                k_mean = kt.mean(-1)  # (H, D): Σ_j S_ij / Lk = (q_i·scale)·k̄
                centered = kt - k_mean[..., None]
                # (H, D, D) covariance of the keys: Var_j(S_ij) = q̃ᵢᵀ Σ_K q̃ᵢ, exact and without the
                # cancellation of E[S²] − E[S]² when logits are large
                k_cov = (centered @ centered.transpose(-1, -2) / Lk).double()
                del centered
        for h0 in range(0, H, heads_per_chunk):
            hs = slice(h0, min(H, h0 + heads_per_chunk))
            hn = hs.stop - hs.start
            for start in range(0, Lq, rows_per_chunk):
                stop = min(Lq, start + rows_per_chunk)
                rows = slice(start, stop)
                chunks += 1
                if has_qkv:
                    scores = torch.matmul(qb[hs, rows], kt[hs])
                elif ctx.user_scores is not None:
                    us = ctx.user_scores
                    scores = (
                        us[min(b, us.shape[0] - 1), :, rows]
                        .to(device, torch.float32)
                        .expand(H, -1, -1)[hs]
                        .clone()
                    )
                else:
                    _weights_only_chunk(ctx, st, b, rows, gram, gram_stride)
                    continue

                high = scores.amax(-1)  # amax and amin beat aminmax by ~20x on CPU (torch 2.13)
                low = scores.amin(-1)
                bad_rows = ~(torch.isfinite(low) & torch.isfinite(high))
                # On the CPU a row-level test skips the element pass in the common, finite case;
                # on a GPU that test would cost a host sync per chunk, so count unconditionally.
                if sync_free or bool(bad_rows.any()):
                    bad = ~torch.isfinite(scores)
                    if not has_qkv:
                        bad &= scores != float("-inf")  # -inf in saved scores means "masked"
                    bad_scores[b, hs, rows] = bad.sum(-1)
                    scores = torch.where(
                        torch.isnan(scores), torch.full((), float("-inf"), device=device), scores
                    )
                    low = torch.where(torch.isfinite(low), low, zero)
                    high = torch.where(torch.isfinite(high), high, zero)
                st["absmax_raw"][b, hs, rows] = torch.maximum(high, -low)

                bias = ctx.combined_bias(b, rows, ctx.mask_semantics, causal)
                if bias is not None and bias.dim() == 3 and bias.shape[0] > 1:
                    bias = bias[hs]
                if bias is None:
                    st["n_kept"][b, hs, rows] = Lk
                    st["max_logit"][b, hs, rows] = torch.maximum(high, -low)
                    if has_qkv:
                        q_chunk = qb[hs, rows]
                        mean = (q_chunk * k_mean[hs, None, :]).sum(-1)
                        q64 = q_chunk.double()
                        variance = ((q64 @ k_cov[hs]) * q64).sum(-1)
                        st["logit_mean"][b, hs, rows] = mean
                        st["logit_std"][b, hs, rows] = variance.clamp_min(0).sqrt().float()
                    row_max = high
                    logits = scores
                else:
                    kept = bias > MASKED_BIAS
                    count = kept.sum(-1).to(torch.float32)
                    st["n_kept"][b, hs, rows] = count.expand(hn, -1)
                    kept_abs = torch.where(kept, scores.abs(), zero)
                    st["max_logit"][b, hs, rows] = kept_abs.amax(-1)
                    kept_scores = torch.where(kept, scores, zero)
                    mean = kept_scores.sum(-1) / count.clamp_min(1)
                    deviation = torch.where(kept, scores - mean[..., None], zero)
                    variance = (deviation * deviation).sum(-1) / count.clamp_min(1)
                    st["logit_mean"][b, hs, rows] = mean
                    st["logit_std"][b, hs, rows] = variance.sqrt()
                    logits = scores.add_(bias)
                    row_max = logits.amax(-1)
                shift = torch.where(torch.isfinite(row_max), row_max, zero)
                logits = logits.sub_(shift[..., None])
                if bias is not None:
                    logits.clamp_(min=-1e30)  # -inf → -1e30: exp is still 0 and 0·(-1e30) is not NaN
                exp = torch.exp(logits)
                dot = torch.linalg.vecdot(exp, logits)
                del logits, scores
                total = exp.sum(-1)
                live = total > 0
                safe_total = torch.where(live, total, torch.ones((), device=device))
                if out is not None:
                    out_chunk = torch.matmul(exp, vb[hs]) / safe_total[..., None]
                    out_chunk = torch.where(live[..., None], out_chunk, zero)
                    out[b, hs, rows] = out_chunk
                    bad_output[b, hs, rows] = (~torch.isfinite(out_chunk)).sum(-1)
                log_total = torch.log(safe_total)
                st["lse"][b, hs, rows] = torch.where(
                    live, shift + log_total, torch.full((), float("-inf"), device=device)
                )
                st["entropy"][b, hs, rows] = torch.where(live, log_total - dot / safe_total, zero).clamp_min(
                    0
                )
                st["max_weight"][b, hs, rows] = torch.where(live, 1.0 / safe_total, zero)
                st["sink"][b, hs, rows] = exp[..., 0] / safe_total
                for name, (target, valid) in _row_positions(ctx, start, stop, offset, device).items():
                    picked = exp.gather(-1, target.expand(hn, -1)[..., None])[..., 0]
                    st[name][b, hs, rows] = torch.where(valid, picked / safe_total, zero)
                if bias is not None and ctx.mask_semantics == MaskSemantics.ADDITIVE:
                    hard = bias <= MASKED_BIAS
                    finite_hard = hard & torch.isfinite(bias)
                    if sync_free or bool(finite_hard.any()):
                        st["masked_mass"][b, hs, rows] = (exp * finite_hard).sum(-1) / safe_total
                del exp

    for stage, counts in (("scores", bad_scores), ("output", bad_output)):
        total = int(counts.sum())
        if total:
            nonfinite[stage] = total
            row = (counts > 0).nonzero()[0].tolist()
            first[stage] = [*row, _first_column(ctx, stage, row)]
    if has_qkv and wants(ctx, Statistic.HEAD_GRAM):
        _head_gram(ctx, gram, gram_stride, st["lse"])
    return AttentionStats(
        source="reference" if has_qkv else ("scores" if ctx.user_scores is not None else "weights"),
        chunk_rows=rows_per_chunk,
        chunks=chunks,
        chunk_bytes=rows_per_chunk * heads_per_chunk * Lk * 4 * _TEMPORARIES_PER_ELEMENT,
        n_keys=Lk,
        out=out,
        head_gram=gram.cpu(),
        nonfinite=nonfinite,
        first_nonfinite=first,
        **{name: tensor.cpu() for name, tensor in st.items()},
    )


def _weights_only_chunk(
    ctx: CaseContext, st: dict, b: int, rows: slice, gram: torch.Tensor, stride: int
) -> None:
    """Statistics straight from saved weights, for cases without q/k/v or scores."""
    H = ctx.sizes["Hq"]
    uw = ctx.user_weights
    probs = uw[min(b, uw.shape[0] - 1), :, rows].to(ctx.device, torch.float32).expand(H, -1, -1)
    probs = torch.where(torch.isfinite(probs), probs, torch.zeros((), device=ctx.device)).clamp_min(0)
    kept = probs > 0
    st["n_kept"][b, :, rows] = kept.sum(-1).to(torch.float32).clamp_min(ctx.sizes["Lk"] * 0 + 1)
    st["entropy"][b, :, rows] = -(torch.special.xlogy(probs, probs)).sum(-1)
    st["max_weight"][b, :, rows] = probs.amax(-1)
    st["sink"][b, :, rows] = probs[..., 0]
    offset = max(ctx.sizes["Lk"] - ctx.sizes["Lq"], 0)
    for name, (target, valid) in _row_positions(ctx, rows.start, rows.stop, offset, ctx.device).items():
        picked = probs.gather(-1, target.expand(H, -1)[..., None])[..., 0]
        st[name][b, :, rows] = torch.where(valid, picked, torch.zeros((), device=ctx.device))
    first_sample = -rows.start % stride
    if first_sample < rows.stop - rows.start:
        flat = probs[:, first_sample::stride].reshape(H, -1).to(torch.float64)
        gram[b] += flat @ flat.T


def _user_pass(ctx: CaseContext, stats: AttentionStats) -> None:
    """The user's saved weights/scores/out: sums, range, masked and future mass, and the max
    error of every hypothesis. Runs only when such artefacts exist (small cases, in practice)."""
    sizes = ctx.sizes
    B, H, Lq, Lk = sizes["B"], sizes["Hq"], sizes["Lq"], sizes["Lk"]
    device = ctx.device
    rows_per_chunk = chunk_rows(ctx)
    user_w, user_s, user_out = ctx.user_weights, ctx.user_scores, ctx.out
    has_qkv = ctx.has_qkv
    zero = torch.zeros((), device=device)

    def per_row() -> torch.Tensor:
        return torch.zeros((B, H, Lq), dtype=torch.float32, device=device)

    hyps = build_hypotheses(ctx) if has_qkv else []
    errors: dict[Artefact, dict[Reading, float]] = {}
    row_sum = user_masked = user_above = col_sum = None
    user_min, user_max = math.inf, -math.inf
    out_vs_weights = 0.0 if (user_w is not None and user_out is not None and has_qkv) else None
    if user_w is not None:
        row_sum, user_masked, user_above = per_row(), per_row(), per_row()
        col_sum = torch.zeros(B, H, Lk, dtype=torch.float64, device=device)
    col_lse = None
    if user_w is not None and any(h.axis == "queries" for h in hyps):
        col_lse = _column_lse(ctx, hyps[0], rows_per_chunk)

    def record(artefact: Artefact, label: Reading, value: float) -> None:
        table = errors.setdefault(artefact, {})
        table[label] = max(table.get(label, 0.0), value)

    j_idx = torch.arange(Lk, device=device)
    for b in range(B):
        for start in range(0, Lq, rows_per_chunk):
            stop = min(Lq, start + rows_per_chunk)
            rows = slice(start, stop)
            i_idx = torch.arange(start, stop, device=device)
            raw = None
            if has_qkv:
                raw = torch.matmul(
                    ctx.q[min(b, ctx.q.shape[0] - 1), :, rows],
                    ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2),
                )
            if user_w is not None:
                bias = ctx.combined_bias(b, rows, ctx.mask_semantics, ctx.causal_align)
                w = user_w[min(b, user_w.shape[0] - 1), :, rows].to(device, torch.float32).expand(H, -1, -1)
                finite_w = torch.where(torch.isfinite(w), w, zero)
                row_sum[b, :, rows] = finite_w.sum(-1)
                col_sum[b] += finite_w.sum(1).to(torch.float64)
                finite = torch.isfinite(w)
                if bool(finite.any()):
                    user_min = min(user_min, float(w[finite].min()))
                    user_max = max(user_max, float(w[finite].max()))
                if bias is not None:
                    user_masked[b, :, rows] = (finite_w * (bias <= MASKED_BIAS)).sum(-1)
                upper = j_idx[None, :] > i_idx[:, None]
                user_above[b, :, rows] = (finite_w * upper).sum(-1)
                if out_vs_weights is not None:
                    v = ctx.v[min(b, ctx.v.shape[0] - 1)]
                    o = user_out[min(b, user_out.shape[0] - 1), :, rows]
                    diff = (torch.matmul(finite_w, v) - o).abs()
                    diff = diff[torch.isfinite(diff)]
                    if diff.numel():
                        out_vs_weights = max(out_vs_weights, float(diff.max()))
            for hyp in hyps:
                _score_hypothesis(ctx, hyp, b, rows, raw, user_w, user_s, user_out, col_lse, record)

    if user_w is not None:
        stats.user_row_sum = row_sum.cpu()
        stats.user_col_sum = col_sum.cpu().to(torch.float32)
        stats.user_min = user_min if user_min != math.inf else None
        stats.user_max = user_max if user_max != -math.inf else None
        stats.user_masked_mass = user_masked.cpu()
        stats.user_above_diagonal = user_above.cpu()
    stats.user_out_vs_weights = out_vs_weights
    stats.hypotheses = errors


def _column_lse(ctx: CaseContext, hyp: Hypothesis, rows_per_chunk: int) -> torch.Tensor:
    """Log-sum-exp over the query axis, per key column, for the wrong-axis hypothesis."""
    B, H, Lq, Lk = (ctx.sizes[k] for k in ("B", "Hq", "Lq", "Lk"))
    col = torch.full((B, H, Lk), float("-inf"), device=ctx.device)
    for b in range(B):
        for start in range(0, Lq, rows_per_chunk):
            rows = slice(start, min(Lq, start + rows_per_chunk))
            logits = _hyp_logits(ctx, hyp, b, rows)
            col[b] = torch.logaddexp(col[b], torch.logsumexp(logits, dim=1))
    return col


def _hyp_logits(
    ctx: CaseContext, hyp: Hypothesis, b: int, rows: slice, raw: torch.Tensor | None = None
) -> torch.Tensor:
    if raw is None:
        raw = torch.matmul(
            ctx.q[min(b, ctx.q.shape[0] - 1), :, rows],
            ctx.k[min(b, ctx.k.shape[0] - 1)].transpose(-1, -2),
        )
    logits = raw * hyp.scale
    bias = ctx.combined_bias(b, rows, hyp.mask, hyp.causal)
    return logits if bias is None else logits + bias


def _score_hypothesis(ctx, hyp, b, rows, raw, user_w, user_s, user_out, col_lse, record) -> None:
    logits = _hyp_logits(ctx, hyp, b, rows, raw)
    if hyp.axis == "queries":
        if col_lse is None:
            return
        probs = torch.exp(logits - col_lse[b][:, None, :])
        probs = torch.nan_to_num(probs, nan=0.0)
    else:
        probs, _ = safe_softmax(logits)
    if user_w is not None:
        w = user_w[min(b, user_w.shape[0] - 1), :, rows].to(ctx.device, torch.float32)
        diff = (probs - w).abs()
        diff = diff[torch.isfinite(diff)]
        record(Artefact.WEIGHTS, hyp.label, float(diff.max()) if diff.numel() else 0.0)
    if user_s is not None and hyp.axis == "keys" and hyp.causal == ctx.causal_align:
        s = user_s[min(b, user_s.shape[0] - 1), :, rows].to(ctx.device, torch.float32)
        raw_scaled = raw * hyp.scale
        comparable = torch.isfinite(s) & (s.abs() < 1e3) & torch.isfinite(logits)
        diff = (raw_scaled - s).abs()[comparable.expand_as(raw_scaled)]
        if hyp.mask == ctx.mask_semantics:
            record(Artefact.SCORES, hyp.label, float(diff.max()) if diff.numel() else 0.0)
    if user_out is not None:
        o = user_out[min(b, user_out.shape[0] - 1), :, rows]
        diff = (torch.matmul(probs, ctx.v[min(b, ctx.v.shape[0] - 1)]) - o).abs()
        diff = diff[torch.isfinite(diff)]
        record(Artefact.OUT, hyp.label, float(diff.max()) if diff.numel() else 0.0)


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
    stats: AttentionStats, collapsed_at: float = 0.95, uniform_at: float = 0.99
) -> list[list[HeadStats]]:
    """Per-(batch, head) aggregates of the row statistics, indexed ``[batch][head]``.

    Only rows with at least 4 attended keys count (not the first rows of a causal map, nor
    fully masked rows): with one or two keys any row looks sharp, sink-like or flat.
    """
    n = stats.n_kept
    informative = n >= 4
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
    B, H, _ = n.shape
    summary = []
    for b in range(B):
        heads = []
        for h in range(H):
            rows = informative[b, h]
            count = int(rows.sum())
            means = {name: float(t[b, h][rows].mean()) if count else 0.0 for name, t in per_row.items()}
            top = float(stats.max_logit[b, h][rows].max()) if count else 0.0
            heads.append(HeadStats(head=h, rows=count, max_logit=top, **means))
        summary.append(heads)
    return summary


def heads_over_batch(stats: AttentionStats) -> list[HeadStats]:
    """Per-head statistics: ``head_summary`` averaged over the batch, weighted by informative
    rows (max_logit is the maximum). Heads with no informative row keep zeros and ``rows`` 0."""
    per_batch = head_summary(stats)
    heads = []
    for h in range(stats.n_kept.shape[1]):
        samples = [batch[h] for batch in per_batch]
        total = sum(s.rows for s in samples)
        means = {name: sum(getattr(s, name) * s.rows for s in samples) / (total or 1) for name in _HEAD_MEANS}
        top = max((s.max_logit for s in samples), default=0.0)
        heads.append(HeadStats(head=h, rows=total, max_logit=top, **means))
    return heads
