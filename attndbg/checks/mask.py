"""Stage 4 — mask: coverage, fully masked rows, conventions, causal structure, fill values."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from attndbg.attention import MASKED_BIAS
from attndbg.hypotheses import evidence, explained, explained_as, verdicts, weights_explained_by
from attndbg.registry import Check, Hit
from attndbg.report import Severity
from attndbg.vocab import MaskSemantics, Reading, Statistic

if TYPE_CHECKING:
    import torch

    from attndbg.context import CaseContext

LEAK_TOLERANCE = 1e-4  # weight on a masked or future key that still counts as "none"


def keep_matrix(ctx: CaseContext) -> torch.Tensor | None:
    """The mask as booleans (True = attended) under the assumed semantics, stored shape."""
    return None if ctx.mask4d is None else ctx.keep_mask(ctx.mask4d)


def fill_values(ctx: CaseContext) -> dict[str, Any]:
    """What an additive mask uses for 'masked': -inf, finite fills, and which dtype's finfo.min."""
    import torch

    mask = ctx.raw["mask"].to(torch.float32)
    masked = mask[mask <= MASKED_BIAS]
    finite = masked[torch.isfinite(masked)]
    fills = sorted({float(x) for x in torch.unique(finite)[:8]}) if finite.numel() else []
    named = {}
    for fill in fills:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            if fill == float(torch.finfo(dtype).min):
                named[fill] = f"torch.finfo({str(dtype)[6:]}).min"
    return {"neg_inf": bool(torch.isneginf(masked).any()), "finite": fills, "named": named}


WEAK_FILL = math.log(LEAK_TOLERANCE)  # a fill above this leaves masked keys > 1e-4 of their weight


def weak_fill(ctx: CaseContext) -> dict[str, Any] | None:
    """An additive mask shaped like a padding mask or a causal triangle whose one non-zero
    value does not mask: positive (the masked keys gain weight) or too close to 0."""
    import torch

    mask = ctx.raw["mask"].to(torch.float32)
    values = torch.unique(mask[torch.isfinite(mask)])
    if values.numel() != 2 or 0.0 not in (float(values[0]), float(values[1])):
        return None
    fill = float(values[0]) if float(values[1]) == 0.0 else float(values[1])
    if fill == 1.0 or fill <= WEAK_FILL:
        return None  # {0, 1} is MSK003's; far enough below 0 masks
    filled = (mask == fill).reshape(-1, *mask.shape[-2:]) if mask.dim() >= 2 else (mask == fill)[None, None]
    rows = filled.reshape(-1, filled.shape[-1])
    flips = (rows[:, 1:] != rows[:, :-1]).sum(-1)
    padding = bool((flips <= 1).all())
    triangle = filled.shape[-2] > 1 and _structure(~filled[0]) in ("causal", "leaky-causal")
    if not (padding or triangle):
        return None  # a bias with structure of its own (relative positions), not a mask
    return {
        "fill": fill,
        "filled_share": float((mask == fill).float().mean()),
        "weight_factor": math.exp(min(fill, 50.0)),
    }


def consequence(kind: str) -> dict[str, str]:
    """What each backend makes of a fully masked row with this fill."""
    if kind == "-inf":
        return {
            "plain softmax": "NaN (0/0), which then spreads through the output and gradients",
            "SDPA (PyTorch 2.13)": "zeros for that row's output",
        }
    return {
        "plain softmax": "uniform weights over the masked keys (finite fill, no NaN)",
        "SDPA (PyTorch 2.13)": "uniform weights over the masked keys: the row attends to padding",
    }


