"""The real-world corpus: attention from public projects and real bugs (tests/gradcheck/corpus),
each run through `python -m attndbg gradcheck --impl FILE:FN` as a user would, against the
verdict a careful reviewer gives: exit code, named diagnoses, failing scenarios."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

CORPUS = ROOT / "tests" / "gradcheck" / "corpus"


def _cases() -> list:
    cases = []
    for path in sorted(CORPUS.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"corpus_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for case in module.CASES:
            label = f"{path.stem}:{case['fn']}" + ("[" + " ".join(case["args"]) + "]" if case["args"] else "")
            cases.append(pytest.param(path, case, id=label))
    return cases


def verdict(path: Path, case: dict) -> tuple[int, dict]:
    result = run_cli("gradcheck", "--impl", f"{path}:{case['fn']}", "--format", "json", *case["args"])
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize(("path", "case"), _cases())
def test_corpus_verdict(path: Path, case: dict) -> None:
    code, data = verdict(path, case)
    named = sorted({d["code"] for d in data["diagnoses"]})
    failing = {r["scenario"] for r in data["results"] if r["verdict"] in ("fail", "error")}
    summary = f"exit {code}, codes {named}, failing {sorted(failing)}"
    assert code == case["exit"], summary
    assert named == sorted(case["codes"]), summary
    assert set(case["failing"]) <= failing, summary
    if case["exit"] == 0:
        assert data["exit_code"] == 0
