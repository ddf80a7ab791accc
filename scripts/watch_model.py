"""A small decoder-only transformer (GPT-style, pre-LayerNorm, SDPA, causal) for the watch tests,
the instability experiment and ``make bench-watch``; ``qk_norm=True`` adds a LayerNorm on the
queries and keys of every head (QK-layernorm, as in ViT-22B and Wortsman et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q = self.q_norm(split(self.q_proj(x)))
        k = self.k_norm(split(self.k_proj(x)))
        out = F.scaled_dot_product_attention(q, k, split(self.v_proj(x)), is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, width))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, qk_norm)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(
        self,
        vocab: int = 256,
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
        context: int = 64,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.ModuleList([Block(width, heads, qk_norm) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def random_batches(steps: int, batch: int = 4, context: int = 32, vocab: int = 256, seed: int = 0):
    """Token batches of a repeating pattern with noise: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.arange(context + 1) % 17
    for _ in range(steps):
        noise = torch.randint(0, vocab, (batch, context + 1), generator=generator)
        keep = torch.rand(batch, context + 1, generator=generator) < 0.8
        ids = torch.where(keep, base.expand(batch, -1), noise)
        yield ids[:, :-1], ids[:, 1:]
