"""Paths the way users type them: folders, unexpanded globs, output files next to inputs."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from attndbg.errors import UsageError

_GLOB_CHARACTERS = set("*?[")


def expand_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files to inspect: a folder stands for the ``.safetensors`` files below it (as ruff and
    pytest take folders); a pattern the shell left unexpanded matched nothing, and says so.
    Model sources (a Hugging Face folder, ``module:function``) pass through unchanged."""
    from attndbg.recording.sources import is_model_source as model_source

    expanded: list[Path] = []
    for path in paths:
        if model_source(str(path)):
            expanded.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*.safetensors") if p.is_file())
            if not found:
                raise UsageError(f"{path}: a folder with no .safetensors files below it")
            expanded.extend(found)
        elif not path.exists() and _GLOB_CHARACTERS & set(path.name):
            raise UsageError(f"{path}: the pattern matched no file")
        else:
            expanded.append(path)
    return expanded


def check_output(path: Path, option: str, inputs: Iterable[Path | None] = ()) -> None:
    """An output may replace an existing file, but never an input of the same run, and its
    folder must exist: a typo in a folder name should not create folders."""
    directory = path.resolve().parent
    if not directory.is_dir():
        raise UsageError(f"{option} {path}: folder {directory} does not exist")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, not a file")
    if path.resolve() in {p.resolve() for p in inputs if p is not None}:
        raise UsageError(f"{option} {path}: refusing to overwrite an input file")


def import_from_cwd() -> None:
    """``module:function`` names resolve from the current folder, as ``python -m`` and
    uvicorn do; the console script alone would not look there."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
