"""The engine and its API: the hand-computed example, chunking, layouts, registry rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attndbg
from attndbg.case import Case
from attndbg.context import CaseContext
from attndbg.errors import UsageError
from attndbg.registry import Check, Hit, is_selected, load_checks, parse_codes
from attndbg.report import Severity
from attndbg.stats import compute_stats


def test_seeds_hand_computed_example_matches() -> None:
    x = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]])
    expected = torch.tensor([[0.5066, 0.1863, 0.3071], [0.1863, 0.5066, 0.3071], [0.2741, 0.2741, 0.4518]])
    ctx = CaseContext(Case("seeds", "<memory>", {"q": x, "k": x, "v": x}))
    stats = compute_stats(ctx)
    recomputed = torch.exp(
        (x @ x.T) * 0.5 - stats.lse[0, 0][:, None]
    )  # weights from the streamed log-sum-exp
    assert torch.allclose(recomputed, expected, atol=2e-4)  # given to 4 decimals
    assert torch.allclose(stats.out[0, 0], expected @ x, atol=1e-3)
    report = attndbg.diagnose(x, x, x, weights=expected)
    assert report.codes() == []
    # the same weights claimed for a scale-free computation are caught
    unscaled = torch.softmax(x @ x.T, dim=-1)
    assert attndbg.diagnose(x, x, x, weights=unscaled).codes() == ["SCL001"]


@pytest.mark.parametrize("budget", [1 << 30, 1 << 20, 200_000])
def test_chunked_statistics_equal_unchunked(budget: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 300, 16, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 300, 300, generator=g) > 0.2
    tensors = {"q": q, "k": k, "v": v, "mask": mask}
    whole = CaseContext(Case("c", "m", tensors), max_memory=1 << 34)
    full = compute_stats(whole)
    ctx = CaseContext(Case("c", "m", tensors), max_memory=budget)
    chunked = compute_stats(ctx)
    one_head_matrix = 300 * 300 * 4
    if budget < one_head_matrix:
        # the budget is smaller than one head's score matrix, and the chunks respect it
        assert chunked.chunk_bytes <= budget
        assert chunked.chunk_rows < 300 and chunked.chunks >= 2 * -(-300 // chunked.chunk_rows)
    for name in (
        "lse",
        "entropy",
        "max_weight",
        "sink",
        "diagonal",
        "previous",
        "n_kept",
        "max_logit",
        "logit_std",
    ):
        assert torch.allclose(getattr(full, name), getattr(chunked, name), atol=1e-5), name
    assert torch.allclose(full.out, chunked.out, atol=1e-5)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(chunked.out, reference, atol=1e-5)


@pytest.mark.parametrize("elements", [4_000, 50_000])
def test_cache_sized_slices_of_a_product_give_the_same_statistics(
    elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A product cut into slices of a few rows (and heads in groups) reduces to the same
    statistics, duplicate-head Gram matrix included, as one chunk per sample."""
    import attndbg.stats.chunks
    import attndbg.stats.driver

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 600, 16, generator=g) for _ in range(3))
    q[:, 1], k[:, 1] = q[:, 0], k[:, 0]  # a duplicate head
    tensors = {"q": q, "k": k, "v": v, "mask": torch.rand(2, 1, 600, 600, generator=g) > 0.3}
    whole = compute_stats(CaseContext(Case("c", "m", tensors), max_memory=1 << 34))
    monkeypatch.setattr(attndbg.stats.chunks, "CHUNK_ELEMENTS", elements)
    monkeypatch.setattr(attndbg.stats.driver, "CHUNK_ELEMENTS", elements)
    sliced = compute_stats(CaseContext(Case("c", "m", tensors), max_memory=1 << 34))
    assert sliced.chunks > whole.chunks
    for name in ("lse", "entropy", "max_weight", "sink", "diagonal", "n_kept", "max_logit", "logit_std"):
        assert torch.allclose(getattr(whole, name), getattr(sliced, name), atol=1e-5), name
    assert torch.allclose(whole.head_gram, sliced.head_gram, rtol=1e-5)
    assert float(whole.head_gram[0, 0, 1]) > 0


def test_entropy_from_log_sum_exp_matches_definition() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g) for _ in range(3))
    stats = compute_stats(CaseContext(Case("c", "m", {"q": q, "k": k, "v": v})))
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    entropy = -(p * p.log()).sum(-1)
    assert torch.allclose(stats.entropy, entropy, atol=1e-5)


@pytest.mark.parametrize("layout", ["bshd", "sbd"])
def test_layouts_give_the_same_attention(layout: str) -> None:
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 10, 8, generator=g) for _ in range(3))
    base = attndbg.diagnose(q, k, v)
    if layout == "bshd":
        args = [t.transpose(1, 2).contiguous() for t in (q, k, v)]
        other = attndbg.diagnose(*args, layout="bshd")
    else:
        args = [t[:, 0].transpose(0, 1).contiguous() for t in (q, k, v)]
        base = attndbg.diagnose(*[t[:, 0] for t in (q, k, v)])
        other = attndbg.diagnose(*args, layout="sbd")
    assert [h.entropy for h in base.cases[0].heads] == pytest.approx(
        [h.entropy for h in other.cases[0].heads], abs=1e-5
    )


