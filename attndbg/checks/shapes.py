"""Stage 1 — shapes: ranks, layouts and broadcasting, decided before any arithmetic."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from attndbg.registry import Check, Hit
from attndbg.report import Severity

if TYPE_CHECKING:
    import torch

    from attndbg.context import CaseContext

QKV = ("q", "k", "v")
SWAPPED_LAYOUT = {"bsd": "sbd", "sbd": "bsd", "bhsd": "bshd", "bshd": "bhsd", "sbhd": "bshd"}


def _dims(shape: tuple[int, ...], layout: str | None) -> dict[str, int] | None:
    if layout is None or len(shape) != len(layout):
        return None
    sizes = {"b": 1, "h": 1}
    sizes.update(dict(zip(layout, shape)))
    return sizes


def _broadcasts(shape: list[int], target: list[int]) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def _mask_shape(ctx: CaseContext) -> list[int] | None:
    if not ctx.has("mask"):
        return None
    mask = ctx.raw["mask"]
    shape = list(mask.shape)
    if ctx.case.mask_key == "key_padding_mask" and mask.dim() == 2:
        return [shape[0], 1, 1, shape[1]]
    return shape


def reading_problems(ctx: CaseContext, layout: str) -> list[str]:
    """What is inconsistent about q/k/v/mask/weights when read with ``layout``.

    Only what a layout swap explains is weighed — batch agreement, the mask and saved
    weights/scores. Head counts, head dims and K/V lengths are left out on purpose: each is a
    bug of its own (SHP002–SHP004) and would make a swapped reading look consistent by accident.
    """
    if not ctx.has_qkv:
        return []
    q, k, v = (_dims(tuple(ctx.raw[r].shape), layout) for r in QKV)
    if q is None or k is None or v is None:
        return [f"ranks do not fit {layout}"]
    problems = []
    if len({q["b"], k["b"], v["b"]}) > 1:
        problems.append(f"batch sizes differ (q {q['b']}, k {k['b']}, v {v['b']})")
    target = [q["b"], q["h"], q["s"], k["s"]]
    mask_shape = _mask_shape(ctx)
    if mask_shape is not None and not _broadcasts(mask_shape, target):
        problems.append(f"mask {tuple(ctx.raw['mask'].shape)} does not broadcast to {tuple(target)}")
    for role in ("weights", "scores"):
        if ctx.has(role):
            shape = list(ctx.raw[role].shape)
            if shape[-2:] != target[-2:]:
                problems.append(f"{role} {tuple(shape)} is not (…, {q['s']}, {k['s']})")
    return problems


class UnsupportedRank(Check):
    """A tensor's rank does not fit any attention layout."""

    code = "SHP001"
    name = "unsupported-rank"
    severity = Severity.ERROR
    can_block = True
    rationale = (
        "Q, K, V and the output must be 2-D (seq, dim), 3-D (batch, seq, dim) or 4-D "
        "(batch, heads, seq, dim) — or match the layout named with --layout — and all three of "
        "Q, K, V the same rank; weights and scores 2- to 4-D; a mask 1- to 4-D. Anything else "
        "means the tensors were saved from the wrong place (e.g. after a reshape that merged "
        "heads into the batch) and nothing later can be trusted, so the pipeline stops here."
    )
    fix = """
# Save the tensors as F.scaled_dot_product_attention receives them:
q = q.view(batch, seq, n_heads, head_dim).transpose(1, 2)  # (batch, heads, seq, head_dim)
save_file({"q": q.contiguous(), "k": k.contiguous(), "v": v.contiguous()}, "step.safetensors")
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        layout = ctx.settings.layout
        ranks = {r: ctx.raw[r].dim() for r in (*QKV, "out") if ctx.has(r)}
        for role, rank in ranks.items():
            shape = tuple(ctx.raw[role].shape)
            if layout and rank != len(layout):
                yield Hit(
                    f"{role} has shape {shape} ({rank}-D) but the layout {layout} has {len(layout)} dims",
                    {"tensor": role, "rank": rank, "shape": list(shape), "layout": layout},
                    blocking=True,
                )
            elif not layout and rank not in (2, 3, 4):
                yield Hit(
                    f"{role} has shape {shape} ({rank}-D); attention takes 2-D (seq, dim), 3-D "
                    "(batch, seq, dim) or 4-D (batch, heads, seq, dim)",
                    {"tensor": role, "rank": rank, "shape": list(shape)},
                    blocking=True,
                )
        qkv_ranks = {ranks[r] for r in QKV if r in ranks}
        if len(qkv_ranks) > 1:
            yield Hit(
                "q, k and v have different ranks ("
                + ", ".join(f"{r} {ranks[r]}-D" for r in QKV if r in ranks)
                + "); they must share one layout",
                {r: list(ctx.raw[r].shape) for r in QKV if ctx.has(r)},
                blocking=True,
            )
        for role in ("weights", "scores"):
            if ctx.has(role) and ctx.raw[role].dim() not in (2, 3, 4):
                yield Hit(
                    f"{role} has shape {tuple(ctx.raw[role].shape)}; expected (…, q_len, k_len)",
                    {"tensor": role, "shape": list(ctx.raw[role].shape)},
                    blocking=True,
                )
        if ctx.has("mask") and ctx.raw["mask"].dim() not in (1, 2, 3, 4):
            yield Hit(
                f"mask has shape {tuple(ctx.raw['mask'].shape)}; a mask is 1- to 4-D",
                {"tensor": "mask", "shape": list(ctx.raw["mask"].shape)},
                blocking=True,
            )


def _qkv_dims(ctx: CaseContext) -> dict[str, dict[str, int]] | None:
    if not ctx.has_qkv or not ctx.layout:
        return None
    dims = {r: _dims(tuple(ctx.raw[r].shape), ctx.layout) for r in QKV}
    return None if any(d is None for d in dims.values()) else dims  # type: ignore[return-value]


class HeadDimMismatch(Check):
    """Q and K have different head dims, so Q·Kᵀ is undefined."""

    code = "SHP002"
    name = "qk-head-dim-mismatch"
    severity = Severity.ERROR
    can_block = True
    rationale = (
        "The score of query i and key j is the dot product q_i·k_j, which needs Q and K to "
        "have the same last dimension. A mismatch usually means K came from the wrong "
        "projection, or a layout was misread (the seq axis taken for the dim axis)."
    )
    fix = """
