"""Build the bundled fixtures: one small safetensors file per check, plus clean cases.

    python scripts/make_fixtures.py fixtures/

Every fixture declares the exact set of codes it must produce (``EXPECTED``); the tests
hold attndbg to it, so a clean fixture that grows a finding fails as surely as a
trigger fixture that loses one. Deterministic: the same bytes every run.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

B, H, L, D = 2, 4, 12, 16
Fixture = tuple[dict[str, torch.Tensor], dict[str, str]]
FIXTURES: dict[str, Callable[[], Fixture]] = {}
EXPECTED: dict[str, set[str]] = {}
# With --grad the gradient stage runs too: these fixtures then add exactly these GRD codes,
# and every other fixture adds none.
EXPECTED_WITH_GRAD: dict[str, set[str]] = {
    "GRD001_ill_conditioned_tie": {"GRD001"},
    "MSK001_fully_masked_rows": {"GRD002"},
    "MSK004_inverted_padding": {"GRD002"},
    "NUM002_nan_from_softmax": {"GRD002"},
    "PAT003_layer_collapse": {"GRD003"},
}


def fixture(name: str, *codes: str) -> Callable:
    def register(fn: Callable[[], Fixture]) -> Callable[[], Fixture]:
        FIXTURES[name] = fn
        EXPECTED[name] = set(codes)
        return fn

    return register


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def qkv(
    seed: int = 0,
    b: int = B,
    h: int = H,
    lq: int = L,
    lk: int = L,
    d: int = D,
    hk: int | None = None,
):
    g = gen(seed)
    q = torch.randn(b, h, lq, d, generator=g)
    k = torch.randn(b, hk or h, lk, d, generator=g)
    v = torch.randn(b, hk or h, lk, d, generator=g)
    return q, k, v


def softmax_ref(q, k, mask=None, scale=None, causal=False):
    """Plain math attention weights (the fixtures' own reference, independent of attndbg)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    if causal:
        lq, lk = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(lq, lk, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, dim=-1)


def padding_keep(lengths: list[int], lk: int = L) -> torch.Tensor:
    """(batch, 1, 1, lk) bool: True = attend, the first ``length`` keys of each sample."""
    keep = torch.zeros(len(lengths), 1, 1, lk, dtype=torch.bool)
    for i, n in enumerate(lengths):
        keep[i, ..., :n] = True
    return keep


# ---- clean ----------------------------------------------------------------------------------
@fixture("clean_basic")
def clean_basic() -> Fixture:
    q, k, v = qkv(1)
    return {"q": q, "k": k, "v": v}, {}


@fixture("clean_padding_mask")
def clean_padding_mask() -> Fixture:
    q, k, v = qkv(2)
    mask = padding_keep([L, L - 3])
    w = softmax_ref(q, k, mask)
    return {"q": q, "k": k, "v": v, "mask": mask, "weights": w, "out": w @ v}, {}


@fixture("clean_causal")
def clean_causal() -> Fixture:
    q, k, v = qkv(3)
    w = softmax_ref(q, k, causal=True)
    return {"q": q, "k": k, "v": v, "weights": w, "out": w @ v}, {"is_causal": "true"}


@fixture("clean_seeds_example")
def clean_seeds_example() -> Fixture:
    # The hand-computed example: X = [[1,0,1,0],[0,1,0,1],[1,1,0,0]], Q = K = V = X.
    x = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]])
    weights = torch.tensor([[0.5066, 0.1863, 0.3071], [0.1863, 0.5066, 0.3071], [0.2741, 0.2741, 0.4518]])
    return {"q": x, "k": x.clone(), "v": x.clone(), "weights": weights}, {}


@fixture("clean_gqa")
def clean_gqa() -> Fixture:
    q, k, v = qkv(4, h=8, hk=2)
    return {"q": q, "k": k, "v": v}, {"enable_gqa": "true"}


@fixture("clean_key_padding_mask")
def clean_key_padding_mask() -> Fixture:
    q, k, v = qkv(5)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -4:] = True  # True = padding, nn.MultiheadAttention's convention
    w = softmax_ref(q, k, ~pad[:, None, None, :])
    return {"q": q, "k": k, "v": v, "key_padding_mask": pad, "weights": w}, {}


@fixture("clean_fp16_additive")
def clean_fp16_additive() -> Fixture:
    q, k, v = qkv(6)
    mask = torch.zeros(B, 1, 1, L)
    mask[1, ..., -2:] = float("-inf")
    return {"q": q.half(), "k": k.half(), "v": v.half(), "mask": mask.half()}, {}