class FullyMaskedRows(Check):
    """Some query rows have every key masked."""

    code = "MSK001"
    name = "fully-masked-rows"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    rationale = (
        "A query row with no key to attend to has no defined softmax. With -inf (or a bool mask) "
        "a plain softmax returns 0/0 = NaN; PyTorch 2.13's SDPA returns zeros for the row; with "
        "a finite fill such as torch.finfo(dtype).min every masked key gets the same weight, so "
        "the row silently averages padding. Padding query rows are often harmless if their "
        "outputs are discarded, but the NaN variant reaches the loss through the gradients. "
        "The finding states which of these happens with this case's mask."
    )
    fix = """
keep = mask.any(dim=-1, keepdim=True)                        # rows with something to attend to
weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
weights = weights.masked_fill(~keep, 0.0)                    # defined zeros, NaN-free gradients
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not (ctx.has("mask") or ctx.is_causal):
            return
        stats = ctx.stats
        full = stats.fully_masked
        count = int(full.any(dim=1).sum())
        if not count:
            return
        total = full.shape[0] * full.shape[2]
        rows = full.any(dim=1)
        padding = ctx.padding_query_rows
        expected = rows & padding.expand_as(rows) if padding is not None else rows & False
        unexpected = rows & ~expected
        first = [[b, i] for b, i in (unexpected if unexpected.any() else rows).nonzero()[:5].tolist()]
        kind = "-inf"
        if ctx.mask_semantics == MaskSemantics.ADDITIVE:
            fills = fill_values(ctx)
            if fills["finite"] and not fills["neg_inf"]:
                first_fill = fills["finite"][0]
                kind = fills["named"].get(first_fill, f"{first_fill:.3g}")
        outcome = consequence(kind)
        if kind == "-inf":
            effect = "a plain softmax gives NaN (0/0) there; PyTorch 2.13's SDPA gives zeros"
        else:
            effect = (
                f"with the finite fill {kind} every masked key gets the same weight, in a "
                "plain softmax and in SDPA alike: those rows silently average padding"
            )
        extra = {}
        if kind != "-inf":
            extra["masked_weight"] = round(float(stats.masked_mass[full].mean()), 4)
        at_padding = int(expected.sum())
        if at_padding == count:
            where = (
                "all at padding positions (their own key is masked for every query), as a padded "
                "batch has them: their outputs are discarded"
            )
        elif at_padding:
            where = f"{count - at_padding} of them at real tokens ({at_padding} at padding positions)"
        else:
            where = "at real tokens (their own position is attended by other queries)"
        yield Hit(
            f"{count} of {total} query rows (batch, row) have every key masked (first {first}), "
            f"{where}; " + effect,
            {
                "rows": count,
                "of": total,
                "at_padding_positions": at_padding,
                "first": first,
                "fill": kind,
                "backends": outcome,
                **extra,
            },
            severity=Severity.INFO if at_padding == count else None,
        )


class MaskedKeysReceiveWeight(Check):
    """The saved weights give weight to keys the mask excludes."""

    code = "MSK002"
    name = "masked-keys-weighted"
    severity = Severity.ERROR
    reports = frozenset({Reading.MASK_IGNORED})
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    superseded_by = ("MSK003", "MSK004")
    rationale = (
        f"If the user's weights put more than {LEAK_TOLERANCE} on a key that the mask excludes, "
        "the mask was not applied (or applied after the softmax, or to the wrong tensor). The "
        "check sums the saved weights over masked keys per row and recomputes the weights "
        "without the mask to confirm. Rows that are fully masked are left to MSK001."
    )
    fix = """
scores = scores.masked_fill(~keep_mask, float("-inf"))   # before the softmax, not after
weights = torch.softmax(scores, dim=-1)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has("mask"):
            return
        stats = ctx.stats
        if stats.user_masked_mass is None:
            # only an output or scores were saved
            named = explained_as(ctx, {Reading.MASK_IGNORED}, "the mask was not passed to the attention")
            if named:
                yield Hit(*named)
            return
        if weights_explained_by(ctx) not in (None, Reading.MASK_IGNORED):
            return  # the weights are explained otherwise (softmax twice, transposed…): named there
        live = ~stats.fully_masked
        leaked = (stats.user_masked_mass > LEAK_TOLERANCE) & live
        if not leaked.any():
            return
        rows = int(leaked.sum())
        worst = float(stats.user_masked_mass[live].max())
        message = (
            f"{rows} of {int(live.sum())} (batch, head, row)s of the saved weights put weight "
            f"on masked keys (up to {worst:.3g} of the row)"
        )
        v = explained(ctx, {Reading.MASK_IGNORED})
        ev = {
            "rows": rows,
            "of": int(live.sum()),
            "max_masked_weight": worst,
            "first": leaked.nonzero()[0].tolist(),
        }
        if v:
            message += "; " + v.sentence()
            ev.update(evidence(v))
        yield Hit(message, ev)


