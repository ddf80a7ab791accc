"""The sweep's table (architecture × implementation × scenario → calls, findings, time):
written to the file named by ATTNDBG_SWEEP_TABLE at the end of the session, when it is set."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ROWS: list[dict] = []


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001, ARG001
    target = os.environ.get("ATTNDBG_SWEEP_TABLE")
    if not target or not ROWS:
        return
    lines = [
        "| architecture | implementation | scenario | calls (kinds) | findings | time |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(ROWS, key=lambda r: (r["order"], r["implementation"], r["scenario"])):
        lines.append(
            f"| {row['architecture']} | {row['implementation']} | {row['scenario']} | "
            f"{row['calls']} ({row['kinds']}) | {row['findings'] or 'none'} | {row['seconds']:.2f} s |"
        )
    Path(target).write_text("\n".join(lines) + "\n")