@fixture("clean_sequence_first")
def clean_sequence_first() -> Fixture:
    g = gen(7)
    q, k, v = (torch.randn(L, B, D, generator=g) for _ in range(3))
    return {"q": q, "k": k, "v": v}, {"layout": "sbd"}


@fixture("clean_multi_case")
def clean_multi_case() -> Fixture:
    tensors = {}
    for layer in range(3):
        q, k, v = qkv(10 + layer)
        tensors.update(
            {
                f"encoder.layer.{layer}.q": q,
                f"encoder.layer.{layer}.k": k,
                f"encoder.layer.{layer}.v": v,
            }
        )
    return tensors, {"encoder.layer.0.source": "encoder.layer.0.attention"}


# ---- shapes ---------------------------------------------------------------------------------
@fixture("SHP001_rank5", "SHP001")
def shp001() -> Fixture:
    q, k, v = qkv(20)
    return {"q": q[None], "k": k[None], "v": v[None]}, {}


@fixture("SHP002_head_dim", "SHP002")
def shp002() -> Fixture:
    q, k, v = qkv(21)
    return {"q": q, "k": k[..., :8].contiguous(), "v": v}, {}


@fixture("SHP003_kv_length", "SHP003")
def shp003() -> Fixture:
    q, k, v = qkv(22)
    return {"q": q, "k": k, "v": v[..., :10, :].contiguous()}, {}


@fixture("SHP004_gqa_not_divisible", "SHP004")
def shp004() -> Fixture:
    q, k, v = qkv(23, h=6, hk=4)
    return {"q": q, "k": k, "v": v}, {}


@fixture("SHP005_mask_not_broadcastable", "SHP005")
def shp005() -> Fixture:
    q, k, v = qkv(24)
    return {"q": q, "k": k, "v": v, "mask": padding_keep([L, 8]).reshape(B, L)}, {}


@fixture("SHP006_batch_equals_seq", "SHP006")
def shp006() -> Fixture:
    q, k, v = qkv(25, b=8, lq=8, lk=8)
    lengths = [8, 5, 8, 6, 3, 8, 7, 4]
    mask = padding_keep(lengths, 8).reshape(8, 8)  # (batch, seq): broadcasts as (q_len, k_len)
    return {"q": q, "k": k, "v": v, "attention_mask": mask}, {}


@fixture("SHP007_sequence_first", "SHP004", "SHP007")
def shp007() -> Fixture:
    g = gen(26)
    q = torch.randn(L, B, D, generator=g)  # (seq, batch, dim), cross-attention over 10 keys
    k = torch.randn(10, B, D, generator=g)
    v = torch.randn(10, B, D, generator=g)
    return {"q": q, "k": k, "v": v}, {}


@fixture("SHP007_key_padding_mask_seq_first", "SHP005", "SHP007")
def shp007_kpm() -> Fixture:
    g = gen(27)
    q, k, v = (torch.randn(L, B, D, generator=g) for _ in range(3))  # nn.MultiheadAttention default
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -3:] = True
    return {"q": q, "k": k, "v": v, "key_padding_mask": pad}, {}


# ---- numerics -------------------------------------------------------------------------------
@fixture("NUM001_nan_in_q", "NUM001")
def num001() -> Fixture:
    q, k, v = qkv(30)
    q[1, 2, 5, 3] = float("nan")
    return {"q": q, "k": k, "v": v}, {}


@fixture("NUM002_nan_from_softmax", "NUM002", "MSK001")
def num002() -> Fixture:
    q, k, v = qkv(31)
    mask = torch.ones(1, 1, L, L, dtype=torch.bool)
    mask[..., 4, :] = False  # query row 4 sees nothing
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # row 4: 0/0 = NaN
    return {"q": q, "k": k, "v": v, "mask": mask, "scores": scores, "weights": weights}, {}


@fixture("NUM003_fp16_overflow", "NUM003", "SCL003")
def num003() -> Fixture:
    g = gen(32)
    u = torch.randn(D, generator=g)
    u = u / u.norm()
    q = (torch.randn(B, H, L, D, generator=g) * 0.5 + 190 * u).half()
    k = (torch.randn(B, H, L, D, generator=g) * 0.5 + 190 * u).half()
    v = torch.randn(B, H, L, D, generator=g).half()
    return {"q": q, "k": k, "v": v}, {}


# ---- scaling --------------------------------------------------------------------------------
@fixture("SCL001_missing_scale", "SCL001")
def scl001() -> Fixture:
    q, k, v = qkv(40)
    q, k = q * 0.5, k * 0.5
    w = softmax_ref(q, k, scale=1.0)
    return {"q": q, "k": k, "v": v, "weights": w, "out": w @ v}, {}