class FloatMaskAdded(Check):
    """A float 0/1 mask is added to the scores, so it masks nothing."""

    code = "MSK003"
    name = "float-01-mask-added"
    severity = Severity.ERROR
    # added where it is applied, or applied (as keep or drop) where it was assumed added
    reports = frozenset({Reading.MASK_AS_ADDITIVE, Reading.MASK_AS_KEEP, Reading.MASK_AS_DROP})
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    rationale = (
        "SDPA adds a float attn_mask to the scores. A float mask of 0s and 1s (e.g. HF's "
        "attention_mask cast to float) therefore adds 0 to masked keys and +1 to kept ones: "
        "nothing is masked, padding is attended. Bool masks are applied, float masks are added "
        "— convert to bool, or to 0/-inf, first. Decided from the mask's values; confirmed "
        "against saved weights/out when present."
    )
    fix = """
attn_mask = attention_mask.bool()[:, None, None, :]                    # True = attend
# or an additive mask:
attn_mask = torch.zeros_like(attention_mask, dtype=q.dtype).masked_fill(attention_mask == 0, float("-inf"))
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        if not ctx.has("mask"):
            return
        mask = ctx.raw["mask"]
        if ctx.mask_semantics != MaskSemantics.ADDITIVE:
            consequence = f"the {str(mask.dtype)[6:]} mask was added to the scores, so nothing is masked"
            named = explained_as(ctx, {Reading.MASK_AS_ADDITIVE}, consequence)
            if named:
                yield Hit(*named)
            return
        applied = explained(ctx, {Reading.MASK_AS_KEEP, Reading.MASK_AS_DROP})
        if applied:
            semantics = "keep" if applied.explained_by == Reading.MASK_AS_KEEP else "drop"
            yield Hit(
                f"{applied.sentence()}: the code applies this float mask instead of adding it, "
                f"which is correct; set mask_semantics={semantics} so that attndbg reads it so",
                evidence(applied),
                severity=Severity.INFO,
                fix=f'save_file(tensors, path, metadata={{"mask_semantics": "{semantics}"}})',
            )
            return
        values = set(torch.unique(mask.to(torch.float32))[:3].tolist())
        if values != {0.0, 1.0}:
            return  # all ones is a constant shift (harmless); all zeros masks nothing on purpose
        ones = float((mask == 1).float().mean())
        ev = {
            "mask_dtype": str(mask.dtype).replace("torch.", ""),
            "values": sorted(values),
            "fraction_of_ones": ones,
            "decided_from": "mask values",
        }
        message = (
            f"the mask is {str(mask.dtype)[6:]} with only 0s and 1s ({ones:.0%} ones) and is "
            "added to the scores: +1 on kept keys, 0 on the rest — nothing is masked"
        )
        for v in verdicts(ctx):
            if v.reference_matches:
                message += f"; the saved {v.artefact} confirm it (error {v.reference_error:.2g})"
                ev["confirmed_by"] = v.artefact
                break
        yield Hit(message, ev)


def _structure(keep: torch.Tensor) -> str | None:
    """Name a 2-D keep pattern: causal, inverted causal, leaky causal."""
    import torch

    rows, cols = keep.shape[-2:]
    if rows < 2:
        return None
    i = torch.arange(rows)[:, None]
    j = torch.arange(cols)[None, :]
    below = j <= i
    if bool((keep == below).all()):
        return "causal"
    if bool((keep == ~below).all()) or bool((keep == (j >= i)).all()):
        return "inverted-causal"
    if rows == cols and bool(keep[j > i].all()) and not bool(keep[j == i].any()):
        # every future key kept and every query's own key hidden: the complement of a causal
        # or sliding-window mask (log(1 - band) for log(band)), never a mask written on purpose
        return "inverted-causal"
    if bool(keep[below].all()) and bool(keep[~below].any()) and not bool(keep[j > i + 2].any()):
        return "leaky-causal"
    return None


def _padding_profile(keep: torch.Tensor) -> dict[str, Any] | None:
    """For a (batch, k_len) keep pattern: is the kept part a prefix, a suffix, or neither?"""
    flips = (keep[:, 1:] != keep[:, :-1]).sum(-1)
    if not bool((flips <= 1).all()):
        return None
    suffix = bool((~keep[:, 0] | keep.all(-1)).all()) and bool((~keep[:, 0]).any())
    return {
        "kept_suffix": suffix,
        "kept_fraction": float(keep.float().mean()),
        "rows_fully_masked": int((~keep.any(-1)).sum()),
        "kept_lengths": keep.sum(-1).tolist()[:8],
    }


class InvertedMask(Check):
    """The mask's convention is inverted (True = ignore read as True = attend, or vice versa)."""

    code = "MSK004"
    name = "inverted-mask"
    severity = Severity.ERROR
    reports = frozenset({Reading.MASK_AS_KEEP, Reading.MASK_AS_DROP})
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    rationale = (
        "SDPA's bool attn_mask means True = attend; nn.MultiheadAttention's key_padding_mask "
        "means True = ignore. Passing one where the other is expected inverts the mask: "
        "padding is attended and real tokens are hidden, or a causal mask shows only the "
        "future. Decided from saved weights/out when present (the inverted reading matches), "
        "else from structure: a kept upper triangle, or a padding mask whose kept part is a "
        "suffix while whole samples — or, with more than one query, at least half the keys — "
        "are masked. Additive masks are read the same way (an entry at or below -5000 is "
        "masked): `keep * -1e9` fills the real tokens instead of the padding. A decode step "
        "(q_len 1) over a left-padded cache keeps a suffix on purpose and is not reported."
    )
    fix = """
attn_mask = ~key_padding_mask               # key_padding_mask: True = pad -> SDPA: True = attend
out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask[:, None, None, :])
causal = torch.ones(L, L, dtype=torch.bool).tril()   # True on and below the diagonal
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has("mask"):
            return
        inverse = (
            {MaskSemantics.KEEP: Reading.MASK_AS_DROP, MaskSemantics.DROP: Reading.MASK_AS_KEEP}.get(
                ctx.mask_semantics
            )
            if ctx.mask_semantics
            else None
        )
        v = explained(ctx, {inverse} if inverse else set())
        if v:
            yield Hit(v.sentence(), evidence(v))
            return
        keep = keep_matrix(ctx)
        if keep is None:
            return
        b, h, lq, lk = keep.shape
        if lq > 1 and _structure(keep.reshape(-1, lq, lk)[0]) == "inverted-causal":
            yield Hit(
                "the mask keeps the upper triangle (the future) and masks the past: an inverted "
                f"causal mask ({ctx.mask_semantics} semantics)",
                {
                    "pattern": "inverted-causal",
                    "semantics": ctx.mask_semantics,
                    "decided_from": "mask structure",
                },
            )
            return
        rows_identical = lq == 1 or bool((keep == keep[..., :1, :]).all())
        # a per-head bias added with the padding (T5's position_bias + mask) hides the same keys
        # in every head: the padding structure is read from the first
        heads_identical = h == 1 or bool((keep == keep[:, :1]).all())
        if rows_identical and heads_identical and ctx.mask_semantics is not None:
            profile = _padding_profile(keep[:, 0, 0, :])
            # a sample with no key at all is the strong sign (a batch is padded to its longest
            # sample, which inverted has nothing left); a mostly masked prefix is a weak one, and
            # none when decoding one token (q_len 1): a left-padded KV cache looks exactly so
            weak = lq > 1 and profile is not None and profile["kept_fraction"] < 0.5
            if profile and profile["kept_suffix"] and (profile["rows_fully_masked"] or weak):
                looks_like = (
                    "the fill marks the real tokens instead of the padding (an inverted keep mask "
                    "times the fill)"
                    if ctx.mask_semantics == MaskSemantics.ADDITIVE
                    else "it looks like True = pad given where True = attend"
                )
                yield Hit(
                    f"read as {ctx.mask_semantics}, the padding mask keeps a suffix of each row "
                    f"({profile['kept_fraction']:.0%} of keys kept, {profile['rows_fully_masked']} "
                    f"samples fully masked): {looks_like}",
                    {**profile, "semantics": ctx.mask_semantics, "decided_from": "mask structure"},
                    severity=Severity.WARNING,
                )


class CausalLeakage(Check):
    """Weight reaches keys above the causal diagonal (future tokens)."""

    code = "MSK005"
    name = "causal-leakage"
    severity = Severity.ERROR
    reports = frozenset({Reading.NOT_CAUSAL, Reading.CAUSAL})
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    rationale = (
        "In a causal (decoder) case, query i may only see keys j ≤ i. Weight above the diagonal "
        "lets the model read the token it must predict: training loss falls fast, generation is "
        f"garbage. The case counts as causal from the flag, metadata or a lower-triangular "
        f"mask. Reported when the saved weights put more than {LEAK_TOLERANCE} above the "
        "diagonal, when the saved weights/out match attention without the causal mask, or when "
        "the mask itself keeps one or two future tokens (an off-by-one triangle)."
    )
    fix = """
