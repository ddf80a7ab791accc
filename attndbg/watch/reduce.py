"""One attention call → a few numbers per head, computed where the call ran.

The call's live tensors (detached, not copied) go through the engine's chunked statistics
pass on their own device, and — unless disabled — through the whole check catalogue, which
reads the same statistics. What comes back is plain Python: lists of floats per head and the
findings as dictionaries. No tensor of the call outlives :func:`reduce_call`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attndbg.recording.recorder import CapturedCall

# Per-head metrics of the log, and how two readings of one head combine: a layer called twice
# in a step (gradient accumulation) or seen by several ranks keeps the worst of each.
MERGE: dict[str, str] = {
    "max_logit": "max",  # max |scaled logit| over attended keys
    "logit_std": "max",  # std of the scaled logits of a row, mean over rows
    "entropy": "min",  # entropy / log(attended keys), mean over rows: 1 = uniform, 0 = one-hot
    "max_weight": "max",  # largest weight of a row, mean over rows
    "sink_mass": "max",  # weight on the first key, mean over rows
    "nonfinite": "sum",  # NaN/±Inf values in this head's q, k, v (or scores, weights) and output
    "fully_masked": "sum",  # query rows with no key to attend to
}
METRICS = tuple(MERGE)
# Rows with fewer attended keys say nothing about entropy (the first rows of a causal map).
_INFORMATIVE_KEYS = 4


@dataclass
class LayerSample:
    """What one layer's attention looked like in one sampled step."""

    name: str
    kind: str
    heads: int
    metrics: dict[str, list[float | None]]
    calls: int = 1
    nonfinite_tensors: dict[str, int] = field(default_factory=dict)
    first_nonfinite: dict[str, Any] | None = None  # {"tensor", "head", "index"} of the first bad value
    findings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "calls": self.calls,
            "heads": self.heads,
            **{metric: [_short(x) for x in self.metrics[metric]] for metric in METRICS},
        }
        if self.nonfinite_tensors:
            data["nonfinite_tensors"] = dict(self.nonfinite_tensors)
        if self.first_nonfinite:
            data["first_nonfinite"] = dict(self.first_nonfinite)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSample:
        return cls(
            name=data["name"],
            kind=data.get("kind", ""),
            heads=int(data["heads"]),
            metrics={metric: list(data.get(metric) or []) for metric in METRICS},
            calls=int(data.get("calls", 1)),
            nonfinite_tensors=dict(data.get("nonfinite_tensors") or {}),
            first_nonfinite=data.get("first_nonfinite"),
        )


def _short(value: float | None) -> float | None:
    """Six significant digits: a trend needs no more, and the log stays small."""
    return value if value is None or isinstance(value, int) else float(f"{value:.6g}")


