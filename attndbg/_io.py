"""Atomic file writes: a reader never sees half a report or half a capture.

The content goes to a temporary file in the destination's folder (so the final rename stays
on one file system and is atomic), then replaces the destination in one step.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file onto ``path``.

    The folder must exist. On any failure the temporary file is removed and ``path`` is left
    as it was.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        write(Path(temporary))
        # mkstemp creates 0600; a report or a capture is an ordinary file, readable as the umask allows.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


_PROJECT_MARKERS = ("pyproject.toml", ".git")


def project_relative(file: str) -> str:
    """``file`` relative to its project's root (the nearest folder above it holding a
    pyproject.toml or .git), POSIX style; the absolute path when there is none. The same file
    gets the same name whichever folder attndbg runs from and however the path was typed, so
    baselines keep matching. Names that are not files (``<tensors>``, ``pkg:factory``) are
    returned unchanged."""
    path = Path(file)
    if not path.exists():
        return file
    resolved = path.resolve()
    for folder in resolved.parents:
        if any((folder / marker).exists() for marker in _PROJECT_MARKERS):
            return resolved.relative_to(folder).as_posix()
    return resolved.as_posix()
