"""attndbg.save: the tensors of a real training step save as they are, and inspect reads them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors import safe_open

import attndbg
from attndbg.errors import AttndbgError


def test_views_and_shared_tensors_save_and_inspect_clean(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, 4, 8, generator=g)  # (batch, seq, heads, dim) as a model computes it
    q = x.transpose(1, 2)  # a non-contiguous view, what save_file refuses
    k = v = torch.randn(2, 10, 4, 8, generator=g).transpose(1, 2)  # k is v: shared memory
    keep = torch.ones(2, 10, dtype=torch.bool)
    keep[1, 7:] = False
    mask = keep[:, None, None, :].expand(2, 4, 10, 10)  # an expanded (stride-0) view
    path = attndbg.save(
        tmp_path / "step.safetensors", q=q, k=k, v=v, mask=mask, is_causal=False, tokens=list("abcdefghij")
    )
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == {"q", "k", "v", "mask"}
        assert torch.equal(handle.get_tensor("q"), q)
        metadata = handle.metadata()
    assert metadata["is_causal"] == "false" and json.loads(metadata["tokens"]) == [list("abcdefghij")]
    result = run_cli("inspect", str(path), "--format", "json")
    assert result.returncode == 0, result.stdout[-1500:]
    assert json.loads(result.stdout)["summary"]["error"] == 0


def test_bad_arguments_fail_at_save_time(tmp_path: Path) -> None:
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(AttndbgError, match="not a torch.Tensor"):
        attndbg.save(tmp_path / "a.safetensors", q=q.numpy(), k=q, v=q)
    with pytest.raises(AttndbgError, match="unknown setting"):
        attndbg.save(tmp_path / "a.safetensors", q=q, k=q, v=q, causal=True)
    with pytest.raises(AttndbgError, match="layout"):
        attndbg.save(tmp_path / "a.safetensors", q=q, k=q, v=q, layout="bxyz")
    with pytest.raises(AttndbgError, match="does not exist"):
        attndbg.save(tmp_path / "missing" / "a.safetensors", q=q, k=q, v=q)
    assert list(tmp_path.iterdir()) == []


def test_dir_lists_the_lazy_api() -> None:
    names = dir(attndbg)
    assert {"diagnose", "capture", "save", "Report", "Finding", "Severity", "__version__"} <= set(names)
    assert "TYPE_CHECKING" not in names


def test_a_report_draws_itself_in_rich_and_notebooks() -> None:
    from rich.console import Console

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g) for _ in range(3))
    report = attndbg.diagnose(q, k, v, weights=torch.softmax(q @ k.transpose(-1, -2), -1))  # no 1/sqrt(d)
    console = Console(width=100, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    console.print(report)
    text = console.export_text()
    assert "SCL001" in text and "1 case: 1 error" in text
    html = report._repr_html_()
    assert html.lstrip().startswith("<!DOCTYPE html>") and "SCL001" in html and "style=" in html


def test_each_batch_row_is_labelled_with_its_own_tokens(tmp_path: Path) -> None:
    from attndbg.context import CaseContext
    from attndbg.heatmap import build_heatmap
    from attndbg.loader import iter_cases

    q = k = v = torch.randn(2, 1, 4, 8)
    rows = [["the", "cat", "sat", "."], ["dogs", "bark", "[PAD]", "[PAD]"]]
    path = attndbg.save(tmp_path / "two.safetensors", q=q, k=k, v=v, tokens=rows)
    ctx = CaseContext(next(iter_cases([path])))
    assert build_heatmap(ctx, batch=0).row_labels == rows[0]
    assert build_heatmap(ctx, batch=1).col_labels == rows[1]
    # an older capture stored the first row only: other rows get positions, not its words
    old = tmp_path / "old.safetensors"
    from safetensors.torch import save_file

    save_file({"q": q, "k": k.clone(), "v": v.clone()}, str(old), metadata={"tokens": json.dumps(rows[0])})
    ctx = CaseContext(next(iter_cases([old])))
    assert build_heatmap(ctx, batch=0).row_labels == rows[0]
    assert build_heatmap(ctx, batch=1).row_labels == ["0", "1", "2", "3"]
