"""What the statistics pass hands to the checks: per-row tensors and totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from attndbg.vocab import Artefact, Reading

if TYPE_CHECKING:
    from attndbg.stats.readings import Fits


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
    out: torch.Tensor | None  # the reference P·V, only when a running check reads it
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
    fits: Fits | None = None  # the scale and dropout fitted to the saved artefacts (readings.py)

    @property
    def fully_masked(self) -> torch.Tensor:
        return self.n_kept == 0


ROW_STATISTICS = (
    *("max_logit", "absmax_raw", "logit_mean", "logit_std", "lse", "entropy", "max_weight"),
    *("sink", "diagonal", "previous", "next", "n_kept", "masked_mass"),
)
