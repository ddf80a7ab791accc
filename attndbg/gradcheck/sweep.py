"""`attndbg gradcheck --impl`: a conformance sweep of an attention implementation against the
float64 reference, forward and backward, in every dtype, over the shapes and masks that break
attention code. Returns data; the renderers print it.

Comparison rule (as in the best kernel test suites): three results on identical inputs —
*test* (the implementation in dtype D), *golden* (plain math attention in float64 for float32
inputs, float32 otherwise), *lowp* (the same math in D). For out, dQ, dK, dV:
``max|test − golden| ≤ k·max|lowp − golden| + floor`` with k = 2 for the output and 3 for
gradients (×2 with ``lenient``), ``floor = max(2·max|(golden + 0.3 − 0.3) − golden| in D, 1e-5)``,
and ``mean|test − golden| ≤ 1.5·mean|lowp − golden| + floor`` against systematic bias.

Rows with nothing to attend are compared apart: their upstream gradient is zero and their
outputs are classified (NaN, uniform over the masked keys, zeros) instead of being compared,
so that what an implementation does there is named, with its own severity.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch

from attndbg.attention import expand_kv_heads, reference_attention
from attndbg.errors import first_line
from attndbg.gradcheck.gradients import gradients
from attndbg.gradcheck.implementation import (
    Implementation,
    describe_convention,
    implementation_of,
    resolve_layout,
)
from attndbg.gradcheck.implementation import load_implementation as load_implementation
from attndbg.gradcheck.scenarios import CUSTOM_SCALE, LEVELS, Scenario, make_case
from attndbg.report import FAIL_ON_RANK, Severity

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Result:
    scenario: str
    dtype: str
    verdict: str  # pass | fail | error | refused (a backend that declines the input) | skipped
    forward_error: float | None = None
    forward_bound: float | None = None
    gradient_error: float | None = None
    gradient_bound: float | None = None
    reasons: list[str] = field(default_factory=list)
    masked_rows: str | None = None  # fully masked rows: zeros | uniform | nan | other


@dataclass
class Diagnosis:
    code: str
    message: str
    scenarios: list[str] = field(default_factory=list)
    severity: str = "error"
    dtypes: list[str] = field(default_factory=list)
    evidence: str = ""


@dataclass
class SweepReport:
    implementation: str
    convention: str
    device: str
    causal_align: str
    results: list[Result] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    gradcheck_float64: str = "not run"
    mask_perturbation: str = "not run"
    notes: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)  # what the implementation was handed
    precision: str = "float64"  # the precision it computes in when handed float64
    fail_on: str = "error"

    def counts(self) -> dict[str, int]:
        """Every criterion: each scenario × dtype, the float64 gradcheck, the mask perturbation."""
        counts: dict[str, int] = {}
        verdicts = [r.verdict for r in self.results] + [self.gradcheck_float64, self.mask_perturbation]
        for verdict in verdicts:
            key = "skipped" if verdict == "not run" else verdict
            counts[key] = counts.get(key, 0) + 1
        return counts

    def exit_code(self, fail_on: str | None = None) -> int:
        threshold = FAIL_ON_RANK[fail_on or self.fail_on]
        return 1 if any(Severity(d.severity).rank >= threshold for d in self.diagnoses) else 0

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 2, **asdict(self), "counts": self.counts(), "exit_code": self.exit_code()}


# ---- running a scenario ------------------------------------------------------------------


def _grads(fn: Callable, c: dict, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(out, dQ, dK, dV) of ``fn`` on the scenario's inputs cast to ``dtype``."""
    q, k, v = (c[n].to(dtype) for n in "qkv")
    return gradients(fn, q, k, v, c["upstream"])


def _reference_fn(c: dict, causal_only: bool, align: str, **variant: Any) -> Callable:
    mask = c["bias"] if c["bias"] is not None else c["keep"]

    def fn(q, k, v):  # noqa: ANN001, ANN202
        m = None if mask is None else (mask.to(q.dtype) if mask.is_floating_point() else mask)
        return reference_attention(q, k, v, mask=m, is_causal=causal_only, align=align, **variant)

    return fn


def _floor(golden: torch.Tensor, dtype: torch.dtype) -> float:
    if golden.numel() == 0:
        return 1e-5
    shifted = (golden.to(dtype) + 0.3 - 0.3).to(golden.dtype)
    return max(2 * float((shifted - golden).abs().max()), 1e-5)


def _errors(test: torch.Tensor, golden: torch.Tensor) -> tuple[float, float]:
    if test.numel() == 0:
        return 0.0, 0.0
    diff = (test.to(golden.dtype) - golden).abs()
    return float(diff.max()), float(diff.mean())


