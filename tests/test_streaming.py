"""Cases stream from their files: a file is opened once for many cases (opening parses the
whole header), and reopened after enough bytes so that its mapped pages do not accumulate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import attndbg.loader as loader
from attndbg.loader import iter_cases, plan_cases, read_cases


def _file(folder: Path, name: str, cases: int) -> Path:
    g = torch.Generator().manual_seed(0)
    path = folder / name
    tensors = {f"layer{i}.{r}": torch.randn(1, 2, 8, 4, generator=g) for i in range(cases) for r in "qkv"}
    save_file(tensors, str(path))
    return path


def _count_opens(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    opened: list[Path] = []
    original = loader._open

    def counting(file: Path) -> object:
        opened.append(file)
        return original(file)

    monkeypatch.setattr(loader, "_open", counting)
    return opened


def test_a_file_is_opened_once_for_all_its_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _file(tmp_path, "a.safetensors", 30), _file(tmp_path, "b.safetensors", 5)
    opened = _count_opens(monkeypatch)
    cases = list(iter_cases([first, second]))
    assert [c.name for c in cases[:3]] == ["layer0", "layer1", "layer2"] and len(cases) == 35
    assert opened == [first, second]
    torch.testing.assert_close(cases[7].tensors["q"], loader.load_case(plan_cases([first])[7]).tensors["q"])


def test_a_handle_is_reopened_after_enough_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path, "a.safetensors", 10)
    opened = _count_opens(monkeypatch)
    per_case = 3 * 2 * 8 * 4 * 4
    monkeypatch.setattr(loader, "REOPEN_AFTER_BYTES", 2 * per_case)  # reopen after every 3rd case
    names = [case.name for _, case in read_cases(plan_cases([path]))]
    assert names == [f"layer{i}" for i in range(10)]
    assert len(opened) == 4  # cases 0-2, 3-5, 6-8, 9
