"""Hand-written attention, followed step by step from the QK product to the PV product.

Each traced tensor has a record, kept in :class:`Traces` by ``id`` for exactly as long as the
tensor lives (a weak reference removes it). A record describes what happened since the QK
product — scale, masks, layout changes, casts — and holds only q, k and the mask tensors that
the call needs, so recording never keeps tensors of unrelated operations alive.

At the softmax the score record becomes a :class:`CallTrace`: the call's q, k (the transpose
undone), scale, mask, scores and weights in SDPA's (batch, heads, seq, dim) layout, with the
user's source line of every step. The PV product later adds v and out.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any

import torch

from attndbg.attention import MASKED_BIAS
from attndbg.recording.location import Location

# Layout operations that move elements without changing them. Replayed on masks and q/k.
LAYOUT_METHODS = (
    *("view", "reshape", "permute", "transpose", "contiguous"),
    *("flatten", "unflatten", "squeeze", "unsqueeze"),
)
_REORDERING = ("permute", "transpose")


NO_SCALE_STEP = (
    "no scale step between the QK product and the softmax: checked against the usual 1/√d "
    "(pass --scale 1 if the model folds the scale into its weights on purpose, as T5 does)"
)


LIBRARY_NO_SCALE = (
    "no scale step in installed library code ({file}): read as scale 1 chosen on purpose (T5, "
    "GPT-Neo and ESM fold 1/√d into their weights) and judged by the attention it yields"
)


def _in_installed_library(location: Location | None) -> bool:
    """Whether the line lies in an installed package rather than in the user's own code."""
    if location is None:
        return False
    parts = PurePath(location.file).parts
    return "site-packages" in parts or "dist-packages" in parts


class Untraceable(Exception):
    """The chain cannot be turned into q, k, v; the message says why."""


@dataclass(frozen=True)
class LayoutOp:
    method: str
    args: tuple
    kwargs: dict
    before: torch.Size
    after: torch.Size

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        # replayed on expanded (non-contiguous) masks, where view() may refuse what reshape() does
        method = "reshape" if self.method == "view" else self.method
        return getattr(tensor, method)(*self.args, **self.kwargs)

    @property
    def swaps_last_two(self) -> bool:
        """Whether the operation exchanges the last two axes and moves nothing else."""
        rank = len(self.before)
        if rank < 2:
            return False
        if self.method == "transpose":
            pair = sorted(_normalise_dim(int(d), rank) for d in (*self.args, *self.kwargs.values()))
            return pair == [rank - 2, rank - 1]
        if self.method == "permute":
            return self._permuted(rank) == (*range(rank - 2), rank - 1, rank - 2)
        return False

    def _permuted(self, rank: int) -> tuple[int, ...]:
        packed = len(self.args) == 1 and isinstance(self.args[0], (tuple, list))
        return tuple(_normalise_dim(int(d), rank) for d in (self.args[0] if packed else self.args))

    @property
    def keeps_last_two(self) -> bool:
        """Whether the (query, key) axes stay the last two, in order."""
        if self.method == "contiguous":
            return True
        rank = len(self.before)
        if self.method == "permute":
            return self._permuted(rank)[-2:] == (rank - 2, rank - 1)
        if self.method == "transpose":
            pair = [_normalise_dim(int(d), rank) for d in (*self.args, *self.kwargs.values())][:2]
            return all(d < rank - 2 for d in pair) or pair[0] == pair[1]
        return self.before[-2:] == self.after[-2:]


@dataclass(frozen=True)
class MaskPart:
    """One mask step: ``values`` broadcast to the scores as they were then (``shape``), and the
    number of layout operations that had been applied before it (the rest are replayed)."""

    kind: str  # "drop" (True = replaced by fill), "keep" (True = kept) or "additive"
    values: torch.Tensor
    shape: torch.Size
    layout_done: int
    fill: float = float("-inf")
    scale_then: float = 1.0  # the scale applied so far: later scalings also scale a bias
    location: Location | None = None

    def depth(self) -> tuple[int, float]:
        """How this step hides keys, for choosing the mask step among several: (0, -) when it
        hides some (a value at or below MASKED_BIAS), else (1, its most negative value)."""
        if self.kind == "additive":
            lowest = float(self.values.min()) if self.values.numel() else 0.0
            return (0, 0.0) if lowest <= MASKED_BIAS else (1, lowest)
        hidden = self.values.bool() if self.kind == "drop" else ~self.values.bool()
        return (0, 0.0) if bool(hidden.any()) else (1, 0.0)