def call_with(impl: Implementation, s: Scenario, c: dict, causal_only: bool) -> Callable:
    """The implementation as a function of (q, k, v), with the scenario's mask, causal flag, scale."""
    return lambda q, k, v: impl(q, k, v, keep=c["keep"], bias=c["bias"], causal=causal_only, scale=s.scale)


def masked_row_behaviour(out: torch.Tensor, v: torch.Tensor, dead: torch.Tensor) -> str:
    """What the output is on rows with nothing to attend: nan, zeros, uniform (the mean of V
    over every key, which a finite fill gives) or other."""
    rows = out[dead].double()  # (n, Dv)
    if rows.numel() == 0:
        return "zeros"
    if not bool(torch.isfinite(rows).all()):
        return "nan"
    values = expand_kv_heads(v, out.shape[-3]).double()
    mean = values.mean(-2, keepdim=True).expand(*out.shape[:-1], values.shape[-1])[dead]
    tolerance = 2e-2 * max(1.0, float(values.abs().max())) if out.dtype != torch.float32 else 1e-4
    if float(rows.abs().max()) <= tolerance:
        return "zeros"
    if float((rows - mean).abs().max()) <= tolerance:
        return "uniform"
    return "other"


def run_scenario(
    impl: Implementation,
    s: Scenario,
    dtype_name: str,
    device: str,
    align: str,
    lenient: bool = False,
    seed: int = 0,
) -> Result:
    dtype = DTYPES[dtype_name]
    s = impl.adapt(s)
    why_not = impl.accepts(s)
    if why_not:
        return Result(s.name, dtype_name, "skipped", reasons=[why_not])
    c = make_case(s, seed, device, align)
    causal_only = s.causal and c["keep"] is None  # a mask, when present, already holds causality
    golden_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    try:
        test = _grads(call_with(impl, s, c, causal_only), c, dtype)
        if test[0].shape != (s.b, s.h, s.lq, s.dv or s.d):
            raise ValueError(f"output shape {tuple(test[0].shape)}, expected {(s.b, s.h, s.lq, s.dv or s.d)}")
    except Exception as exc:  # the implementation's own failure is a result, not a crash
        message = f"{type(exc).__name__}: {first_line(exc)}"
        # a user's function that raises has failed; only PyTorch's backends may decline an input
        refused = impl.backend and ("available kernel" in message or "not supported" in message.lower())
        return Result(s.name, dtype_name, "refused" if refused else "error", reasons=[message])
    # golden and lowp see the same (rounded) inputs as the test
    rounded = {**c, **{n: c[n].to(dtype) for n in "qkv"}}
    variant = {"scale": s.scale} if s.scale is not None else {}
    reference = _reference_fn(rounded, causal_only, align, **variant)
    golden = _grads(reference, {**rounded, **{n: rounded[n].to(golden_dtype) for n in "qkv"}}, golden_dtype)
    lowp = _grads(reference, rounded, dtype)
    masked_rows = None
    if c["dead"] is not None:
        masked_rows = masked_row_behaviour(test[0], rounded["v"], c["dead"])
        # rows with nothing to attend are classified, not compared
        live = ~c["dead"][..., None]
        test = (test[0].masked_fill(~live, 0.0), *test[1:])
        golden = (golden[0].masked_fill(~live, 0.0), *golden[1:])
        lowp = (lowp[0].masked_fill(~live, 0.0), *lowp[1:])
    factor = 2.0 if lenient else 1.0
    reasons = []
    worst_forward = worst_grad = None
    bound_forward = bound_grad = None
    for index, (label, k_factor) in enumerate((("out", 2.0), ("dQ", 3.0), ("dK", 3.0), ("dV", 3.0))):
        t, gld, low = test[index], golden[index], lowp[index]
        bad_test = ~torch.isfinite(t)
        if bool((bad_test & torch.isfinite(gld.to(t.dtype))).any()):
            if masked_rows != "nan":  # NaN rows poison every gradient: named once, as MSK001
                reasons.append(f"{label} has {int(bad_test.sum())} non-finite values the reference does not")
            continue
        floor = _floor(gld, dtype)
        max_t, mean_t = _errors(t, gld)
        max_l, mean_l = _errors(low, gld)
        bound = k_factor * factor * max_l + floor
        if label == "out":
            worst_forward, bound_forward = max_t, bound
        elif worst_grad is None or max_t / bound > worst_grad / cast(float, bound_grad):
            worst_grad, bound_grad = max_t, bound
        if max_t > bound:
            reasons.append(f"{label}: max error {max_t:.2e} > bound {bound:.2e}")
        elif mean_t > 1.5 * factor * mean_l + floor:
            reasons.append(f"{label}: mean error {mean_t:.2e} > 1.5 × lowp's {mean_l:.2e} (bias)")
    verdict = "fail" if reasons else "pass"
    return Result(
        s.name,
        dtype_name,
        verdict,
        worst_forward,
        bound_forward,
        worst_grad,
        bound_grad,
        reasons,
        masked_rows,
    )


