"""NaN and ±inf weights are drawn as broken cells, never as "no attention".

The weights come from the NUM002 bug made with real ops: a plain softmax over a mask that hides
every key of some query rows (-inf everywhere gives 0/0 = NaN), saved as the user's weights.
Each renderer — terminal in every console mode, PNG, the HTML report's maps — must keep those
cells apart from weight 0 and list them in the legend only when a map has them.
"""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
import torch
from rich.console import Console

from attndbg.case import Case
from attndbg.context import CaseContext
from attndbg.heatmap import build_heatmap
from attndbg.render.heatmap import (
    GLYPHS,
    INFINITE,
    INFINITE_RGB,
    MASKED,
    NAN,
    NAN_RGB,
    heatmap_renderable,
    png_figure,
)
from attndbg.render.html import collect_maps

L, D, HEADS = 12, 8, 2
HIDDEN_ROWS = range(8, L)  # query rows whose every key the mask hides


def nan_rows_case(name: str = "nan-rows", broken: bool = True) -> Case:
    """q, k, v, a bool mask hiding every key of rows 8–11, and the weights of a plain softmax
    over -inf there (NaN rows), or of a NaN-free softmax when ``broken`` is False."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, L, D, generator=g) for _ in range(3))
    keep = torch.ones(1, 1, L, L, dtype=torch.bool)
    keep[..., HIDDEN_ROWS, :] = False
    scores = (q @ k.transpose(-1, -2) * D**-0.5).masked_fill(~keep, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if not broken:
        weights = weights.nan_to_num(0.0)
    return Case(name, "memory", {"q": q, "k": k, "v": v, "mask": keep, "weights": weights})


@pytest.fixture(scope="module")
def nan_map():  # noqa: ANN201
    heat = build_heatmap(CaseContext(nan_rows_case()), 0, 0)
    assert all(np.isnan(heat.weights[i]).all() for i in HIDDEN_ROWS)
    return heat


@pytest.fixture(scope="module")
def clean_map():  # noqa: ANN201
    return build_heatmap(CaseContext(nan_rows_case(broken=False)), 0, 0)


def rendered(renderable, colours: str | None) -> tuple[str, str]:  # noqa: ANN001
    sink = io.StringIO()
    console = Console(
        width=120, record=True, file=sink, color_system=colours, force_terminal=colours is not None
    )
    console.print(renderable)
    return console.export_text(), sink.getvalue()


def grid_rows(text: str) -> list[str]:
    """The cells of each map row, between the key axis and the legend, without the row label."""
    lines = text.rstrip("\n").splitlines()
    assert lines[1].split()[:2] == ["0", "4"]  # the key axis (a label every 4 cells)
    label = len(str(L - 1)) + 1
    return [line[label:].rstrip() for line in lines[2:-1]]


@pytest.mark.parametrize("colours", [None, "standard", "256", "truecolor"])
def test_terminal_draws_nan_rows_with_their_own_glyph(nan_map, clean_map, colours: str | None) -> None:  # noqa: ANN001
    plain, styled = rendered(heatmap_renderable(nan_map), colours)
    rows = grid_rows(plain)
    assert len(rows) == L
    for i in HIDDEN_ROWS:  # NaN wins over the masked dots: the row is broken, not merely masked
        assert rows[i] == NAN * 2 * L, rows[i]
    assert NAN not in "".join(rows[:8]) and MASKED not in "".join(rows[:8])
    legend = plain.splitlines()[-1]
    assert f"{NAN * 2} NaN" in legend and "±inf" not in legend
    if colours in ("256", "truecolor"):  # its own colour behind the glyph (Rich caches a
        # style's codes per instance, so a 256-colour console's code may reach the other)
        assert "48;2;{};{};{}".format(*NAN_RGB) in styled or "48;5;201m" in styled
    clean_plain, _ = rendered(heatmap_renderable(clean_map), colours)
    assert NAN not in "".join(grid_rows(clean_plain)) and "NaN" not in clean_plain  # nor a legend entry
    assert grid_rows(clean_plain)[8] == MASKED * 2 * L  # the NaN-free softmax: masked, not broken


def test_terminal_draws_infinities_and_keeps_the_scale_of_the_finite_weights() -> None:
    heat = build_heatmap(CaseContext(nan_rows_case()), 0, 1)
    heat.weights[0][0] = float("inf")
    heat.weights[0][1] = float("-inf")
    plain, _ = rendered(heatmap_renderable(heat), None)
    row = grid_rows(plain)[0]
    assert row.startswith(INFINITE * 4)
    assert set(row[4:]) <= set(GLYPHS), row  # the other weights keep their levels
    assert "█" in "".join(grid_rows(plain))  # the largest finite weight is still full
    legend = plain.splitlines()[-1]
    assert "NaN" in legend and f"{INFINITE * 2} ±inf" in legend


def drawn(heat) -> tuple[np.ndarray, list[str]]:  # noqa: ANN001
    """The PNG renderer's figure as RGB pixels, and the labels of its legend."""
    import matplotlib.pyplot as plt

    fig = png_figure([heat])
    try:
        fig.canvas.draw()
        image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
        labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    finally:
        plt.close(fig)
    return image, labels


def pixels_of(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int((np.abs(image - np.array(rgb)).sum(-1) < 10).sum())


def test_png_paints_nan_and_inf_cells_in_their_colours_with_a_legend(nan_map, clean_map) -> None:  # noqa: ANN001
    pytest.importorskip("matplotlib")
    image, labels = drawn(nan_map)
    assert pixels_of(image, NAN_RGB) > 500 and labels == ["NaN"]  # four rows of cells, named
    image, labels = drawn(clean_map)
    assert pixels_of(image, NAN_RGB) == pixels_of(image, INFINITE_RGB) == 0 and labels == []
    with_inf = build_heatmap(CaseContext(nan_rows_case(broken=False)), 0, 0)
    with_inf.weights[0][0] = float("inf")
    image, labels = drawn(with_inf)
    assert pixels_of(image, INFINITE_RGB) > 50 and pixels_of(image, NAN_RGB) == 0 and labels == ["±inf"]


def test_html_maps_carry_nan_as_nan() -> None:
    maps = collect_maps(nan_rows_case())
    assert maps is not None
    raw = zlib.decompress(base64.b64decode(maps.weights))
    weights = np.frombuffer(raw, dtype="<f2").reshape(maps.batches, maps.heads, maps.rows, maps.cols)
    assert np.isnan(weights[0, :, 8:]).all()
    assert np.isfinite(weights[0, :, :8]).all()