@dataclass(frozen=True)
class ScoreTrace:
    """The scores' history from the QK product to the current tensor."""

    q: torch.Tensor  # (..., Lq, D), unscaled
    k: torch.Tensor  # (..., Lk, D), transpose undone
    product_shape: torch.Size
    locations: dict[str, Location | None]
    scale: float | None = None  # None: no scale step anywhere
    masks: tuple[MaskPart, ...] = ()
    layout: tuple[LayoutOp, ...] = ()
    notes: tuple[str, ...] = ()

    def step(self, **changes: Any) -> ScoreTrace:
        return replace(self, **changes)

    @property
    def applied_scale(self) -> float:
        return 1.0 if self.scale is None else self.scale


@dataclass(frozen=True)
class WeightsTrace:
    """The weights after the softmax, on their way to the PV product."""

    call: Any  # the CapturedCall being completed
    reordered: bool = False  # moved about so that (query, key) can no longer be told
    transposed: bool = False  # (key, query) last: the PV product is then written v·wᵀ

    def relaid(self, op: LayoutOp) -> WeightsTrace:
        if op.swaps_last_two:
            return replace(self, transposed=not self.transposed)
        return replace(self, reordered=self.reordered or not op.keeps_last_two)


@dataclass(frozen=True)
class PreScale:
    """A tensor multiplied by a scalar before any product (fairseq's ``q *= self.scaling``)."""

    factor: float
    location: Location | None


@dataclass(frozen=True)
class Projected:
    """Features straight out of a learned projection (linear or convolution), moved about but
    not yet combined with another token's features. A softmax over them normalises features
    (linear attention's feature maps, a predicted weight per sampling point, a router's gate),
    not query–key scores: it is not taken for attention."""


PROJECTED = Projected()


@dataclass(frozen=True)
class Broken:
    """A traced tensor went through an operation the tracer does not follow."""

    reason: str


class Traces:
    """Records by tensor id, each dropped when its tensor is freed."""

    def __init__(self) -> None:
        self._records: dict[int, tuple[weakref.ref, Any]] = {}

    def get(self, tensor: Any) -> Any:
        if not isinstance(tensor, torch.Tensor):
            return None
        entry = self._records.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return entry[1]

    def set(self, tensor: torch.Tensor, record: Any) -> None:
        key = id(tensor)
        records = self._records

        def forget(ref: weakref.ref, key: int = key) -> None:
            entry = records.get(key)
            if entry is not None and entry[0] is ref:
                del records[key]

        self._records[key] = (weakref.ref(tensor, forget), record)

    def __len__(self) -> int:
        return len(self._records)


# ---- the steps -------------------------------------------------------------------------------


