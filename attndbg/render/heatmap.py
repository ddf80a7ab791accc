"""Heatmaps of attention weights: Rich renderables for the terminal, matplotlib for PNG."""

from __future__ import annotations

import math
from pathlib import Path

from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
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


# Without colour (pipes, -o files, CI logs, NO_COLOR) a cell is drawn with a glyph whose density
# follows the weight, so the map never turns into an empty grid. Masked cells keep their dots.
GLYPHS = " ░▒▓█"
DIVERGING_GLYPHS = "=- +#"  # strongly negative … strongly positive
MASKED = "·"
_MASKED_STYLE = Style(color="grey35", bgcolor="grey7")
# A weight that is not a number is a broken row, not "no attention": it gets a glyph of its own
# on a colour that neither palette has, in every console mode, and wins over the masked dots
# (a fully masked row softmaxed over -inf is both masked and NaN, and the NaN is the bug).
NAN = "×"
INFINITE = "∞"
NAN_RGB = (255, 0, 255)  # magenta
INFINITE_RGB = (255, 106, 0)  # orange
NONFINITE_LABELS = {NAN: "NaN", INFINITE: "±inf"}


def _render_mode(console: Console) -> str:
    """``background`` (256 colours or more), ``coloured-glyphs`` (8/16 colours) or ``glyphs``."""
    if console.color_system is None or console.no_color:
        return "glyphs"
    if console.color_system in ("standard", "windows"):  # few colours: the glyph carries the level
        return "coloured-glyphs"
    return "background"


def _glyph(t: float, diverging: bool) -> str:
    if diverging:
        t = min(max(t, -1.0), 1.0)
        return DIVERGING_GLYPHS[round((t + 1) / 2 * (len(DIVERGING_GLYPHS) - 1))]
    t = min(max(t, 0.0), 1.0)
    return GLYPHS[min(len(GLYPHS) - 1, math.ceil(t * (len(GLYPHS) - 1)))]


def _cell(t: float, width: int, diverging: bool, mode: str) -> Text:
    """One cell at level ``t`` (0…1, or -1…1 when diverging) in the console's mode."""
    rgb = _diverging(t) if diverging else _ramp(t)
    colour = f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"
    if mode == "background":
        return Text(" " * width, style=Style(bgcolor=colour))
    return Text(_glyph(t, diverging) * width, style=Style(color=colour) if mode == "coloured-glyphs" else "")


def _nonfinite_glyph(value: float) -> str:
    return NAN if math.isnan(value) else INFINITE


def _nonfinite_rgb(glyph: str) -> tuple[int, int, int]:
    return NAN_RGB if glyph == NAN else INFINITE_RGB


def _unit_rgb(glyph: str) -> tuple[float, float, float]:
    """The non-finite colour as matplotlib takes it (0…1 per channel)."""
    r, g, b = _nonfinite_rgb(glyph)
    return r / 255, g / 255, b / 255


def _nonfinite_cell(glyph: str, width: int, mode: str) -> Text:
    """A NaN or ±inf cell: its glyph, coloured (or on its colour) where the console has colours."""
    rgb = _nonfinite_rgb(glyph)
    colour = f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"
    if mode == "background":
        return Text(glyph * width, style=Style(color="black", bgcolor=colour, bold=True))
    return Text(glyph * width, style=Style(color=colour, bold=True) if mode == "coloured-glyphs" else "")


def finite_top(heatmaps: list[Heatmap]) -> float:
    """The largest |weight| that is a number (1.0 when there is none): the colour scale's end."""
    values = (abs(x) for h in heatmaps for row in h.weights for x in row if math.isfinite(x))
    return max(values, default=0.0) or 1.0


def _fit(label: str, width: int) -> str:
    """``label`` in at most ``width`` characters, ellipsised rather than silently cut."""
    if len(label) <= width:
        return label
    return label[: width - 1] + "…" if width > 1 else label[:width]


