"""Model factories for capture tests (``tests/models/factories.py:NAME``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """A LLaMA-style block with optional bugs: no scale, or a float 0/1 padding mask added."""

    def __init__(self, d: int = 32, heads: int = 4, bug: str | None = None) -> None:
        super().__init__()
        self.heads, self.head_dim, self.bug = heads, d // heads, bug
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None
        if self.bug == "float-mask":
            keep = torch.ones(b, n)
            keep[:, n - n // 4 :] = 0  # padding at the end, HF style 1 = attend
            mask = keep[:, None, None, :]  # float: SDPA adds it
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=1.0 if self.bug == "no-scale" else None
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Tiny(nn.Module):
    def __init__(self, bug: str | None = None, vocab: int = 50, d: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Attention(d, bug=bug) for _ in range(2)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = x + block(x)
        return x


def healthy() -> nn.Module:
    torch.manual_seed(0)
    return Tiny()


def no_scale() -> nn.Module:
    torch.manual_seed(0)
    model = Tiny(bug="no-scale")
    with torch.no_grad():
        for block in model.blocks:
            block.qkv.weight.mul_(4)
        model.embed.weight.mul_(3)
    return model


def float_mask() -> nn.Module:
    torch.manual_seed(0)
    return Tiny(bug="float-mask")


def encoder_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True),
        num_layers=2,
        enable_nested_tensor=False,
    )


class PaddedMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4)  # sequence-first, the default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        pad[1, -3:] = True
        seq_first = x.transpose(0, 1)
        return self.mha(seq_first, seq_first, seq_first, key_padding_mask=pad, need_weights=False)[0]


def padded_mha() -> nn.Module:
    torch.manual_seed(0)
    return PaddedMHA()
