"""What a CI job uses: SARIF, [tool.attndbg] in pyproject.toml, baselines, stable JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
from conftest import ROOT, run_cli

SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())


def fx(name: str) -> str:
    return str(ROOT / "fixtures" / f"{name}.safetensors")


def test_rules_as_sarif_list_the_registry_without_results() -> None:
    # Code scanning tools read rule metadata from tool.driver.rules; a table here would not parse.
    rules = json.loads(run_cli("rules", "--format", "json").stdout)
    result = run_cli("rules", "--format", "sarif")
    assert result.returncode == 0, result.stderr
    sarif = json.loads(result.stdout)
    jsonschema.validate(sarif, SCHEMA)
    run = sarif["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == [r["code"] for r in rules]
    assert run["results"] == []


def test_sarif_validates_against_the_schema() -> None:
    result = run_cli(
        "inspect",
        fx("MSK003_float_01_mask"),
        fx("PAT004_attention_sink"),
        fx("clean_basic"),
        "--format",
        "sarif",
    )
    assert result.returncode == 1
    sarif = json.loads(result.stdout)
    jsonschema.validate(sarif, SCHEMA)
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert {r["id"] for r in rules} >= {"SHP001", "MSK003", "PAT005"}
    msk003 = next(r for r in rules if r["id"] == "MSK003")
    assert (
        msk003["defaultConfiguration"]["level"] == "error"
        and "attention_mask.bool()" in msk003["help"]["text"]
    )
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels == {"MSK003": "error", "PAT004": "note"}
    first = run["results"][0]
    assert first["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith(".safetensors")
    assert first["locations"][0]["logicalLocations"][0]["name"] == "MSK003_float_01_mask"
    assert rules[first["ruleIndex"]]["id"] == first["ruleId"]


def test_pyproject_config_is_found_and_flags_win(tmp_path: Path) -> None:
    project = tmp_path / "repo"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[tool.attndbg]\nignore = ["MSK001"]\nfail-on = "warning"\n'
        "[tool.attndbg.thresholds]\nPAT004 = { sink_mass = 0.9 }\n"
    )
    num002 = fx("NUM002_nan_from_softmax")  # NUM002 error + MSK001 warning
    result = run_cli("inspect", num002, "--format", "json", cwd=project / "sub")
    codes = {f["code"] for c in json.loads(result.stdout)["cases"] for f in c["findings"]}
    assert codes == {"NUM002"}
    assert json.loads(result.stdout)["summary"]["fail_on"] == "warning"
    # a flag replaces the configured list
    result = run_cli("inspect", num002, "--ignore", "NUM", "--format", "json", cwd=project / "sub")
    codes = {f["code"] for c in json.loads(result.stdout)["cases"] for f in c["findings"]}
    assert codes == {"MSK001"}
    # fail-on warning from the config, --fail-on never from the flag
    sink = fx("PAT002_uniform_head")
    assert run_cli("inspect", sink, cwd=project).returncode == 1
    assert run_cli("inspect", sink, "--fail-on", "never", cwd=project).returncode == 0
    # the threshold override silences PAT004 (its heads sit below 0.9)
    assert run_cli("inspect", fx("PAT004_attention_sink"), "--fail-on", "info", cwd=project).returncode == 0
    assert run_cli("inspect", fx("PAT004_attention_sink"), "--fail-on", "info", cwd=tmp_path).returncode == 1


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.attndbg]\nthresholds = { PAT004 = { nope = 1 } }\n")
    result = run_cli("inspect", fx("clean_basic"), cwd=tmp_path)
    assert result.returncode == 2 and "nope" in result.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.attndbg]\nfail-on = "sometimes"\n')
    assert run_cli("inspect", fx("clean_basic"), cwd=tmp_path).returncode == 2


def test_baseline_round_trip(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    known = fx("SCL001_missing_scale")
    result = run_cli("inspect", known, "--write-baseline", str(baseline))
    assert result.returncode == 0 and baseline.exists()
    assert run_cli("inspect", known).returncode == 1
    assert run_cli("inspect", known, "--baseline", str(baseline)).returncode == 0
    # a new finding still fails the run
    assert (
        run_cli("inspect", known, fx("SMX002_softmax_over_queries"), "--baseline", str(baseline)).returncode
        == 1
    )
    sarif = json.loads(run_cli("inspect", known, "--baseline", str(baseline), "--format", "sarif").stdout)
    assert sarif["runs"][0]["results"][0]["baselineState"] == "unchanged"
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert run_cli("inspect", known, "--baseline", str(bad)).returncode == 2


def test_a_baseline_matches_however_the_path_is_typed(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    relative = "fixtures/SCL001_missing_scale.safetensors"  # typed from the repository root
    assert run_cli("inspect", relative, "--write-baseline", str(baseline)).returncode == 0
    entry = json.loads(baseline.read_text())["findings"][0]["fingerprint"]
    assert entry.startswith(relative + "::")
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    absolute = str(ROOT / relative)  # the same file, from another folder
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's attndbg, whatever the cwd

    def inspect_from_elsewhere(*args: str) -> int:
        command = [sys.executable, "-m", "attndbg", "inspect", absolute, *args]
        return subprocess.run(command, capture_output=True, cwd=elsewhere, env=env).returncode

    assert inspect_from_elsewhere("--baseline", str(baseline)) == 0
    assert inspect_from_elsewhere() == 1


def test_quiet_output_marks_baselined_findings(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    known = fx("SCL001_missing_scale")
    assert run_cli("inspect", known, "--write-baseline", str(baseline)).returncode == 0
    quiet = run_cli("inspect", known, fx("SMX002_softmax_over_queries"), "-q", "--baseline", str(baseline))
    errors = [line for line in quiet.stdout.splitlines() if ": error " in line]
    lines = {line.split(": ", 1)[1].split()[1]: line for line in errors}
    assert "(baseline)" in lines["SCL001"] and "(baseline)" not in lines["SMX002"]


def test_json_is_byte_identical_without_timings_across_runs() -> None:
    args = (
        "inspect",
        *[fx(n) for n in ("MSK004_inverted_padding", "PAT005_duplicate_heads")],
        "--format",
        "json",
        "--no-timings",
    )
    first, second = run_cli(*args), run_cli(*args)
    assert first.stdout == second.stdout and '"seconds": null' in first.stdout
