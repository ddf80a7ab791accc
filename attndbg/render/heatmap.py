"""Heatmaps of attention weights: Rich renderables for the terminal, matplotlib for PNG."""

from __future__ import annotations

from pathlib import Path

from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.style import Style
from rich.text import Text

from attndbg.errors import UsageError
from attndbg.heatmap import Difference, Heatmap

# viridis, sampled: readable on dark and light terminals, monotone in lightness
_VIRIDIS = [
    (68, 1, 84),
    (72, 40, 120),
    (62, 74, 137),
    (49, 104, 142),
    (38, 130, 142),
    (31, 158, 137),
    (53, 183, 121),
    (109, 205, 89),
    (180, 222, 44),
    (253, 231, 37),
]


def _ramp(t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(x + (y - x) * f) for x, y in zip(a, b))  # type: ignore[return-value]


def _diverging(t: float) -> tuple[int, int, int]:
    t = min(max(t, -1.0), 1.0)
    if t >= 0:
        return (255, round(255 * (1 - t)), round(255 * (1 - t)))
    return (round(255 * (1 + t)), round(255 * (1 + t)), 255)


def heatmap_renderable(
    h: Heatmap, cell: int = 2, diverging: bool = False, title: bool = True
) -> RenderableType:
    rows, cols = h.shape
    flat = [x for row in h.weights for x in row]
    top = max((abs(x) for x in flat), default=0.0) or 1.0
    label_width = max((len(s) for s in h.row_labels), default=1)
    lines: list[Text] = []
    if title:
        scale = (
            f"{h.row_step} query rows × {h.col_step} keys per cell, max-pooled"
            if h.row_step > 1 or h.col_step > 1
            else "1 cell = 1 weight"
        )
        lines.append(
            Text(f"{h.case} · batch {h.batch} · head {h.head} · {h.q_len}×{h.k_len} · {scale}", style="bold")
        )
    axis = Text(" " * (label_width + 1))
    every = max(1, 8 // cell)
    for j in range(cols):
        label = h.col_labels[j] if j < len(h.col_labels) else ""
        axis.append(
            (label if j % every == 0 else "").ljust(cell)[:cell] if j % every == 0 else " " * cell,
            style="dim",
        )
    lines.append(axis)
    for i in range(rows):
        line = Text((h.row_labels[i] if i < len(h.row_labels) else "").rjust(label_width) + " ", style="dim")
        for j in range(cols):
            value = h.weights[i][j]
            if h.masked[i][j] and not diverging:
                line.append("·" * cell, style=Style(color="grey35", bgcolor="grey7"))
                continue
            rgb = _diverging(value / top) if diverging else _ramp(value / top)
            line.append(" " * cell, style=Style(bgcolor=f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"))
        lines.append(line)
    legend = Text(" " * (label_width + 1))
    if diverging:
        legend.append(f"-{top:.3g} ", style="dim")
        for t in (-1, -0.5, 0, 0.5, 1):
            rgb = _diverging(t)
            legend.append("  ", style=Style(bgcolor=f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"))
        legend.append(f" +{top:.3g}", style="dim")
    elif cell == 1:
        legend = Text(f"max {top:.3g}", style="dim")
    else:
        legend.append("0 ", style="dim")
        for k in range(8):
            rgb = _ramp(k / 7)
            legend.append("  ", style=Style(bgcolor=f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"))
        legend.append(f" {top:.3g}   ", style="dim")
        legend.append("··", style=Style(color="grey35", bgcolor="grey7"))
        legend.append(" masked", style="dim")
    lines.append(legend)
    return Group(*lines)


def grid_renderable(heatmaps: list[Heatmap], width: int) -> RenderableType:
    """All heads side by side, one cell character wide, as many per row as the width allows."""
    panels = [
        Panel(
            heatmap_renderable(h, cell=1, title=False), title=f"head {h.head}", expand=False, padding=(0, 0)
        )
        for h in heatmaps
    ]
    first = heatmaps[0]
    scale = (
        f"{first.row_step}×{first.col_step} per cell, max-pooled"
        if first.row_step > 1 or first.col_step > 1
        else "1 cell = 1 weight"
    )
    header = Text(
        f"{first.case} · batch {first.batch} · {len(heatmaps)} heads · {first.q_len}×{first.k_len} · {scale}",
        style="bold",
    )
    return Group(header, Columns(panels, width=None, padding=(0, 1)))


def difference_renderable(d: Difference) -> RenderableType:
    lines: list[RenderableType] = [
        Text(f"{d.case} · head {d.head}: A − B, largest |Δ| {d.max_abs:.3g}", style="bold"),
        heatmap_renderable(d.heatmap, diverging=True, title=False),
        Text("largest differences:", style="bold"),
    ]
    for e in d.largest:
        lines.append(
            Text(
                f"  query {e['row']:>4} key {e['key']:>4}:  A {e['a']:.4f}  B {e['b']:.4f}  "
                f"Δ {e['delta']:+.4f}"
            )
        )
    return Group(*lines)


def save_png(heatmaps: list[Heatmap], path: Path, diverging: bool = False) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        raise UsageError("--png needs matplotlib: pip install 'attndbg[plot]'") from None
    import numpy as np

    n = len(heatmaps)
    columns = min(n, 4)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns + 0.8, 3.4 * rows), squeeze=False)
    top = max(max((abs(x) for r in h.weights for x in r), default=0.0) for h in heatmaps) or 1.0
    cmap, vmin = ("RdBu_r", -top) if diverging else ("viridis", 0.0)
    image = None
    for index, h in enumerate(heatmaps):
        ax = axes[index // columns][index % columns]
        data = np.array(h.weights, dtype=float)
        image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=top, interpolation="nearest", aspect="auto")
        for i, row in enumerate(h.masked):
            for j, masked in enumerate(row):
                if masked and not diverging:
                    ax.add_patch(
                        Rectangle(
                            (j - 0.5, i - 0.5),
                            1,
                            1,
                            fill=True,
                            facecolor="0.85",
                            edgecolor="0.4",
                            hatch="///",
                            linewidth=0,
                        )
                    )
        if n == 1 and data.shape[0] <= 16 and data.shape[1] <= 16:
            for i in range(data.shape[0]):
                for j in range(data.shape[1]):
                    if not h.masked[i][j]:
                        ax.text(
                            j,
                            i,
                            f"{data[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if data[i, j] < 0.6 * top else "black",
                        )
        step = f" ({h.row_step}×{h.col_step} per cell)" if h.row_step > 1 or h.col_step > 1 else ""
        ax.set_title(f"head {h.head}{step}", fontsize=9)
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
        if len(h.col_labels) == data.shape[1] and h.col_step == 1 and data.shape[1] <= 32:
            ax.set_xticks(range(data.shape[1]), h.col_labels, rotation=90, fontsize=6)
            ax.set_yticks(range(data.shape[0]), h.row_labels[: data.shape[0]], fontsize=6)
    for index in range(n, rows * columns):
        axes[index // columns][index % columns].axis("off")
    fig.suptitle(f"{heatmaps[0].case} · batch {heatmaps[0].batch} · {heatmaps[0].source}", fontsize=10)
    fig.subplots_adjust(top=0.86, hspace=0.45, wspace=0.35)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="Δ weight" if diverging else "weight")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
