"""Stage 7 — gradients (``--grad``): the reference's own gradients on a slice of the case, and
what the classic hand-rolled masking patterns do to them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from attndbg.errors import first_line
from attndbg.registry import Check, Hit
from attndbg.report import Severity
from attndbg.vocab import Statistic

if TYPE_CHECKING:
    import torch

    from attndbg.context import CaseContext

VANISHING = 1e-3  # rms(dQ, dK) / rms(dV) below this: Q and K have stopped learning
MAX_ROWS, MAX_KEYS, MAX_HEADS = 32, 256, 4


def grad_slice(ctx: CaseContext, rows: list[int] | None = None, batch: int = 0) -> dict:
    """A small float64 slice of the case: (1, ≤4 heads, ≤32 rows, ≤256 keys), with its mask
    as a bool keep-mask (or an additive float), and where it was taken."""
    import torch

    sizes = ctx.sizes
    heads = min(sizes["Hq"], MAX_HEADS)
    keys = min(sizes["Lk"], MAX_KEYS)
    if rows is None:
        rows = list(range(min(sizes["Lq"], MAX_ROWS)))
    index = torch.tensor(rows, device=ctx.device)
    b = min(batch, ctx.q.shape[0] - 1)
    q = ctx.q[b, :heads].index_select(1, index).double()
    k = ctx.k[min(batch, ctx.k.shape[0] - 1), :heads, :keys].double()
    v = ctx.v[min(batch, ctx.v.shape[0] - 1), :heads, :keys].double()
    keep = torch.ones(heads, len(rows), keys, dtype=torch.bool, device=ctx.device)
    additive = None
    if ctx.is_causal:
        keep &= index[:, None] >= torch.arange(keys, device=ctx.device)[None, :]
    if ctx.mask4d is not None:
        mask = ctx.mask4d[min(batch, ctx.mask4d.shape[0] - 1)].to(ctx.device)
        mask = mask.expand(heads if mask.shape[0] > 1 else 1, sizes["Lq"], mask.shape[-1])[:heads]
        mask = mask.index_select(1, index)[..., :keys]
        keep &= ctx.keep_mask(mask)
        if ctx.mask_semantics == "additive":
            additive = mask.double()
    where = {
        "batch": batch,
        "heads": heads,
        "rows": rows[:8] + (["…"] if len(rows) > 8 else []),
        "keys": keys,
        "of": [sizes["Hq"], sizes["Lq"], sizes["Lk"]],
    }
    return {"q": q, "k": k, "v": v, "keep": keep, "additive": additive, "where": where}


def _reference(s: dict, ctx: CaseContext):  # noqa: ANN202
    from attndbg.attention import reference_attention

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        mask = s["keep"] if s["additive"] is None else s["additive"].masked_fill(~s["keep"], float("-inf"))
        return reference_attention(q, k, v, mask=mask, scale=ctx.scale)

    return fn


class GradcheckFailed(Check):
    """torch.autograd.gradcheck of the attention on this input fails."""

    code = "GRD001"
    name = "gradcheck-failed"
    severity = Severity.ERROR
    reads = frozenset({Statistic.ROWS})
    rationale = (
        "gradcheck compares the analytical gradient (backward) with finite differences in "
        "float64. On the reference attention it fails only where the function is numerically "
        "discontinuous at this input — logits so large that a 1e-6 nudge flips the softmax — so "
        "the gradients the optimiser sees here are meaningless. For a custom implementation "
        "(`attndbg gradcheck --impl`) a failure means its backward is wrong; a function that "
        "computes in float32 inside (softmax(dtype=torch.float32)) is judged with the step and "
        "tolerance float32 allows, not failed for float32 rounding. Run on a slice "
        "(batch 0, up to 4 heads, 4 query rows, 6 keys), named in the evidence."
    )
    fix = """