class HeatmapView:
    """One head's map; drawn when printed, because how to draw it depends on the console."""

    def __init__(self, h: Heatmap, cell: int = 2, diverging: bool = False, title: bool = True) -> None:
        self.h, self.cell, self.diverging, self.title = h, cell, diverging, title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Group(*self.lines(_render_mode(console)))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, Group(*self.lines(_render_mode(console))))

    def lines(self, mode: str) -> list[Text]:
        h, cell, diverging = self.h, self.cell, self.diverging
        rows, cols = h.shape
        top = finite_top([h])
        label_width = max((len(s) for s in h.row_labels), default=1)
        lines: list[Text] = []
        if self.title:
            scale = (
                f"{h.row_step} query rows × {h.col_step} keys per cell, max-pooled"
                if h.row_step > 1 or h.col_step > 1
                else "1 cell = 1 weight"
            )
            heading = f"{h.case} · batch {h.batch} · head {h.head} · {h.q_len}×{h.k_len} · {scale}"
            lines.append(Text(heading, style="bold"))
        # A label every few cells, as wide as the gap to the next one (minus a space).
        every = max(1, 8 // cell)
        axis = Text(" " * (label_width + 1))
        for j in range(0, cols, every):
            width = min(every, cols - j) * cell
            label = h.col_labels[j] if j < len(h.col_labels) and (j == 0 or width > 2) else ""
            axis.append(_fit(label, max(cell, width - 1)).ljust(width), style="dim")
        lines.append(axis)
        broken: set[str] = set()
        for i in range(rows):
            label = h.row_labels[i] if i < len(h.row_labels) else ""
            line = Text()
            line.append(label.rjust(label_width) + " ", style="dim")
            for j in range(cols):
                weight = h.weights[i][j]
                if not math.isfinite(weight):
                    glyph = _nonfinite_glyph(weight)
                    broken.add(glyph)
                    line.append_text(_nonfinite_cell(glyph, cell, mode))
                elif h.masked[i][j] and not diverging:
                    line.append(MASKED * cell, style=_MASKED_STYLE if mode != "glyphs" else "")
                else:
                    line.append_text(_cell(weight / top, cell, diverging, mode))
            lines.append(line)
        legend = self.legend(top, label_width, mode)
        for glyph in (NAN, INFINITE):  # only what the map holds
            if glyph in broken:
                legend.append("   " if legend.plain.strip() else "")
                legend.append_text(_nonfinite_cell(glyph, self.cell, mode))
                legend.append(f" {NONFINITE_LABELS[glyph]}", style="dim")
        lines.append(legend)
        return lines

    def legend(self, top: float, label_width: int, mode: str) -> Text:
        if self.diverging:
            legend = Text(" " * (label_width + 1))
            legend.append(f"-{top:.3g} ", style="dim")
            for t in (-1, -0.5, 0, 0.5, 1):
                legend.append_text(_cell(t, 2, True, mode))
            legend.append(f" +{top:.3g}", style="dim")
            return legend
        if self.cell == 1 and mode == "background":
            return Text(f"max {top:.3g}", style="dim")
        legend = Text(" " * (label_width + 1) if self.cell > 1 else "")
        legend.append("0 ", style="dim")
        steps = len(GLYPHS) if mode != "background" else 8
        for k in range(steps):
            legend.append_text(_cell(k / (steps - 1), self.cell, False, mode))
        legend.append(f" {top:.3g}   ", style="dim")
        legend.append(MASKED * self.cell, style=_MASKED_STYLE if mode != "glyphs" else "")
        legend.append(" masked", style="dim")
        return legend


def heatmap_renderable(
    h: Heatmap, cell: int = 2, diverging: bool = False, title: bool = True
) -> RenderableType:
    return HeatmapView(h, cell=cell, diverging=diverging, title=title)


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


def difference_renderable(d: Difference, names: tuple[str, str] = ("A", "B")) -> RenderableType:
    """A − B for one head; ``names`` say which file is A and which is B."""
    lines: list[RenderableType] = [
        Text(f"{d.case} · head {d.head}: A − B, largest |Δ| {_signed(d.max_abs).lstrip('+')}", style="bold"),
        # File names are not wrapped (print with crop=False): a path split over lines cannot be copied.
        Text(f"A = {names[0]}\nB = {names[1]}", style="dim", no_wrap=True, overflow="ignore"),
        heatmap_renderable(d.heatmap, diverging=True, title=False),
        Text("largest differences:", style="bold"),
    ]
    heat = d.heatmap
    for e in d.largest:
        query = _position(e["row"], heat.row_labels if heat.row_step == 1 else [])
        key = _position(e["key"], heat.col_labels if heat.col_step == 1 else [])
        lines.append(
            Text(f"  query {query} key {key}:  A {e['a']:.4f}  B {e['b']:.4f}  Δ {_signed(e['delta'])}")
        )
    return Group(*lines)


def _signed(value: float) -> str:
    """Fixed point where it reads well, scientific where fixed point would print +0.0000."""
    return f"{value:+.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:+.2e}"


def _position(index: int, labels: list[str]) -> str:
    """``7`` or, when the capture recorded tokens, ``7 'cat'``."""
    label = labels[index] if index < len(labels) else str(index)
    return f"{index:>4}" if label == str(index) else f"{index:>4} {label!r}"


def save_png(heatmaps: list[Heatmap], path: Path, diverging: bool = False) -> Path:
    """Draw the maps into a PNG at ``path``, written atomically (its folder must exist)."""
    import matplotlib.pyplot as plt

    from attndbg._io import atomic_write

    fig = png_figure(heatmaps, diverging)
    try:
        atomic_write(path, lambda temporary: fig.savefig(temporary, format="png", dpi=PNG_DPI))
    finally:
        plt.close(fig)
    return path


PNG_DPI = 110


def _panel_inches(rows: int, cols: int, alone: bool) -> tuple[float, float]:
    """A panel sized to its cells (about a third of an inch each, so token labels stay
    legible), within limits: one head may take a screen, a grid's panels stay small."""
    cap = 11.0 if alone else 5.0
    return min(cap, max(3.6, 0.32 * cols + 1.6)), min(cap, max(3.4, 0.32 * rows + 1.4))


def png_figure(heatmaps: list[Heatmap], diverging: bool = False):  # noqa: ANN201 - a matplotlib Figure
    """The matplotlib figure of ``save_png``; axes are labelled with tokens or positions, never
    with cell indices of a max-pooled map."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
        from matplotlib.ticker import FuncFormatter, MaxNLocator
    except ImportError:
        raise UsageError("--png needs matplotlib: pip install 'attndbg[plot]'") from None
    import numpy as np

    n = len(heatmaps)
    columns = min(n, 4)
    rows = (n + columns - 1) // columns
    width, height = _panel_inches(*heatmaps[0].shape, alone=n == 1)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns + 0.8, height * rows), squeeze=False)
    top = finite_top(heatmaps)
    cmap, vmin = ("RdBu_r", -top) if diverging else ("viridis", 0.0)
    image = None
    present: set[str] = set()
    for index, h in enumerate(heatmaps):
        ax = axes[index // columns][index % columns]
        data = np.array(h.weights, dtype=float)
        # non-finite cells are left out of the colour map and painted in their own colours
        image = ax.imshow(
            np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=top, interpolation="nearest", aspect="auto"
        )
        nan, infinite = np.isnan(data), np.isinf(data)
        if nan.any() or infinite.any():
            overlay = np.zeros((*data.shape, 4))
            overlay[nan] = (*_unit_rgb(NAN), 1.0)
            overlay[infinite] = (*_unit_rgb(INFINITE), 1.0)
            ax.imshow(overlay, interpolation="nearest", aspect="auto")
            present.update(glyph for glyph, cells in ((NAN, nan), (INFINITE, infinite)) if cells.any())
        for i, row in enumerate(h.masked):
            for j, masked in enumerate(row):
                if masked and not diverging and np.isfinite(data[i, j]):
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
                    value = data[i, j]
                    if not np.isfinite(value):
                        text = "NaN" if np.isnan(value) else f"{value:+}"
                        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black")
                    elif not h.masked[i][j]:
                        ax.text(
                            j,
                            i,
                            f"{value:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if value < 0.6 * top else "black",
                        )
        step = f" ({h.row_step}×{h.col_step} per cell)" if h.row_step > 1 or h.col_step > 1 else ""
        ax.set_title(f"head {h.head}{step}", fontsize=9)
        ax.set_xlabel("key position" if h.col_step > 1 else "key", fontsize=8)
        ax.set_ylabel("query position" if h.row_step > 1 else "query", fontsize=8)
        if len(h.col_labels) == data.shape[1] and h.col_step == 1 and data.shape[1] <= 48:
            ax.set_xticks(range(data.shape[1]), h.col_labels, rotation=90, fontsize=8)
        else:
            _position_ticks(ax.xaxis, h.col_step, MaxNLocator, FuncFormatter)
        if len(h.row_labels) >= data.shape[0] and h.row_step == 1 and data.shape[0] <= 48:
            ax.set_yticks(range(data.shape[0]), h.row_labels[: data.shape[0]], fontsize=8)
        else:
            _position_ticks(ax.yaxis, h.row_step, MaxNLocator, FuncFormatter)
    for index in range(n, rows * columns):
        axes[index // columns][index % columns].axis("off")
    fig.suptitle(f"{heatmaps[0].case} · batch {heatmaps[0].batch} · {heatmaps[0].source}", fontsize=10)
    fig.subplots_adjust(top=0.86, hspace=0.45, wspace=0.35)
    assert image is not None  # heatmaps is never empty
    if present:
        from matplotlib.patches import Patch

        fig.legend(
            handles=[
                Patch(facecolor=_unit_rgb(glyph), label=NONFINITE_LABELS[glyph])
                for glyph in (NAN, INFINITE)
                if glyph in present
            ],
            loc="upper left",
            fontsize=8,
            frameon=False,
        )
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="Δ weight" if diverging else "weight")
    return fig


def _position_ticks(axis, step: int, locator, formatter) -> None:  # noqa: ANN001 - matplotlib objects
    """Ticks at whole cells, labelled with the first position each cell pools."""
    axis.set_major_locator(locator(integer=True))
    axis.set_major_formatter(formatter(lambda x, _: f"{round(x) * step}" if x >= 0 else ""))
