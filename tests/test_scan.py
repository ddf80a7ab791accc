"""Whole-tensor scans in bounded pieces give what one pass over the whole tensor gives."""

from __future__ import annotations

import pytest
import torch

from attndbg.stats.scan import finite_moments, nonfinite_counts, pieces


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, 70, 16, generator=g) * 3 + 1
    with_bad = base.clone()
    with_bad[1, 2, 5, 3] = float("nan")
    with_bad[2, 0, 9] = float("inf")
    with_bad[0, 4, 69, 0] = float("-inf")
    return {
        "contiguous": base,
        "transposed view": base.transpose(1, 2),  # (3, 70, 5, 16), not contiguous
        "non-finite": with_bad,
        "bfloat16": base.to(torch.bfloat16),
        "bool": base > 1,
    }


@pytest.mark.parametrize("name", list(_inputs()))
@pytest.mark.parametrize("limit", [7, 100, 1000, 1 << 20])
def test_pieces_cover_the_tensor_once_within_the_limit(name: str, limit: int) -> None:
    tensor = _inputs()[name].to(torch.float64).nan_to_num(0.0, 0.0, 0.0)
    parts = list(pieces(tensor, limit))
    assert sum(p.numel() for p in parts) == tensor.numel()
    assert all(p.numel() <= max(limit, tensor.shape[-1]) for p in parts)
    assert all(p.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() for p in parts)
    assert torch.isclose(sum(p.sum() for p in parts), tensor.sum())


@pytest.mark.parametrize("name", list(_inputs()))
def test_counts_and_moments_match_one_pass(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import attndbg.stats.scan as scan

    monkeypatch.setattr(scan, "PIECE_ELEMENTS", 500)  # many pieces
    tensor = _inputs()[name]
    values = tensor.to(torch.float64)
    expected = (int(values.isnan().sum()), int(values.isposinf().sum()), int(values.isneginf().sum()))
    if not tensor.is_floating_point():
        expected = (0, 0, 0)
    assert nonfinite_counts(tensor) == expected
    finite = values[values.isfinite()]
    moments = finite_moments(tensor, finite=sum(expected) == 0)
    assert moments is not None and moments.count == finite.numel()
    std, mean = torch.std_mean(finite)
    assert moments.low == float(finite.min()) and moments.high == float(finite.max())
    assert moments.mean == pytest.approx(float(mean), rel=1e-6, abs=1e-9)  # float32 pieces
    assert moments.std == pytest.approx(float(std), rel=1e-6)


def test_a_tensor_without_finite_values_has_no_moments() -> None:
    assert finite_moments(torch.full((4, 4), float("nan")), finite=False) is None