from torch.autograd import gradcheck
q, k, v = (t[:1, :2, :4].double().requires_grad_() for t in (q, k, v))
assert gradcheck(lambda q, k, v: my_attention(q, k, v), (q, k, v), fast_mode=True)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        if not ctx.has_qkv:
            return
        s = grad_slice(ctx, rows=list(range(min(ctx.sizes["Lq"], 4))))
        q, k, v = s["q"][:2, :, :], s["k"][:2, :6], s["v"][:2, :6]
        s = {
            **s,
            "keep": s["keep"][:2, :, :6],
            "additive": None if s["additive"] is None else s["additive"][:2, :, :6],
        }
        fn = _reference(s, ctx)
        inputs = tuple(t.detach().clone().requires_grad_(True) for t in (q, k, v))
        try:
            ok = torch.autograd.gradcheck(fn, inputs, fast_mode=True, raise_exception=True)
            detail = ""
        except Exception as exc:  # GradcheckError, or a RuntimeError from a non-finite Jacobian
            ok, detail = False, first_line(exc)
        if not ok:
            yield Hit(
                f"gradcheck of the attention on a slice of this input fails ({detail}); with "
                f"|scaled logit| up to {float(ctx.stats.max_logit.max()):.3g}, finite differences "
                "and backward disagree",
                {
                    "slice": {**s["where"], "rows": [0, 1, 2, 3][: q.shape[1]], "keys": 6},
                    "detail": detail,
                    "max_abs_logit": float(ctx.stats.max_logit.max()),
                },
            )


class NonFiniteGradients(Check):
    """Gradients are NaN/Inf — from the reference itself, or from the usual hand-rolled mask."""

    code = "GRD002"
    name = "non-finite-gradients"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    rationale = (
        "A fully masked query row is harmless in PyTorch 2.13's SDPA, but in hand-rolled "
        "attention it is the classic source of NaN gradients that the forward pass hides: with "
        "-inf *added* to the scores, softmax gives NaN for the row, nan_to_num patches the "
        "forward, yet the softmax backward still multiplies by NaN and dQ/dK turn NaN (and dK "
        "for every key, since the row touches all of them). With masked_fill the backward "
        "zeroes the masked positions and no NaN flows. The check runs both patterns, and the "
        "reference, on rows of this case, and says which produce non-finite gradients. It is "
        "an error when the reference gradients themselves are not finite."
    )
    fix = """
# mask with masked_fill (not by adding -inf), and zero rows that have nothing to attend to
scores = scores.masked_fill(~keep, float("-inf"))
weights = torch.softmax(scores, dim=-1).masked_fill(~keep.any(-1, keepdim=True), 0.0)
# or simply:
out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        from attndbg.gradcheck.gradients import (
            additive_then_nan_to_num,
            gradients,
            masked_fill_then_nan_to_num,
        )

        if not ctx.has_qkv:
            return
        full = ctx.stats.fully_masked[:, : min(ctx.sizes["Hq"], MAX_HEADS)].any(1)  # (B, Lq)
        batch = int(full.any(1).nonzero()[0]) if bool(full.any()) else 0
        dead = full[batch].nonzero().flatten().tolist()[:4]
        rows = sorted(set(dead + list(range(min(ctx.sizes["Lq"], MAX_ROWS - len(dead))))))
        s = grad_slice(ctx, rows, batch)
        generator = torch.Generator(device="cpu").manual_seed(0)
        upstream = torch.randn(
            s["q"].shape[:-1] + (s["v"].shape[-1],), generator=generator, dtype=torch.float64
        ).to(ctx.device)
        _, *ref = gradients(_reference(s, ctx), s["q"], s["k"], s["v"], upstream)
        bad_ref = {name: int((~torch.isfinite(g)).sum()) for name, g in zip("qkv", ref)}
        if any(bad_ref.values()):
            yield Hit(
                "the reference attention's own gradients are not finite on this input "
                f"(dQ {bad_ref['q']}, dK {bad_ref['k']}, dV {bad_ref['v']} non-finite entries)",
                {"slice": s["where"], "non_finite": bad_ref},
                severity=Severity.ERROR,
            )
            return
        if not dead or s["additive"] is not None and bool(torch.isfinite(s["additive"]).all()):
            return
        results = {}
        for label, fn in (
            ("additive -inf + nan_to_num", additive_then_nan_to_num),
            ("masked_fill + nan_to_num", masked_fill_then_nan_to_num),
        ):
            _, *grads = gradients(fn, s["q"], s["k"], s["v"], upstream, keep=s["keep"], scale=ctx.scale)
            results[label] = {name: int((~torch.isfinite(g)).sum()) for name, g in zip("qkv", grads)}
        additive = results["additive -inf + nan_to_num"]
        if additive["q"] or additive["k"]:
            masked = results["masked_fill + nan_to_num"]
            yield Hit(
                f"{len(dead)} fully masked query row(s) (first {dead}): code that adds -inf to the "
                f"scores and patches the softmax with nan_to_num gets NaN gradients (dQ "
                f"{additive['q']}, dK {additive['k']} entries) though its forward is finite; with "
                f"masked_fill dQ/dK have {masked['q'] + masked['k']} non-finite entries, and SDPA's "
                "are finite",
                {
                    "fully_masked_rows": dead,
                    "slice": s["where"],
                    "non_finite_by_pattern": results,
                    "reference": "finite",
                },
            )


class VanishingQKGradients(Check):
    """Q and K gradients are vanishingly small next to V's: softmax is saturated."""

    code = "GRD003"
    name = "vanishing-qk-gradients"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    rationale = (
        "Through a saturated (one-hot) softmax the gradient to the scores is p(1 − p) ≈ 0, so "
        "Q and K stop learning while V still does. Reported when rms(dQ, dK) / rms(dV) under a "
        f"random upstream gradient falls below {VANISHING:g} on a slice of the case (batch 0, "
        "up to 4 heads and 32 rows); usually accompanied by SCL003 (logit growth)."
    )
    fix = """
# bound the logits so softmax keeps a gradient:
q, k = self.q_norm(q), self.k_norm(k)            # QK-norm
scores = 50.0 * torch.tanh(scores / 50.0)        # or soft-capping
"""
    thresholds = {"ratio": VANISHING}

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        from attndbg.gradcheck.gradients import gradients, rms

        if not ctx.has_qkv or ctx.sizes["Lk"] < 2:
            return
        s = grad_slice(ctx)
        generator = torch.Generator(device="cpu").manual_seed(0)
        upstream = torch.randn(
            s["q"].shape[:-1] + (s["v"].shape[-1],), generator=generator, dtype=torch.float64
        ).to(ctx.device)
        _, dq, dk, dv = gradients(_reference(s, ctx), s["q"], s["k"], s["v"], upstream)
        value = rms(dv)
        if value == 0 or not all(bool(torch.isfinite(g).all()) for g in (dq, dk, dv)):
            return
        ratio = (rms(dq) + rms(dk)) / 2 / value
        if ratio < self.limit(ctx, "ratio"):
            yield Hit(
                f"rms(dQ, dK) / rms(dV) = {ratio:.2e} on a slice of the case: the softmax is "
                f"saturated (mean max weight {float(ctx.stats.max_weight.mean()):.3f}) and Q, K get "
                "almost no gradient",
                {
                    "ratio": ratio,
                    "rms_dq": rms(dq),
                    "rms_dk": rms(dk),
                    "rms_dv": value,
                    "threshold": self.limit(ctx, "ratio"),
                    "slice": s["where"],
                },
            )


