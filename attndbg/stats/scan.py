"""Whole-tensor scans (non-finite counts, range and moments) in bounded pieces.

A scan of a (B, H, N, D) input at N = 131,072 would otherwise allocate a mask or a float32
copy as large as the input (``torch.isfinite(q)`` alone is a quarter of it); here every
temporary is at most ``PIECE_ELEMENTS`` elements, and pieces are views, never copies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

PIECE_ELEMENTS = 1 << 20  # float64 temporaries of 8 MiB


def pieces(tensor: torch.Tensor, limit: int = PIECE_ELEMENTS) -> Iterator[torch.Tensor]:
    """Views that cover ``tensor`` exactly once, each of at most ``limit`` elements (or one
    innermost row, if a row alone is longer)."""
    if tensor.numel() <= limit or tensor.dim() <= 1:
        yield tensor
        return
    size = tensor.shape[0]
    per_index = tensor.numel() // max(size, 1)
    step = max(1, limit // max(per_index, 1))
    for start in range(0, size, step):
        part = tensor[start : start + step]
        if part.numel() <= limit:
            yield part
        else:  # one index of the first axis is still too large: split the next axis
            for index in range(part.shape[0]):
                yield from pieces(part[index], limit)


def nonfinite_counts(tensor: torch.Tensor) -> tuple[int, int, int]:
    """(NaN, +Inf, -Inf) counts; a finite piece costs one pass."""
    if not tensor.is_floating_point():
        return (0, 0, 0)
    nan = posinf = neginf = 0
    for part in pieces(tensor):
        if bool(torch.isfinite(part).all()):
            continue
        nan += int(torch.isnan(part).sum())
        posinf += int(torch.isposinf(part).sum())
        neginf += int(torch.isneginf(part).sum())
    return nan, posinf, neginf


@dataclass
class Moments:
    """Range, mean and (unbiased) standard deviation of a tensor's finite values, merged piece
    by piece (Chan et al.'s pairwise update: no cancellation between pieces)."""

    count: int = 0
    low: float = math.inf
    high: float = -math.inf
    mean: float = 0.0
    squares: float = 0.0  # Σ (x − mean)²

    def add(self, values: torch.Tensor) -> None:
        n = values.numel()
        if n > 1:
            std, mean = torch.std_mean(values)
            piece_mean, piece_squares = float(mean), float(std) ** 2 * (n - 1)
        else:
            piece_mean, piece_squares = float(values.reshape(-1)[0]), 0.0
        total = self.count + n
        delta = piece_mean - self.mean
        self.mean += delta * n / total
        self.squares += piece_squares + delta * delta * self.count * n / total
        self.count = total
        self.low = min(self.low, float(values.amin()))
        self.high = max(self.high, float(values.amax()))

    @property
    def std(self) -> float:
        return math.sqrt(max(self.squares, 0.0) / (self.count - 1)) if self.count > 1 else 0.0


def finite_moments(tensor: torch.Tensor, finite: bool) -> Moments | None:
    """Moments of the finite values (``finite``: the caller knows there are no others), or
    None when there is none."""
    moments = Moments()
    for part in pieces(tensor):
        if part.dtype in (torch.float32, torch.float64):
            values = part
        else:  # half precision widened; integers and bools exactly
            values = part.to(torch.float32 if part.is_floating_point() else torch.float64)
        if not finite:
            values = values[torch.isfinite(values)]
        if values.numel():
            moments.add(values)
    return moments if moments.count else None
