"""`attndbg gradcheck --impl`: a conformance sweep of an attention implementation against the
float64 reference, forward and backward, in every dtype, over the shapes and masks that break
attention code. Returns data; the CLI renders it.

Comparison rule (as in the best kernel test suites): three results on identical inputs —
*test* (the implementation in dtype D), *golden* (plain math attention in float64 for float32
inputs, float32 otherwise), *lowp* (the same math in D). For out, dQ, dK, dV:
``max|test − golden| ≤ k·max|lowp − golden| + floor`` with k = 2 for the output and 3 for
gradients (×2 with ``lenient``), ``floor = max(2·max|(golden + 0.3 − 0.3) − golden| in D, 1e-5)``,
and ``mean|test − golden| ≤ 1.5·mean|lowp − golden| + floor`` against systematic bias.
"""

from __future__ import annotations

import inspect as pyinspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from attndbg.attention import causal_keep, expand_kv_heads, reference_attention
from attndbg.errors import InputError, UsageError, first_line
from attndbg.gradcheck.gradients import gradients

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Scenario:
    name: str
    b: int = 2
    h: int = 2
    hk: int | None = None
    lq: int = 8
    lk: int = 8
    d: int = 16
    dv: int | None = None
    mask: str = "none"  # none | bool-padding | additive-padding | fully-masked
    causal: bool = False


QUICK = [
    Scenario("basic"),
    Scenario("padding-bool", mask="bool-padding"),
    Scenario("fully-masked-row", mask="fully-masked"),
    Scenario("causal", causal=True),
]
DEFAULT = [
    *QUICK,
    Scenario("odd-sizes", b=1, h=3, lq=5, lk=7, d=12, dv=10),
    Scenario("q_len!=k_len", lq=3, lk=9),
    Scenario("gqa", h=4, hk=2),
    Scenario("empty-query", lq=0, lk=5),
    Scenario("padding-additive", mask="additive-padding"),
    Scenario("causal q_len<k_len", lq=4, lk=8, causal=True),
]
THOROUGH = [
    *DEFAULT,
    Scenario("long", b=1, h=4, lq=128, lk=128, d=64),
    Scenario("long-causal", b=1, h=4, lq=96, lk=128, d=64, causal=True),
    Scenario("many-heads-gqa", b=3, h=8, hk=2, lq=17, lk=33, d=32, mask="bool-padding"),
    Scenario("single-key", lq=4, lk=1),
]
LEVELS = {"quick": QUICK, "default": DEFAULT, "thorough": THOROUGH}


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


@dataclass
class Diagnosis:
    code: str
    message: str
    scenarios: list[str] = field(default_factory=list)


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

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.verdict] = counts.get(result.verdict, 0) + 1
        return counts

    def exit_code(self) -> int:
        failed = any(r.verdict in ("fail", "error") for r in self.results)
        return 1 if failed or self.gradcheck_float64 == "fail" or self.mask_perturbation == "fail" else 0

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, **asdict(self), "exit_code": self.exit_code()}


