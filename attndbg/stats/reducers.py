"""The reducers of the reference pass, one per family of statistics, in the order they run."""

from __future__ import annotations

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
    -inf and non-finite row max/min into 0, so that the later reducers see clean scores.

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
            chunk.high = high = torch.where(torch.isfinite(high), high, zero)
        self.acc.rows["absmax_raw"][chunk.at] = torch.maximum(high, -low)

    def finish(self) -> None:
        record_nonfinite(self.ctx, self.acc.totals, "scores", self.bad)


class Logits(Reducer):
    """Attended keys per row, max |logit| over them, and the logits' mean and std.

    Without a mask the mean and variance are q-side formulas (q·k̄ and qᵀ Σ_K q, with Σ_K the
    keys' covariance, exact and without the cancellation of E[S²] − E[S]²), so no pass over
    the scores is spent on them."""

    def start(self) -> None:
        self.acc.per_row("n_kept", "max_logit", "logit_mean", "logit_std")
        self._batch = -1

    def _key_moments(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batch != chunk.batch.index:
            kt = chunk.batch.kt
            assert kt is not None
            self._k_mean = kt.mean(-1)  # (H, D): Σ_j S_ij / Lk = (q_i·scale)·k̄
            centered = kt - self._k_mean[..., None]
            self._k_cov = (centered @ centered.transpose(-1, -2) / kt.shape[-1]).double()
            self._batch = chunk.batch.index
        return self._k_mean, self._k_cov

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


class ReferenceOutput(Reducer):
    """The reference output P·V and its non-finite values."""

    family = Statistic.OUTPUT

    def start(self) -> None:
        b, h, lq = self.acc.shape
        device = self.acc.device
        self.acc.totals["out"] = torch.zeros(b, h, lq, self.ctx.sizes["Dv"], device=device)
        self.bad = torch.zeros(self.acc.shape, dtype=torch.int64, device=device)

    def weights(self, chunk: Chunk) -> None:
        assert chunk.exp is not None and chunk.safe_total is not None and chunk.live is not None
        v = chunk.batch.v
        assert v is not None
        out = torch.matmul(chunk.exp, v[chunk.heads]) / chunk.safe_total[..., None]
        out = torch.where(chunk.live[..., None], out, torch.zeros((), device=out.device))
        self.acc.totals["out"][chunk.at] = out
        self.bad[chunk.at] = (~torch.isfinite(out)).sum(-1)

    def finish(self) -> None:
        record_nonfinite(self.ctx, self.acc.totals, "output", self.bad)


class Softmax(Reducer):
    """Log-sum-exp, entropy and max weight per row. The max weight is 1/l (the arg-max entry
    of exp(S − m) is exactly 1); the entropy is log l − Σ E·(S − m) / l."""

    def start(self) -> None:
        self.acc.per_row("lse", "entropy", "max_weight")

    def weights(self, chunk: Chunk) -> None:
        live, safe_total = chunk.live, chunk.safe_total
        assert live is not None and safe_total is not None and chunk.dot is not None
        assert chunk.shift is not None
        zero = torch.zeros((), device=safe_total.device)
        log_total = torch.log(safe_total)
        rows, at = self.acc.rows, chunk.at
        minus_inf = torch.full((), float("-inf"), device=safe_total.device)
        rows["lse"][at] = torch.where(live, chunk.shift + log_total, minus_inf)
        entropy = torch.where(live, log_total - chunk.dot / safe_total, zero)
        rows["entropy"][at] = entropy.clamp_min(0)
        rows["max_weight"][at] = torch.where(live, 1.0 / safe_total, zero)


class Positions(Reducer):
    """Weight on the first key (sink), the token itself, the previous and the next token:
    gathers of single columns."""

    def start(self) -> None:
        self.acc.per_row("sink", "diagonal", "previous", "next")

    def weights(self, chunk: Chunk) -> None:
        exp, safe_total = chunk.exp, chunk.safe_total
        assert exp is not None and safe_total is not None
        rows, at = self.acc.rows, chunk.at
        rows["sink"][at] = exp[..., 0] / safe_total
        zero = torch.zeros((), device=exp.device)
        for name, (target, valid) in row_positions(self.ctx, chunk.rows, exp.device).items():
            picked = exp.gather(-1, target.expand(chunk.n_heads, -1)[..., None])[..., 0]
            rows[name][at] = torch.where(valid, picked / safe_total, zero)


class MaskedMass(Reducer):
    """Weight that keys under a finite additive fill still receive (a fill too close to the
    logits leaks)."""

    def start(self) -> None:
        self.acc.per_row("masked_mass")

    def weights(self, chunk: Chunk) -> None:
        bias = chunk.bias
        if bias is None or self.ctx.mask_semantics != MaskSemantics.ADDITIVE:
            return
        assert chunk.exp is not None and chunk.safe_total is not None
        finite_hard = (bias <= MASKED_BIAS) & torch.isfinite(bias)
        if str(self.ctx.device) != "cpu" or bool(finite_hard.any()):
            mass = (chunk.exp * finite_hard).sum(-1) / chunk.safe_total
            self.acc.rows["masked_mass"][chunk.at] = mass


class HeadGram(Reducer):
    """Σ p_h·p_g between heads over every ``stride``-th query row, for duplicate heads: the
    sampled rows' weights of every head group are kept until the row block is complete, so
    the Gram matrix costs no second product."""

    family = Statistic.HEAD_GRAM

    def start(self) -> None:
        self.stride = max(1, self.acc.shape[2] // GRAM_ROWS)
        self._block: torch.Tensor | None = None

    def _sampled(self, rows: slice) -> range:
        return range(rows.start + (-rows.start % self.stride), rows.stop, self.stride)

    def weights(self, chunk: Chunk) -> None:
        assert chunk.exp is not None and chunk.safe_total is not None
        heads, block = self.acc.shape[1], self._sampled(chunk.block)
        if chunk.heads.start == 0 and chunk.rows.start == chunk.block.start:
            shape = (heads, len(block), chunk.exp.shape[-1])
            self._block = torch.zeros(shape, device=chunk.exp.device) if len(block) else None
        mine = self._sampled(chunk.rows)
        if self._block is not None and len(mine):
            local = slice(mine.start - chunk.rows.start, None, self.stride)
            probs = chunk.exp[:, local] / chunk.safe_total[:, local, None]
            at = block.index(mine.start)
            self._block[chunk.heads, at : at + len(mine)] = torch.nan_to_num(probs, nan=0.0)
        if self._block is not None and chunk.heads.stop == heads and chunk.rows.stop == chunk.block.stop:
            flat = self._block.reshape(heads, -1)
            self.acc.totals["head_gram"][chunk.batch.index] += (flat @ flat.T).to(torch.float64)
            self._block = None


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