# q and k must come from projections with the same output size per head:
head_dim = d_model // n_heads
self.q_proj = nn.Linear(d_model, n_heads * head_dim)
self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        dims = _qkv_dims(ctx)
        if dims and dims["q"]["d"] != dims["k"]["d"]:
            yield Hit(
                f"q has head dim {dims['q']['d']} but k has {dims['k']['d']}; the dot product "
                "q·kᵀ needs them equal",
                {"q_dim": dims["q"]["d"], "k_dim": dims["k"]["d"], "layout": ctx.layout},
                blocking=True,
            )


class KeyValueLengthMismatch(Check):
    """K and V have different sequence lengths."""

    code = "SHP003"
    name = "kv-length-mismatch"
    severity = Severity.ERROR
    can_block = True
    rationale = (
        "Each key position has one value: the weights over k_len keys multiply a V with "
        "k_len rows. Different lengths mean K and V were sliced differently (a KV cache "
        "appended to one and not the other, or padding trimmed from only one)."
    )
    fix = """
# Append to (or trim) the cache of K and V together:
k = torch.cat([k_cache, k_new], dim=-2)
v = torch.cat([v_cache, v_new], dim=-2)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        dims = _qkv_dims(ctx)
        if dims and dims["k"]["s"] != dims["v"]["s"]:
            yield Hit(
                f"k has {dims['k']['s']} positions but v has {dims['v']['s']}; every key needs its value",
                {"k_len": dims["k"]["s"], "v_len": dims["v"]["s"], "layout": ctx.layout},
                blocking=True,
            )


class BatchHeadMismatch(Check):
    """Batch or head counts disagree, or query heads are not a multiple of key/value heads."""

    code = "SHP004"
    name = "batch-head-mismatch"
    severity = Severity.ERROR
    can_block = True
    rationale = (
        "Q, K and V must share the batch size; K and V must have the same number of heads, and "
        "with grouped-query attention the query heads must be a whole multiple of the key/value "
        "heads (each group of Hq/Hk query heads reads one K/V head). SDPA raises unless "
        "enable_gqa=True is passed when the counts differ — except for a single K/V head "
        "(multi-query attention, as Falcon passes it), which broadcasts. Saved weights, scores and output "
        "must have the shapes the inputs imply."
    )
    fix = """
