"""The issue's headline, end to end through the CLI: a two-layer model whose attention forgets
``/ math.sqrt(d_k)``, captured from a factory file and inspected, names SCL001 at the line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from conftest import ROOT

FACTORY = ROOT / "tests" / "models" / "unscaled_factory.py"
SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
QK_LINE = "scores = torch.matmul(q, k.transpose(-2, -1))"


def _attndbg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "attndbg", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """``attndbg capture factory.py:build -o a.safetensors`` in a folder holding factory.py."""
    folder = tmp_path_factory.mktemp("headline")
    shutil.copy(FACTORY, folder / "factory.py")
    captured = _attndbg("capture", "factory.py:build", "-o", "a.safetensors", cwd=folder)
    assert captured.returncode == 0, captured.stderr
    line = FACTORY.read_text().splitlines().index(f"        {QK_LINE}") + 1
    return folder, line


def test_inspect_names_scl001_at_the_users_line(session: tuple[Path, int]) -> None:
    folder, line = session
    result = _attndbg("inspect", "a.safetensors", cwd=folder)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "SCL001" in result.stdout and "missing-scale" in result.stdout
    assert f"factory.py:{line}  {QK_LINE}" in result.stdout


def test_json_and_sarif_carry_the_location(session: tuple[Path, int]) -> None:
    folder, line = session
    data = json.loads(_attndbg("inspect", "a.safetensors", "--format", "json", cwd=folder).stdout)
    scl = [f for case in data["cases"] for f in case["findings"] if f["code"] == "SCL001"]
    assert len(scl) == 2 and scl[0]["evidence"]["matches"] == "no scale"
    assert scl[0]["location"] == {"file": "factory.py", "line": line, "function": "forward", "code": QK_LINE}
    sarif = json.loads(_attndbg("inspect", "a.safetensors", "--format", "sarif", cwd=folder).stdout)
    jsonschema.validate(sarif, SCHEMA)
    result = next(r for r in sarif["runs"][0]["results"] if r["ruleId"] == "SCL001")
    physical = result["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"]["uri"] == "factory.py"
    assert physical["region"]["startLine"] == line
    assert physical["region"]["snippet"]["text"] == QK_LINE
