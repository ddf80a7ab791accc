"""The work a diagnosis does follows the selected checks: counted in matrix products (FLOPs of
every mm/bmm, as torch.utils.flop_counter sees them), not in seconds."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import attndbg

HEADS, LENGTH, DIM = 4, 1024, 32
QK = 2 * HEADS * LENGTH * LENGTH * DIM  # one Q·Kᵀ over every (head, query, key)


def products(run: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, HEADS, LENGTH, DIM, generator=g) for _ in range(3))  # type: ignore[return-value]


def test_shape_checks_compute_no_product(qkv) -> None:  # noqa: ANN001
    assert products(lambda: attndbg.diagnose(*qkv, select="SHP")) == 0


def test_a_full_diagnosis_computes_q_k_once_and_no_p_v(qkv) -> None:  # noqa: ANN001
    flops = products(lambda: attndbg.diagnose(*qkv))
    # Q·Kᵀ once; the rest (q-side logit moments, the sampled head Gram) is small. P·V alone
    # would add another QK's worth.
    assert QK <= flops < 1.25 * QK


def test_p_v_runs_when_the_output_could_overflow(qkv) -> None:  # noqa: ANN001
    q, k, v = qkv
    huge = v * 1e36  # Lk · max|v| exceeds float32: only P·V can tell whether it overflows
    flops = products(lambda: attndbg.diagnose(q, k, huge, select="NUM002"))
    assert flops >= 2 * QK
    assert products(lambda: attndbg.diagnose(q, k, v, select="NUM002")) < 1.25 * QK


def test_saved_output_is_measured_with_its_own_products(qkv) -> None:  # noqa: ANN001
    q, k, v = qkv
    out = F.scaled_dot_product_attention(q, k, v)
    plain = products(lambda: attndbg.diagnose(q, k, v, select="SMX004"))
    with_out = products(lambda: attndbg.diagnose(q, k, v, out=out, select="SMX004"))
    assert plain < 1.25 * QK <= 2 * QK <= with_out
    assert attndbg.diagnose(q, k, v, out=out).codes() == []


def test_non_finite_output_is_still_found_when_it_can_happen() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 2, 64, 8, generator=g) for _ in range(2))
    v = torch.full((1, 2, 64, 8), 3e38)  # every weight·v is finite, their sum is not
    report = attndbg.diagnose(q, k, v, select="NUM002")
    assert report.codes() == ["NUM002"]
    assert report.findings[0].evidence["stage"] == "output"
