"""Output at 80 and 200 columns: code is never wrapped or cut, names stay whole, help is literal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from attndbg.registry import load_checks

WIDTHS = ("80", "200")


def run_at(columns: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": columns, "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "attndbg", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


@pytest.mark.parametrize("columns", WIDTHS)
@pytest.mark.parametrize("code", ["MSK003", "SCL001", "PAT004"])
def test_explain_prints_every_fix_line_whole(columns: str, code: str) -> None:
    result = run_at(columns, "explain", code)
    assert result.returncode == 0, result.stderr
    printed = [line.strip() for line in result.stdout.splitlines()]
    for line in load_checks()[code].fix.strip().splitlines():
        assert line.strip() in printed, line


@pytest.mark.parametrize("columns", WIDTHS)
def test_report_fix_snippet_pastes_as_python(columns: str) -> None:
    fixture = str(ROOT / "fixtures" / "SCL001_missing_scale.safetensors")
    result = run_at(columns, "inspect", fixture)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("scores = q @"))
    snippet = "\n".join(line.strip() for line in lines[start : start + 3])
    compile(snippet, "<fix>", "exec")  # a wrapped comment or a cut call would not compile
    assert "# scale defaults to 1/sqrt(d)" in snippet
    other = [line for line in lines if not line.strip().startswith(("out = F.", "scores ="))]
    assert all(len(line) <= int(columns) for line in other)  # only code may overflow


def test_help_shows_brackets_literally_and_words_whole() -> None:
    show = run_at("80", "show", "--help").stdout
    assert "attndbg[plot]" in show
    inspect = run_at("80", "inspect", "--help").stdout
    assert "additiv\n" not in inspect and "additive" in inspect
    assert "[tool.attndbg" in inspect