def scalar_value(value: Any) -> float | None:
    """A Python number or a one-element tensor, as a float; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return float(value.detach().reshape(()))
    return None


def undo_prescale(tensor: torch.Tensor, record: Any) -> tuple[torch.Tensor, float]:
    if isinstance(record, PreScale) and record.factor != 0:
        return tensor / record.factor, record.factor
    return tensor, 1.0


def start(
    q: torch.Tensor,
    k: torch.Tensor,
    product: torch.Tensor,
    location: Location | None,
    prescales: tuple[Any, Any] = (None, None),
    scale: float | None = None,
) -> ScoreTrace:
    """A QK product: ``q`` is (..., Lq, D) and ``k`` (..., Lk, D)."""
    q, q_factor = undo_prescale(q, prescales[0])
    k, k_factor = undo_prescale(k, prescales[1])
    locations: dict[str, Location | None] = {"qk": location}
    if scale is not None:  # baddbmm's alpha: scaled in the product itself
        locations["scale"] = location
    if q_factor != 1.0 or k_factor != 1.0:
        scale = (1.0 if scale is None else scale) * q_factor * k_factor
        locations["scale"] = next(r.location for r in prescales if isinstance(r, PreScale))
    return ScoreTrace(q=q, k=k, product_shape=product.shape, locations=locations, scale=scale)


def scaled(trace: ScoreTrace, factor: float, location: Location | None) -> ScoreTrace:
    locations = dict(trace.locations)
    locations.setdefault("scale", location)
    return trace.step(scale=trace.applied_scale * factor, locations=locations)


def masked(
    trace: ScoreTrace,
    kind: str,
    values: torch.Tensor,
    shape: torch.Size,
    location: Location | None,
    fill: float = float("-inf"),
) -> ScoreTrace:
    if kind != "additive" and fill > MASKED_BIAS:
        raise Untraceable(
            f"the scores are filled with {fill:g} where the mask says so; attndbg follows fills "
            f"at or below {MASKED_BIAS:g} (a masked key)"
        )
    part = MaskPart(kind, values, shape, len(trace.layout), fill, trace.applied_scale, location)
    return trace.step(masks=(*trace.masks, part))


def _mask_location(parts: tuple[MaskPart, ...]) -> Location | None:
    """The user's mask step: the first step that hides keys, else the most negative bias (a
    relative-position bias or ALiBi added before the mask is not the mask)."""
    located = [part for part in parts if part.location is not None]
    if not located:
        return None
    return min(located, key=MaskPart.depth).location


def relaid(trace: ScoreTrace, op: LayoutOp) -> ScoreTrace:
    return trace.step(layout=(*trace.layout, op))


# ---- from a finished chain to a call --------------------------------------------------------


@dataclass
class CallTrace:
    """What a call's tensors are, in (batch, heads, seq, dim) layout."""

    q: torch.Tensor
    k: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor
    mask: torch.Tensor | None
    mask_semantics: str | None
    is_causal: bool
    scale: float | None
    lead: tuple[int, ...]  # the (batch, heads) the call's tensors were brought to
    locations: dict[str, Location | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _normalise_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def bring_to_scores(operand: torch.Tensor, layout: tuple[LayoutOp, ...], lead: torch.Size) -> torch.Tensor:
    """q or k ((..., L, D), broadcast to the product's leading dims ``lead``) laid out like the
    final scores: the scores' layout operations replayed on the leading dimensions."""
    operand = operand.expand(*lead, *operand.shape[-2:])
    if not any(op.method in _REORDERING for op in layout):
        # element order is unchanged: only the leading dimensions' grouping may differ
        final = layout[-1].after if layout else None
        return operand if final is None else operand.reshape(*final[:-2], *operand.shape[-2:])
    for op in layout:
        if not op.keeps_last_two:
            raise Untraceable(
                f"the scores were rearranged by {op.method}{tuple(op.args)} across the query/key "
                "axes, which attndbg cannot undo on q and k"
            )
        if op.method in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze"):
            operand = operand.reshape(*op.after[:-2], *operand.shape[-2:])
        else:
            operand = op.apply(operand)
    return operand


def _mask_now(part: MaskPart, layout: tuple[LayoutOp, ...]) -> torch.Tensor:
    values = part.values.expand(part.shape)
    for op in layout[part.layout_done :]:
        values = op.apply(values)
    return values


def _four_d_lead(trace: ScoreTrace, final: torch.Size) -> tuple[int, ...]:
    """(batch, heads) for scores of shape ``final``: a 3-D (batch·heads, Lq, Lk) chain that was
    (batch, heads, Lq, Lk) somewhere in between, else heads = 1."""
    lead = tuple(final[:-2])
    if len(lead) == 2:
        return lead
    if len(lead) == 1 and not any(op.method in _REORDERING for op in trace.layout):
        for shape in (trace.product_shape, *(op.after for op in trace.layout)):
            if len(shape) == 4 and shape[-2:] == final[-2:] and shape[0] * shape[1] == lead[0]:
                return tuple(shape[:2])
    size = math.prod(lead)
    return (size // lead[-1], lead[-1]) if len(lead) > 2 else (lead[0] if lead else 1, 1)


def to_bhsd(tensor: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    return tensor.reshape(*lead, *tensor.shape[-2:])


def _combined_mask(
    parts: list[tuple[MaskPart, torch.Tensor]], scale: float
) -> tuple[torch.Tensor | None, str | None]:
    """One mask for the call, in the user's own convention when there is one part."""
    if not parts:
        return None, None
    if len(parts) == 1 and parts[0][0].kind in ("drop", "keep"):
        return parts[0][1].bool(), parts[0][0].kind
    if all(part.kind in ("drop", "keep") for part, _ in parts):
        keep = None
        for part, values in parts:
            kept = values.bool() if part.kind == "keep" else ~values.bool()
            keep = kept if keep is None else keep & kept
        return keep, "keep"
    bias = None
    for part, values in parts:
        if part.kind == "additive":
            term = values.float() * (scale / part.scale_then)
        else:
            hidden = ~values.bool() if part.kind == "keep" else values.bool()
            term = torch.zeros(hidden.shape).masked_fill(hidden, part.fill)
        bias = term if bias is None else bias + term
    return bias, "additive"


def _compact(mask: torch.Tensor) -> torch.Tensor:
    """Drop the batch, head and query dimensions a mask does not vary along."""
    for dim in range(mask.dim() - 1):
        first = mask.narrow(dim, 0, 1)
        if mask.shape[dim] > 1 and bool((mask == first).all()):
            mask = first
    return mask


def _split_causal(mask: torch.Tensor, semantics: str) -> tuple[torch.Tensor | None, bool]:
    """A mask that hides at least the future becomes is_causal plus whatever else it hides."""
    lq, lk = mask.shape[-2:]
    if lq < 2 or lq != lk:
        return mask, False
    future = torch.ones(lq, lk, dtype=torch.bool).triu(1)
    if semantics == "additive":
        hidden = mask <= MASKED_BIAS
    else:
        hidden = mask.bool() if semantics == "drop" else ~mask.bool()
    if not bool(hidden[..., future].all()) or bool(hidden[..., ~future].all()):
        return mask, False
    if semantics == "additive" and bool(hidden.all(-1).any()) and not bool(torch.isneginf(mask).all()):
        # a row with every key hidden by a finite fill gets uniform weights over all its keys;
        # is_causal (-inf on the future) would change that row: keep the mask as it is
        return mask, False
    if semantics == "additive":
        rest = mask.masked_fill(future, 0.0)
        extra = bool((rest != 0).any())
    else:
        rest = mask.masked_fill(future, semantics == "keep")
        extra = bool(hidden[..., ~future].any())
    return (_compact(rest) if extra else None), True


def finish(trace: ScoreTrace, scores: torch.Tensor, weights: torch.Tensor) -> CallTrace:
    """The call as SDPA would have seen it; raises :class:`Untraceable` with the reason."""
    final = scores.shape
    if final[-2:] != torch.Size((trace.q.shape[-2], trace.k.shape[-2])):
        raise Untraceable(
            f"the softmax input is {tuple(final)} but the QK product gave "
            f"({trace.q.shape[-2]}, {trace.k.shape[-2]}) queries × keys"
        )
    lead = trace.product_shape[:-2]
    q = bring_to_scores(trace.q, trace.layout, lead)
    k = bring_to_scores(trace.k, trace.layout, lead)
    four = _four_d_lead(trace, final)
    parts = [(part, to_bhsd(_mask_now(part, trace.layout), four)) for part in trace.masks]
    mask, semantics = _combined_mask(parts, trace.applied_scale)
    scale = None if trace.scale is not None and math.isclose(trace.scale, 1.0) else trace.scale
    notes = list(trace.notes)
    qk = trace.locations.get("qk")
    if scale is None and _in_installed_library(qk):
        # A released library that leaves the scale out does so by design; the user's own code
        # that does is the classic bug, so only there is 1/√d assumed.
        scale = 1.0
        notes.append(LIBRARY_NO_SCALE.format(file=qk.file if qk else "?"))
    elif scale is None:
        notes.append(NO_SCALE_STEP)
    is_causal = False
    if mask is not None:
        assert semantics is not None  # _combined_mask names the convention of every mask
        mask, is_causal = _split_causal(_compact(mask), semantics)
        semantics = semantics if mask is not None else None
    locations = dict(trace.locations)
    if trace.masks:
        locations["mask"] = _mask_location(trace.masks)
    return CallTrace(
        q=to_bhsd(q, four),
        k=to_bhsd(k, four),
        scores=to_bhsd(scores, four),
        weights=to_bhsd(weights, four),
        mask=mask,
        mask_semantics=semantics,
        is_causal=is_causal,
        scale=scale,  # multiplying by 1.0 scales nothing: the same case as no scale step at all
        lead=four,
        locations=locations,
        notes=notes,
    )
