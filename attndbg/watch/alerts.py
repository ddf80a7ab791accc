"""Trend alerts over sampled steps: logit growth, entropy collapse, the first non-finite value,
and errors of the check catalogue. Plain Python over the per-head numbers of the log, so that
``attndbg trend`` can replay them without torch."""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

SEVERITY_RANK = {"info": 1, "warning": 2, "error": 3}


@dataclass(frozen=True)
class Thresholds:
    """When an alert fires. Every field can be set in ``attndbg.watch(thresholds=...)`` (a
    :class:`Thresholds` or a dict of the fields to change).

    A *sample* is one sampled step (every ``every``-th training step).
    """

    #: A head's max scaled logit above this is an alert on its own: a logit gap of 50 leaves
    #: every other key a weight below 2e-22, so the softmax is saturated and its gradient vanishes.
    max_logit: float = 50.0
    #: Steady growth: the max logit rose at each of the last ``growth_window`` samples ...
    growth_window: int = 5
    #: ... by this factor in total over the window ...
    growth_factor: float = 1.5
    #: ... and ended above this value (below it, logits are in their normal working range and
    #: rise as any model learns).
    growth_min: float = 10.0
    #: Entropy collapse: a head's normalised entropy (1 = uniform, 0 = one-hot) below this bound
    #: (a weight of about 0.99 on one key in every row) ...
    entropy_floor: float = 0.02
    #: ... or below this fraction of the head's early value ...
    entropy_drop: float = 0.1
    #: ... which is the mean of its first ``baseline_samples`` samples.
    baseline_samples: int = 3

    @classmethod
    def from_value(cls, value: Thresholds | dict[str, float] | None) -> Thresholds:
        if value is None:
            return cls()
        if isinstance(value, Thresholds):
            return value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            from attndbg.errors import UsageError

            raise UsageError(f"unknown watch threshold {unknown[0]!r}; known: {', '.join(sorted(known))}")
        # the keys were checked against the fields above; each value is a number for its field
        return dataclasses.replace(cls(), **cast("dict[str, Any]", value))

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class Alert:
    step: int
    kind: str  # "logit-growth" | "entropy-collapse" | "non-finite" | "catalogue-error"
    severity: str
    layer: str
    head: int | None
    message: str
    value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "alert", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class AttentionAlert(RuntimeError):
    """Raised by ``watch(on_alert="raise")``; ``.alert`` is the :class:`Alert`."""

    def __init__(self, alert: Alert) -> None:
        super().__init__(alert.message)
        self.alert = alert


class AttentionWarning(UserWarning):
    """Issued by ``watch(on_alert="warn")``, the default."""


class AlertTracker:
    """Feeds on one step's layers at a time and returns the alerts that step raised. Each kind
    fires once per (layer, head); the non-finite alert fires once per run, at its origin."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.history: dict[tuple[str, int], deque[float]] = {}
        self.early: dict[tuple[str, int], list[float]] = {}
        self.fired: set[tuple[str, str, int | None]] = set()
        self.nonfinite_seen = False

    def update(self, step: int, layers: list[dict[str, Any]], findings: list[dict[str, Any]]) -> list[Alert]:
        """``layers``: the step record's layers in call order; ``findings``: the catalogue's
        new findings of this step, each with its layer."""
        alerts: list[Alert] = []
        if not self.nonfinite_seen:
            alert = self._nonfinite(step, layers)
            if alert:
                self.nonfinite_seen = True
                alerts.append(alert)
        for layer in layers:
            # a non-finite statistic is the non-finite alert's business, not a trend
            for head, value in enumerate(layer.get("max_logit") or []):
                if value is not None and math.isfinite(value):
                    alerts.extend(self._logit(step, layer["name"], head, float(value)))
            for head, value in enumerate(layer.get("entropy") or []):
                if value is not None and math.isfinite(value):
                    alerts.extend(self._entropy(step, layer["name"], head, float(value)))
        for finding in findings:
            if finding["severity"] != "error":
                continue
            key = ("catalogue-error", f"{finding['layer']}:{finding['code']}", None)
            if self._once(key):
                alerts.append(
                    Alert(
                        step,
                        "catalogue-error",
                        "error",
                        finding["layer"],
                        finding.get("head"),
                        f"{finding['code']} {finding['name']}: {finding['message']}",
                        details={"code": finding["code"]},
                    )
                )
        return alerts

    def _once(self, key: tuple[str, str, int | None]) -> bool:
        if key in self.fired:
            return False
        self.fired.add(key)
        return True

    def _nonfinite(self, step: int, layers: list[dict[str, Any]]) -> Alert | None:
        for layer in layers:  # call order: the first layer with a bad value is where it started
            tensors = layer.get("nonfinite_tensors") or {}
            if not tensors:
                continue
            first = layer.get("first_nonfinite") or {}
            tensor = first.get("tensor") or next(iter(tensors))
            head = first.get("head")
            where = f"head {head}" if head is not None else "all heads"
            counts = ", ".join(f"{name} {count}" for name, count in tensors.items())
            return Alert(
                step,
                "non-finite",
                "error",
                layer["name"],
                head,
                f"first non-finite value at step {step}: layer {layer['name']}, {where}, "
                f"in {tensor} (NaN/Inf counts: {counts})",
                value=float(sum(tensors.values())),
                details={"tensor": tensor, "index": first.get("index"), "counts": dict(tensors)},
            )
        return None

    def _logit(self, step: int, layer: str, head: int, value: float) -> list[Alert]:
        t = self.thresholds
        window = self.history.setdefault((layer, head), deque(maxlen=max(2, t.growth_window)))
        window.append(value)
        key = ("logit-growth", layer, head)
        if key in self.fired:
            return []
        values = list(window)
        rising = len(values) == window.maxlen and all(b > a for a, b in zip(values, values[1:]))
        if value > t.max_logit:
            sentence = f"crossed the bound {t.max_logit:g}; its softmax is saturated"
            details: dict[str, Any] = {"rule": "bound", "bound": t.max_logit}
        elif rising and values[0] > 0 and value >= t.growth_min and value / values[0] >= t.growth_factor:
            sentence = (
                f"rose at each of the last {len(values)} samples, "
                f"{values[0]:.4g} → {value:.4g} (×{value / values[0]:.2f})"
            )
            details = {"rule": "window", "window": values}
        else:
            return []
        self.fired.add(key)
        message = f"layer {layer} head {head}: max scaled logit {value:.4g} {sentence}"
        return [Alert(step, "logit-growth", "warning", layer, head, message, value, details)]

    def _entropy(self, step: int, layer: str, head: int, value: float) -> list[Alert]:
        t = self.thresholds
        early = self.early.setdefault((layer, head), [])
        baseline_ready = len(early) >= t.baseline_samples
        if not baseline_ready:
            early.append(value)
        key = ("entropy-collapse", layer, head)
        if key in self.fired:
            return []
        baseline = sum(early) / len(early)
        if value < t.entropy_floor:
            rule, detail = "floor", f"below the bound {t.entropy_floor:g}"
        elif baseline_ready and value < t.entropy_drop * baseline:
            rule, detail = "drop", f"below {t.entropy_drop:g} × its early value {baseline:.3g}"
        else:
            return []
        self.fired.add(key)
        return [
            Alert(
                step,
                "entropy-collapse",
                "warning",
                layer,
                head,
                f"layer {layer} head {head}: normalised attention entropy {value:.3g} is {detail}",
                value,
                {"rule": rule, "early": baseline},
            )
        ]