class ImplementationRaised(Check):
    """The attention implementation under test raised an exception (gradcheck --impl)."""

    code = "GRD004"
    name = "implementation-raised"
    severity = Severity.ERROR
    gradcheck_only = True
    rationale = (
        "Reported by `attndbg gradcheck --impl`: the function under test raised for some "
        "scenario and dtype — a TypeError on bfloat16 in an older helper, a causal buffer that "
        "only fits q_len == k_len, a shape it does not broadcast. The exception is the "
        "function's result for that input, given with its message and the scenarios it hit; "
        "saved tensors (`inspect`) never trigger it."
    )
    fix = """
# make the function accept the inputs it is meant to serve, e.g. a causal buffer sized by the
# keys rather than the queries (or narrow what you test: attndbg gradcheck --impl ... --quick)
causal = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
scores = scores.masked_fill(~causal, float("-inf"))
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        return iter(())


class KVHeadMapping(Check):
    """Grouped-query attention maps query heads to KV heads in another order than SDPA."""

    code = "GRD005"
    name = "kv-head-mapping"
    severity = Severity.WARNING
    gradcheck_only = True
    rationale = (
        "Reported by `attndbg gradcheck --impl`, which hands a function that takes grouped K/V "
        "its K/V with fewer heads and compares against SDPA's enable_gqa: query head h reads KV "
        "head h // (heads / kv_heads) (repeat_interleave, Hugging Face's repeat_kv). An "
        "implementation that tiles the KV heads (einops '(r kvh)', Tensor.repeat, ONNX Tile) "
        "pairs query head h with KV head h % kv_heads: consistent for checkpoints trained with "
        "it, silently wrong for weights trained the usual way (onnx/onnx#7274)."
    )
    fix = """
k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)   # not k.repeat(1, n_rep, 1, 1)
v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        return iter(())
