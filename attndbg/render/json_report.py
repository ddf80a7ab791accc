"""JSON output: ``Report.to_dict()`` serialised, schema documented in docs/json-schema.md."""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any

from attndbg.report import Report


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity; encode them as strings so every consumer can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Indented JSON with non-finite floats spelled as strings, as every attndbg document is."""
    return json.dumps(_clean(value), indent=2, allow_nan=False) + "\n"


def render_json(report: Report, timings: bool = True) -> str:
    """The report's JSON document, each case converted and encoded in turn, so that a run over
    thousands of cases never holds them all as plain data at once. The text is what
    ``to_json(report.to_dict())`` gives."""
    document = to_json(report.to_dict(timings=timings, cases=False))
    empty = '\n  "cases": [],\n'
    if not report.cases:
        return document
    cases = ",\n".join(
        textwrap.indent(to_json(case).rstrip("\n"), "    ") for case in report.case_dicts(timings)
    )
    before, _, after = document.partition(empty)
    return f'{before}\n  "cases": [\n{cases}\n  ],\n{after}'
