"""The one scale fit and the one naming table (attndbg.scales), shared by inspect and gradcheck:
the fit recovers the scale that real attention ops applied, and every named scale is named."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from attndbg.scales import describe_scale, fit_log_scale, name_scale, named_scales

D, H = 32, 8  # d_model 256: every named scale differs from the others


def _attention_error(scale: float, causal: bool = False, mask: bool = False) -> Callable[[float], float]:
    """What an observer of attention with ``scale`` sees: its output, and how far attention
    with another scale is from it."""
    g = torch.Generator().manual_seed(round(scale * 1e6) % 1000)
    q, k, v = (torch.randn(2, H, 12, D, generator=g, dtype=torch.float64) for _ in range(3))
    keep = torch.rand(2, 1, 12, 12, generator=g) > 0.3 if mask else None
    if keep is not None:
        keep[..., 0] = True  # every query keeps a key: no row is all -inf
    observed = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=causal, scale=scale)

    def error(candidate: float) -> float:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=causal, scale=candidate)
        return float((out - observed).abs().max())

    return error


UNNAMED = [0.41, 0.07, 2.3]


@pytest.mark.parametrize("scale", [n.value for n in named_scales(D, H)] + UNNAMED)
def test_the_fit_recovers_the_applied_scale(scale: float) -> None:
    error = _attention_error(scale)
    assert math.isclose(fit_log_scale(error, D, H), scale, rel_tol=1e-5)


@pytest.mark.parametrize(("scale", "causal", "mask"), [(D**-0.5 / 3, True, False), (0.09, False, True)])
def test_the_fit_recovers_the_scale_under_masks(scale: float, causal: bool, mask: bool) -> None:
    error = _attention_error(scale, causal, mask)
    assert math.isclose(fit_log_scale(error, D, H), scale, rel_tol=1e-5)


@pytest.mark.parametrize("scale", [D**-2.5, 40.0])  # past 1/(4·d_model) and 4·√d, the named span
def test_the_fit_walks_past_the_named_scales(scale: float) -> None:
    error = _attention_error(scale)
    assert math.isclose(fit_log_scale(error, D, H), scale, rel_tol=1e-4)


def test_a_named_scale_within_tolerance_is_returned_exactly_and_first() -> None:
    calls: list[float] = []
    target = 1.0 / D

    def error(candidate: float) -> float:
        calls.append(candidate)
        return _attention_error(target)(candidate)

    assert fit_log_scale(error, D, H, enough=1e-9) == target
    assert calls == [D**-0.5, target]  # tried in the table's order, no search after a match
    unnamed = _attention_error(0.41)
    assert math.isclose(fit_log_scale(unnamed, D, H, enough=1e-9), 0.41, rel_tol=1e-5)


def test_non_finite_errors_count_as_far() -> None:
    scale = 0.2
    finite = _attention_error(scale)

    def error(candidate: float) -> float:
        return math.nan if candidate > 1.0 else finite(candidate)

    assert math.isclose(fit_log_scale(error, D, H), scale, rel_tol=1e-5)


@pytest.mark.parametrize("named", named_scales(D, H), ids=lambda n: n.formula)
def test_each_named_scale_is_named(named) -> None:  # noqa: ANN001
    for value in (named.value, named.value * 1.005, named.value / 1.005):
        assert name_scale(value, D, H) == named
        text = describe_scale(value, D, H)
        assert text.startswith(f"{value:.4g} = {named.formula} (") and named.meaning in text


def test_the_table_names_the_formulas_with_the_sizes() -> None:
    by_formula = {n.formula: n for n in named_scales(D, H)}
    assert by_formula["1/√32"].value == pytest.approx(32**-0.5)
    assert by_formula["1/32"].value == pytest.approx(1 / 32)
    assert by_formula["1/√256"].value == pytest.approx(1 / 16)  # d_model = heads × head dim
    assert by_formula["1/256"].value == pytest.approx(1 / 256)
    assert by_formula["√32"].value == pytest.approx(32**0.5)
    assert by_formula["1"].value == 1.0
    assert len({round(n.value, 9) for n in named_scales(D, H)}) == len(named_scales(D, H))


def test_unnamed_and_coinciding_scales() -> None:
    assert name_scale(0.41, D, H) is None
    assert describe_scale(0.41, D, H) == f"0.41 (= 1/√{1 / 0.41**2:.3g})"
    assert name_scale(D**-0.5 * 1.02, D, H) is None  # 2% off is not the default scale
    # one head: d_model = d, and 1/√d is named as the default, not as 1/√d_model
    assert "default" in describe_scale(16**-0.5, 16, 1)
    assert name_scale(1 / 8, 16, 4).formula == "1/√64"  # 1/√d_model before 16^-¾ = 1/8


@pytest.mark.parametrize(
    ("scale", "named"),
    [
        (8.0, "√64"),  # past the old search's upper end (4): was left unexplained (SMX004)
        (64**-1.5, None),  # near-uniform attention: several named scales are within tolerance
        (256**-0.5, "1/√256"),
    ],
)
def test_inspect_fits_and_names_the_scale_of_an_output_alone(scale: float, named: str | None) -> None:
    import attndbg

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 64, 64, generator=g) * 0.3 for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    report = attndbg.diagnose(q, k, v, out=out)
    wrong = [f for f in report.findings if f.code == "SCL002"]
    assert len(wrong) == 1, [(f.code, f.message) for f in report.findings]
    assert math.isclose(wrong[0].evidence["applied_scale"], scale, rel_tol=1e-3)
    assert (f"= {named} (" in wrong[0].message) if named else "(= 1/√" in wrong[0].message
