"""Stage 2 — numerics: non-finite values in the inputs and where they first appear inside."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from attndbg.registry import Check, Hit
from attndbg.report import Severity
from attndbg.vocab import Statistic

if TYPE_CHECKING:
    import torch

    from attndbg.context import CaseContext

# -inf is a legitimate fill in a mask and in saved scores; everywhere else it is a defect.
_NEG_INF_ALLOWED = {"mask", "scores"}
PIPELINE = ("scores", "weights", "output")


def _named(ctx: CaseContext, role: str) -> str:
    key = ctx.key(role)
    return "" if key == role else f" ({key})"


def nan_rows_note(tensor: torch.Tensor) -> tuple[int, str]:
    """Rows (last axis) that are NaN throughout — softmax of an all -inf row — and a phrase for them."""
    import torch

    rows = int(torch.isnan(tensor).all(-1).sum()) if tensor.dim() else 0
    return rows, (f"; {rows} rows are entirely NaN" if rows else "")


class NonFiniteInput(Check):
    """An input tensor holds NaN or ±Inf."""

    code = "NUM001"
    name = "non-finite-input"
    severity = Severity.ERROR
    rationale = (
        "One NaN in Q or K poisons a whole row of scores, and through softmax every output "
        "that attends to that position; one NaN in V poisons every output row that gives its "
        "key any weight. -inf is allowed only where it means 'masked' (in a mask or saved "
        "scores); NaN is never allowed. NaN in saved weights or outputs means the failure "
        "happened upstream of the save — NUM002 says where, when the inputs are finite."
    )
    fix = """
# Find the first op that produces the NaN:
torch.autograd.set_detect_anomaly(True)       # in training
assert torch.isfinite(q).all(), "q is not finite: check the layer before the projection"
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        roles = ["q", "k", "v", "mask"]
        inputs_finite = ctx.has_qkv and not any(sum(ctx.nonfinite(r)) for r in "qkv")
        if not inputs_finite:
            roles += ["scores", "weights", "out"]  # with finite q/k/v, NUM002 explains these
        for summary_role in roles:
            if not ctx.has(summary_role):
                continue
            tensor = ctx.raw[summary_role]
            if not tensor.is_floating_point():
                continue
            nan, posinf, neginf = ctx.nonfinite(summary_role)
            if summary_role in _NEG_INF_ALLOWED:
                neginf = 0
            if nan or posinf or neginf:
                bad = torch.isnan(tensor) | torch.isposinf(tensor)
                if summary_role not in _NEG_INF_ALLOWED:
                    bad |= torch.isneginf(tensor)
                first = bad.nonzero()[0].tolist()
                parts = [
                    f"{n} {label}" for n, label in ((nan, "NaN"), (posinf, "+Inf"), (neginf, "-Inf")) if n
                ]
                rows_text = nan_rows_note(tensor)[1] if summary_role in ("scores", "weights", "out") else ""
                yield Hit(
                    f"{summary_role}{_named(ctx, summary_role)} holds {', '.join(parts)} of "
                    f"{tensor.numel()} values; first at index {first}{rows_text}",
                    {
                        "tensor": summary_role,
                        "nan": nan,
                        "posinf": posinf,
                        "neginf": neginf,
                        "of": tensor.numel(),
                        "first": first,
                    },
                    severity=Severity.ERROR if summary_role in ("q", "k", "v", "mask") else Severity.WARNING,
                )


