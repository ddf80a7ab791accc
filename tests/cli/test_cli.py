"""The console script: exit codes, selection, formats, output files, start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_cli


def fx(name: str) -> str:
    return str(ROOT / "fixtures" / f"{name}.safetensors")


def test_clean_exits_0() -> None:
    result = run_cli("inspect", fx("clean_basic"), fx("clean_causal"))
    assert result.returncode == 0, result.stderr
    assert "2 cases: 0 errors" in result.stdout


def test_error_exits_1_and_fail_on_controls_threshold() -> None:
    assert run_cli("inspect", fx("SHP002_head_dim")).returncode == 1
    assert run_cli("inspect", fx("SHP002_head_dim"), "--fail-on", "never").returncode == 0
    # a warning-only fixture: passes the default, fails --fail-on warning
    assert run_cli("inspect", fx("PAT002_uniform_head")).returncode == 0
    assert run_cli("inspect", fx("PAT002_uniform_head"), "--fail-on", "warning").returncode == 1
    # an info-only fixture
    assert run_cli("inspect", fx("PAT004_attention_sink"), "--fail-on", "warning").returncode == 0
    assert run_cli("inspect", fx("PAT004_attention_sink"), "--fail-on", "info").returncode == 1


def test_select_and_ignore_by_prefix() -> None:
    path = fx("NUM002_nan_from_softmax")  # NUM002 + MSK001
    assert run_cli("inspect", path, "--ignore", "NUM").returncode == 0
    assert run_cli("inspect", path, "--select", "MSK").returncode == 0
    assert run_cli("inspect", path, "--select", "NUM00").returncode == 1
    out = run_cli("inspect", path, "--select", "NUM,MSK", "--ignore", "NUM002", "--format", "json")
    codes = {f["code"] for c in json.loads(out.stdout)["cases"] for f in c["findings"]}
    assert codes == {"MSK001"}


def test_unknown_code_is_a_usage_error() -> None:
    result = run_cli("inspect", fx("clean_basic"), "--select", "XYZ9")
    assert result.returncode == 2
    assert "unknown check code" in result.stderr


def test_bad_option_values_exit_2() -> None:
    assert run_cli("inspect", fx("clean_basic"), "--fail-on", "sometimes").returncode == 2
    assert run_cli("inspect", fx("clean_basic"), "--layout", "xyz").returncode == 2
    assert run_cli("inspect", fx("clean_basic"), "--max-memory", "lots").returncode == 2
    assert run_cli("inspect").returncode == 2


def test_json_schema_and_exit_code() -> None:
    result = run_cli("inspect", fx("MSK003_float_01_mask"), fx("clean_gqa"), "--format", "json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1
    assert data["exit_code"] == 1
    assert data["summary"]["error"] == 1 and data["summary"]["cases"] == 2
    case = data["cases"][0]
    assert {
        "name",
        "file",
        "source",
        "layout",
        "shapes",
        "dtype",
        "device",
        "settings",
        "guesses",
        "tensors",
        "stages",
        "findings",
        "heads",
    } <= case.keys()
    finding = case["findings"][0]
    assert finding["code"] == "MSK003" and finding["severity"] == "error"
    assert finding["evidence"]["values"] == [0.0, 1.0] and finding["fix"]
    assert [s["name"] for s in case["stages"]] == [
        "shapes",
        "numerics",
        "scaling",
        "mask",
        "softmax",
        "patterns",
        "gradients",
    ]
    gqa = data["cases"][1]
    assert gqa["settings"]["enable_gqa"] is True and len(gqa["heads"]) == 8


def test_no_timings_is_byte_identical() -> None:
    args = ("inspect", fx("SCL001_missing_scale"), "--format", "json", "--no-timings")
    assert run_cli(*args).stdout == run_cli(*args).stdout


def test_output_file_written_and_inputs_protected(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    result = run_cli("inspect", fx("SMX002_softmax_over_queries"), "--format", "json", "-o", str(target))
    assert result.returncode == 1 and result.stdout == ""
    assert json.loads(target.read_text())["cases"][0]["findings"][0]["code"] == "SMX002"
    text = tmp_path / "report.txt"
    assert run_cli("inspect", fx("SMX002_softmax_over_queries"), "-o", str(text)).returncode == 1
    assert "SMX002" in text.read_text()
    before = Path(fx("clean_basic")).read_bytes()
    result = run_cli("inspect", fx("clean_basic"), "-o", fx("clean_basic"))
    assert result.returncode == 2
    assert Path(fx("clean_basic")).read_bytes() == before


def test_rich_report_shows_guesses_evidence_and_fix() -> None:
    result = run_cli("inspect", fx("SHP006_batch_equals_seq"))
    assert result.returncode == 1
    out = result.stdout
    assert "SHP006" in out and "evidence:" in out and "assumed: layout bhsd" in out
    assert "padding_mask[:, None, None, :]" in out


def test_case_glob_and_layout_flag() -> None:
    result = run_cli("inspect", fx("clean_multi_case"), "--case", "encoder.layer.1*", "--format", "json")
    names = [c["name"] for c in json.loads(result.stdout)["cases"]]
    assert names == ["encoder.layer.1"]
    assert run_cli("inspect", fx("clean_multi_case"), "--case", "nothing*").returncode == 2
    # the sequence-first fixture is consistent once the layout is given
    seq_first = fx("SHP007_sequence_first")
    assert run_cli("inspect", seq_first).returncode == 1
    assert run_cli("inspect", seq_first, "--layout", "sbd").returncode == 0


def test_quiet_prints_one_line_per_finding() -> None:
    result = run_cli("inspect", fx("MSK004_inverted_padding"), "--quiet", "--fail-on", "never")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3  # MSK004, MSK001, summary
    assert "MSK004" in lines[0] or "MSK004" in lines[1]


def test_rules_and_explain() -> None:
    rules = run_cli("rules", "--format", "json")
    data = json.loads(rules.stdout)
    assert {r["code"] for r in data} >= {"SHP001", "SHP007", "NUM003", "MSK007", "SMX004", "PAT005"}
    explain = run_cli("explain", "msk003")
    assert explain.returncode == 0 and "float-01-mask-added" in explain.stdout
    assert "attention_mask.bool()" in explain.stdout
    missing = run_cli("explain", "MSK999")
    assert missing.returncode == 2 and "MSK001" in missing.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("attndbg ")


def test_help_rules_explain_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from attndbg.cli import app\n"
        "for argv in (['--help'], ['rules'], ['explain', 'SCL001']):\n"
        "    try:\n"
        "        app(argv, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout + result.stderr


def test_help_through_the_entry_point_does_not_import_torch() -> None:
    # The console script goes through main(), which also strips --debug before Typer parses.
    code = (
        "import sys\n"
        "from attndbg.cli import main\n"
        "sys.argv = ['attndbg', '--help', '--debug']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    lines = result.stdout.strip().splitlines()
    assert lines[-2:] == ["exit 0", "False"], result.stdout + result.stderr
    assert "inspect" in result.stdout


def test_internal_error_is_exit_3_one_line(tmp_path: Path) -> None:
    # A check that crashes is attndbg's own failure: exit 3, one line, traceback only with --debug.
    plugin = tmp_path / "crash.py"
    plugin.write_text(
        "import attndbg.checks.shapes as shapes\n"
        "def boom(self, ctx):\n    raise RuntimeError('synthetic failure')\n"
        "shapes.UnsupportedRank.evaluate = boom\n"
        "import sys\nfrom attndbg.cli import main\nsys.argv = ['attndbg', *sys.argv[1:]]\nmain()\n"
    )
    result = subprocess.run(
        [sys.executable, str(plugin), "inspect", fx("clean_basic")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 3
    assert "internal error" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    debug = subprocess.run(
        [sys.executable, str(plugin), "inspect", fx("clean_basic"), "--debug"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert "Traceback" in debug.stderr


def test_explain_shows_supersession_both_ways() -> None:
    # SMX001 (rows not normalised) yields to SMX002 (softmax over the query axis), which names the cause
    weaker = run_cli("explain", "SMX001").stdout
    stronger = run_cli("explain", "SMX002").stdout
    assert "Not reported when SMX002 fires" in weaker
    assert "When it fires, SMX001" in " ".join(stronger.split())
