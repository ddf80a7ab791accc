"""The sweep's scenarios: the shapes and masks that break attention code, grouped in levels,
and the inputs each one builds (Q, K, V, upstream gradient, keep-mask, additive bias, the rows
with nothing to attend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attndbg.attention import causal_keep

CUSTOM_SCALE = 0.3  # far from 1/√d for every head size the scenarios use


@dataclass(frozen=True)
class Scenario:
    name: str
    b: int = 2
    h: int = 2
    hk: int | None = None
    lq: int = 8
    lk: int = 8
    d: int = 16
    dv: int | None = None
    # none | bool-padding | additive-padding | fully-masked (one query row) | fully-padded (every
    # key of the last batch element: rows with nothing to attend for a key padding mask)
    mask: str = "none"
    causal: bool = False
    scale: float | None = None  # passed only to implementations that take a scale


QUICK = [
    Scenario("basic"),
    Scenario("padding-bool", mask="bool-padding"),
    Scenario("fully-masked-row", mask="fully-masked"),
    Scenario("causal", causal=True),
]
DEFAULT = [
    *QUICK,
    Scenario("odd-sizes", b=1, h=3, lq=5, lk=7, d=12, dv=10),
    Scenario("q_len!=k_len", lq=3, lk=9),
    Scenario("gqa", h=4, hk=2),
    Scenario("empty-query", lq=0, lk=5),
    Scenario("padding-additive", mask="additive-padding"),
    Scenario("causal q_len<k_len", lq=4, lk=8, causal=True),
    Scenario("custom-scale", scale=CUSTOM_SCALE),
]
THOROUGH = [
    *DEFAULT,
    Scenario("long", b=1, h=4, lq=128, lk=128, d=64),
    Scenario("long-causal", b=1, h=4, lq=96, lk=128, d=64, causal=True),
    Scenario("many-heads-gqa", b=3, h=8, hk=2, lq=17, lk=33, d=32, mask="bool-padding"),
    Scenario("single-key", lq=4, lk=1),
]
LEVELS = {"quick": QUICK, "default": DEFAULT, "thorough": THOROUGH}
SCENARIOS = {s.name: s for s in THOROUGH}


def make_case(s: Scenario, seed: int, device: str, align: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    hk, dv = s.hk or s.h, s.dv or s.d
    q = torch.randn(s.b, s.h, s.lq, s.d, generator=g)
    k = torch.randn(s.b, hk, s.lk, s.d, generator=g)
    v = torch.randn(s.b, hk, s.lk, dv, generator=g)
    upstream = torch.randn(s.b, s.h, s.lq, dv, generator=g)
    keep = None
    bias = None
    if s.mask in ("bool-padding", "additive-padding"):
        keep = torch.ones(s.b, 1, 1, s.lk, dtype=torch.bool)
        keep[-1, ..., max(1, s.lk - 3) :] = False
        keep = keep.expand(s.b, 1, s.lq, s.lk).clone()
    elif s.mask == "fully-masked":
        keep = torch.ones(s.b, 1, s.lq, s.lk, dtype=torch.bool)
        keep[:, :, min(2, s.lq - 1)] = False
    elif s.mask == "fully-padded":
        keep = torch.ones(s.b, 1, s.lq, s.lk, dtype=torch.bool)
        keep[-1] = False
    if s.causal and keep is not None:
        keep = keep & causal_keep(s.lq, s.lk, align)
    if s.mask == "additive-padding":
        assert keep is not None  # built for the padding masks above
        bias = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    dead = None
    if keep is not None:
        dead = ~keep.expand(s.b, s.h, s.lq, s.lk).any(-1)  # (B, H, Lq): nothing to attend
        if bool(dead.any()):
            upstream = upstream.masked_fill(dead[..., None], 0.0)
        else:
            dead = None
    move: dict[str, Any] = {"device": device}
    return {
        "q": q.to(**move),
        "k": k.to(**move),
        "v": v.to(**move),
        "upstream": upstream.to(**move),
        "keep": None if keep is None else keep.to(**move),
        "bias": None if bias is None else bias.to(**move),
        "dead": None if dead is None else dead.to(**move),
    }