class NonFiniteInside(Check):
    """Inputs are finite, but a NaN or Inf appears inside attention (scores, weights or output)."""

    code = "NUM002"
    name = "non-finite-inside"
    severity = Severity.ERROR
    reads = frozenset({Statistic.ROWS, Statistic.OUTPUT})
    superseded_by = ("NUM001",)
    rationale = (
        "When Q, K and V are finite, a non-finite value must be created by attention itself: "
        "scores overflow (fp16), a row of scores that is all -inf gives 0/0 = NaN in a plain "
        "softmax, an additive mask holds +inf or NaN. The check walks the user's saved "
        "scores → weights → output, then the recomputed ones, and names the first stage where "
        "a non-finite value appears, how many, and the first index."
    )
    fix = """
# A fully masked row: give it a defined result instead of 0/0
scores = scores.masked_fill(~keep, float("-inf"))
weights = torch.softmax(scores, dim=-1)
weights = weights.masked_fill(~keep.any(-1, keepdim=True), 0.0)  # rows with nothing to attend
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        user = {"scores": "scores", "weights": "weights", "output": "out"}
        for stage, role in user.items():
            if not ctx.has(role):
                continue
            nan, posinf, neginf = ctx.nonfinite(role)
            count = nan + posinf + (neginf if role != "scores" else 0)
            if count:
                tensor = ctx.raw[role]
                bad = torch.isnan(tensor) | torch.isposinf(tensor)
                if role != "scores":
                    bad |= torch.isneginf(tensor)
                first = bad.nonzero()[0].tolist()
                earlier = [s for s in PIPELINE[: PIPELINE.index(stage)] if user[s] in ctx.raw]
                nan_rows, rows_text = nan_rows_note(tensor)
                yield Hit(
                    f"the saved {stage}{_named(ctx, role)} hold {count} non-finite values "
                    f"(first at {first}{rows_text})"
                    + (f" while the saved {', '.join(earlier)} are finite" if earlier else "")
                    + self._why(ctx, stage),
                    {
                        "stage": stage,
                        "where": "saved",
                        "count": count,
                        "nan_rows": nan_rows,
                        "first": first,
                        "fully_masked_rows": int(ctx.stats.fully_masked.any(dim=1).sum())
                        if ctx.has_qkv
                        else None,
                    },
                )
                return
        if not ctx.has_qkv:
            return
        stats = ctx.stats
        for stage in PIPELINE:
            count = stats.nonfinite.get(stage, 0)
            if count:
                yield Hit(
                    f"the recomputed {stage} hold {count} non-finite values (first at "
                    f"{stats.first_nonfinite.get(stage)}) although q, k and v are finite",
                    {
                        "stage": stage,
                        "where": "recomputed",
                        "count": count,
                        "first": stats.first_nonfinite.get(stage),
                    },
                )
                return

    @staticmethod
    def _why(ctx: CaseContext, stage: str) -> str:
        if stage == "weights" and ctx.has_qkv and bool(ctx.stats.fully_masked.any()):
            rows = int(ctx.stats.fully_masked.any(dim=1).sum())
            return (
                f"; {rows} (batch, query row)s are fully masked, and softmax of a row that is all "
                "-inf is 0/0 = NaN"
            )
        return ""


class LowPrecisionOverflow(Check):
    """fp16/bf16 scores would overflow (or come within 2× of overflowing) the dtype's range."""

    code = "NUM003"
    name = "low-precision-overflow"
    severity = Severity.WARNING
    reads = frozenset({Statistic.ROWS})
    rationale = (
        "In float16 the largest finite value is 65504. Kernels that compute Q·Kᵀ in the input "
        "dtype and scale afterwards overflow to Inf when |q·k| exceeds it — long before the "
        "scaled logits look large — and softmax then yields NaN. The check takes the largest "
        "|q·k| before scaling and after scaling (recomputed in float32) and warns when either "
        "is within a factor 2 of the dtype's finite range (error when beyond it). bfloat16 "
        "shares float32's range and rarely overflows, but loses precision instead."
    )
    fix = """
# Scale q before the matmul (as SDPA does), or compute the scores in float32:
scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale
"""

    def evaluate(self, ctx: CaseContext) -> Iterator[Hit]:
        import torch

        dtype = ctx.dtype
        if dtype not in (torch.float16, torch.bfloat16) or not ctx.has_qkv:
            return
        limit = torch.finfo(dtype).max
        stats = ctx.stats
        scaled = float(stats.absmax_raw.max()) if stats.absmax_raw.numel() else 0.0
        raw = scaled / ctx.scale if ctx.scale else scaled
        worst = max(raw, scaled)
        if worst >= limit / 2:
            where = "before scaling" if raw >= limit / 2 else "after scaling"
            yield Hit(
                f"largest |q·k| is {raw:.4g} before scaling and {scaled:.4g} after; {str(dtype)[6:]} "
                f"overflows at {limit:.4g}, so scores computed in {str(dtype)[6:]} "
                f"{'overflow to Inf' if worst >= limit else 'come within 2x of Inf'} {where}",
                {
                    "max_abs_qk": raw,
                    "max_abs_scaled": scaled,
                    "dtype_max": limit,
                    "dtype": str(dtype),
                },
                severity=Severity.ERROR if worst >= limit else Severity.WARNING,
            )
