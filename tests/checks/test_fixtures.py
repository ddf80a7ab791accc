"""Every check fires on its fixture and on no clean fixture; fixtures are reproducible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from make_fixtures import EXPECTED, EXPECTED_WITH_GRAD, build
from safetensors import safe_open

from attndbg.engine import Options, run_cases
from attndbg.loader import iter_cases
from attndbg.registry import load_checks

NAMES = sorted(EXPECTED)


def inspect(path: Path, **options):
    return run_cases(iter_cases([path]), Options(**options), [str(path)])


@pytest.mark.parametrize("name", NAMES)
def test_fixture_produces_exactly_its_codes(name: str, fixtures_dir: Path) -> None:
    report = inspect(fixtures_dir / f"{name}.safetensors")
    assert set(report.codes()) == EXPECTED[name]
    for finding in report.findings:
        assert finding.evidence, f"{finding.code} has no evidence"
        assert finding.fix.strip(), f"{finding.code} has no fix"
        assert finding.case == report.cases[0].name
        assert not finding.message.startswith("case "), "the case is a field, not a prefix"


@pytest.mark.parametrize("name", NAMES)
def test_fixture_codes_with_the_gradient_stage(name: str, fixtures_dir: Path) -> None:
    report = inspect(fixtures_dir / f"{name}.safetensors", grad=True)
    assert set(report.codes()) == EXPECTED[name] | EXPECTED_WITH_GRAD.get(name, set())
    stages = {s.name: s.status for s in report.cases[0].stages}
    assert stages["gradients"] in ("ok", "findings", "skipped")


def test_every_registered_check_has_a_trigger_fixture() -> None:
    triggered = set().union(*EXPECTED.values(), *EXPECTED_WITH_GRAD.values())
    checks = load_checks()
    inspect_checks = {code for code, check in checks.items() if not check.gradcheck_only}
    assert inspect_checks - triggered == set()
    assert not {code for code in triggered if checks[code].gradcheck_only}


def test_every_gradcheck_only_check_is_expected_by_the_gradcheck_corpus() -> None:
    from gradcheck.test_corpus import CASES as CORPUS

    expected = {code for _, _, case in CORPUS for code in case["codes"]}
    gradcheck_only = {code for code, check in load_checks().items() if check.gradcheck_only}
    assert gradcheck_only and gradcheck_only - expected == set()


def test_every_family_has_clean_fixtures_that_stay_silent() -> None:
    clean = [name for name, codes in EXPECTED.items() if name.startswith("clean_")]
    assert len(clean) >= 8
    assert all(not EXPECTED[name] for name in clean)


def test_fixture_files_are_reproducible(tmp_path: Path, fixtures_dir: Path) -> None:
    for path in build(tmp_path):
        committed = fixtures_dir / path.name
        assert committed.exists(), f"{path.name} is not committed; run make fixtures"
        assert_same_fixture(committed, path)


def assert_same_fixture(committed: Path, rebuilt: Path) -> None:
    """Same names, metadata, dtypes and shapes; inputs bit-identical, and tensors the builder
    computes (out, weights) equal up to float rounding, which differs with the BLAS thread
    count of the machine that ran `make fixtures`."""
    with safe_open(str(committed), "pt") as a, safe_open(str(rebuilt), "pt") as b:
        assert a.metadata() == b.metadata(), f"{committed.name}: metadata is stale"
        assert sorted(a.keys()) == sorted(b.keys()), f"{committed.name}: tensor names are stale"
        for key in a.keys():  # noqa: SIM118 - safe_open handles are not iterable
            x, y = a.get_tensor(key), b.get_tensor(key)
            assert (x.dtype, x.shape) == (y.dtype, y.shape), f"{committed.name}::{key} is stale"
            if x.is_floating_point():
                torch.testing.assert_close(
                    x, y, rtol=1e-5, atol=1e-6, equal_nan=True, msg=f"{committed.name}::{key}"
                )
            else:
                assert torch.equal(x, y), f"{committed.name}::{key} is stale"


def test_fixture_evidence_numbers(fixtures_dir: Path) -> None:
    """Spot-check that the evidence carries the numbers the fixture was built with."""
    report = inspect(fixtures_dir / "MSK001_fully_masked_rows.safetensors")
    (finding,) = report.findings
    assert finding.evidence["rows"] == 4 and finding.evidence["of"] == 24
    assert finding.evidence["first"][0] == [1, 8]

    report = inspect(fixtures_dir / "SHP002_head_dim.safetensors")
    assert report.findings[0].evidence == {"q_dim": 16, "k_dim": 8, "layout": "bhsd"}
    stages = {s.name: s.status for s in report.cases[0].stages}
    assert stages["shapes"] == "findings" and stages["numerics"] == "skipped"

    report = inspect(fixtures_dir / "NUM001_nan_in_q.safetensors")
    assert report.findings[0].evidence["first"] == [1, 2, 5, 3]

    report = inspect(fixtures_dir / "SCL001_missing_scale.safetensors")
    ev = report.findings[0].evidence
    assert ev["matches"] == "no scale" and ev["error_matching"] < 1e-5 < 0.1 < ev["error_assumed"]

    report = inspect(fixtures_dir / "NUM002_nan_from_softmax.safetensors")
    num002 = next(f for f in report.findings if f.code == "NUM002")
    assert num002.evidence["stage"] == "weights" and num002.evidence["count"] == 2 * 4 * 12


@pytest.mark.parametrize("name", NAMES)
def test_chunked_statistics_agree_on_every_fixture(name: str, fixtures_dir: Path) -> None:
    """A 1-row-per-chunk budget gives the same statistics as one chunk per head."""
    import torch

    from attndbg.context import CaseContext, ShapeProblem
    from attndbg.loader import load_case, plan_file
    from attndbg.stats import compute_stats

    (plan, *_) = plan_file(fixtures_dir / f"{name}.safetensors")
    report = inspect(fixtures_dir / f"{name}.safetensors")
    if any(s.status == "skipped" for s in report.cases[0].stages):
        pytest.skip("shape errors: no statistics are computed for this fixture")
    try:
        big = compute_stats(CaseContext(load_case(plan), max_memory=1 << 34))
        small = compute_stats(CaseContext(load_case(plan), max_memory=1))
    except ShapeProblem:
        pytest.skip("no consistent reading of the shapes")
    assert small.chunk_rows == 1
    for field in ("lse", "entropy", "max_weight", "sink", "n_kept", "max_logit", "logit_std"):
        a, b = getattr(big, field), getattr(small, field)
        assert torch.allclose(a, b, atol=1e-4, equal_nan=True), field
    if big.out is not None:
        assert torch.allclose(big.out, small.out, atol=1e-4, equal_nan=True)
    assert big.hypotheses.keys() == small.hypotheses.keys()