def test_gqa_matches_sdpa_enable_gqa() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 8, 6, 4, generator=g)
    k, v = (torch.randn(1, 2, 6, 4, generator=g) for _ in range(2))
    ctx = CaseContext(Case("gqa", "m", {"q": q, "k": k, "v": v}))
    stats = compute_stats(ctx)
    reference = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert torch.allclose(stats.out, reference, atol=1e-5)
    assert any("enable_gqa" in guess for guess in ctx.guesses)


def test_diagnose_reports_guesses_and_states_them() -> None:
    q = torch.randn(3, 5, 8)
    report = attndbg.diagnose(q, q.clone(), q.clone(), mask=torch.ones(5, 5))
    case = report.cases[0]
    assert case.layout == "bsd"
    assert any("mask semantics additive" in g for g in case.guesses)
    assert report.codes() == []  # all ones is a constant +1 shift: nothing was meant to be masked


def test_diagnose_needs_tensors() -> None:
    with pytest.raises(UsageError):
        attndbg.diagnose()
    with pytest.raises(UsageError):
        attndbg.diagnose(torch.zeros(2, 2), torch.zeros(2, 2))


def test_weights_only_case_runs_softmax_and_pattern_checks() -> None:
    w = torch.softmax(torch.randn(1, 2, 10, 10), dim=-2)  # over queries
    report = attndbg.diagnose(weights=w)
    assert "SMX002" in report.codes()


def test_fp16_inputs_are_recomputed_in_float32() -> None:
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 16, 32, generator=g).half() for _ in range(3))
    ctx = CaseContext(Case("h", "m", {"q": q, "k": k, "v": v}))
    stats = compute_stats(ctx)
    assert stats.out.dtype == torch.float32
    ref64 = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert (stats.out.double() - ref64).abs().max() < 1e-5


def test_prefix_selection_longest_wins() -> None:
    assert is_selected("MSK004", [], [])
    assert not is_selected("MSK004", [], ["MSK"])
    assert is_selected("MSK004", ["MSK004"], ["MSK"])
    assert not is_selected("MSK004", ["MSK"], ["MSK004"])
    assert not is_selected("SHP001", ["MSK"], [])
    assert parse_codes("shp, MSK00 pat004") == ["SHP", "MSK00", "PAT004"]
    with pytest.raises(UsageError):
        parse_codes("FOO")


def test_malformed_checks_fail_at_definition() -> None:
    with pytest.raises(TypeError, match="code"):
        type(
            "Bad",
            (Check,),
            {
                "code": "X1",
                "name": "bad",
                "severity": Severity.ERROR,
                "rationale": "r",
                "fix": "f",
                "__doc__": "d",
                "__module__": "attndbg.checks.shapes",
            },
        )
    with pytest.raises(TypeError, match="belongs in"):
        type(
            "Bad",
            (Check,),
            {
                "code": "SHP099",
                "name": "bad",
                "severity": Severity.ERROR,
                "rationale": "r",
                "fix": "f",
                "__doc__": "d",
                "__module__": "attndbg.checks.mask",
            },
        )
    with pytest.raises(TypeError, match="registered twice"):
        type(
            "Bad",
            (Check,),
            {
                "code": "SHP001",
                "name": "bad",
                "severity": Severity.ERROR,
                "rationale": "r",
                "fix": "f",
                "__doc__": "d",
                "__module__": "attndbg.checks.shapes",
            },
        )


def test_registry_metadata_is_complete() -> None:
    checks = load_checks()
    families = {code[:3] for code in checks}
    assert families == {"SHP", "NUM", "SCL", "MSK", "SMX", "PAT", "GRD"}
    for check in checks.values():
        assert check.rationale and check.fix.strip() and check.summary
        compile(check.fix, check.code, "exec")  # fixes are valid Python
    assert all(checks[c].severity != Severity.ERROR for c in checks if c.startswith("PAT"))


def test_hit_severity_override_is_reported() -> None:
    report = attndbg.diagnose(weights=torch.softmax(torch.randn(1, 1, 12, 12), -1), scores=None)
    assert isinstance(report.exit_code(), int)
    assert Hit("m").severity is None


def test_overflow_inside_attention_is_located() -> None:
    """Finite inputs whose product overflows float32: NUM002 names the stage and first index."""
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    q[0, 1, 3] = 1e30
    k[0, 1, 2] = 1e30
    report = attndbg.diagnose(q, k, v)
    num002 = next(f for f in report.findings if f.code == "NUM002")
    assert num002.evidence["stage"] == "scores" and num002.evidence["where"] == "recomputed"
    assert num002.evidence["first"] == [0, 1, 3, 2]