@fixture("SCL002_scale_twice", "SCL002")
def scl002() -> Fixture:
    q, k, v = qkv(41)
    q, k = q * 2, k * 2
    w = softmax_ref(q, k, scale=1.0 / D)
    return {"q": q, "k": k, "v": v, "weights": w}, {}


@fixture("SCL003_logit_growth", "SCL003", "PAT003")
def scl003() -> Fixture:
    q, k, v = qkv(42)
    return {"q": q * 4, "k": k * 4, "v": v}, {}


@fixture("SCL004_near_zero_spread", "SCL004", "PAT002")
def scl004() -> Fixture:
    q, k, v = qkv(43)
    return {"q": q * 0.05, "k": k * 0.05, "v": v}, {}


# ---- mask -----------------------------------------------------------------------------------
@fixture("MSK001_fully_masked_rows", "MSK001")
def msk001() -> Fixture:
    q, k, v = qkv(50)
    keep = padding_keep([L, L - 4]).expand(B, 1, L, L).clone()
    keep[1, :, -4:, :] = False  # padding queries of sample 1 see nothing
    return {"q": q, "k": k, "v": v, "mask": keep}, {}


@fixture("MSK001_finfo_min_fp16", "MSK001", "MSK007")
def msk001_fp16() -> Fixture:
    q, k, v = qkv(51)
    bias = torch.zeros(B, 1, L, L, dtype=torch.float16)
    bias[1, :, :, -3:] = torch.finfo(torch.float16).min
    bias[1, :, -3:, :] = torch.finfo(torch.float16).min
    return {"q": q.half(), "k": k.half(), "v": v.half(), "mask": bias}, {}


@fixture("MSK002_mask_not_applied", "MSK002")
def msk002() -> Fixture:
    q, k, v = qkv(52)
    keep = padding_keep([L, L - 5])
    w = softmax_ref(q, k)  # the mask was never applied
    return {"q": q, "k": k, "v": v, "mask": keep, "weights": w}, {}


@fixture("MSK003_float_01_mask", "MSK003")
def msk003() -> Fixture:
    q, k, v = qkv(53)
    mask = padding_keep([L, L - 4]).float()  # HF-style 1 = attend, passed as an additive float
    return {"q": q, "k": k, "v": v, "attention_mask": mask}, {}


@fixture("MSK004_inverted_padding", "MSK004", "MSK001")
def msk004() -> Fixture:
    q, k, v = qkv(54)
    pad = ~padding_keep([L, L - 4])  # True = pad, handed to SDPA where True = attend
    return {"q": q, "k": k, "v": v, "mask": pad}, {}


@fixture("MSK005_off_by_one_causal", "MSK005")
def msk005() -> Fixture:
    q, k, v = qkv(55)
    keep = torch.ones(L, L, dtype=torch.bool).tril(diagonal=1)  # one future token leaks
    return {"q": q, "k": k, "v": v, "mask": keep}, {}


@fixture("MSK005_weights_leak", "MSK005")
def msk005_weights() -> Fixture:
    q, k, v = qkv(56)
    w = softmax_ref(q, k)  # causal case, but the weights saw the future
    return {"q": q, "k": k, "v": v, "weights": w}, {"is_causal": "true"}


@fixture("MSK006_kv_cache_upper_left", "MSK006")
def msk006() -> Fixture:
    q, k, v = qkv(57, lq=3, lk=L)
    return {"q": q, "k": k, "v": v}, {"is_causal": "true"}


@fixture("MSK007_mixed_fill", "MSK007")
def msk007() -> Fixture:
    q, k, v = qkv(58)
    bias = torch.zeros(B, 1, 1, L)
    bias[0, ..., -2:] = float("-inf")
    bias[1, ..., -3:] = torch.finfo(torch.float32).min
    return {"q": q, "k": k, "v": v, "mask": bias}, {}


@fixture("MSK007_fp16_minus_1e9", "MSK007")
def msk007_fp16() -> Fixture:
    q, k, v = qkv(59)
    bias = torch.zeros(B, 1, 1, L)
    bias[1, ..., -3:] = -1e9
    return {"q": q.half(), "k": k.half(), "v": v.half(), "mask": bias}, {}


@fixture("MSK008_mask_not_extended", "MSK008")
def msk008() -> Fixture:
    return decode_step(extended=False)


@fixture("clean_kv_cache_decode")
def clean_kv_cache_decode() -> Fixture:
    return decode_step(extended=True)


