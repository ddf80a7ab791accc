"""Every reading the hypotheses can prove is named by a check, whatever subset of the saved
weights/scores/out is there: the registry declares who names which reading, and each reading
that an output alone can prove is named from an output alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attndbg
from attndbg.registry import load_checks
from attndbg.vocab import Reading

B, H, L, D = 2, 4, 24, 32


def test_every_reading_is_named_by_a_check() -> None:
    named = set().union(*(check.reports for check in load_checks().values()))
    assert named == set(Reading) - {Reading.REFERENCE}


def _inputs(seed: int, lk: int = L, hk: int = H) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g)
    k = torch.randn(B, hk, lk, D, generator=g)
    v = torch.randn(B, hk, lk, D, generator=g)
    keep = torch.ones(B, 1, 1, lk, dtype=torch.bool)
    keep[1, ..., lk // 2 :] = False
    return q, k, v, keep


def _masks(keep: torch.Tensor) -> dict[str | None, torch.Tensor | None]:
    return {None: None, "keep": keep, "drop": ~keep, "float": keep.float()}


def _user_out(q, k, v, keep, how: str, attn_mask: str | None, kwargs: dict) -> torch.Tensor:  # noqa: ANN001
    """The output the user's attention produced, the way model code produces it."""
    if how == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_masks(keep)[attn_mask], **kwargs)
    weights = torch.softmax(q @ k.transpose(-1, -2) * D**-0.5, dim=-1 if how == "twice" else 1)
    if how == "twice":
        weights = torch.softmax(weights, dim=-1)
    return weights @ v


# reading -> (code that names it, the user's attention, its attn_mask, sdpa kwargs, the saved mask,
# what the case declares)
FROM_OUTPUT = {
    Reading.NO_SCALE: ("SCL001", "sdpa", None, {"scale": 1.0}, None, {}),
    Reading.SCALE_1_D: ("SCL002", "sdpa", None, {"scale": 1 / D}, None, {}),
    Reading.FITTED_SCALE: ("SCL002", "sdpa", None, {"scale": 0.41}, None, {}),
    Reading.MASK_IGNORED: ("MSK002", "sdpa", None, {}, "keep", {}),
    Reading.MASK_AS_DROP: ("MSK004", "sdpa", "drop", {}, "keep", {}),
    Reading.MASK_AS_ADDITIVE: ("MSK003", "sdpa", "float", {}, "keep", {}),
    Reading.MASK_AS_KEEP: ("MSK003", "sdpa", "keep", {}, "float", {}),
    Reading.NOT_CAUSAL: ("MSK005", "sdpa", None, {}, None, {"is_causal": True}),
    Reading.CAUSAL: ("MSK005", "sdpa", None, {"is_causal": True}, None, {}),
    Reading.SOFTMAX_TWICE: ("SMX004", "twice", None, {}, None, {}),
    Reading.SOFTMAX_OVER_HEADS: ("SMX002", "heads", None, {}, None, {}),
}


@pytest.mark.parametrize("reading", list(FROM_OUTPUT), ids=str)
def test_a_reading_proved_by_the_output_alone_is_named(reading: Reading) -> None:
    code, how, attn_mask, kwargs, saved_mask, settings = FROM_OUTPUT[reading]
    q, k, v, keep = _inputs(list(FROM_OUTPUT).index(reading))
    out = _user_out(q, k, v, keep, how, attn_mask, kwargs)
    report = attndbg.diagnose(q, k, v, mask=_masks(keep)[saved_mask], out=out, **settings)
    matched = [f for f in report.findings if f.code == code and f.evidence.get("matches") == reading]
    assert matched, [(f.code, f.message) for f in report.findings]


def test_lower_right_and_tiled_heads_from_the_output_alone() -> None:
    q, k, v, _ = _inputs(7, lk=40)
    q = q[:, :, :8]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(8, 40, dtype=torch.bool).tril(32))
    report = attndbg.diagnose(q, k, v, out=out, is_causal=True)
    assert [f.evidence.get("matches") for f in report.findings if f.code == "MSK006"] == [
        Reading.CAUSAL_LOWER_RIGHT
    ]
    q, k, v, _ = _inputs(8, hk=2)
    out = F.scaled_dot_product_attention(q, k.repeat(1, 2, 1, 1), v.repeat(1, 2, 1, 1))  # tiles heads
    report = attndbg.diagnose(q, k, v, out=out)
    assert [f.evidence.get("matches") for f in report.findings if f.code == "SMX004"] == [Reading.GQA_REPEAT]