# Grouped-query attention: n_heads must be a multiple of n_kv_heads
out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
# or expand K/V explicitly
k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        dims = _qkv_dims(ctx)
        if not dims:
            return
        q, k, v = dims["q"], dims["k"], dims["v"]
        if len({q["b"], k["b"], v["b"]}) > 1:
            yield Hit(
                f"batch sizes differ: q {q['b']}, k {k['b']}, v {v['b']} (layout {ctx.layout})",
                {"q_batch": q["b"], "k_batch": k["b"], "v_batch": v["b"]},
                blocking=True,
            )
        if k["h"] != v["h"]:
            yield Hit(
                f"k has {k['h']} heads but v has {v['h']}",
                {"k_heads": k["h"], "v_heads": v["h"]},
                blocking=True,
            )
        elif k["h"] and q["h"] % k["h"]:
            yield Hit(
                f"q has {q['h']} heads, not a multiple of k/v's {k['h']}; grouped-query "
                "attention needs each group of query heads to share one key/value head",
                {"q_heads": q["h"], "kv_heads": k["h"]},
                blocking=True,
            )
        elif q["h"] != k["h"] and k["h"] != 1 and ctx.settings.enable_gqa is False:
            # one K/V head (multi-query attention) broadcasts like any size-1 dim: SDPA runs
            yield Hit(
                f"q has {q['h']} heads and k/v {k['h']}, but enable_gqa is false: SDPA raises for this call",
                {"q_heads": q["h"], "kv_heads": k["h"], "enable_gqa": False},
                blocking=True,
            )
        expected = {
            "out": [q["b"], q["h"], q["s"], v["d"]],
            "weights": [q["b"], q["h"], q["s"], k["s"]],
            "scores": [q["b"], q["h"], q["s"], k["s"]],
        }
        for role, target in expected.items():
            if not ctx.has(role):
                continue
            shape = list(ctx.raw[role].shape)
            if role == "out":
                got = _dims(tuple(shape), ctx.layout or "")
                ok = got is not None and [got["b"], got["h"], got["s"], got["d"]] == target
            else:
                ok = _broadcasts(shape, target) or (
                    len(shape) == 3 and shape == [q["b"] * q["h"], q["s"], k["s"]]
                )
            if not ok:
                yield Hit(
                    f"{role} has shape {tuple(shape)} but q/k/v imply (batch, heads, q_len, "
                    f"{'dim' if role == 'out' else 'k_len'}) = {tuple(target)}",
                    {"tensor": role, "shape": shape, "expected": target},
                    blocking=True,
                )


