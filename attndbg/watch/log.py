"""The JSON-lines log of a watched run: one self-contained JSON object per line, written and
flushed as it happens, so a killed run leaves every complete line readable. The schema is
documented in docs/watch-log.md; readers check ``schema_version``."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any

from attndbg.errors import InputError

LOG_SCHEMA = "attndbg.watch"
LOG_SCHEMA_VERSION = 1


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite floats are written as strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class JsonlLog:
    """Appends records to a JSON-lines file; each write is one line, flushed at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(_finite(record), separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def header(every: int, thresholds: dict[str, float], world_size: int, rank: int | None) -> dict[str, Any]:
    from attndbg import __version__

    return {
        "type": "header",
        "schema": LOG_SCHEMA,
        "schema_version": LOG_SCHEMA_VERSION,
        "attndbg": __version__,
        "every": every,
        "thresholds": thresholds,
        "world_size": world_size,
        "rank": rank,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a log. A last line without its newline (a run killed mid-write) is
    dropped; anything else that is not a record of this schema is an :class:`InputError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the log ({type(exc).__name__})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # cut off mid-line by a killed run
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{number}: not a JSON line of an attndbg watch log") from None
        if not isinstance(record, dict) or "type" not in record:
            raise InputError(f"{path}:{number}: a watch log record is an object with a 'type'")
        records.append(record)
    if not records or records[0].get("type") != "header" or records[0].get("schema") != LOG_SCHEMA:
        raise InputError(f"{path}: not an attndbg watch log (no '{LOG_SCHEMA}' header line)")
    version = records[0].get("schema_version")
    if not isinstance(version, int) or version > LOG_SCHEMA_VERSION:
        raise InputError(
            f"{path}: log schema version {version!r}; this attndbg reads up to {LOG_SCHEMA_VERSION}"
        )
    return records