def decode_step(extended: bool) -> Fixture:
    """One generated token after a left-padded prefill of L - 1 tokens: the 2-D mask gets a 1
    for the new token, or (the bug) is passed unchanged and padded with 0 to the cache length."""
    q, k, v = qkv(61, lq=1, lk=L)
    prefill = torch.ones(B, L - 1, dtype=torch.bool)
    prefill[1, :4] = False  # sample 1 is 4 tokens shorter, padded on the left
    keep = torch.nn.functional.pad(prefill, (0, 1), value=extended)[:, None, None, :]
    w = softmax_ref(q, k, keep)
    return {"q": q, "k": k, "v": v, "mask": keep, "weights": w, "out": w @ v}, {}


# ---- softmax --------------------------------------------------------------------------------
@fixture("SMX001_rows_not_normalized", "SMX001")
def smx001() -> Fixture:
    q, k, v = qkv(60)
    return {"q": q, "k": k, "v": v, "weights": softmax_ref(q, k) * 0.9}, {}


@fixture("SMX002_softmax_over_queries", "SMX002")
def smx002() -> Fixture:
    q, k, v = qkv(61)
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D), dim=-2)
    return {"q": q, "k": k, "v": v, "weights": w}, {}


@fixture("SMX003_log_probabilities", "SMX003", "SMX001")
def smx003() -> Fixture:
    q, k, v = qkv(62)
    w = torch.log_softmax(q @ k.transpose(-2, -1) / math.sqrt(D), dim=-1)
    return {"q": q, "k": k, "v": v, "weights": w}, {}


@fixture("SMX004_wrong_value_tensor", "SMX004")
def smx004() -> Fixture:
    q, k, v = qkv(63)
    w = softmax_ref(q, k)
    return {"q": q, "k": k, "v": v, "weights": w, "out": w @ v.flip(-2)}, {}


# ---- patterns -------------------------------------------------------------------------------
def _one_hot_head(perm: list[int], strength: float = 12.0) -> tuple[torch.Tensor, torch.Tensor]:
    """q/k for a head whose query i attends (almost) only to key perm[i]."""
    keys = torch.eye(D)[:L]
    queries = strength * math.sqrt(D) * keys[perm]
    return queries, keys


@fixture("PAT001_collapsed_head", "PAT001")
def pat001() -> Fixture:
    q, k, v = qkv(70)
    perm = [5, 9, 2, 11, 7, 0, 3, 10, 1, 8, 6, 4]
    hq, hk = _one_hot_head(perm)
    q[:, 0], k[:, 0] = hq, hk
    return {"q": q, "k": k, "v": v}, {}


@fixture("PAT002_uniform_head", "PAT002")
def pat002() -> Fixture:
    q, k, v = qkv(71)
    q[:, 2] *= 0.1
    return {"q": q, "k": k, "v": v}, {}


@fixture("PAT003_layer_collapse", "PAT001", "PAT003")
def pat003() -> Fixture:
    q, k, v = qkv(72)
    g = gen(172)
    for h in range(H):
        hq, hk = _one_hot_head(torch.randperm(L, generator=g).tolist())
        q[:, h], k[:, h] = hq, hk
    return {"q": q, "k": k, "v": v}, {}


@fixture("PAT004_attention_sink", "PAT004")
def pat004() -> Fixture:
    q, k, v = qkv(73)
    sink = torch.zeros(D)
    sink[0] = 1.0
    q[:, 1] = q[:, 1] * 0.5 + 2.0 * sink
    k[:, 1, 0] = 7.0 * sink
    return {"q": q, "k": k, "v": v}, {}


@fixture("PAT005_duplicate_heads", "PAT005")
def pat005() -> Fixture:
    q, k, v = qkv(74)
    q[:, 3], k[:, 3] = q[:, 1], k[:, 1]
    return {"q": q, "k": k, "v": v}, {}


# ---- gradients (with --grad) ----------------------------------------------------------------
@fixture("GRD001_ill_conditioned_tie", "SCL003")
def grd001() -> Fixture:
    # Two keys 2e7 apart along one axis, and queries almost orthogonal to that axis: the
    # softmax splits between them with a derivative of ~1e6, and finite differences fail.
    q, k, v = qkv(80)
    u = torch.randn(D, generator=gen(81))
    u[0] = 0
    u = u / u.norm()
    axis = torch.zeros(D)
    axis[0] = 1.0
    q[0, 0, :4] = u
    q[0, 0, :4, 0] = torch.tensor([1.0, 2.0, -1.0, 3.0]) / (0.25 * 2 * 1e7)
    k[0, 0, 0] = 40 * u + 1e7 * axis
    k[0, 0, 1] = 40 * u - 1e7 * axis
    return {"q": q, "k": k, "v": v}, {}


def build(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in FIXTURES.items():
        tensors, metadata = make()
        tensors = {key: t.contiguous().clone() for key, t in tensors.items()}
        path = directory / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata or None)
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures")
    for path in build(target):
        print(path)
