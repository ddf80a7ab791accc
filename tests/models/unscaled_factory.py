import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    def __init__(self, d_model: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.d_k = heads, d_model // heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.d_k).permute(2, 0, 3, 1, 4)
        mask = torch.ones(n, n).tril()
        scores = torch.matmul(q, k.transpose(-2, -1))
        scores = scores.masked_fill(mask == 0, float("-inf"))
        weights = F.softmax(scores, dim=-1)
        out = torch.matmul(weights, v)
        return self.out(out.transpose(1, 2).reshape(b, n, -1))


class TwoLayers(nn.Module):
    def __init__(self, vocab: int = 100, d_model: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList([SelfAttention(d_model), SelfAttention(d_model)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = x + layer(x)
        return x


def build() -> nn.Module:
    torch.manual_seed(0)
    return TwoLayers()
