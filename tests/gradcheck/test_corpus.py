"""The real-world corpus: attention from public projects and real bugs (tests/gradcheck/corpus),
each run through `python -m attndbg gradcheck --impl FILE:FN` as a user would, against the
verdict a careful reviewer gives: exit code, named diagnoses, failing scenarios."""

from __future__ import annotations

import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

CORPUS = ROOT / "tests" / "gradcheck" / "corpus"


def load_cases() -> list[tuple[str, Path, dict]]:
    """(label, module path, case) for every entry of every corpus module's CASES table."""
    cases = []
    for path in sorted(CORPUS.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"corpus_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for case in module.CASES:
            label = f"{path.stem}:{case['fn']}" + ("[" + " ".join(case["args"]) + "]" if case["args"] else "")
            cases.append((label, path, case))
    return cases


CASES = load_cases()


def verdict(path: Path, case: dict) -> tuple[int, dict]:
    result = run_cli("gradcheck", "--impl", f"{path}:{case['fn']}", "--format", "json", *case["args"])
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def verdicts() -> dict[str, tuple[int, dict]]:
    """Every entry at once, a few CLI processes in parallel (each is single-threaded)."""
    workers = max(2, min(6, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        futures = {label: pool.submit(verdict, path, case) for label, path, case in CASES}
        return {label: future.result() for label, future in futures.items()}


def test_corpus_is_broad() -> None:
    sources = {case["source"].split()[0].split("#")[0] for _, _, case in CASES}
    bugs = {case["source"].split(" (")[0] for label, _, case in CASES if label.startswith("bugs:")}
    assert len(sources) >= 15 and len(bugs) >= 8, (sorted(sources), sorted(bugs))


@pytest.mark.slow
@pytest.mark.parametrize(("label", "path", "case"), CASES, ids=[label for label, _, _ in CASES])
def test_corpus_verdict(verdicts: dict, label: str, path: Path, case: dict) -> None:
    code, data = verdicts[label]
    named = sorted({d["code"] for d in data["diagnoses"]})
    failing = {r["scenario"] for r in data["results"] if r["verdict"] in ("fail", "error")}
    summary = f"exit {code}, codes {named}, failing {sorted(failing)}"
    assert code == case["exit"] == data["exit_code"], summary
    assert named == sorted(case["codes"]), summary
    assert set(case["failing"]) <= failing, summary
