"""`attndbg gradcheck FILE --impl ...`: the file's own tensors as one more case of the sweep."""

from __future__ import annotations

from pathlib import Path

import torch

from attndbg.attention import reference_attention
from attndbg.context import CaseContext
from attndbg.gradcheck.implementation import Implementation
from attndbg.gradcheck.sweep import Result, SweepReport
from attndbg.loader import iter_cases
from attndbg.vocab import MaskSemantics


def file_cases(report: SweepReport, target: Implementation, path: Path, device: str, align: str) -> None:
    """The file's own tensors as one more case of the sweep, in their stored dtype."""
    for case in iter_cases([path]):
        ctx = CaseContext(case, device=device)
        if not ctx.has_qkv:
            continue
        dtype = case.tensors["q"].dtype if case.tensors["q"].is_floating_point() else torch.float32
        keep = None
        if ctx.mask4d is not None and ctx.mask_semantics != MaskSemantics.ADDITIVE:
            keep = ctx.keep_mask(ctx.mask4d).to(device)
        q, k, v = ctx.q.to(dtype), ctx.k.to(dtype), ctx.v.to(dtype)
        try:
            out = target(q, k, v, keep=keep, causal=ctx.is_causal and keep is None, scale=ctx.scale)
            ref = reference_attention(
                q.double(),
                k.double(),
                v.double(),
                mask=None if keep is None else keep,
                is_causal=ctx.is_causal and keep is None,
                scale=ctx.scale,
                align=align,
            )
            error = float((out.double() - ref).abs().max()) if out.numel() else 0.0
            bound = 1e-5 if dtype == torch.float32 else 2e-2
            verdict = "pass" if error <= bound * max(1.0, float(v.abs().max())) else "fail"
            reasons = [] if verdict == "pass" else [f"out: max error {error:.2e} on the file's tensors"]
        except Exception as exc:
            verdict, error, reasons = "error", None, [f"{type(exc).__name__}: {exc}"]
        report.results.append(
            Result(
                f"file:{case.name}",
                str(dtype).replace("torch.", ""),
                verdict,
                forward_error=error,
                reasons=reasons,
            )
        )