# ---- the implementation under test ---------------------------------------------------------
@dataclass
class Implementation:
    name: str
    fn: Callable
    convention: str  # "sdpa" | "seeds" | "qkv"
    gqa: bool = False

    def __call__(self, q, k, v, keep=None, bias=None, causal=False):  # noqa: ANN001, ANN204
        """keep: bool (…, Lq, Lk) True = attend; bias: additive float; causal already folded in
        by the caller when a mask is given (SDPA refuses both)."""
        if k.shape[-3] != q.shape[-3] and not self.gqa:
            k, v = expand_kv_heads(k, q.shape[-3]), expand_kv_heads(v, q.shape[-3])
        kwargs: dict[str, Any] = {}
        if self.convention == "sdpa":
            if bias is not None:
                kwargs["attn_mask"] = bias.to(q.dtype)
            elif keep is not None:
                kwargs["attn_mask"] = keep
            if causal:
                kwargs["is_causal"] = True
            if self.gqa and k.shape[-3] != q.shape[-3]:
                kwargs["enable_gqa"] = True
        elif self.convention == "seeds":
            if causal:  # the seeds' signature has no is_causal: the mask carries it
                lq, lk = q.shape[-2], k.shape[-2]
                tri = causal_keep(lq, lk, "upper-left", q.device)
                keep = tri if keep is None else keep & tri
            if bias is not None:
                keep = bias > -1e4 if keep is None else keep & (bias > -1e4)
            if keep is not None:
                kwargs["mask"] = keep.to(torch.int64)
        out = self.fn(q, k, v, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def load_implementation(spec: str) -> Implementation:
    from attndbg.recording.sources import _import, _split_factory

    split = _split_factory(spec)
    if split is None:
        raise UsageError(f"--impl {spec!r}: expected module:function or path/to/file.py:function")
    module = _import(split[0])
    fn = getattr(module, split[1], None)
    if not callable(fn):
        raise InputError(f"--impl {spec}: {split[0]} has no function {split[1]}")
    try:
        params = pyinspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    names = set(params)
    if {"attn_mask", "is_causal"} & names:
        convention = "sdpa"
    elif "mask" in names:
        convention = "seeds"
    else:
        convention = "qkv"
    return Implementation(spec, fn, convention, gqa="enable_gqa" in names)


def describe_convention(impl: Implementation) -> str:
    return {
        "sdpa": "SDPA style (query, key, value, attn_mask=None, is_causal=False, scale=None): bool "
        "masks True = attend, float masks added",
        "seeds": "mask style (query, key, value, mask=None): mask 1 = attend, 0 = masked",
        "qkv": "(query, key, value) only: mask and causal scenarios are skipped",
    }[impl.convention] + ("; passes enable_gqa" if impl.gqa else "; K/V heads expanded before the call")


# ---- inputs --------------------------------------------------------------------------------
def make_case(s: Scenario, seed: int, device: str, align: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    hk, dv = s.hk or s.h, s.dv or s.d
    q = torch.randn(s.b, s.h, s.lq, s.d, generator=g)
    k = torch.randn(s.b, hk, s.lk, s.d, generator=g)
    v = torch.randn(s.b, hk, s.lk, dv, generator=g)
    upstream = torch.randn(s.b, s.h, s.lq, dv, generator=g)
    keep = None
    bias = None
    if s.mask in ("bool-padding", "additive-padding"):
        keep = torch.ones(s.b, 1, 1, s.lk, dtype=torch.bool)
        keep[-1, ..., max(1, s.lk - 3) :] = False
        keep = keep.expand(s.b, 1, s.lq, s.lk).clone()
    elif s.mask == "fully-masked":
        keep = torch.ones(s.b, 1, s.lq, s.lk, dtype=torch.bool)
        keep[:, :, min(2, s.lq - 1)] = False
    if s.causal and keep is not None:
        keep = keep & causal_keep(s.lq, s.lk, align)
    if s.mask == "additive-padding":
        bias = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    move = {"device": device}
    return {
        "q": q.to(**move),
        "k": k.to(**move),
        "v": v.to(**move),
        "upstream": upstream.to(**move),
        "keep": None if keep is None else keep.to(**move),
        "bias": None if bias is None else bias.to(**move),
    }


def _grads(fn: Callable, c: dict, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(out, dQ, dK, dV) of ``fn`` on the scenario's inputs cast to ``dtype``."""
    return gradients(fn, *(c[n].to(dtype) for n in "qkv"), c["upstream"])


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
    if impl.convention == "qkv" and (s.mask != "none" or s.causal):
        return Result(s.name, dtype_name, "skipped", reasons=["the implementation takes no mask"])
    c = make_case(s, seed, device, align)
    causal_only = s.causal and c["keep"] is None  # a mask, when present, already holds causality
    golden_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    test_fn = lambda q, k, v: impl(q, k, v, keep=c["keep"], bias=c["bias"], causal=causal_only)  # noqa: E731
    try:
        test = _grads(test_fn, c, dtype)
    except Exception as exc:  # the implementation's own failure is a result, not a crash
        message = f"{type(exc).__name__}: {first_line(exc)}"
        refused = "available kernel" in message or "not supported" in message.lower()
        return Result(s.name, dtype_name, "refused" if refused else "error", reasons=[message])
    # golden and lowp see the same (rounded) inputs as the test
    rounded = {**c, **{n: c[n].to(dtype) for n in "qkv"}}
    golden = _grads(
        _reference_fn(rounded, causal_only, align),
        {**rounded, **{n: rounded[n].to(golden_dtype) for n in "qkv"}},
        golden_dtype,
    )
    lowp = _grads(_reference_fn(rounded, causal_only, align), rounded, dtype)
    factor = 2.0 if lenient else 1.0
    reasons = []
    worst_forward = worst_grad = None
    bound_forward = bound_grad = None
    for index, (label, k_factor) in enumerate((("out", 2.0), ("dQ", 3.0), ("dK", 3.0), ("dV", 3.0))):
        t, gld, low = test[index], golden[index], lowp[index]
        bad_test = ~torch.isfinite(t)
        if bool((bad_test & torch.isfinite(gld.to(t.dtype))).any()):
            reasons.append(f"{label} has {int(bad_test.sum())} non-finite values the reference does not")
            continue
        floor = _floor(gld, dtype)
        max_t, mean_t = _errors(t, gld)
        max_l, mean_l = _errors(low, gld)
        bound = k_factor * factor * max_l + floor
        if label == "out":
            worst_forward, bound_forward = max_t, bound
        elif worst_grad is None or max_t / bound > worst_grad / bound_grad:
            worst_grad, bound_grad = max_t, bound
        if max_t > bound:
            reasons.append(f"{label}: max error {max_t:.2e} > bound {bound:.2e}")
        elif mean_t > 1.5 * factor * mean_l + floor:
            reasons.append(f"{label}: mean error {mean_t:.2e} > 1.5 × lowp's {mean_l:.2e} (bias)")
    if s.mask == "fully-masked":
        dead = ~c["keep"].expand(s.b, s.h, s.lq, s.lk).any(-1)
        out = test[0]
        if out.numel() and bool((out[dead] != 0).any()):
            reasons.append("fully masked rows are not exactly 0 in the output")
    verdict = "fail" if reasons else "pass"
    return Result(s.name, dtype_name, verdict, worst_forward, bound_forward, worst_grad, bound_grad, reasons)


def diagnose_failures(impl: Implementation, report: SweepReport, device: str, align: str) -> None:
    """Name the bug where the failure has a recognisable signature."""
    failing = [r for r in report.results if r.verdict == "fail"]
    if not failing:
        return
    scenarios = {s.name: s for s in THOROUGH}
    signatures = [
        (
            "SCL001",
            "outputs match the reference computed without the 1/√d scale: missing scale",
            {"scale": 1.0},
        ),
        (
            "SMX002",
            "outputs match softmax over the query axis: softmax over the wrong dim",
            {"softmax_dim": -2},
        ),
    ]
    other = "lower-right" if align == "upper-left" else "upper-left"
    named: dict[str, Diagnosis] = {}
    for result in failing:
        s = scenarios.get(result.scenario)
        if s is None or result.dtype != "float32":
            continue
        c = make_case(s, 0, device, align)
        causal_only = s.causal and c["keep"] is None
        test = (
            impl(c["q"], c["k"], c["v"], keep=c["keep"], bias=c["bias"], causal=causal_only).detach().double()
        )
        c64 = {**c, **{n: c[n].double() for n in "qkv"}}
        for code, message, variant in signatures:
            alt = _reference_fn(c64, causal_only, align, **variant)(c64["q"], c64["k"], c64["v"])
            if test.numel() and float((test - alt).abs().max()) < 1e-4:
                named.setdefault(code, Diagnosis(code, message)).scenarios.append(s.name)
        if s.causal:
            keep = c["keep"]
            c_alt = make_case(s, 0, device, other)
            alt = _reference_fn({**c_alt, **{n: c_alt[n].double() for n in "qkv"}}, causal_only, other)(
                c64["q"], c64["k"], c64["v"]
            )
            if test.numel() and keep is None and float((test - alt).abs().max()) < 1e-4:
                named.setdefault(
                    "MSK006",
                    Diagnosis(
                        "MSK006",
                        f"causal outputs match the {other} alignment, not {align}: the causal mask "
                        "is aligned the other way (PyTorch's is_causal is upper-left; "
                        "FlashAttention's is lower-right)",
                    ),
                ).scenarios.append(s.name)
    nan_grads = [
        r
        for r in failing
        if any("non-finite" in reason and reason[:2] in ("dQ", "dK") for reason in r.reasons)
    ]
    if nan_grads and all(scenarios.get(r.scenario, Scenario("")).mask == "fully-masked" for r in nan_grads):
        forward_ok = all(not any(reason.startswith("out") for reason in r.reasons) for r in nan_grads)
        if forward_ok:
            named["GRD002"] = Diagnosis(
                "GRD002",
                "NaN gradients only on fully masked rows while the forward is finite: "
                "nan_to_num hides the NaN in the forward pass only (-inf added to the scores); use "
                "masked_fill, or SDPA",
                sorted({r.scenario for r in nan_grads}),
            )
    low_only = [r for r in failing if r.dtype != "float32"]
    if low_only and len(low_only) == len(failing):
        masked = [r for r in low_only if scenarios.get(r.scenario, Scenario("")).mask != "none"]
        if masked and len(masked) == len(low_only):
            named["MSK007"] = Diagnosis(
                "MSK007",
                "failures only in float16/bfloat16 with masks: -inf / finfo.min handling in low precision",
                sorted({r.scenario for r in masked}),
            )
    gradient_only = [
        r for r in failing if r.reasons and all(not reason.startswith("out") for reason in r.reasons)
    ]
    if gradient_only and not named and not report.diagnoses:
        named["GRD001"] = Diagnosis(
            "GRD001",
            "the forward matches but the gradients do not: the backward is wrong",
            sorted({r.scenario for r in gradient_only}),
        )
    report.diagnoses.extend(named.values())


def mask_perturbation(impl: Implementation, device: str, align: str) -> tuple[str, str]:
    """Huge values in the masked keys and values must change neither the output nor dQ: an
    implementation that masks after the softmax, or with a weak fill, lets them through even
    when its outputs look close. (NaN there is not required to stay out: 0·NaN is NaN in every
    matmul, PyTorch's own kernels included.)"""
    if impl.convention == "qkv":
        return "skipped", "the implementation takes no mask"
    s = Scenario("perturbation", mask="bool-padding")
    c = make_case(s, 1, device, align)
    fn = lambda q, k, v: impl(q, k, v, keep=c["keep"])  # noqa: E731
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


def gradcheck_float64(impl: Implementation, device: str) -> tuple[str, str]:
    s = Scenario("gradcheck", b=1, h=1, lq=3, lk=4, d=4)
    c = make_case(s, 2, device, "upper-left")
    inputs = tuple(c[n].double().requires_grad_(True) for n in "qkv")
    try:
        ok = torch.autograd.gradcheck(lambda q, k, v: impl(q, k, v), inputs, raise_exception=False)
    except Exception as exc:
        return "skipped", f"does not run in float64 ({type(exc).__name__})"
    return (
        ("pass", "float64 gradcheck passes")
        if ok
        else ("fail", "float64 gradcheck fails: the backward disagrees with finite differences")
    )


def sweep(
    impl: Implementation,
    level: str = "default",
    device: str = "cpu",
    align: str = "upper-left",
    lenient: bool = False,
    dtypes: list[str] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> SweepReport:
    report = SweepReport(impl.name, describe_convention(impl), device, align)
    dtypes = dtypes or list(DTYPES)
    for s in LEVELS[level]:
        for dtype in dtypes:
            if on_step:
                on_step(f"{s.name} {dtype}")
            report.results.append(run_scenario(impl, s, dtype, device, align, lenient))
    report.mask_perturbation, note = mask_perturbation(impl, device, align)
    report.notes.append(note)
    report.gradcheck_float64, note = gradcheck_float64(impl, device)
    report.notes.append(note)
    if report.mask_perturbation == "fail":
        report.diagnoses.append(Diagnosis("MSK002", "masked key/value positions leak: " + report.notes[0]))
    diagnose_failures(impl, report, device, align)
    if report.gradcheck_float64 == "fail" and not any(d.code == "GRD001" for d in report.diagnoses):
        report.diagnoses.append(Diagnosis("GRD001", report.notes[1]))
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

        def run(query, key, value, attn_mask=None, is_causal=False, enable_gqa=False, backend=backend):  # noqa: ANN001, ANN202
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(
                    query, key, value, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=enable_gqa
                )

        backends.append((name.lower(), Implementation(f"sdpa[{name.lower()}]", run, "sdpa", gqa=True)))
    return backends
