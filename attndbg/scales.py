"""Softmax scales: the one table that names a scale by the formula that gives it, and the one
search that fits the scale an attention applied.

``inspect`` (SCL002, from a saved output) and ``gradcheck`` (from a user's function's output)
both fit with :func:`fit_log_scale` and name with :func:`describe_scale`, so that the same
scale gets the same name everywhere. A leaf: it imports neither torch nor anything from attndbg.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

SAME_SCALE = 0.01  # relative: a scale this close to a named one is that one
# The search grid spans every named scale with this factor to spare on either side, at this
# spacing on log(scale) (neighbours differ by ~22%): the best grid point then lies within one
# step of the minimum, where the error is unimodal and golden-section search converges.
_MARGIN = 4.0
_GRID_STEP = 0.2
_MAX_EXTRA_POINTS = 100  # past the named scales' span, up to a factor e^20 (~5e8) further
_REFINED_WIDTH = 1e-9  # log-width of the final bracket: a relative error of 1e-9 on the scale
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class NamedScale:
    """A scale that a formula of the head size explains, and what applying it means."""

    value: float
    formula: str  # "1/√64"
    meaning: str  # "1/√d, the default scale"

    def __str__(self) -> str:
        return f"{self.formula} ({self.meaning})"


def named_scales(head_dim: int, heads: int) -> list[NamedScale]:
    """The scales attention code is seen to apply, the default first; where two coincide (one
    head: d_model = d) the earlier name wins."""
    d = max(head_dim, 1)
    d_model = d * max(heads, 1)
    return [
        NamedScale(d**-0.5, f"1/√{d}", "1/√d, the default scale"),
        NamedScale(1.0 / d, f"1/{d}", "1/d: the scale applied twice"),
        NamedScale(1.0, "1", "no scale"),
        NamedScale(d_model**-0.5, f"1/√{d_model}", "1/√d_model = 1/√(heads × head dim), not 1/√head dim"),
        NamedScale(1.0 / d_model, f"1/{d_model}", "1/d_model"),
        NamedScale(d**0.5, f"√{d}", "√d: the scores divided by 1/√d instead of multiplied"),
        NamedScale(d**-0.25, f"{d}^-¼", "a split scale applied to one side only"),
        NamedScale(d**-0.75, f"{d}^-¾", "a split scale applied on top of 1/√d"),
    ]


def name_scale(scale: float, head_dim: int, heads: int) -> NamedScale | None:
    """The named scale within :data:`SAME_SCALE` of ``scale``, if any."""
    for named in named_scales(head_dim, heads):
        if math.isclose(scale, named.value, rel_tol=SAME_SCALE):
            return named
    return None


def describe_scale(scale: float, head_dim: int, heads: int) -> str:
    """The scale's value and, when one gives it, its formula: ``0.0625 = 1/16 (1/d: …)``."""
    named = name_scale(scale, head_dim, heads)
    if named is not None:
        return f"{scale:.4g} = {named}"
    return f"{scale:.4g} (= 1/√{1 / scale**2:.3g})"


def fit_log_scale(
    error: Callable[[float], float], head_dim: int, heads: int, *, enough: float | None = None
) -> float:
    """The scale that minimises ``error(scale)`` (how far attention with that scale is from
    what was observed).

    With ``enough``, each named scale is tried first and the first whose error is at most
    ``enough`` is returned exactly. Otherwise: a grid on log(scale) spanning every named scale
    (from 1/(4·d_model) to 4·√d), extended past an edge while the error keeps falling there,
    then golden-section search between the best grid point's neighbours. Non-finite errors
    count as infinitely far.
    """
    named = named_scales(head_dim, heads)
    if enough is not None:
        for candidate in named:
            if error(candidate.value) <= enough:
                return candidate.value

    def at(log_scale: float) -> float:
        value = error(math.exp(log_scale))
        return value if math.isfinite(value) else math.inf

    values = [n.value for n in named]
    low, high = math.log(min(values) / _MARGIN), math.log(max(values) * _MARGIN)
    points = math.ceil((high - low) / _GRID_STEP) + 1
    grid = [low + (high - low) * i / (points - 1) for i in range(points)]
    errors = [at(x) for x in grid]
    best = min(range(points), key=errors.__getitem__)
    # a scale beyond every named one (1/d², 100): walk on past the edge while the error falls
    while best in (0, len(grid) - 1) and len(grid) < points + _MAX_EXTRA_POINTS:
        if best == 0:
            grid.insert(0, grid[0] - _GRID_STEP)
            errors.insert(0, at(grid[0]))
        else:
            grid.append(grid[-1] + _GRID_STEP)
            errors.append(at(grid[-1]))
        best = min(range(len(grid)), key=errors.__getitem__)
    a, c = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    x1, x2 = c - _GOLDEN * (c - a), a + _GOLDEN * (c - a)
    f1, f2 = at(x1), at(x2)
    while c - a > _REFINED_WIDTH:
        if f1 <= f2:  # the minimum is in [a, x2]: x1 becomes the new upper probe
            c, x2, f2 = x2, x1, f1
            x1 = c - _GOLDEN * (c - a)
            f1 = at(x1)
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + _GOLDEN * (c - a)
            f2 = at(x2)
    return math.exp((a + c) / 2)