class MaskNotBroadcastable(Check):
    """The mask cannot broadcast to the score shape (batch, heads, q_len, k_len)."""

    code = "SHP005"
    name = "mask-not-broadcastable"
    severity = Severity.ERROR
    can_block = True
    rationale = (
        "SDPA adds (or applies) the mask to scores of shape (batch, heads, q_len, k_len), "
        "aligning dimensions from the right as broadcasting does. A padding mask of shape "
        "(batch, k_len) is therefore read as (q_len, k_len) and fails (or, worse, fits — see "
        "SHP006). Padding masks need explicit singleton head and query axes."
    )
    fix = """
# A (batch, k_len) padding mask with True = attend:
attn_mask = padding_mask[:, None, None, :]  # (batch, 1, 1, k_len)
out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        dims = _qkv_dims(ctx)
        shape = _mask_shape(ctx)
        if shape is None:
            return
        if dims:
            target = [dims["q"]["b"], dims["q"]["h"], dims["q"]["s"], dims["k"]["s"]]
        elif ctx.has("weights") or ctx.has("scores"):
            sizes = ctx.sizes
            target = [sizes["B"], sizes["Hq"], sizes["Lq"], sizes["Lk"]]
        else:
            return
        if not _broadcasts(shape, target):
            raw = tuple(ctx.raw["mask"].shape)
            hint = ""
            if len(raw) == 2 and raw == (target[0], target[3]):
                hint = "; it is shaped (batch, k_len) like a padding mask: index it [:, None, None, :]"
            elif len(raw) == 3 and raw == (target[0], target[2], target[3]):
                hint = "; it is shaped (batch, q_len, k_len): add the head axis with [:, None]"
            yield Hit(
                f"mask has shape {raw}, which does not broadcast to the scores' "
                f"(batch, heads, q_len, k_len) = {tuple(target)}{hint}",
                {"mask_shape": list(raw), "scores_shape": target},
                blocking=True,
            )


def _padding_rows(mask2d: torch.Tensor) -> tuple[bool, bool]:
    """(rows differ and each keeps a prefix or suffix, like padding; rows form a causal triangle)."""
    import torch

    if mask2d.is_floating_point():
        values = set(torch.unique(mask2d).tolist())
        keep = mask2d > 0.5 if values <= {0.0, 1.0} else mask2d > -1
    else:
        keep = mask2d.bool()
    flips = (keep[:, 1:] != keep[:, :-1]).sum(-1)
    padding_like = bool((flips <= 1).all()) and bool((keep != keep[:1]).any())
    rows, cols = keep.shape
    causal = torch.ones(rows, cols, dtype=torch.bool).tril(max(cols - rows, 0))
    triangular = any(bool((pattern == keep).all()) for pattern in (causal, ~causal, causal.flip(0)))
    return padding_like, triangular


def _padding_over_queries(
    ctx: CaseContext, mask: torch.Tensor, batch: int, lq: int, lk: int
) -> dict[str, Any] | None:
    """A self-attention mask shaped (batch, 1, seq, 1) whose rows keep a prefix or suffix of
    the queries that differs between samples: a padding mask unsqueezed on the wrong axis."""
    if mask.dim() != 4 or mask.shape[-1] != 1 or mask.shape[-2] != lq or lq != lk or lq < 2:
        return None
    if mask.shape[0] not in (1, batch) or mask.shape[1] != 1:
        return None
    keep = ctx.keep_mask(mask)[:, 0, :, 0]  # (batch, seq)
    flips = (keep[:, 1:] != keep[:, :-1]).sum(-1)
    if not bool((flips <= 1).all()) or bool(keep.all()):
        return None
    return {"kept_lengths": keep.sum(-1).tolist()[:8], "masked_queries": int((~keep).sum())}


class MaskBroadcastsSilentlyWrong(Check):
    """The mask broadcasts without error, but along the wrong axes."""

    code = "SHP006"
    name = "mask-broadcasts-wrong"
    severity = Severity.ERROR
    rationale = (
        "Broadcasting aligns trailing dimensions. A (batch, seq) padding mask against scores "
        "(batch, heads, seq, seq) is read as (q_len, k_len) — and when batch happens to equal "
        "seq no error is raised: query row i is masked with sample i's padding. Likewise a "
        "(batch, q_len, k_len) mask is read as (heads, q_len, k_len) when batch equals heads. "
        "The check decides from the mask's content: rows that each keep a prefix (padding) but "
        "do not form a causal triangle are padding rows, not query rows. A padding mask "
        "unsqueezed as (batch, 1, seq, 1) broadcasts too, over the keys: it masks padding "
        "query rows and leaves the padding keys attended."
    )
    fix = """
