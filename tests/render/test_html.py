"""The HTML report without a browser: one self-contained file, the report's JSON embedded
intact, the maps decodable to the core's pooled weights, sizes bounded for long sequences,
hostile names inert."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from attndbg.case import Case
from attndbg.context import CaseContext
from attndbg.engine import Options, run_cases
from attndbg.heatmap import build_heatmap
from attndbg.loader import iter_cases
from attndbg.render.html import collect_maps, render_html
from attndbg.render.html.maps import MAX_SIDE, MIN_SIDE, side_for
from attndbg.render.html.page import named_heads
from attndbg.render.json_report import render_json


def fx(name: str) -> Path:
    return ROOT / "fixtures" / f"{name}.safetensors"


def page_for(*names: str) -> tuple[str, object, list]:
    cases = [case for name in names for case in iter_cases([fx(name)])]
    report = run_cases(cases, Options(), [str(fx(n)) for n in names])
    maps = [m for case in cases if (m := collect_maps(case)) is not None]
    return render_html(report, maps), report, maps


def embedded(html: str, element_id: str) -> object:
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', html, re.S)
    assert match, element_id
    return json.loads(match.group(1))


def decode_weights(maps: dict) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(maps["weights"]))
    shape = (maps["batches"], maps["heads"], maps["rows"], maps["cols"])
    return np.frombuffer(raw, dtype="<f2").reshape(shape).astype(np.float32)


def test_one_self_contained_file_with_the_report_json() -> None:
    html, report, _ = page_for("MSK004_inverted_padding", "PAT004_attention_sink", "SHP001_rank5")
    assert embedded(html, "attndbg-report") == json.loads(render_json(report))
    # nothing to fetch: no external script, stylesheet, image or font, and a CSP that forbids it
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", html)
    assert "url(" not in html and "@import" not in html
    assert "default-src 'none'" in html
    assert html.count("<script") == 3  # the report, the maps, the code
    # every case has a section with its settings and assumed: lines; findings name their head
    for index, case in enumerate(report.cases):
        assert f'id="case-{index}"' in html
        for guess in case.guesses:
            assert "assumed: " + guess.replace("'", "&#x27;").replace('"', "&quot;") in html
    assert 'class="finding sev-error"' in html and "MSK004" in html
    assert 'href="#case=1&amp;head=' in html or 'href="#case=1&head=' in html
    # fixes are highlighted Python (pygments spans), not plain text
    assert re.search(r'<div class="fix">.*?<span class="', html, re.S)


def test_maps_decode_to_the_cores_pooled_weights_and_masks() -> None:
    case = next(iter_cases([fx("MSK001_fully_masked_rows")]))
    maps = collect_maps(case)
    assert maps is not None and (maps.batches, maps.heads) == (2, 4)
    weights = decode_weights(maps.to_dict())
    ctx = CaseContext(case)
    for b in range(maps.batches):
        for h in range(maps.heads):
            core = build_heatmap(ctx, b, h, max_rows=maps.rows, max_cols=maps.cols)
            np.testing.assert_allclose(weights[b, h], np.asarray(core.weights), rtol=1e-3, atol=1e-4)
        bits = np.unpackbits(np.frombuffer(base64.b64decode(maps.masked[b][0]), dtype=np.uint8))
        expected = np.asarray(core.masked).reshape(-1)
        assert (bits[: expected.size].astype(bool) == expected).all()
        assert len(maps.masked[b]) == 1  # a mask shared by every head is stored once
    assert maps.masked[1] != maps.masked[0]  # batch row 1 pads keys, row 0 does not


def test_long_sequences_are_pooled_within_the_budget() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 1500, 8, generator=g) for _ in range(3))
    case = Case("long", "memory", {"q": q, "k": k, "v": v})
    maps = collect_maps(case, cell_budget=4 * 40 * 40)
    assert maps is not None
    assert maps.rows == maps.cols == 40 and maps.row_step == maps.col_step == 38  # ceil(1500 / 40)
    assert maps.labels[0]["rows"][1] == "38"  # positions of the pooled blocks
    html = render_html(run_cases([case], Options(), ["memory"]), [maps])
    assert len(html.encode()) < 120_000
    assert side_for(10_000, 100) == MIN_SIDE and side_for(1, 10**9) == MAX_SIDE


def test_hostile_names_cannot_close_the_script_or_inject_markup() -> None:
    hostile = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g) for _ in range(3))
    case = Case(hostile, hostile, {"q": q, "k": k, "v": v})
    report = run_cases([case], Options(), [hostile])
    html = render_html(report, [collect_maps(case)])
    assert html.count("<script") == 3 and "<img" not in html
    assert embedded(html, "attndbg-report")["cases"][0]["name"] == hostile
    assert embedded(html, "attndbg-maps")[0]["case"] == hostile


def test_cases_without_a_map_still_render() -> None:
    html, report, maps = page_for("SHP001_rank5", "NUM001_nan_in_q")
    data = embedded(html, "attndbg-maps")
    assert data[0] is None and data[1] is not None  # rank-5 tensors: nothing to draw
    weights = decode_weights(data[1])
    assert np.isnan(weights).any()  # the NaN row of q reaches the page, drawn as NaN


def test_named_heads_and_source_locations() -> None:
    _, report, _ = page_for("PAT004_attention_sink")
    sink = next(f for f in report.findings if f.code == "PAT004")
    assert named_heads(sink) == list(dict.fromkeys([sink.head, *sink.evidence["heads"]]))
    # a traced capture attaches where the attention call was made: it is shown with its code
    sink.location = {"file": "model.py", "line": 42, "function": "forward", "code": "attn = q @ k.T"}
    html = render_html(report, [])
    assert "model.py:42" in html and "<code>forward</code>" in html
    assert re.search(r"attn.*?=.*?q.*?@.*?k", html)

    @dataclasses.dataclass
    class Place:  # the shape of report.Location that traced captures attach
        file: str
        line: int
        function: str = ""
        code: str = ""

    sink.location = Place("train.py", 7, "step", "out = attention(x)")
    assert "train.py:7" in render_html(report, [])


@pytest.mark.parametrize("name", ["clean_basic", "MSK005_weights_leak", "SMX003_log_probabilities"])
def test_every_fixture_kind_renders(name: str) -> None:
    html, report, maps = page_for(name)
    data = embedded(html, "attndbg-maps")
    assert len(data) == len(report.cases)
    for entry in data:
        if entry is not None:
            assert decode_weights(entry).shape[1] == entry["heads"]


def test_inspect_and_show_write_the_interactive_report(tmp_path: Path) -> None:
    from conftest import run_cli

    report = tmp_path / "report.html"
    result = run_cli(
        "inspect",
        str(fx("PAT004_attention_sink")),
        str(fx("MSK003_float_01_mask")),
        "-q",
        "--html",
        str(report),
    )
    assert result.returncode == 1  # MSK003 is an error: --html changes no exit code
    assert f"report written to {report}" in " ".join(result.stderr.split())
    html = report.read_text()
    data = embedded(html, "attndbg-report")
    assert [c["name"] for c in data["cases"]] == ["PAT004_attention_sink", "MSK003_float_01_mask"]
    maps = embedded(html, "attndbg-maps")
    assert [m["case"] for m in maps] == ["PAT004_attention_sink", "MSK003_float_01_mask"]

    layer = tmp_path / "show.html"
    shown = run_cli("show", str(fx("clean_multi_case")), "--head", "1", "--batch", "1", "--html", str(layer))
    assert shown.returncode == 0, shown.stderr
    page = layer.read_text()
    assert 'data-open="0/1/1"' in page and len(embedded(page, "attndbg-maps")) >= 2


def test_html_refuses_inputs_and_two_files(tmp_path: Path) -> None:
    from conftest import run_cli

    source = tmp_path / "in.safetensors"
    source.write_bytes(fx("clean_basic").read_bytes())
    for command in (["inspect", str(source)], ["show", str(source)]):
        result = run_cli(*command, "--html", str(source))
        assert result.returncode == 2 and "refusing to overwrite an input file" in result.stderr
        assert "Traceback" not in result.stderr
    assert source.read_bytes() == fx("clean_basic").read_bytes()
    two = run_cli("show", str(fx("clean_basic")), str(fx("clean_basic")), "--html", str(tmp_path / "d.html"))
    assert two.returncode == 2 and "--html draws one file" in two.stderr


def test_from_python_after_a_capture() -> None:
    import attndbg
    from attndbg.render.html import collect_all

    layer = torch.nn.TransformerEncoderLayer(32, 4, batch_first=True).eval()
    with torch.no_grad(), attndbg.capture(layer) as calls:
        layer(torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(0)))
    report = attndbg.diagnose(calls)
    html = render_html(report, collect_all(list(calls.cases())))
    maps = embedded(html, "attndbg-maps")
    assert len(maps) == len(report.cases) == 1 and maps[0]["heads"] == 4 and maps[0]["batches"] == 2
    assert decode_weights(maps[0]).sum(axis=-1) == pytest.approx(np.ones((2, 4, 10)), abs=2e-2)