out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
# or an explicit mask: True on and below the diagonal
causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()   # not tril(diagonal=1)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        keep = keep_matrix(ctx)
        structure = None
        if keep is not None and keep.shape[-2] > 1:
            structure = _structure(keep.reshape(-1, *keep.shape[-2:])[0])
        if structure == "leaky-causal" and keep is not None:
            flat = keep.reshape(-1, *keep.shape[-2:])[0]
            i = flat.new_ones(flat.shape).triu(1)
            extra = int((flat & i).sum())
            yield Hit(
                f"the mask is causal except that it keeps {extra} entries above the diagonal "
                "(an off-by-one triangle): those queries see future tokens",
                {"future_entries": extra, "decided_from": "mask structure"},
            )
            return
        causal = ctx.is_causal or structure == "causal"
        if not causal:
            consequence = "the code is causal but the case does not say so; set is_causal"
            named = explained_as(ctx, {Reading.CAUSAL}, consequence)
            if named:
                yield Hit(
                    *named,
                    severity=Severity.INFO,
                    fix='save_file(tensors, path, metadata={"is_causal": "true"})',
                )
            return
        v = explained(ctx, {Reading.NOT_CAUSAL})
        if v:
            yield Hit(v.sentence(), evidence(v))
            return
        stats = ctx.stats
        if stats.user_above_diagonal is not None and weights_explained_by(ctx) is None:
            # a row whose every key is masked has no past to keep to (MSK001 reports it)
            leaked = (stats.user_above_diagonal > LEAK_TOLERANCE) & ~stats.fully_masked
            if leaked.any():
                yield Hit(
                    f"the saved weights put up to {float(stats.user_above_diagonal[leaked].max()):.3g} of a "
                    f"row on future keys, in {int(leaked.sum())} (batch, head, row)s",
                    {
                        "rows": int(leaked.sum()),
                        "max_future_weight": float(stats.user_above_diagonal[leaked].max()),
                        "first": leaked.nonzero()[0].tolist(),
                        "decided_from": "saved weights",
                    },
                )


