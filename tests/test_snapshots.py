"""Golden JSON reports of every bundled fixture: a refactor must not move the output.

The reports are rendered in-process with ``--no-timings`` semantics and compared structurally:
text exactly except for the numbers inside it, numbers within a relative tolerance (summation
order may change the last digits of a float). Regenerate deliberately, after a change whose
effect on the reports you mean, with ``python tests/test_snapshots.py --update``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
REL_TOL = 1e-3
ABS_TOL = 1e-6


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.safetensors"))


def report_json(name: str) -> Any:
    from attndbg.engine import Options, run_cases
    from attndbg.loader import iter_cases
    from attndbg.render.json_report import render_json

    path = FIXTURES / f"{name}.safetensors"
    shown = f"fixtures/{name}.safetensors"
    report = run_cases(iter_cases([path]), Options(), [shown])
    return json.loads(render_json(report, timings=False).replace(str(path), shown))


def _numbers_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def differences(got: Any, want: Any, where: str = "$") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}: keys {sorted(set(got) ^ set(want))} differ"] if set(got) != set(want) else []
        for key in want.keys() & got.keys():
            out += differences(got[key], want[key], f"{where}.{key}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: length {len(got)} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{where}[{i}]")]
    if isinstance(want, bool) or isinstance(got, bool):
        return [] if got == want else [f"{where}: {got!r} != {want!r}"]
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return [] if _numbers_close(float(got), float(want)) else [f"{where}: {got!r} != {want!r}"]
    if isinstance(want, str) and isinstance(got, str):
        same_text = NUMBER.split(got) == NUMBER.split(want)
        got_n, want_n = NUMBER.findall(got), NUMBER.findall(want)
        same_numbers = len(got_n) == len(want_n) and all(
            _numbers_close(float(g), float(w)) for g, w in zip(got_n, want_n)
        )
        return [] if same_text and same_numbers else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_report_matches_its_snapshot(name: str) -> None:
    snapshot = SNAPSHOTS / f"{name}.json"
    assert snapshot.exists(), f"no snapshot for {name}: run python tests/test_snapshots.py --update"
    diff = differences(report_json(name), json.loads(snapshot.read_text()))
    assert not diff, "\n".join(diff[:20])


def test_the_comparison_notices_a_changed_message() -> None:
    want = {"message": "scores std 4.00 (expected about 1.0)", "value": 4.0}
    assert not differences({"message": "scores std 4.0001 (expected about 1.0)", "value": 4.0001}, want)
    assert differences({"message": "scores std 4.00 (expected about 2.0)", "value": 4.0}, want)
    assert differences({"message": "scores std 4.00 (expected about 1.0)", "value": 4.5}, want)


if __name__ == "__main__" and "--update" in sys.argv:
    sys.path.insert(0, str(ROOT))
    SNAPSHOTS.mkdir(exist_ok=True)
    for fixture in fixture_names():
        (SNAPSHOTS / f"{fixture}.json").write_text(json.dumps(report_json(fixture), indent=1) + "\n")
    print(f"wrote {len(fixture_names())} snapshots to {SNAPSHOTS}")