def _combine(rule: str, a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return b if a is None else a
    if rule == "sum":
        return a + b
    return max(a, b) if rule == "max" else min(a, b)


def merge(first: LayerSample, second: LayerSample) -> LayerSample:
    """The worst of two readings of the same layer (see :data:`MERGE`)."""
    heads = max(first.heads, second.heads)

    def padded(values: list[float | None]) -> list[float | None]:
        return list(values) + [None] * (heads - len(values))

    metrics = {
        metric: [
            _combine(rule, a, b)
            for a, b in zip(padded(first.metrics[metric]), padded(second.metrics[metric]))
        ]
        for metric, rule in MERGE.items()
    }
    tensors = dict(first.nonfinite_tensors)
    for tensor, count in second.nonfinite_tensors.items():
        tensors[tensor] = tensors.get(tensor, 0) + count
    return LayerSample(
        name=first.name,
        kind=first.kind,
        heads=heads,
        metrics=metrics,
        calls=first.calls + second.calls,
        nonfinite_tensors=tensors,
        first_nonfinite=first.first_nonfinite or second.first_nonfinite,
        findings=first.findings + second.findings,
    )


def reduce_call(
    call: CapturedCall,
    name: str,
    catalogue: bool = True,
    max_memory: int = 1 << 28,
    max_batch: int | None = None,
) -> LayerSample:
    """Statistics of one recorded call, on its device, without autograd or autocast.
    ``max_batch``: the softmax statistics and the catalogue read only the first sequences of the
    batch (an estimate, for speed); non-finite values are always counted over the whole call."""
    import torch

    from attndbg.context import CaseContext, ShapeProblem
    from attndbg.recording.recorder import Calls

    case = Calls(calls=[call]).cases()[0]
    case.name = name
    reference = next(t for t in (call.q, call.scores, call.weights) if t is not None)
    device = str(reference.device)
    with torch.no_grad(), torch.autocast(reference.device.type, enabled=False):
        nonfinite_inputs = _nonfinite_inputs(case.tensors)
        batch = reference.shape[0] if reference.dim() == 4 else 1
        if max_batch is not None and batch > max_batch:
            # 4-D tensors are (batch, heads, rows, columns) in a capture; smaller masks broadcast
            case.tensors = {
                role: t[:max_batch] if t.dim() == 4 and t.shape[0] == batch else t
                for role, t in case.tensors.items()
            }
        ctx = CaseContext(case, device=device, max_memory=max_memory)
        findings: list[dict[str, Any]] = []
        if catalogue:
            from attndbg.engine import Options, run_case

            report = run_case(case, Options(device=device, max_memory=max_memory), ctx)
            findings = [
                {
                    "code": f.code,
                    "name": f.name,
                    "severity": f.severity.value,
                    "head": f.head,
                    "message": f.message,
                }
                for f in report.findings
            ]
        else:
            from attndbg.vocab import Statistic

            ctx.wanted = frozenset({Statistic.ROWS, Statistic.OUTPUT})  # no head Gram, no saved pass
        try:
            stats = ctx.stats
            heads = ctx.sizes["Hq"]
        except ShapeProblem:
            return LayerSample(name, call.kind, 0, {m: [] for m in METRICS}, findings=findings)
        metrics = _head_metrics(stats, heads)
        per_head, totals, first = _nonfinite(nonfinite_inputs, stats, heads)
    for head, count in enumerate(per_head):
        metrics["nonfinite"][head] = count
    return LayerSample(
        name=name,
        kind=call.kind,
        heads=heads,
        metrics=metrics,
        nonfinite_tensors=totals,
        first_nonfinite=first,
        findings=findings,
    )


def _head_metrics(stats: Any, heads: int) -> dict[str, list[float | None]]:
    """Means over the informative rows of every batch entry; max for the max logit."""
    import torch

    n_kept = stats.n_kept  # (B, H, Lq) on the CPU, like every row statistic
    informative = n_kept >= _INFORMATIVE_KEYS
    rows = informative.sum(dim=(0, 2))
    ratio = torch.where(n_kept > 1, stats.entropy / torch.log(n_kept.clamp_min(2)), torch.ones_like(n_kept))
    weight = informative.float()

    def mean(values: torch.Tensor) -> list[float | None]:
        sums = (torch.nan_to_num(values) * weight).sum(dim=(0, 2))
        return [float(s / r) if r else None for s, r in zip(sums.tolist(), rows.tolist())]

    max_logit = torch.where(informative, stats.max_logit, torch.zeros(())).amax(dim=(0, 2))
    return {
        "max_logit": [float(m) if r else None for m, r in zip(max_logit.tolist(), rows.tolist())],
        "logit_std": mean(stats.logit_std),
        "entropy": mean(ratio),
        "max_weight": mean(stats.max_weight),
        "sink_mass": mean(stats.sink),
        "nonfinite": [0] * heads,
        "fully_masked": [int(x) for x in stats.fully_masked.sum(dim=(0, 2)).tolist()],
    }


def _nonfinite_inputs(tensors: dict[str, Any]) -> dict[str, tuple[int, list[int], list[int]]]:
    """Per role with a NaN/±Inf: (count, count per head, index of the first bad value)."""
    import torch

    found = {}
    for role in ("q", "k", "v", "scores", "weights"):
        tensor = tensors.get(role)
        if tensor is None or not tensor.is_floating_point():
            continue
        bad = torch.isnan(tensor) | torch.isposinf(tensor)
        if role != "scores":  # -inf in saved scores is a mask
            bad |= torch.isneginf(tensor)
        total = int(bad.sum())
        if total:
            per_head = bad.sum(dim=(0, 2, 3)).tolist() if tensor.dim() == 4 else []
            found[role] = (total, per_head, bad.nonzero()[0].tolist())
    return found


def _nonfinite(
    inputs: dict[str, tuple[int, list[int], list[int]]], stats: Any, heads: int
) -> tuple[list[int], dict[str, int], dict[str, Any] | None]:
    """Per-head NaN/±Inf counts over the call's tensors (a head dimension at axis 1, SDPA's
    layout) and the output the statistics pass recomputed; the first bad value's tensor,
    head and index, in the order the attention computes them."""
    per_head = [0] * heads
    totals: dict[str, int] = {}
    first: dict[str, Any] | None = None
    for role, (total, counts, index) in inputs.items():
        totals[role] = total
        for head in range(heads if counts else 0):  # a grouped head counts for each head it serves
            per_head[head] += int(counts[head * len(counts) // heads])
        if first is None:
            first = {"tensor": role, "head": index[1] if len(index) == 4 else None, "index": index}
    for stage in ("scores", "output"):
        count = stats.nonfinite.get(stage, 0)
        if count and stage not in totals:
            totals[stage] = count
            index = stats.first_nonfinite.get(stage)
            if index:
                per_head[index[1]] += count
                if first is None:
                    first = {"tensor": stage, "head": index[1], "index": index}
    return per_head, totals, first
