"""Where in the user's code a recorded step ran: the first frame outside torch and attndbg."""

from __future__ import annotations

import linecache
import os
import sys
from pathlib import Path
from types import FrameType
from typing import cast

import torch

import attndbg
from attndbg.report import Location

# Frames from these folders are machinery, not the user's attention code.
_SKIPPED_ROOTS = tuple(
    str(Path(cast(str, package.__file__)).resolve().parent) + os.sep for package in (torch, attndbg)
)


_shown: dict[tuple[str, str], str] = {}


def _shown_path(filename: str) -> str:
    cwd = os.getcwd()
    shown = _shown.get((filename, cwd))
    if shown is None:
        try:
            shown = Path(filename).resolve().relative_to(Path(cwd).resolve()).as_posix()
        except (ValueError, OSError):
            shown = filename
        _shown[(filename, cwd)] = shown
    return shown


_resolved: dict[str, bool] = {}


def _is_machinery(filename: str) -> bool:
    known = _resolved.get(filename)
    if known is None:
        try:
            resolved = str(Path(filename).resolve())
        except OSError:
            resolved = filename
        known = resolved.startswith(_SKIPPED_ROOTS) or filename.startswith("<frozen")
        _resolved[filename] = known
    return known


def user_location() -> Location | None:
    """The caller's frame that is neither torch nor attndbg (``None`` when there is none)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _is_machinery(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return None
    filename, line = frame.f_code.co_filename, frame.f_lineno
    return Location(
        _shown_path(filename), line, frame.f_code.co_name, linecache.getline(filename, line).strip()
    )
