from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(ROOT / "scripts"))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess, as users and CI run it."""
    return subprocess.run(
        [sys.executable, "-m", "attndbg", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=300,
    )


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def loud_findings(report) -> dict[str, list]:  # noqa: ANN001 - an attndbg Report
    """{code: findings} of a report's warnings and errors (what would fail a CI at warning)."""
    found: dict[str, list] = {}
    for finding in report.findings:
        if finding.severity.value != "info":
            found.setdefault(finding.code, []).append(finding)
    return found
