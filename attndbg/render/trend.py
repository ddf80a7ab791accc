"""``attndbg trend``'s terminal summary (sparklines per layer, alerts, findings) and its PNG."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

from attndbg.render.rich_report import SEVERITY_STYLE, _num
from attndbg.watch.trend import Trend

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int = 40, pick: str = "max") -> str:
    """One character per bucket of steps (the bucket's max, or min), scaled between the series'
    own extremes; a gap for steps without a value, ``!`` for a non-finite one."""
    if not values:
        return ""
    buckets = max(1, math.ceil(len(values) / width))
    chosen: list[float | None] = []
    for start in range(0, len(values), buckets):
        group = [v for v in values[start : start + buckets] if v is not None]
        chosen.append((max if pick == "max" else min)(group) if group else None)
    finite = [v for v in chosen if v is not None and math.isfinite(v)]
    if not finite:
        return "".join(" " if v is None else "!" for v in chosen)
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    marks = []
    for value in chosen:
        if value is None:
            marks.append(" ")
        elif not math.isfinite(value):
            marks.append("!")
        else:
            marks.append(BLOCKS[round((value - low) / span * (len(BLOCKS) - 1))])
    return "".join(marks)


def _ends(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    return f"{_num(present[0])} → {_num(present[-1])}" if present else "—"


def trend_renderable(trend: Trend, width: int = 40, console_width: int | None = None) -> RenderableType:
    """``width`` characters per sparkline, fewer when ``console_width`` leaves less room."""
    if console_width:
        longest = max((len(layer.name) for layer in trend.layers), default=5)
        room = (console_width - longest - 2 * len("1.234e+05 → 1.234e+05") - len("nan/inf") - 10) // 2
        width = max(8, min(width, room))
    header = trend.header
    state = "finished" if trend.finished else "no end record: the run was killed or is still going"
    steps = trend.sampled_steps
    span = f"steps {steps[0]}–{steps[-1]}" if steps else "no sampled step"
    title = Text(
        f"{trend.path}: {len(steps)} sampled steps ({span}, every {header.get('every')}), "
        f"world size {header.get('world_size', 1)}; {state}",
        style="bold",
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("layer", "left"),
        ("max logit", "left"),
        ("first → last", "right"),
        ("min entropy", "left"),
        ("first → last", "right"),
        ("nan/inf", "right"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=True)
    for layer in trend.layers:
        bad = sum(layer.nonfinite)
        table.add_row(
            layer.name,
            Text(sparkline(layer.max_logit, width, "max"), style="magenta"),
            _ends(layer.max_logit),
            Text(sparkline(layer.min_entropy, width, "min"), style="cyan"),
            _ends(layer.min_entropy),
            Text(str(bad), style="red" if bad else "dim"),
        )
    parts: list[RenderableType] = [title, table]
    if trend.alerts:
        alerts = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
        for column in ("step", "severity", "alert", "layer", "head", "message"):
            justify = "right" if column == "step" else "left"
            alerts.add_column(column, no_wrap=column != "message", justify=justify)
        for alert in trend.alerts:
            alerts.add_row(
                str(alert.step),
                Text(alert.severity, style=SEVERITY_STYLE.get(alert.severity, "")),
                alert.kind,
                alert.layer,
                "—" if alert.head is None else str(alert.head),
                alert.message,
            )
        parts += [Text(""), Text(f"{len(trend.alerts)} alert(s)", style="bold"), alerts]
    else:
        parts += [Text(""), Text("no alert", style="green")]
    if trend.findings:
        parts.append(Text(""))
        parts.append(Text(f"{len(trend.findings)} catalogue finding(s), first step of each:", style="bold"))
        for finding in trend.findings:
            line = Text(f"  step {finding['step']}  ")
            line.append(finding["severity"], style=SEVERITY_STYLE.get(finding["severity"], ""))
            line.append(f"  {finding['code']} {finding['layer']}: {finding['message']}")
            parts.append(line)
    return Group(*parts)


def write_png(trend: Trend, path: Path) -> Path:
    """Max logit (log scale) and min entropy per layer over steps; alerts as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (logits, entropy) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for layer in trend.layers:
        steps = [s for s, v in zip(layer.steps, layer.max_logit) if v is not None and v > 0]
        logits.plot(steps, [v for v in layer.max_logit if v is not None and v > 0], label=layer.name)
        steps = [s for s, v in zip(layer.steps, layer.min_entropy) if v is not None]
        entropy.plot(steps, [v for v in layer.min_entropy if v is not None], label=layer.name)
    for alert in trend.alerts:
        for axis in (logits, entropy):
            axis.axvline(alert.step, color="red" if alert.severity == "error" else "orange", lw=0.8, ls="--")
    logits.set_yscale("log")
    logits.set_ylabel("max |scaled logit|")
    entropy.set_ylabel("min normalised entropy")
    entropy.set_xlabel("step")
    logits.legend(fontsize="small", ncol=2)
    logits.set_title(f"{Path(trend.path).name}: {len(trend.alerts)} alert(s) (dashed)")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
