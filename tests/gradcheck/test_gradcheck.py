"""attndbg gradcheck: the conformance sweep on implementations with one bug each, the seeds'
own implementation, PyTorch's backends, and gradients on a file's tensors."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, run_cli

IMPLS = ROOT / "tests" / "gradcheck" / "impls.py"


def sweep(name: str, *args: str) -> tuple[int, dict]:
    result = run_cli("gradcheck", "--impl", f"{IMPLS}:{name}", "--format", "json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_correct_implementation_passes() -> None:
    code, data = sweep("correct")
    assert code == 0 and data["exit_code"] == 0
    assert {r["verdict"] for r in data["results"]} == {"pass"}
    assert {r["dtype"] for r in data["results"]} == {"float32", "float16", "bfloat16"}
    assert data["mask_perturbation"] == "pass" and data["gradcheck_float64"] == "pass"
    assert "attn_mask" in data["convention"] and "enable_gqa" in data["convention"]
    assert any("custom-scale" in note for note in data["passed"])


def test_seeds_style_signature_is_detected_and_passes() -> None:
    result = run_cli("gradcheck", "--impl", f"{IMPLS}:seeds_style")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "mask (bool, True = attend)" in result.stdout


@pytest.mark.parametrize(
    ("name", "code", "where"),
    [
        ("missing_scale", "SCL001", "basic"),
        ("wrong_axis", "SMX002", "basic"),
        ("additive_inf_nan_to_num", "GRD002", "fully-masked-row"),
        ("lower_right_causal", "MSK006", "causal q_len<k_len"),
        ("leaky_mask", "MSK002", None),
        ("wrong_backward", "GRD001", "basic"),
        ("scale_twice", "SCL002", "basic"),
        ("causal_off_by_one", "MSK005", "causal q_len<k_len"),
        ("mask_after_softmax", "SMX001", "padding-bool"),
        ("ignores_scale", "SCL002", "custom-scale"),
    ],
)
def test_buggy_implementation_fails_with_the_right_diagnosis(name: str, code: str, where: str | None) -> None:
    exit_code, data = sweep(name)
    assert exit_code == 1
    codes = [d["code"] for d in data["diagnoses"]]
    assert codes[0] == code, codes
    if where:
        failed = {r["scenario"] for r in data["results"] if r["verdict"] == "fail"}
        assert where in failed


def test_nan_gradients_are_named_while_the_forward_passes() -> None:
    _, data = sweep("additive_inf_nan_to_num")
    failures = [r for r in data["results"] if r["verdict"] == "fail"]
    assert {r["scenario"] for r in failures} == {"fully-masked-row"}
    assert all(not reason.startswith("out") for r in failures for reason in r["reasons"])


def test_causal_alignment_option() -> None:
    code, data = sweep("lower_right_causal", "--causal-align", "lower-right")
    assert code == 0
    code, data = sweep("correct", "--causal-align", "lower-right")
    assert code == 1 and data["diagnoses"][0]["code"] == "MSK006"


def test_levels() -> None:
    _, quick = sweep("correct", "--quick")
    _, thorough = sweep("correct", "--thorough")
    assert len({r["scenario"] for r in quick["results"]}) < 6
    assert {"long", "many-heads-gqa"} <= {r["scenario"] for r in thorough["results"]}
    assert thorough["exit_code"] == 0


def test_file_tensors_are_a_case_too() -> None:
    path = ROOT / "fixtures" / "clean_padding_mask.safetensors"
    _, data = sweep("correct", str(path))
    file_cases = [r for r in data["results"] if r["scenario"].startswith("file:")]
    assert file_cases and file_cases[0]["verdict"] == "pass"
    _, data = sweep("missing_scale", str(path))
    assert any(r["scenario"].startswith("file:") and r["verdict"] == "fail" for r in data["results"])


def test_pytorch_backends_on_this_device() -> None:
    result = run_cli("gradcheck", "--format", "json")
    assert result.returncode == 0, result.stdout[-2000:]
    data = json.loads(result.stdout)
    names = [r["implementation"] for r in data]
    assert "sdpa[math]" in names
    math = next(r for r in data if r["implementation"] == "sdpa[math]")
    assert {r["verdict"] for r in math["results"]} == {"pass"}


def test_gradients_on_a_file() -> None:
    result = run_cli(
        "gradcheck", str(ROOT / "fixtures" / "MSK001_fully_masked_rows.safetensors"), "--format", "json"
    )
    data = json.loads(result.stdout)
    codes = {f["code"] for c in data["cases"] for f in c["findings"]}
    assert codes == {"GRD002"} and result.returncode == 0  # a warning
    result = run_cli("inspect", str(ROOT / "fixtures" / "GRD001_ill_conditioned_tie.safetensors"), "--grad")
    assert result.returncode == 1 and "GRD001" in result.stdout


def test_bad_implementation_spec_exits_2() -> None:
    assert run_cli("gradcheck", "--impl", "no_such_module_xyz:fn").returncode == 2
    assert run_cli("gradcheck", "--impl", f"{IMPLS}:does_not_exist").returncode == 2
    assert run_cli("gradcheck", "--impl", "not a spec").returncode == 2


def test_float32_softmax_is_judged_at_its_precision() -> None:
    code, data = sweep("float32_softmax")
    assert code == 0, data["diagnoses"]
    assert data["precision"] == "float32" and data["gradcheck_float64"] == "pass"
    assert "judged at float32 precision" in data["notes"][1]


def test_mask_style_causal_is_built_with_the_requested_alignment() -> None:
    code, data = sweep("seeds_style", "--causal-align", "lower-right")
    assert code == 0, data["diagnoses"]
    assert "aligned lower-right" in data["convention"]


def test_fully_masked_rows_are_named_and_gated_by_fail_on() -> None:
    from attndbg.gradcheck.sweep import load_implementation
    from attndbg.gradcheck.sweep import sweep as run_sweep

    impl = load_implementation(f"{IMPLS}:finite_fill")
    report = run_sweep(impl, "quick")
    masked = next(d for d in report.diagnoses if d.code == "MSK001")
    assert masked.severity == "warning" and "uniform" in masked.evidence
    assert report.exit_code() == 0 and report.exit_code("warning") == 1
    spec = f"{IMPLS}:finite_fill"
    assert run_cli("gradcheck", "--impl", spec, "--quick", "--fail-on", "warning").returncode == 1
    code, data = sweep("seeds_style")
    masked = next(d for d in data["diagnoses"] if d["code"] == "MSK001")
    assert masked["severity"] == "info" and code == 0


def test_exception_in_the_function_is_its_failure_for_that_dtype() -> None:
    code, data = sweep("no_bfloat16", "--quick")
    assert code == 1
    raised = next(d for d in data["diagnoses"] if d["code"] == "GRD004")
    assert raised["dtypes"] == ["bfloat16"] and "bfloat16 is not supported" in raised["evidence"]
    assert {r["verdict"] for r in data["results"] if r["dtype"] == "float32"} <= {"pass", "skipped"}


def test_every_criterion_is_counted_and_warnings_do_not_leak() -> None:
    result = run_cli("gradcheck", "--impl", f"{IMPLS}:noisy", "--quick", "--format", "json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and "UserWarning" not in result.stderr
    assert any("deprecated" in note for note in data["notes"])
    assert sum(data["counts"].values()) == len(data["results"]) + 2
    text = run_cli("gradcheck", "--impl", f"{IMPLS}:wrong_backward", "--quick").stdout
    assert text.lstrip().startswith("✗") and "GRD001" in "".join(text.splitlines()[:4])
    assert "criteria" in text and text.rstrip().endswith("exit 1")


def test_output_file_and_formats_as_inspect(tmp_path) -> None:  # noqa: ANN001
    import jsonschema

    schema = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
    spec = f"{IMPLS}:missing_scale"
    report = tmp_path / "report.txt"
    result = run_cli("gradcheck", "--impl", spec, "--quick", "-o", str(report))
    assert result.returncode == 1 and result.stdout == ""
    assert report.read_text().startswith("✗") and "SCL001" in report.read_text()
    sarif_file = tmp_path / "report.sarif"
    result = run_cli("gradcheck", "--impl", spec, "--quick", "--format", "sarif", "-o", str(sarif_file))
    sarif = json.loads(sarif_file.read_text())
    jsonschema.validate(sarif, schema)
    assert result.returncode == 1 and sarif["runs"][0]["results"][0]["ruleId"] == "SCL001"
    assert sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    fixture = ROOT / "fixtures" / "clean_basic.safetensors"
    assert run_cli("gradcheck", str(fixture), "--impl", spec, "-o", str(fixture)).returncode == 2


def test_hugging_face_attention_mask_gets_an_additive_mask() -> None:
    code, data = sweep("hf_style", "--quick")
    assert code == 0, data["diagnoses"]
    assert "attention_mask (additive float" in data["convention"]
    masked = next(d for d in data["diagnoses"] if d["code"] == "MSK001")
    assert masked["severity"] == "warning"  # finfo.min: a uniform average, as Hugging Face gives


def test_key_padding_mask_gets_the_mask_scenarios() -> None:
    code, data = sweep("key_padding_only")
    assert code == 0, data["diagnoses"]
    assert "key_padding_mask (bool (batch, k_len), True = padding)" in data["convention"]
    ran = {r["scenario"] for r in data["results"] if r["verdict"] == "pass"}
    assert {"padding-bool", "padding-additive", "fully-masked-row"} <= ran
    assert data["mask_perturbation"] == "pass"
    code, data = sweep("key_padding_ignored", "--quick")
    assert code == 1 and "MSK002" in {d["code"] for d in data["diagnoses"]}


def test_module_instance_and_class_are_accepted() -> None:
    code, data = sweep("module_instance")
    assert code == 0, data["diagnoses"]
    assert "head size 8 (the module's)" in data["convention"]
    code, data = sweep("ModuleAttention", "--quick")
    assert code == 0, data["diagnoses"]
    result = run_cli("gradcheck", "--impl", f"{IMPLS}:NeedsArguments")
    assert result.returncode == 2 and "needs arguments" in result.stderr
    assert "Traceback" not in result.stderr


def test_sequence_first_layout_is_recognised() -> None:
    code, data = sweep("sequence_first")
    assert code == 0, data["diagnoses"]
    assert "(seq, batch, heads·head_dim)" in data["convention"]
    assert any("a probe" in note for note in data["passed"])
    code, data = sweep("sequence_first", "--quick", "--layout", "lbe")
    assert code == 0 and any("--layout lbe" in note for note in data["passed"])
    assert run_cli("gradcheck", "--impl", f"{IMPLS}:sequence_first", "--layout", "xyz").returncode == 2


def test_weak_finite_fill_is_a_warning_not_a_leak() -> None:
    code, data = sweep("weak_fill", "--quick")
    codes = {d["code"]: d for d in data["diagnoses"]}
    assert "MSK002" not in codes and code == 1  # rows with nothing to attend: softmax of s - 100
    assert codes["MSK007"]["severity"] == "warning" and "-100" in codes["MSK007"]["message"]
    _, leaky = sweep("leaky_mask", "--quick")
    assert leaky["diagnoses"][0]["code"] == "MSK002"


def test_ambiguous_layout_is_one_clear_line() -> None:
    result = run_cli("gradcheck", "--impl", f"{IMPLS}:any_leading_axes", "--quick")
    assert result.returncode == 2 and "several layouts" in result.stderr and "--layout" in result.stderr
    assert "Traceback" not in result.stderr
    code, data = sweep("any_leading_axes", "--quick", "--layout", "blhd")
    assert code == 1 and data["diagnoses"][0]["code"] == "SCL001"
