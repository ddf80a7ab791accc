"""The baseline file: findings a project has accepted, so that only new ones fail a run.

Format (JSON)::

    {"attndbg_baseline": 1,
     "findings": [{"fingerprint": "...", "code": "MSK003", "severity": "error", "message": "..."}]}

Only ``fingerprint`` is read back; code, severity and message are there for a human reviewing
the file in a pull request.
"""

from __future__ import annotations

import json
from pathlib import Path

from attndbg.errors import UsageError
from attndbg.report import Report

FORMAT_VERSION = 1


def read_baseline(path: Path) -> set[str]:
    """The fingerprints listed in a baseline file; a missing or foreign file is a usage error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {entry["fingerprint"] for entry in data["findings"]}
    except FileNotFoundError:
        raise UsageError(f"--baseline {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"--baseline {path}: not an attndbg baseline file") from None


def baseline_text(report: Report) -> str:
    """Every finding of ``report`` as a baseline file."""
    entries = [
        {
            "fingerprint": finding.fingerprint(case.file),
            "code": finding.code,
            "severity": finding.severity.value,
            "message": finding.message,
        }
        for case in report.cases
        for finding in case.findings
    ]
    return json.dumps({"attndbg_baseline": FORMAT_VERSION, "findings": entries}, indent=2) + "\n"