# ---- whole-function criteria ---------------------------------------------------------------
def mask_perturbation(impl: Implementation, device: str, align: str) -> tuple[str, str]:
    """Huge values in the masked keys and values must change neither the output nor dQ: an
    implementation that masks after the softmax, or with a weak fill, lets them through even
    when its outputs look close. (NaN there is not required to stay out: 0·NaN is NaN in every
    matmul, PyTorch's own kernels included.)"""
    if not impl.takes_mask:
        return "skipped", "the implementation takes no mask"
    s = impl.adapt(Scenario("perturbation", mask="bool-padding"))
    c = make_case(s, 1, device, align)
    fn = call_with(impl, s, c, False)
    try:
        base = _grads(fn, c, torch.float32)
        masked_keys = ~c["keep"][:, 0, 0]  # (B, Lk)
        for fill in (1e4, -1e4):
            k, v = c["k"].clone(), c["v"].clone()
            k[masked_keys[:, None, :].expand(k.shape[:-1])] = fill
            v[masked_keys[:, None, :].expand(v.shape[:-1])] = fill
            out = _grads(fn, {**c, "k": k, "v": v}, torch.float32)
            if not bool(torch.isfinite(out[0]).all()) or not torch.allclose(out[0], base[0], atol=1e-4):
                return "fail", f"masked keys leak into the output (masked K/V set to {fill:g})"
            if not torch.allclose(out[1], base[1], atol=1e-4):
                return "fail", f"masked keys leak into dQ (masked K/V set to {fill:g})"
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {first_line(exc)}"
    return "pass", "output and dQ unchanged with ±1e4 in the masked keys and values"


