"""`attndbg trend LOG`: the summary of a real watched run, its JSON, PNG and exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from watch_model import TinyGPT, random_batches

import attndbg
from attndbg.errors import InputError
from attndbg.render.trend import sparkline, trend_renderable
from attndbg.watch.trend import load_trend


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Two real runs of a small GPT: a healthy one, and one whose layer-1 queries are scaled
    ×60 at step 8 (sampled every 2 steps)."""
    folder = tmp_path_factory.mktemp("trend")
    paths = {}
    for name, break_at in (("healthy", None), ("collapse", 8)):
        torch.manual_seed(0)
        model = TinyGPT()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        paths[name] = folder / f"{name}.jsonl"
        with attndbg.watch(model, every=2, log=paths[name], on_alert="ignore") as watcher:
            for step, (ids, targets) in enumerate(random_batches(12)):
                if step == break_at:
                    with torch.no_grad():
                        model.blocks[1].attn.q_proj.weight.mul_(60)
                model(ids, targets).backward()
                optimizer.step()
                optimizer.zero_grad()
                watcher.step()
    return paths


def test_summary_of_a_collapse(logs):
    trend = load_trend(logs["collapse"])
    assert trend.finished and trend.sampled_steps == [0, 2, 4, 6, 8, 10]
    assert [layer.name for layer in trend.layers] == ["blocks.0.attn", "blocks.1.attn"]
    broken = trend.layers[1]
    assert broken.steps == trend.sampled_steps
    assert max(broken.max_logit[:4]) < 50 < min(broken.max_logit[4:])
    assert broken.min_entropy[4] < 0.1 < broken.min_entropy[3]
    assert {a.step for a in trend.alerts} == {8}
    assert {"logit-growth", "entropy-collapse", "catalogue-error"} == {a.kind for a in trend.alerts}
    assert (trend.exit_code("warning"), trend.exit_code("error"), trend.exit_code("never")) == (1, 1, 0)
    assert load_trend(logs["healthy"]).exit_code("info") == 0


def test_sparkline_scales_each_series_and_marks_gaps():
    assert sparkline([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5.0, None, 5.0]) == "▁ ▁"
    assert sparkline([1.0, float("inf")]) == "▁!"
    assert sparkline([float(i) for i in range(100)], width=10) == "▁▂▃▃▄▅▆▆▇█"  # max of each bucket of 10


def test_rich_summary_names_layers_alerts_and_steps(logs):
    text = _render(logs["collapse"])
    assert "6 sampled steps (steps 0–10, every 2)" in text
    assert "blocks.1.attn" in text and "alert(s)" in text and "SCL003" in text
    assert "no alert" in _render(logs["healthy"])


def _render(path) -> str:
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(trend_renderable(load_trend(path)))
    return console.export_text()


def test_a_truncated_log_is_read_up_to_its_last_line(logs, tmp_path):
    lines = logs["collapse"].read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:3]) + lines[3][:25])
    trend = load_trend(cut)
    assert not trend.finished and trend.sampled_steps == [0, 2]
    assert "no end record" in _render(cut)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ('{"type": "header", "schema": "something else"}\n', "not an attndbg watch log"),
        ('{"type": "header", "schema": "attndbg.watch", "schema_version": 99}\n', "schema version 99"),
        ('{"type": "header", "schema": "attndbg.watch", "schema_version": 1}\nnot json\n', "log.jsonl:2"),
    ],
)
def test_bad_logs_are_input_errors(tmp_path, content, message):
    log = tmp_path / "log.jsonl"
    if content is not None:
        log.write_text(content)
    with pytest.raises(InputError, match=message):
        load_trend(log)


def test_png(logs, tmp_path):
    pytest.importorskip("matplotlib")
    from attndbg.render.trend import write_png

    path = write_png(load_trend(logs["collapse"]), tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_exit_codes_json_and_png(logs, tmp_path):
    result = run_cli("trend", str(logs["collapse"]))
    assert result.returncode == 1, result.stderr
    assert "blocks.1.attn" in result.stdout and "entropy-collapse" in result.stdout
    assert run_cli("trend", str(logs["collapse"]), "--fail-on", "never").returncode == 0
    assert run_cli("trend", str(logs["healthy"])).returncode == 0
    result = run_cli("trend", str(logs["collapse"]), "--format", "json", "--png", str(tmp_path / "c.png"))
    data = json.loads(result.stdout)
    assert data["exit_code"] == result.returncode == 1 and data["fail_on"] == "warning"
    assert data["sampled_steps"] == [0, 2, 4, 6, 8, 10] and data["finished"] is True
    assert {a["step"] for a in data["alerts"]} == {8}
    assert [layer["name"] for layer in data["layers"]] == ["blocks.0.attn", "blocks.1.attn"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_log_is_one_line_and_exit_2(tmp_path):
    result = run_cli("trend", str(tmp_path / "nothing.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr


def test_reading_a_log_does_not_import_torch():
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        "import sys; from attndbg.watch.trend import load_trend; "
        "from attndbg.render.trend import trend_renderable; import attndbg.cli.trend; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
