"""The reducers of the reference pass, one per family of statistics, in the order they run."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch

from attndbg.attention import MASKED_BIAS
from attndbg.stats.chunks import Chunk, Reducer
from attndbg.vocab import MaskSemantics, Statistic

if TYPE_CHECKING:
    from attndbg.context import CaseContext

GRAM_ROWS = 256  # rows sampled per (batch, head) for the duplicate-head similarity


class NonFiniteScores(Reducer):
    """Non-finite scores per row, and |raw score| max. Runs first: it turns NaN scores into
    -inf and non-finite row max/min into 0 (a row max stays -inf when the whole row is NaN or
    -inf: nothing to attend), so that the later reducers see clean scores.

    On the CPU a row-level test skips the element pass in the common, finite case; on a GPU
    that test would cost a host sync per chunk, so it counts unconditionally."""

    def start(self) -> None:
        self.bad = torch.zeros(self.acc.shape, dtype=torch.int64, device=self.acc.device)
        self.acc.per_row("absmax_raw")

    def scores(self, chunk: Chunk) -> None:
        high, low = chunk.high, chunk.low
        bad_rows = ~(torch.isfinite(low) & torch.isfinite(high))
        if str(self.ctx.device) != "cpu" or bool(bad_rows.any()):
            scores = chunk.scores
            bad = ~torch.isfinite(scores)
            if not self.ctx.has_qkv:
                bad &= scores != float("-inf")  # -inf in saved scores means "masked"
            self.bad[chunk.at] = bad.sum(-1)
            minus_inf = torch.full((), float("-inf"), device=scores.device)
            chunk.scores = torch.where(torch.isnan(scores), minus_inf, scores)
            zero = torch.zeros((), device=scores.device)
            chunk.low = low = torch.where(torch.isfinite(low), low, zero)
            # a row whose scores are all NaN or -inf keeps high = -inf: nothing to attend
            high = chunk.scores.amax(-1)
            chunk.high = high = torch.where(torch.isfinite(high) | (high == float("-inf")), high, zero)
        self.acc.rows["absmax_raw"][chunk.at] = torch.maximum(high, -low).clamp_min(0)

    def finish(self) -> None:
        record_nonfinite(self.ctx, self.acc.totals, "scores", self.bad)


class Logits(Reducer):
    """Attended keys per row, max |logit| over them, and the logits' mean and std.

    Without a mask the mean and variance are q-side formulas (q·k̄ and qᵀ Σ_K q, with Σ_K the
    keys' covariance, exact and without the cancellation of E[S²] − E[S]²), so no pass over
    the scores is spent on them."""

    def start(self) -> None:
        self.acc.per_row("n_kept", "max_logit", "logit_mean", "logit_std")
        self._moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def _key_moments(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:  # once per sample, whichever thread comes first
            if chunk.batch.index not in self._moments:
                kt = chunk.batch.kt
                assert kt is not None
                k_mean = kt.mean(-1)  # (H, D): Σ_j S_ij / Lk = (q_i·scale)·k̄
                k_cov = _covariance(kt, k_mean)
                self._moments = {chunk.batch.index: (k_mean, k_cov)}  # one sample's at a time
            return self._moments[chunk.batch.index]

    def scores(self, chunk: Chunk) -> None:
        rows, at = self.acc.rows, chunk.at
        if chunk.bias is None:
            rows["n_kept"][at] = self.ctx.sizes["Lk"]
            rows["max_logit"][at] = torch.maximum(chunk.high, -chunk.low)
            if chunk.batch.q is not None:
                k_mean, k_cov = self._key_moments(chunk)
                q_chunk = chunk.batch.q[chunk.heads, chunk.rows] * self.ctx.scale
                q64 = q_chunk.double()
                variance = ((q64 @ k_cov[chunk.heads]) * q64).sum(-1)
                rows["logit_mean"][at] = (q_chunk * k_mean[chunk.heads, None, :]).sum(-1)
                rows["logit_std"][at] = variance.clamp_min(0).sqrt().float()
            return
        scores = chunk.scores
        zero = torch.zeros((), device=scores.device)
        kept = chunk.bias > MASKED_BIAS
        count = kept.sum(-1).to(torch.float32)
        rows["n_kept"][at] = count.expand(chunk.n_heads, -1)
        rows["max_logit"][at] = torch.where(kept, scores.abs(), zero).amax(-1)
        mean = torch.where(kept, scores, zero).sum(-1) / count.clamp_min(1)
        deviation = torch.where(kept, scores - mean[..., None], zero)
        rows["logit_mean"][at] = mean
        rows["logit_std"][at] = ((deviation * deviation).sum(-1) / count.clamp_min(1)).sqrt()


def _covariance(kt: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(H, D, D) covariance of the keys' columns of ``kt`` (H, D, Lk), summed over blocks of
    keys: no centred copy of K (a quarter of the inputs at long lengths)."""
    heads, dim, keys = kt.shape
    step = max(1, (1 << 20) // max(1, heads * dim))
    total = torch.zeros(heads, dim, dim, dtype=torch.float64, device=kt.device)
    for start in range(0, keys, step):
        centered = kt[..., start : start + step] - mean[..., None]
        total += (centered @ centered.transpose(-1, -2)).double()
    return total / max(keys, 1)


class ReferenceOutput(Reducer):
    """The reference output P·V and its non-finite values."""

    family = Statistic.OUTPUT

    def start(self) -> None:
        b, h, lq = self.acc.shape
        device = self.acc.device
        self.acc.totals["out"] = torch.zeros(b, h, lq, self.ctx.sizes["Dv"], device=device)
        self.bad = torch.zeros(self.acc.shape, dtype=torch.int64, device=device)

    def weights(self, chunk: Chunk) -> None:
        weights, live, max_weight = chunk.weights, chunk.live, chunk.max_weight
        assert weights is not None and live is not None and max_weight is not None
        v = chunk.batch.v
        assert v is not None
        # as fused kernels do: Σ exp(S − m)·v, then ÷ Σ exp(S − m) — the sum may overflow where
        # the convex combination Σ p·v would not
        per_row = torch.where(live, max_weight, torch.ones((), device=weights.device))[..., None]
        out = torch.matmul(weights / per_row, v[chunk.heads]) * per_row  # nothing to attend: 0
        self.acc.totals["out"][chunk.at] = out
        self.bad[chunk.at] = (~torch.isfinite(out)).sum(-1)

    def finish(self) -> None:
        record_nonfinite(self.ctx, self.acc.totals, "output", self.bad)


class Softmax(Reducer):
    """Log-sum-exp, entropy and max weight per row. With l = Σ exp(S − m), the max weight is
    1/l (the arg-max entry of exp(S − m) is exactly 1), so log l = −log(max weight), the
    log-sum-exp is m + log l and the entropy is log l − Σ p·(S − m)."""

    def start(self) -> None:
        self.acc.per_row("lse", "entropy", "max_weight")

    def weights(self, chunk: Chunk) -> None:
        live, max_weight = chunk.live, chunk.max_weight
        assert live is not None and max_weight is not None and chunk.dot is not None
        assert chunk.shift is not None
        zero = torch.zeros((), device=max_weight.device)
        log_total = -torch.log(torch.where(live, max_weight, torch.ones((), device=zero.device)))
        rows, at = self.acc.rows, chunk.at
        minus_inf = torch.full((), float("-inf"), device=max_weight.device)
        rows["lse"][at] = torch.where(live, chunk.shift + log_total, minus_inf)
        entropy = torch.where(live, log_total - chunk.dot, zero)
        rows["entropy"][at] = entropy.clamp_min(0)
        rows["max_weight"][at] = max_weight


class Positions(Reducer):
    """Weight on the first key (sink), the token itself, the previous and the next token:
    gathers of single columns."""

    def start(self) -> None:
        self.acc.per_row("sink", "diagonal", "previous", "next")

    def weights(self, chunk: Chunk) -> None:
        weights = chunk.weights
        assert weights is not None
        rows, at = self.acc.rows, chunk.at
        rows["sink"][at] = weights[..., 0]
        zero = torch.zeros((), device=weights.device)
        for name, (target, valid) in row_positions(self.ctx, chunk.rows, weights.device).items():
            picked = weights.gather(-1, target.expand(chunk.n_heads, -1)[..., None])[..., 0]
            rows[name][at] = torch.where(valid, picked, zero)


class MaskedMass(Reducer):
    """Weight that keys under a finite additive fill still receive (a fill too close to the
    logits leaks)."""

    def start(self) -> None:
        self.acc.per_row("masked_mass")

    def weights(self, chunk: Chunk) -> None:
        bias = chunk.bias
        if bias is None or self.ctx.mask_semantics != MaskSemantics.ADDITIVE:
            return
        assert chunk.weights is not None
        finite_hard = (bias <= MASKED_BIAS) & torch.isfinite(bias)
        if str(self.ctx.device) != "cpu" or bool(finite_hard.any()):
            mass = (chunk.weights * finite_hard).sum(-1)
            self.acc.rows["masked_mass"][chunk.at] = mass


class HeadGram(Reducer):
    """Σ p_h·p_g between heads over every ``stride``-th query row, for duplicate heads: the
    sampled rows' weights of every head group are kept until the row block is complete, so
    the Gram matrix costs no second product. Padding query rows are left out, as in the head
    table."""

    family = Statistic.HEAD_GRAM

    def start(self) -> None:
        self.stride = max(1, self.acc.shape[2] // GRAM_ROWS)
        self._blocks: dict[tuple[int, int], torch.Tensor] = {}  # per row block: one thread each
        self._lock = threading.Lock()
        self._real = self._real_rows()

    def _real_rows(self) -> torch.Tensor | None:
        """(B or 1, Lq) bool, False at padding query rows (as the head table leaves them out:
        only where query i's own key is key i), or None when every row counts."""
        if self.acc.shape[2] != self.ctx.sizes["Lk"]:
            return None
        padding = self.ctx.padding_query_rows
        return None if padding is None or not bool(padding.any()) else ~padding

    def _sampled(self, rows: slice) -> range:
        return range(rows.start + (-rows.start % self.stride), rows.stop, self.stride)

    def weights(self, chunk: Chunk) -> None:
        weights = chunk.weights
        assert weights is not None
        heads, block = self.acc.shape[1], self._sampled(chunk.block)
        key = (chunk.batch.index, chunk.block.start)
        if chunk.heads.start == 0 and chunk.rows.start == chunk.block.start and len(block):
            self._blocks[key] = torch.zeros((heads, len(block), weights.shape[-1]), device=weights.device)
        sampled = self._blocks.get(key)
        mine = self._sampled(chunk.rows)
        if sampled is not None and len(mine):
            local = slice(mine.start - chunk.rows.start, None, self.stride)
            at = block.index(mine.start)
            picked = torch.nan_to_num(weights[:, local], nan=0.0)
            if self._real is not None:  # padding rows weigh nothing in the similarity
                real = self._real[min(chunk.batch.index, self._real.shape[0] - 1), mine.start :: self.stride]
                picked = picked * real[: len(mine)].to(picked.device, picked.dtype)[None, :, None]
            sampled[chunk.heads, at : at + len(mine)] = picked
        if sampled is not None and chunk.heads.stop == heads and chunk.rows.stop == chunk.block.stop:
            flat = self._blocks.pop(key).reshape(heads, -1)
            gram = (flat @ flat.T).to(torch.float64)
            with self._lock:
                self.acc.totals["head_gram"][chunk.batch.index] += gram


REDUCERS: tuple[type[Reducer], ...] = (
    NonFiniteScores,
    Logits,
    ReferenceOutput,
    Softmax,
    Positions,
    MaskedMass,
    HeadGram,
)


def row_positions(
    ctx: CaseContext, rows: slice, device: torch.device | str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each query row: the key index of the token itself, its predecessor and successor
    (aligned to the last keys when k_len > q_len), and whether that key exists."""
    sizes = ctx.sizes
    lq, lk = sizes["Lq"], sizes["Lk"]
    offset = lk - lq if lk > lq else 0
    i_idx = torch.arange(rows.start, rows.stop, device=device)
    positions = {}
    for name, shift in (("diagonal", 0), ("previous", -1), ("next", 1)):
        target = i_idx + offset + shift
        valid = (target >= 0) & (target < lk)
        positions[name] = (target.clamp(0, lk - 1), valid)
    return positions


def record_nonfinite(ctx: CaseContext, totals: dict[str, Any], stage: str, counts: torch.Tensor) -> None:
    """Total and first (batch, head, row, column) of the non-finite values of one stage."""
    from attndbg.stats.locate import first_column

    total = int(counts.sum())
    if total:
        totals["nonfinite"][stage] = total
        row = (counts > 0).nonzero()[0].tolist()
        totals["first_nonfinite"][stage] = [*row, first_column(ctx, stage, row)]