def _upper_left_mask(ctx: CaseContext) -> bool:
    """Is the mask (over the whole batch) exactly tril(ones(q_len, k_len)), q_len < k_len?"""
    from attndbg.attention import causal_keep

    keep = keep_matrix(ctx)
    if keep is None:
        return False
    lq, lk = ctx.sizes["Lq"], ctx.sizes["Lk"]
    if keep.shape[-2] != lq or keep.shape[-1] != lk:
        return False
    union = keep.reshape(-1, lq, lk).any(0)
    return bool((union == causal_keep(lq, lk)).all())


class CausalAlignment(Check):
    """is_causal with q_len != k_len: PyTorch aligns the causal mask to the upper left."""

    code = "MSK006"
    name = "causal-alignment"
    severity = Severity.WARNING
    reports = frozenset({Reading.CAUSAL_LOWER_RIGHT})
    reads = frozenset({Statistic.ROWS, Statistic.SAVED})
    rationale = (
        "F.scaled_dot_product_attention(is_causal=True) builds tril(ones(q_len, k_len)), aligned "
        "to the upper left: query i sees keys 0..i. When decoding with a KV cache (q_len < "
        "k_len) the new queries sit at the end, so they should see keys 0..i + k_len − q_len "
        "(lower-right alignment, FlashAttention's convention); with is_causal they miss almost "
        "the whole cache. Warning from the shapes alone; error when saved weights/out match "
        "one alignment and not the other. An explicit mask equal to tril(ones(q_len, k_len)) "
        "with q_len < k_len is the same bug written by hand and is reported the same way."
    )
    fix = """
# Decoding with a KV cache: build the lower-right aligned mask yourself
L, S = q.size(-2), k.size(-2)
attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=S - L)
out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
# or: from torch.nn.attention.bias import causal_lower_right; attn_mask=causal_lower_right(L, S)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        sizes = ctx.sizes
        if sizes["Lq"] == sizes["Lk"]:
            return
        lq, lk = sizes["Lq"], sizes["Lk"]
        if not ctx.is_causal:
            if lq < lk and _upper_left_mask(ctx):
                yield Hit(
                    f"the mask is tril(ones({lq}, {lk})): a causal mask aligned to the upper left, "
                    f"so query {lq - 1} (the newest token) sees keys 0..{lq - 1} and never the last "
                    f"{lk - lq} keys, as is_causal=True would; for a KV cache or chunked prefill "
                    "the queries are the last positions (lower-right alignment)",
                    {
                        "q_len": lq,
                        "k_len": lk,
                        "keys_never_seen_by_last_query": lk - lq,
                        "alignment": "upper-left",
                        "decided_from": "mask structure",
                    },
                )
            return
        v = explained(ctx, {Reading.CAUSAL_LOWER_RIGHT})
        if v:
            yield Hit(
                v.sentence() + "; the code aligns the causal mask to the lower right",
                {**evidence(v), "q_len": lq, "k_len": lk},
                severity=Severity.INFO,
            )
            return
        hidden = lk - lq if lk > lq else 0
        yield Hit(
            f"is_causal with q_len {lq} != k_len {lk}: PyTorch aligns the mask to the upper left, "
            f"so the last query sees keys 0..{lq - 1} and never the last {hidden} keys; for a KV "
            "cache you want the lower-right alignment",
            {
                "q_len": lq,
                "k_len": lk,
                "keys_never_seen_by_last_query": hidden,
                "alignment": "upper-left",
            },
        )


def mixed_fill(ctx: CaseContext, named: list[str], base: dict[str, Any]) -> Hit:
    """-inf next to finite fills. Both give a masked key no weight in a row that attends to
    anything; they differ only in a fully masked row, so the mix matters only where such a
    row sits at a real token (a padding query's output is discarded)."""
    full = ctx.stats.fully_masked.any(dim=1)  # (B, Lq)
    padding = ctx.padding_query_rows
    at_real = full & ~padding.expand_as(full) if padding is not None else full
    fills = ", ".join(named)
    evidence = {
        **base,
        "mixed": True,
        "fully_masked_rows": int(full.sum()),
        "at_real_tokens": int(at_real.sum()),
    }
    if bool(at_real.any()):
        return Hit(
            f"the mask mixes -inf with finite fill {fills}, and {int(at_real.sum())} fully masked "
            f"rows sit at real tokens (first {at_real.nonzero()[:5].tolist()}): they give NaN or zeros "
            "with one fill and uniform weights over the masked keys with the other",
            evidence,
        )
    where = (
        "no query row is fully masked"
        if not bool(full.any())
        else f"the {int(full.sum())} fully masked rows are all padding queries, whose outputs are discarded"
    )
    return Hit(
        f"the mask mixes -inf with finite fill {fills} (e.g. a finfo.min fill plus a second mask "
        f"overflowing to -inf); harmless here: the two differ only in a fully masked row, and {where}",
        evidence,
        severity=Severity.INFO,
    )


class MaskFillValue(Check):
    """An additive mask's fill value is too weak, overflows in low precision, or is mixed."""

    code = "MSK007"
    name = "mask-fill-value"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    rationale = (
        "An additive mask masks only if its fill is far below every real logit. -1e4 was "
        "safe for fp16-era BERT but not when logits themselves reach thousands; -1e9 is not "
        "representable in float16 (it becomes -inf, and fully masked rows turn NaN); "
        "torch.finfo(dtype).min overflows to -inf when two masks are added (padding + causal); "
        "and a mask mixing -inf with finite fills gives different results for fully masked rows "
        "depending on which one a row got. A mask shaped like padding or a causal triangle whose "
        "only non-zero value is positive (+1e4: the sign flipped) or barely negative (-1e-9: "
        "an epsilon) masks nothing and is an error. The check reports the fills found, the weight that "
        f"masked keys still receive (above {LEAK_TOLERANCE:g} is a leak), and what each backend "
        "makes of a fully masked row with this fill."
    )
    fix = """
# Prefer a bool mask and let SDPA pick the fill:
out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep_mask)        # True = attend
# If additive, use -inf (or finfo(dtype).min) of the *compute* dtype, and combine masks as bools
bias = torch.zeros(keep_mask.shape, dtype=q.dtype).masked_fill(~keep_mask, torch.finfo(q.dtype).min)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        if not ctx.has("mask") or ctx.mask_semantics != MaskSemantics.ADDITIVE:
            return
        if not ctx.raw["mask"].is_floating_point():
            return
        weak = weak_fill(ctx)
        if weak:
            fill = weak["fill"]
            if fill > 0:
                effect = (
                    f"a positive value multiplies their weight by e^{fill:.3g}: the sign is flipped, "
                    "so attention goes to the keys meant to be masked"
                )
            else:
                effect = (
                    f"exp({fill:.3g}) = {math.exp(fill):.3g}, so the 'masked' keys keep "
                    f"{math.exp(fill):.0%} of their weight: it masks nothing"
                )
            yield Hit(
                f"the additive mask's only non-zero value is {fill:.3g}, on {weak['filled_share']:.0%} "
                f"of its entries (a mask's shape); {effect}",
                {**weak, "decided_from": "mask values"},
                severity=Severity.ERROR,
                fix="""
# masked entries need -inf (or a large negative such as torch.finfo(dtype).min), not +x or -1e-9
attn_mask = torch.zeros(keep.shape, dtype=q.dtype).masked_fill(~keep, float("-inf"))
""",
            )
            return
        fills = fill_values(ctx)
        if not fills["finite"] and not fills["neg_inf"]:
            return
        named = [fills["named"].get(f, f"{f:.3g}") for f in fills["finite"]]
        base = {
            "fills": named + (["-inf"] if fills["neg_inf"] else []),
            "backends_fully_masked_row": consequence("-inf" if fills["neg_inf"] else "finite"),
        }
        stats = ctx.stats
        live = ~stats.fully_masked
        leak = float(stats.masked_mass[live].max()) if bool(live.any()) else 0.0
        if leak > LEAK_TOLERANCE:
            yield Hit(
                f"masked keys still receive up to {leak:.3g} of a row's weight: the fill "
                f"{', '.join(named)} is not far enough below the logits (largest |logit| "
                f"{float(stats.max_logit.max()):.3g})",
                {**base, "max_masked_weight": leak, "max_abs_logit": float(stats.max_logit.max())},
                severity=Severity.ERROR,
            )
            return
        if fills["neg_inf"] and fills["finite"]:
            yield mixed_fill(ctx, named, base)
            return
        compute = ctx.dtype
        low = [
            f
            for f in fills["finite"]
            if compute in (torch.float16,) and f < float(torch.finfo(torch.float16).min)
        ]
        if low:
            yield Hit(
                f"fill {low[0]:.3g} is below float16's range (-65504): cast to the {str(compute)[6:]} "
                "inputs it becomes -inf, and fully masked rows become NaN in a plain softmax",
                {**base, "compute_dtype": str(compute)[6:], "fill": low[0]},
            )
            return
        minima = [f for f in fills["finite"] if f in fills["named"]]
        if minima and (ctx.is_causal or bool(stats.fully_masked.any())):
            yield Hit(
                f"fill {fills['named'][minima[0]]}: adding a second mask (e.g. causal) overflows "
                "to -inf, and rows that are fully masked get uniform weights over padding",
                {**base, "fill": minima[0]},
                severity=Severity.INFO,
            )


class NewKeysHidden(Check):
    """Every sample hides the keys at the queries' own positions: the mask was not extended."""

    code = "MSK008"
    name = "mask-not-extended"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    superseded_by = ("MSK006",)
    rationale = (
        "When decoding with a KV cache (or prefilling in chunks) the 2-D attention_mask must grow "
        "with the sequence: one more 1 for every new token. A loop that passes the prefill's "
        "mask again gets it padded (Hugging Face pads a short mask with 0), so the new tokens "
        "(this call's queries, the last keys in the lower-right alignment) are hidden in every "
        "sample: no token sees itself, and in a chunk none sees the tokens just before it. "
        "Reported when q_len < k_len, a mask is given, the last q_len keys (or the last one, "
        "when a one-token decode packs grouped query heads on the query axis) are hidden from "
        "every query of every sample while every sample attends the key just before them (a "
        "left-padded batch, as generation pads), and all queries of a sample see the same keys "
        "(a correct chunk is causal). Right padding, or a batch padded to a fixed length for "
        "cross-attention, hides different tails in different samples and is not read as this. "
        "Correct calls that read the same: a one-token step into a static cache one slot from "
        "full, and cross-attention whose encoder samples all end exactly q_len keys early."
    )
    fix = """
# append a 1 for every new token before each cached step
attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, new_ids.shape[1])], dim=-1)
out = model(input_ids=new_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has("mask"):
            return
        keep = keep_matrix(ctx)
        lq, lk = ctx.sizes["Lq"], ctx.sizes["Lk"]
        if keep is None or not 0 < lq < lk or keep.shape[-1] != lk:
            return
        seen = keep.any(dim=1).any(dim=1)  # (B or 1, Lk): keys some query of the sample attends
        unseen = (~seen.any(0)).flip(0).int()
        new = int(unseen.cumprod(0).sum())  # keys at the end that no sample attends
        # q_len new tokens, or one token whose query heads the library packed on the query
        # axis (grouped-query decode)
        if new not in (lq, 1):
            return
        cached = seen[:, : lk - new]
        # Generation pads on the left: every sample's last cached token is real. (Cross-attention
        # over a batch padded to a fixed length has that only where every sample is as long.)
        if not bool(cached[:, -1].all()):
            return
        # The new tokens hidden leave every query the same keys (the cached ones); a correct
        # chunk next to empty static-cache slots is causal: its queries see different keys.
        rows = keep.any(dim=1)
        if not bool(((rows == seen[:, None, :]) | ~rows.any(-1, keepdim=True)).all()):
            return
        samples = seen.shape[0]
        where = f"in every one of the {samples} samples" if samples > 1 else "in every sample"
        yield Hit(
            f"{where} the last {new} of {lk} keys — the new tokens' own positions — are hidden "
            "from every query, while the keys before them are attended: the attention_mask was "
            "not extended for the new token(s), so no query sees its own position",
            {
                "q_len": lq,
                "k_len": lk,
                "samples": samples,
                "hidden_keys": list(range(lk - new, lk)),
                "attended_keys_per_sample": cached.sum(-1).tolist()[:8],
                "decided_from": "mask structure",
            },
        )
