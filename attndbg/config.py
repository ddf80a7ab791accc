"""Project configuration: ``[tool.attndbg]`` in the nearest pyproject.toml, found the way ruff
finds its own — walking up from the working directory. Command-line flags win.

    [tool.attndbg]
    select = ["SHP", "NUM", "MSK"]
    ignore = ["PAT004"]
    fail-on = "warning"
    max-memory = "512MiB"

    [tool.attndbg.thresholds]
    SCL003 = { logit_growth = 30 }
    PAT004 = { sink_mass = 0.5 }
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attndbg.errors import UsageError
from attndbg.vocab import FailOn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

KEYS = {"select", "ignore", "fail-on", "max-memory", "device", "thresholds"}
FAIL_ON = FailOn.values()


@dataclass
class ProjectConfig:
    path: Path | None = None
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    fail_on: str | None = None
    max_memory: str | None = None
    device: str | None = None
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml, from ``start`` upwards, that has a [tool.attndbg] table."""
    directory = (start or Path.cwd()).resolve()
    for candidate in (directory, *directory.parents):
        path = candidate / "pyproject.toml"
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError):
                continue
            if "attndbg" in data.get("tool", {}):
                return path
    return None


def load_config(path: Path | None = None, start: Path | None = None) -> ProjectConfig:
    path = path or find_pyproject(start)
    if path is None:
        return ProjectConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the configuration ({exc})") from None
    table: dict[str, Any] = data.get("tool", {}).get("attndbg", {})
    unknown = set(table) - KEYS
    if unknown:
        raise UsageError(f"{path}: unknown [tool.attndbg] key(s): {', '.join(sorted(unknown))}")

    def codes(key: str) -> list[str]:
        value = table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{path}: [tool.attndbg] {key} must be a list of codes")
        return value

    fail_on = table.get("fail-on")
    if fail_on is not None and fail_on not in FAIL_ON:
        raise UsageError(f"{path}: [tool.attndbg] fail-on must be one of {', '.join(FAIL_ON)}")
    thresholds = table.get("thresholds", {})
    if not isinstance(thresholds, dict) or not all(isinstance(v, dict) for v in thresholds.values()):
        raise UsageError(f"{path}: [tool.attndbg.thresholds] must map codes to tables of numbers")
    return ProjectConfig(
        path=path,
        select=codes("select"),
        ignore=codes("ignore"),
        fail_on=fail_on,
        max_memory=table.get("max-memory"),
        device=table.get("device"),
        thresholds={code.upper(): dict(values) for code, values in thresholds.items()},
    )


def validate_thresholds(thresholds: dict[str, dict[str, float]], where: str = "thresholds") -> None:
    from attndbg.registry import load_checks

    checks = load_checks()
    for code, values in thresholds.items():
        if code not in checks:
            raise UsageError(f"{where}: no check {code}")
        known = checks[code].thresholds
        for name, value in values.items():
            if name not in known:
                options = ", ".join(sorted(known)) or "none"
                raise UsageError(f"{where}: {code} has no threshold {name!r} (it has: {options})")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UsageError(f"{where}: {code}.{name} must be a number")