# (batch, k_len) padding mask -> (batch, 1, 1, k_len)
attn_mask = padding_mask[:, None, None, :].bool()
# (batch, q_len, k_len) mask -> (batch, 1, q_len, k_len)
attn_mask = mask3d[:, None, :, :]
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        dims = _qkv_dims(ctx)
        if not dims or not ctx.has("mask") or ctx.case.mask_key == "key_padding_mask":
            return
        mask = ctx.raw["mask"]
        b, h, lq, lk = dims["q"]["b"], dims["q"]["h"], dims["q"]["s"], dims["k"]["s"]
        over_queries = _padding_over_queries(ctx, mask, b, lq, lk)
        if over_queries:
            yield Hit(
                f"mask {tuple(mask.shape)} varies along the query axis and not along the keys: "
                "each sample's padding (kept lengths "
                f"{over_queries['kept_lengths']}) masks whole query rows, so padding queries see "
                "nothing while every real query still attends to the padding keys; a (batch, "
                "seq) padding mask belongs on the key axis, (batch, 1, 1, seq)",
                {**over_queries, "mask_shape": list(mask.shape), "decided_from": "mask shape and values"},
                fix="""
attn_mask = padding_mask[:, None, None, :].bool()     # (batch, 1, 1, k_len): masks keys
# not padding_mask[:, None, :, None], which masks query rows
""",
            )
        if mask.dim() == 2 and b > 1 and tuple(mask.shape) == (b, lk) and b == lq:
            monotone, triangular = _padding_rows(mask)
            if monotone and not triangular:
                lengths = mask.bool().sum(-1).tolist() if not mask.is_floating_point() else None
                yield Hit(
                    f"mask {tuple(mask.shape)} is shaped like (batch, seq) and its rows each keep "
                    f"a prefix of different lengths (padding), not a causal triangle; because "
                    f"batch = q_len = {b}, it broadcasts as (q_len, k_len): query row i gets "
                    "sample i's padding in every sample",
                    {
                        "mask_shape": list(mask.shape),
                        "batch": b,
                        "q_len": lq,
                        "row_lengths": lengths,
                        "decided_from": "monotone rows, not triangular",
                    },
                )
        if mask.dim() == 3 and b > 1 and b == h and tuple(mask.shape) == (b, lq, lk):
            binary = not mask.is_floating_point() or set(torch.unique(mask)[:3].tolist()) <= {
                0.0,
                1.0,
                float("-inf"),
            }
            differs = bool((mask != mask[:1]).any())
            if binary and differs:
                yield Hit(
                    f"mask {tuple(mask.shape)} looks like (batch, q_len, k_len), and since batch = "
                    f"heads = {b} it broadcasts as (heads, q_len, k_len): head i gets sample i's "
                    "mask",
                    {
                        "mask_shape": list(mask.shape),
                        "batch": b,
                        "heads": h,
                        "decided_from": "binary mask that differs across its first axis",
                    },
                    severity=Severity.WARNING,
                )


class LikelySequenceFirst(Check):
    """The tensors look sequence-first (or heads/seq swapped) while batch-first is assumed."""

    code = "SHP007"
    name = "likely-sequence-first"
    severity = Severity.WARNING
    rationale = (
        "nn.MultiheadAttention without batch_first=True, and many fused kernels, use "
        "(seq, batch, dim) or (batch, seq, heads, dim). Read as batch-first, the same "
        "numbers mean something else: batch and sequence are swapped, attention runs across "
        "samples. The check re-reads the tensors with the swapped layout and reports when that "
        "reading is consistent (q/k/v agree, the mask and saved weights fit) but the assumed "
        "one is not."
    )
    fix = """
# Tell attndbg the layout, or transpose to what SDPA expects:
#   attndbg inspect step.safetensors --layout sbd
q = q.transpose(0, 1)                # (seq, batch, dim) -> (batch, seq, dim)
q = q.transpose(1, 2)                # (batch, seq, heads, dim) -> (batch, heads, seq, dim)
mha = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        if not ctx.has_qkv or not ctx.layout:
            return
        assumed = ctx.layout
        swapped = SWAPPED_LAYOUT.get(assumed)
        if not swapped:
            return
        problems = reading_problems(ctx, assumed)
        alternative = reading_problems(ctx, swapped)
        if problems and not alternative:
            yield Hit(
                f"read as {assumed} the tensors are inconsistent ({'; '.join(problems)}), read "
                f"as {swapped} they all agree: they were probably saved {swapped}",
                {
                    "assumed": assumed,
                    "consistent_layout": swapped,
                    "problems": problems,
                    "q_shape": list(ctx.raw["q"].shape),
                    "decided_from": "shape agreement of q/k/v/mask/weights under both readings",
                },
                fix=f"# attndbg inspect FILE --layout {swapped}\n" + self.fix.strip(),
            )
        elif assumed == "bhsd" and not ctx.settings.layout:
            q = _dims(tuple(ctx.raw["q"].shape), assumed)
            if q and q["h"] > 32 and q["h"] >= 4 * q["s"]:
                yield Hit(
                    f"q {tuple(ctx.raw['q'].shape)} read as bhsd has {q['h']} heads of "
                    f"{q['s']} positions — more likely (batch, seq, heads, dim)",
                    {
                        "q_shape": list(ctx.raw["q"].shape),
                        "heads": q["h"],
                        "seq": q["s"],
                        "decided_from": "heads axis much longer than the sequence axis (weak)",
                    },
                    severity=Severity.INFO,
                    fix="# attndbg inspect FILE --layout bshd\nq = q.transpose(1, 2)",
                )
