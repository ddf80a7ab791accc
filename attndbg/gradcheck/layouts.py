"""The tensor layouts an attention function may take Q, K, V in, and how attndbg finds which.

The sweep builds (B, H, L, D) tensors; a function that wants them sequence-first, with the
heads merged into the channels, or with the heads folded into the batch gets them that way,
and its output is brought back to (B, H, Lq, Dv) before it is compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    name: str
    shape: str  # what the function is handed, in words
    merged_heads: bool = False  # heads inside the channels: the function needs the head count
    sequence_first: bool = False

    def to(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, D) → this layout."""
        b, h, length, d = x.shape
        if self.name == "bhld":
            return x
        if self.name == "blhd":
            out = x.transpose(1, 2)
        elif self.name == "lbhd":
            out = x.permute(2, 0, 1, 3)
        elif self.name == "ble":
            out = x.transpose(1, 2).reshape(b, length, h * d)
        elif self.name == "lbe":
            out = x.permute(2, 0, 1, 3).reshape(length, b, h * d)
        elif self.name == "(bh)ld":
            out = x.reshape(b * h, length, d)
        else:  # "l(bh)d"
            out = x.reshape(b * h, length, d).transpose(0, 1)
        return out.contiguous()

    def back(self, out: torch.Tensor, b: int, h: int) -> torch.Tensor:
        """The function's output in this layout → (B, H, Lq, Dv)."""
        if self.name == "bhld" or not torch.is_tensor(out):
            return out
        expected = 4 if self.name in ("blhd", "lbhd") else 3
        if out.dim() != expected:
            raise ValueError(f"output shape {tuple(out.shape)}: a {expected}-d {self.shape} tensor expected")
        if self.name == "blhd":
            return out.transpose(1, 2)
        if self.name == "lbhd":
            return out.permute(1, 2, 0, 3)
        if self.name == "ble":
            return out.reshape(b, out.shape[1], h, out.shape[2] // h).transpose(1, 2)
        if self.name == "lbe":
            return out.reshape(out.shape[0], b, h, out.shape[2] // h).permute(1, 2, 0, 3)
        if self.name == "(bh)ld":
            return out.reshape(b, h, out.shape[1], out.shape[2])
        return out.transpose(0, 1).reshape(b, h, out.shape[0], out.shape[2])  # "l(bh)d"

    @property
    def three_d(self) -> bool:
        return self.name not in ("bhld", "blhd", "lbhd")


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout("bhld", "(batch, heads, seq, head_dim)"),
        Layout("blhd", "(batch, seq, heads, head_dim)"),
        Layout("lbhd", "(seq, batch, heads, head_dim)", sequence_first=True),
        Layout("ble", "(batch, seq, heads·head_dim)", merged_heads=True),
        Layout("lbe", "(seq, batch, heads·head_dim)", merged_heads=True, sequence_first=True),
        Layout("(bh)ld", "(batch·heads, seq, head_dim)"),
        Layout("l(bh)d", "(seq, batch·heads, head_dim)", sequence_first=True),
    )
}

# What a docstring says of a sequence-first input: (L, N, E), (T, B, C), "Time x Batch x Channel",
# (tgt_len, bsz, embed_dim), "seq_len, batch"
SEQUENCE_FIRST = re.compile(
    r"\(\s*[LTS]\s*,\s*[BN]\s*[,)]|\btime\s*x\s*batch|\b(tgt|src|seq)_?len\w*\s*,\s*(bsz|batch)"
    r"|sequence[- ]first|seq[- ]first",
    re.IGNORECASE,
)


def candidates(heads_known: bool) -> list[Layout]:
    """The layouts to try, the documented (B, H, L, D) first: heads merged into the channels
    only when the function knows a head count to split them by; heads folded into the batch
    for 3-d single-head code (bmm)."""
    merged = ["ble", "lbe"] if heads_known else []
    return [LAYOUTS[name] for name in ("bhld", "blhd", "lbhd", *merged, "(bh)ld", "l(bh)d")]


def runs_as_attention(
    call: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> bool:
    """Whether ``call`` (taking and returning (B, H, L, D) tensors) behaves as attention over
    the sequence axis: the expected output shape, unchanged when keys and values are permuted
    together, permuted as the queries are, and other keys in one head of one batch element
    change that head's output only. A function handed the wrong layout attends over another
    axis, mixes heads, or fails on the different query and key lengths."""
    try:
        with torch.no_grad():
            out = call(q, k, v)
            expected = (*q.shape[:-1], v.shape[-1])
            if (
                not torch.is_tensor(out)
                or tuple(out.shape) != expected
                or not bool(torch.isfinite(out).all())
            ):
                return False
            keys = torch.randperm(k.shape[-2], generator=torch.Generator().manual_seed(7))
            queries = torch.randperm(q.shape[-2], generator=torch.Generator().manual_seed(8))
            shuffled_keys = call(q, k[..., keys, :], v[..., keys, :])
            shuffled_queries = call(q[..., queries, :], k, v)
            # another key in the first batch element's first head: no other head or element moves
            changed = k.clone()
            noise = torch.randn(changed[0, 0].shape, generator=torch.Generator().manual_seed(9))
            changed[0, 0] += noise.to(k)
            first_changed = call(q, changed, v)
    except Exception:
        return False
    tolerance = 1e-4 * max(1.0, float(out.abs().max()))
    results = (shuffled_keys, shuffled_queries, first_changed)
    if not all(torch.is_tensor(r) and r.shape == out.shape for r in results):
        return False
    untouched = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
    untouched[0, 0] = False

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.numel() == 0 or float((a - b).abs().max()) <= tolerance

    return (
        close(shuffled_keys, out)
        and close(shuffled_queries, out[..., queries, :])
        and close(first_changed[untouched], out[untouched])
        and not close(first_changed[0, 0], out[0, 0])
    )
