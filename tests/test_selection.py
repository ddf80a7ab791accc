"""Selection-aware evaluation: only selected checks (plus blocking shape checks and the checks
that may supersede a selected one) run, the statistics pass computes only what they read, and
supersession is declared on the check."""

from __future__ import annotations

from pathlib import Path

import pytest
from make_fixtures import EXPECTED

import attndbg.stats
import attndbg.stats.driver
import attndbg.stats.reducers
from attndbg.engine import Options, run_cases
from attndbg.loader import iter_cases
from attndbg.registry import load_checks, plan_checks, supersedes
from attndbg.vocab import Reading, Statistic

FIRING = sorted((name, code) for name, codes in EXPECTED.items() for code in codes)


def inspect(path: Path, **options: object):  # noqa: ANN201
    return run_cases(iter_cases([path]), Options(**options), [str(path)])


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the statistics pass and of its optional parts, as the engine calls them."""
    counts = {"stats": 0, "head_gram": 0, "saved": 0}
    gram = attndbg.stats.reducers.HeadGram

    def counting(name: str, original):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            counts[name] += 1
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(attndbg.stats, "compute_stats", counting("stats", attndbg.stats.compute_stats))
    driver = attndbg.stats.driver
    monkeypatch.setattr(gram, "start", counting("head_gram", gram.start))
    monkeypatch.setattr(driver, "saved_pass", counting("saved", driver.saved_pass))
    return counts


@pytest.mark.parametrize(("name", "code"), FIRING)
def test_each_check_fires_when_selected_alone(name: str, code: str, fixtures_dir: Path) -> None:
    """A check that reads a statistic it did not declare in ``reads`` would go silent here."""
    report = inspect(fixtures_dir / f"{name}.safetensors", select=[code])
    assert report.codes() == [code]


def test_shape_selection_runs_no_statistics_pass(passes: dict[str, int], fixtures_dir: Path) -> None:
    report = inspect(fixtures_dir / "PAT005_duplicate_heads.safetensors", select=["SHP"])
    assert report.codes() == []
    assert passes == {"stats": 0, "head_gram": 0, "saved": 0}
    assert report.cases[0].heads == []  # no head table without the pass


def test_duplicate_head_pass_only_when_pat005_runs(passes: dict[str, int], fixtures_dir: Path) -> None:
    path = fixtures_dir / "PAT005_duplicate_heads.safetensors"
    assert inspect(path, select=["PAT001"]).codes() == []
    assert passes["stats"] == 1 and passes["head_gram"] == 0
    assert inspect(path, select=["PAT005"]).codes() == ["PAT005"]
    assert passes["stats"] == 2 and passes["head_gram"] == 1


def test_saved_artefacts_are_scored_only_for_checks_that_read_them(
    passes: dict[str, int], fixtures_dir: Path
) -> None:
    path = fixtures_dir / "SCL001_missing_scale.safetensors"
    inspect(path, select=["PAT"])
    assert passes["saved"] == 0
    assert inspect(path, select=["SCL001"]).codes() == ["SCL001"]
    assert passes["saved"] == 1


def test_blocking_shape_checks_run_unselected(fixtures_dir: Path) -> None:
    report = inspect(fixtures_dir / "SHP002_head_dim.safetensors", select=["PAT"])
    assert report.codes() == []
    stages = {s.name: s.status for s in report.cases[0].stages}
    assert stages["patterns"] == "skipped"


def test_superseded_check_is_dropped_when_the_precise_one_fires(fixtures_dir: Path) -> None:
    path = fixtures_dir / "SMX002_softmax_over_queries.safetensors"
    assert inspect(path, select=["SMX001", "SMX002"]).codes() == ["SMX002"]
    # the superseding check runs (unreported) when only the superseded one is selected
    assert inspect(path, select=["SMX001"]).codes() == []
    plan = plan_checks(["SMX001"], [])
    assert {c.code for c in plan.run} >= {"SMX001", "SMX002"} and plan.reported == {"SMX001"}


def test_supersession_is_declared_and_shown_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = load_checks()
    assert "SMX002" in checks["SMX001"].superseded_by
    assert "SMX001" in supersedes("SMX002")
    monkeypatch.setattr(type(checks["SMX001"]), "superseded_by", ("SMX999",))
    with pytest.raises(TypeError, match="superseded_by"):
        load_checks()


def test_plan_reads_are_the_union_of_the_running_checks() -> None:
    assert plan_checks(["SHP"], []).reads == frozenset()
    assert Statistic.HEAD_GRAM in plan_checks(["PAT005"], []).reads
    assert Statistic.HEAD_GRAM not in plan_checks(["PAT001"], []).reads


def test_a_misspelt_reading_is_an_error_not_a_dead_check() -> None:
    with pytest.raises(AttributeError):
        _ = Reading.MASK_IGNORD  # type: ignore[attr-defined]
    assert Reading.mask_as("keep") is Reading.MASK_AS_KEEP
