"""Per-head statistics of a padded batch read only the real query rows.

In a padded encoder batch the key padding mask (Hugging Face's ``attention_mask`` as
``(batch, 1, 1, k_len)``) hides the padding keys but leaves the padding *queries* attending the
real keys; their outputs are discarded. Every padding position holds the same pad token, so
those rows all attend alike: here, as all-MiniLM-L6-v2's layer 0 does, to the first token. The
pattern checks must not report a head for what its padding rows do — and must still report the
same pattern on real rows.
"""

from __future__ import annotations

import io

import torch
from rich.console import Console

import attndbg
from attndbg.case import Case
from attndbg.context import CaseContext
from attndbg.report import Report
from attndbg.stats import heads_over_batch

D = 8
HEADS = 4


def attention_mask(lengths: list[int], total: int) -> torch.Tensor:
    """Hugging Face's right-padded 2-D attention_mask as the 4-D bool mask SDPA is given."""
    keep = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]
    return keep[:, None, None, :]


def batch_with_sinks(lengths: list[int], total: int, sink_rows: torch.Tensor, seed: int = 0):
    """q, k, v (batch, heads, total, D) where the query rows marked by ``sink_rows`` (batch,
    total) point at the first key of their sample, the way a head parks attention on [CLS]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(len(lengths), HEADS, total, D, generator=g)
    k = torch.randn(len(lengths), HEADS, total, D, generator=g)
    v = torch.randn(len(lengths), HEADS, total, D, generator=g)
    first = k[:, :, :1, :]
    toward_first = 12.0 * D**0.5 * first / first.norm(dim=-1, keepdim=True)  # logit ≈ 12 on key 0
    q = torch.where(sink_rows[:, None, :, None], toward_first.expand_as(q), q)
    return q, k, v


def diagnose(q, k, v, mask) -> Report:  # noqa: ANN001
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attndbg.diagnose(q, k, v, mask=mask, out=out)


def codes(report: Report) -> set[str]:
    return {f.code for f in report.findings}


LENGTHS, TOTAL = [16, 4], 16
PADDING_ROWS = sum(TOTAL - n for n in LENGTHS)


def test_padding_rows_alone_trigger_no_sink_finding() -> None:
    mask = attention_mask(LENGTHS, TOTAL)
    padding = ~mask[:, 0, 0, :]
    q, k, v = batch_with_sinks(LENGTHS, TOTAL, sink_rows=padding)
    # every head would be a sink head if its padding rows counted
    ctx = CaseContext(Case(name="padded", file="<memory>", tensors={"q": q, "k": k, "v": v, "mask": mask}))
    assert all(h.sink_mass > 0.3 for h in heads_over_batch(ctx.stats))

    report = diagnose(q, k, v, mask)
    assert "PAT004" not in codes(report), [f.message for f in report.findings]
    heads = report.cases[0].heads
    assert all(h.padding_rows == PADDING_ROWS for h in heads)
    assert all(h.rows == sum(LENGTHS) for h in heads)
    assert all(h.sink_mass < 0.3 for h in heads)


def test_the_same_pattern_on_real_rows_is_reported() -> None:
    mask = attention_mask(LENGTHS, TOTAL)
    real = mask[:, 0, 0, :]
    q, k, v = batch_with_sinks(LENGTHS, TOTAL, sink_rows=real)
    report = diagnose(q, k, v, mask)
    sinks = [f for f in report.findings if f.code == "PAT004"]
    assert sinks and sinks[0].evidence["heads"] == list(range(HEADS)), codes(report)
    assert all(h.padding_rows == PADDING_ROWS and h.sink_mass > 0.9 for h in report.cases[0].heads)
    # the terminal's head table, shown with the finding, says how many rows it left out
    console = Console(width=100, file=io.StringIO(), record=True)
    console.print(report)
    assert f"{PADDING_ROWS} padding query rows left out" in console.export_text()


def test_padding_query_rows_hidden_by_a_4d_mask_are_counted_as_left_out() -> None:
    """A 4-D mask that hides the padding queries too (rows fully masked): they were never
    informative, and the count says how many padding rows the means skip."""
    keep = attention_mask(LENGTHS, TOTAL)
    mask = keep & keep.transpose(-1, -2)  # (batch, 1, total, total)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(len(LENGTHS), HEADS, TOTAL, D, generator=g) for _ in range(3))
    heads = attndbg.diagnose(q, k, v, mask=mask).cases[0].heads
    assert all(h.padding_rows == PADDING_ROWS and h.rows == sum(LENGTHS) for h in heads)


def test_an_unpadded_batch_leaves_out_nothing() -> None:
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, HEADS, TOTAL, D, generator=g) for _ in range(3))
    for mask in (None, torch.ones(2, 1, 1, TOTAL, dtype=torch.bool)):
        heads = attndbg.diagnose(q, k, v, mask=mask).cases[0].heads
        assert all(h.padding_rows == 0 and h.rows == 2 * TOTAL for h in heads)


def test_a_cached_step_whose_new_keys_are_hidden_keeps_every_row() -> None:
    """A chunk of 2 new tokens whose mask was not extended (MSK008): their own keys are hidden
    from every query, which is the bug, not padding. Off the square (q_len < k_len) a hidden
    key says nothing sure about a query, so every row counts."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, HEADS, 2, D, generator=g)
    k, v = (torch.randn(2, HEADS, TOTAL, D, generator=g) for _ in range(2))
    mask = torch.ones(2, 1, 1, TOTAL, dtype=torch.bool)
    mask[..., -2:] = False
    report = attndbg.diagnose(q, k, v, mask=mask)
    assert "MSK008" in codes(report)
    assert all(h.padding_rows == 0 and h.rows == 2 * 2 for h in report.cases[0].heads)


def test_duplicate_head_similarity_leaves_out_padding_rows() -> None:
    """Every head's padding rows point at the first key alike: counted, they would make all
    heads look like copies of one another (PAT005 reads this Gram matrix); the real rows differ."""
    lengths, total = [6, 6], 64
    padding = torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]
    q, k, v = batch_with_sinks(lengths, total, padding)
    mask = attention_mask(lengths, total)
    gram = CaseContext(Case("c", "<memory>", {"q": q, "k": k, "v": v, "mask": mask})).stats.head_gram
    bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(q @ k.transpose(-1, -2) * D**-0.5 + bias, dim=-1).double()
    every_row = torch.einsum("bhqk,bgqk->bhg", weights, weights)
    real = (~padding).double()[:, None, :, None]
    real_rows = torch.einsum("bhqk,bgqk->bhg", weights * real, weights * real)

    def least_cosine(g: torch.Tensor) -> float:
        norms = torch.diagonal(g, dim1=-2, dim2=-1).sqrt()
        return float((g / (norms[..., :, None] * norms[..., None, :])).amin())

    assert least_cosine(every_row) > 0.95  # the padding rows alone make every pair "duplicate"
    assert torch.allclose(gram, real_rows, rtol=1e-4, atol=1e-6)
    assert least_cosine(gram) < 0.9
