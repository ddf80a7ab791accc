"""attndbg._io: a destination is replaced whole or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from attndbg._io import atomic_write, atomic_write_text, project_relative


def test_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failing_writer_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "calls.safetensors"
    target.write_text("old")

    def half_written(temporary: Path) -> None:
        temporary.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_written)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["calls.safetensors"]


def test_the_file_gets_ordinary_permissions(tmp_path: Path) -> None:
    # mkstemp makes 0600 files; a report shared in CI must be readable as the umask allows.
    umask = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_project_relative_names_do_not_depend_on_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "repo" / "saved").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    target = tmp_path / "repo" / "saved" / "attn.safetensors"
    target.write_bytes(b"")
    names = set()
    for cwd, typed in ((tmp_path / "repo", "saved/attn.safetensors"), (tmp_path, str(target))):
        monkeypatch.chdir(cwd)
        names.add(project_relative(typed))
    monkeypatch.chdir(tmp_path / "repo" / "saved")
    names.add(project_relative("./attn.safetensors"))
    assert names == {"saved/attn.safetensors"}
    assert project_relative("<tensors>") == "<tensors>"