def working_precision(impl: Implementation, device: str) -> tuple[str, str]:
    """float64, or float32 when the function narrows inside (softmax(dtype=torch.float32),
    .float() upcasts…) though handed float64: its central difference along a random direction
    with a step of 1e-9 then disagrees with the one with a step of 1e-4, where a float64
    function gives the same derivative at both steps."""
    c = make_case(impl.adapt(Scenario("precision", b=1, lq=6, lk=6)), 3, device, "upper-left")
    q, k, v = (c[n].double() for n in "qkv")
    direction = torch.randn(q.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(
        device
    )
    try:
        with torch.no_grad():

            def derivative(step: float) -> torch.Tensor:
                plus, minus = impl(q + step * direction, k, v), impl(q - step * direction, k, v)
                return (plus - minus) / (2 * step)

            fine, coarse = derivative(1e-9), derivative(1e-4)
    except Exception as exc:
        return "none", f"does not run in float64 ({type(exc).__name__}: {first_line(exc)})"
    if not torch.is_tensor(fine) or fine.dtype != torch.float64:
        return "none", "returns no float64 attention output for float64 inputs"
    disagreement = float((fine - coarse).abs().max()) / max(float(coarse.abs().max()), 1e-12)
    if disagreement < 1e-3:
        return "float64", "computes in float64 when handed float64"
    return "float32", (
        "computes in lower precision than float64 when handed float64 (a float32 softmax or "
        f"upcast: derivatives at steps 1e-9 and 1e-4 differ by {disagreement:.0%})"
    )


def gradcheck_float64(impl: Implementation, device: str, precision: str = "float64") -> tuple[str, str]:
    """torch.autograd.gradcheck, with the step and tolerances the function's own precision
    allows: a function that computes its softmax in float32 differs from float64 finite
    differences by float32 rounding, which is not a wrong backward."""
    if precision not in ("float64", "float32"):
        return "skipped", "not run: the function computes in low precision even from float64 inputs"
    s = impl.adapt(Scenario("gradcheck", b=1, h=1, lq=3, lk=4, d=4))
    c = make_case(s, 2, device, "upper-left")
    inputs = tuple(c[n].double().requires_grad_(True) for n in "qkv")
    options: dict[str, Any] = {}  # gradcheck's float keywords (eps, atol, rtol)
    if precision == "float32":
        eps = torch.finfo(torch.float32).eps
        options = {"eps": eps ** (1 / 3), "atol": 100 * eps ** (2 / 3), "rtol": 100 * eps ** (2 / 3)}
    try:
        ok = torch.autograd.gradcheck(lambda q, k, v: impl(q, k, v), inputs, raise_exception=False, **options)
    except Exception as exc:
        return "skipped", f"not run: does not run in float64 ({type(exc).__name__})"
    judged = (
        f" (judged at float32 precision: step {options['eps']:.1e}, tolerance {options['atol']:.1e})"
        if options
        else ""
    )
    if ok:
        return "pass", "analytic gradients agree with finite differences" + judged
    return "fail", "analytic gradients disagree with finite differences" + judged


def probe_grouped_kv(impl: Implementation, device: str) -> str:
    """Whether the function takes K/V with fewer heads than Q by itself; if so, its own GQA
    code is what the gqa scenarios test."""
    if impl.gqa:
        return "grouped K/V passed with enable_gqa=True"
    s = impl.adapt(Scenario("probe", h=4, hk=2))
    if impl.accepts(s):
        return f"K/V with fewer heads not passed: {impl.accepts(s)}"
    c = make_case(s, 4, device, "upper-left")
    impl.grouped_kv = True
    try:
        with torch.no_grad():
            out = impl(c["q"], c["k"], c["v"])
        if torch.is_tensor(out) and out.shape == c["q"].shape:
            return "grouped K/V passed as they are (2 KV heads for 4 query heads): its own GQA code is tested"
    except Exception as exc:
        impl.grouped_kv = False
        message = first_line(exc)
        raised = f"{type(exc).__name__}: " + (message if len(message) <= 80 else message[:79] + "…")
        return f"K/V heads expanded before the call (grouped K/V raised {raised})"
    impl.grouped_kv = False
    return "K/V heads expanded before the call (grouped K/V gave a wrongly shaped output)"


def sweep(
    impl: Implementation,
    level: str = "default",
    device: str = "cpu",
    align: str = "upper-left",
    lenient: bool = False,
    dtypes: list[str] | None = None,
    on_step: Callable[[str], None] | None = None,
    fail_on: str = "error",
) -> SweepReport:
    from attndbg.gradcheck.diagnose import diagnose

    impl.align = align
    report = SweepReport(impl.name, describe_convention(impl), device, align, fail_on=fail_on)
    dtypes = dtypes or list(DTYPES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layout_note = resolve_layout(impl, device)
        report.convention = describe_convention(impl)
        if layout_note:
            report.passed.append(layout_note)
        if any(s.hk for s in LEVELS[level]):
            report.passed.append(probe_grouped_kv(impl, device))
        if impl.scale_parameter and any(s.scale for s in LEVELS[level]):
            report.passed.append(f"{impl.scale_parameter}={CUSTOM_SCALE:g} in scenario custom-scale")
        for s in LEVELS[level]:
            for dtype in dtypes:
                if on_step:
                    on_step(f"{s.name} {dtype}")
                report.results.append(run_scenario(impl, s, dtype, device, align, lenient))
        report.mask_perturbation, perturbation_note = mask_perturbation(impl, device, align)
        report.precision, precision_note = working_precision(impl, device)
        report.gradcheck_float64, gradcheck_note = gradcheck_float64(impl, device, report.precision)
    report.notes = [perturbation_note, gradcheck_note, precision_note]
    messages = sorted({f"{w.category.__name__}: {first_line(str(w.message))}" for w in caught})
    report.notes.extend(f"the implementation warned — {m}" for m in messages[:3])
    diagnose(impl, report, device, align)
    return report


def sdpa_backends(device: str) -> list[tuple[str, Implementation]]:
    """PyTorch's own SDPA, one backend at a time (torch.nn.attention.sdpa_kernel)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = ["MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"]
    if device == "cpu":
        names = ["MATH", "FLASH_ATTENTION"]
    backends = []
    for name in names:
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue

        def run(  # noqa: ANN202
            query,  # noqa: ANN001
            key,  # noqa: ANN001
            value,  # noqa: ANN001
            attn_mask=None,  # noqa: ANN001
            is_causal=False,  # noqa: ANN001
            scale=None,  # noqa: ANN001
            enable_gqa=False,  # noqa: ANN001
            backend=backend,  # noqa: ANN001
        ):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(
                    query,
                    key,
                    value,
                    attn_mask=attn_mask,
                    is_causal=is_causal,
                    scale=scale,
                    enable_gqa=enable_gqa,
                )

        implementation = implementation_of(f"sdpa[{name.lower()}]", run)
        implementation.backend = True
        backends.append((name.lower(), implementation))
    return backends
