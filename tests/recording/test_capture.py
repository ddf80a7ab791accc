"""attndbg.capture: recording SDPA calls with module names, saving atomically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import run_cli

import attndbg
from attndbg.loader import iter_cases


class TinyAttention(nn.Module):
    def __init__(
        self,
        d: int = 16,
        heads: int = 2,
        kv_heads: int = 2,
        causal: bool = False,
        broken_scale: bool = False,
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * kv_heads * self.hd)
        self.causal, self.broken_scale = causal, broken_scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, self.kv_heads, self.hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=self.causal,
            scale=1.0 if self.broken_scale else None,
            enable_gqa=self.kv_heads != self.heads,
        )
        return out.transpose(1, 2).reshape(b, n, -1)


class TinyModel(nn.Module):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TinyAttention(**kwargs) for _ in range(2)])

    def forward(self, x, mask=None):
        for layer in self.layers:
            x = x + layer(x, mask)
        return x


def test_capture_records_every_call_with_module_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyModel(heads=4, kv_heads=2, causal=True)
    x = torch.randn(2, 10, 16)
    expected = model(x)
    with attndbg.capture(model) as calls:
        got = model(x)
    assert torch.equal(got, expected)  # the calls proceed unchanged
    assert calls.names() == ["layers.0", "layers.1"]
    assert calls[0].is_causal and calls[0].enable_gqa and calls[0].k.shape[1] == 2
    path = calls.save(tmp_path / "capture.safetensors")
    cases = list(iter_cases([path]))
    assert [c.name for c in cases] == ["layers.0", "layers.1"]
    assert cases[0].settings.is_causal is True and cases[0].settings.enable_gqa is True
    assert cases[0].settings.source == "layers.0"
    assert attndbg.diagnose(calls).exit_code() == 0
    assert run_cli("inspect", str(path)).returncode == 0


def test_shared_mask_and_aliased_tensors_save(tmp_path: Path) -> None:
    mask = torch.ones(10, 10, dtype=torch.bool).tril()
    model = TinyModel()
    with attndbg.capture(model) as calls:
        model(torch.randn(1, 10, 16), mask)
        x = torch.randn(1, 2, 10, 8)
        F.scaled_dot_product_attention(x, x, x)  # q is k is v, outside any module
    path = calls.save(tmp_path / "shared.safetensors")
    names = [c.name for c in iter_cases([path])]
    assert names == ["layers.0", "layers.1", "attention"]


def test_capture_flags_a_broken_model(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TinyModel(d=64, heads=2, broken_scale=True)
    with torch.no_grad():
        for layer in model.layers:
            layer.q.weight.mul_(6)
            layer.kv.weight.mul_(6)
    with attndbg.capture(model) as calls:
        model(torch.randn(2, 12, 64))
    report = attndbg.diagnose(calls)
    assert "SCL001" in report.codes()


def test_interrupted_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    model = TinyModel()
    with attndbg.capture(model) as calls:
        model(torch.randn(1, 6, 16))

    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    target = tmp_path / "out.safetensors"
    with pytest.raises(KeyboardInterrupt):
        calls.save(target)
    assert list(tmp_path.iterdir()) == []
