"""``attndbg trend LOG``: a watched run summarised — per layer, the max logit and the min entropy
over heads at each sampled step, the alerts with their step, the catalogue's findings. Reads
the JSON-lines log only (no torch); renderers live in :mod:`attndbg.render.trend`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attndbg.errors import UsageError
from attndbg.watch.alerts import SEVERITY_RANK, Alert
from attndbg.watch.log import read_log

FAIL_ON = {**SEVERITY_RANK, "never": 99}


@dataclass
class LayerTrend:
    name: str
    heads: int
    steps: list[int] = field(default_factory=list)
    max_logit: list[float | None] = field(default_factory=list)  # max over heads
    min_entropy: list[float | None] = field(default_factory=list)  # min over heads
    nonfinite: list[int] = field(default_factory=list)  # sum over heads


@dataclass
class Trend:
    path: str
    header: dict[str, Any]
    layers: list[LayerTrend]
    alerts: list[Alert]
    findings: list[dict[str, Any]]
    sampled_steps: list[int]
    finished: bool  # the log has its end record (the run was not killed)

    def exit_code(self, fail_on: str) -> int:
        threshold = FAIL_ON[fail_on]
        return 1 if any(SEVERITY_RANK.get(a.severity, 0) >= threshold for a in self.alerts) else 0

    def to_dict(self, fail_on: str) -> dict[str, Any]:
        return {
            "log": self.path,
            "schema_version": self.header.get("schema_version"),
            "every": self.header.get("every"),
            "world_size": self.header.get("world_size"),
            "finished": self.finished,
            "sampled_steps": self.sampled_steps,
            "layers": [
                {
                    "name": layer.name,
                    "heads": layer.heads,
                    "steps": layer.steps,
                    "max_logit": layer.max_logit,
                    "min_entropy": layer.min_entropy,
                    "nonfinite": layer.nonfinite,
                }
                for layer in self.layers
            ],
            "alerts": [{k: v for k, v in a.to_dict().items() if k != "type"} for a in self.alerts],
            "findings": [{k: v for k, v in f.items() if k != "type"} for f in self.findings],
            "fail_on": fail_on,
            "exit_code": self.exit_code(fail_on),
        }


def _number(value: Any) -> float | None:
    """Log values are numbers, null, or "nan"/"inf" strings for non-finite floats."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def _worst(values: list[Any], pick: Any) -> float | None:
    numbers = [n for n in (_number(v) for v in values) if n is not None and not math.isnan(n)]
    return pick(numbers) if numbers else None


def load_trend(path: str | Path, fail_on: str = "warning") -> Trend:
    if fail_on not in FAIL_ON:
        raise UsageError(f"--fail-on {fail_on!r}: expected one of {', '.join(FAIL_ON)}")
    records = read_log(path)
    layers: dict[str, LayerTrend] = {}
    sampled = []
    for record in records:
        if record["type"] != "step":
            continue
        sampled.append(int(record["step"]))
        for layer in record.get("layers") or []:
            trend = layers.setdefault(layer["name"], LayerTrend(layer["name"], int(layer.get("heads", 0))))
            trend.steps.append(int(record["step"]))
            trend.max_logit.append(_worst(layer.get("max_logit") or [], max))
            trend.min_entropy.append(_worst(layer.get("entropy") or [], min))
            trend.nonfinite.append(int(sum(_number(n) or 0 for n in layer.get("nonfinite") or [])))
    return Trend(
        path=str(path),
        header=records[0],
        layers=list(layers.values()),
        alerts=[Alert.from_dict(r) for r in records if r["type"] == "alert"],
        findings=[r for r in records if r["type"] == "finding"],
        sampled_steps=sampled,
        finished=records[-1]["type"] == "end",
    )
