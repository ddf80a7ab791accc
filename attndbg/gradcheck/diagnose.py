"""Name what a sweep found. Every failing criterion ends in a diagnosis with a code and a
severity, so that ``--fail-on`` decides the exit code as it does for ``inspect``:

- the implementation raised: MSK007 when a fill value does not fit the dtype, else GRD004;
- rows with nothing to attend: MSK001, severity by behaviour (NaN error, uniform warning,
  zeros info), MSK007 when the behaviour changes with the dtype (a fill that overflows);
- NaN gradients under a finite forward: GRD002;
- outputs that match a variant of the reference, fitted on the float32 results: the applied
  scale (SCL001 none, SCL002 wrong — named), softmax over queries (SMX002), the causal
  diagonal (MSK006 other alignment, MSK005 off by one), the mask read inverted (MSK004) or
  added as 0/1 (MSK003), KV heads tiled instead of repeated (GRD005);
- masked keys that leak (MSK002; MSK007, a warning, when a weak finite fill such as -100
  added to the scores explains the leak), a backward that disagrees with finite differences (GRD001);
- anything left: SMX004 (forward differs) or GRD001 (only gradients differ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from attndbg.attention import causal_keep
from attndbg.gradcheck.implementation import Implementation
from attndbg.gradcheck.scenarios import SCENARIOS, Scenario, make_case
from attndbg.gradcheck.sweep import Diagnosis, Result, SweepReport, call_with
from attndbg.report import Severity
from attndbg.scales import describe_scale, fit_log_scale

MASKED_ROWS = {
    "nan": (
        "error",
        "rows with nothing to attend give NaN (softmax over all -inf is 0/0); one such row makes the "
        "loss and every gradient of the batch NaN — zero those rows, as SDPA does",
    ),
    "other": (
        "error",
        "rows with nothing to attend give neither zeros nor a uniform average: the fill value does "
        "not dominate the scores in every dtype",
    ),
    "uniform": (
        "warning",
        "rows with nothing to attend average V over every (masked) key — a finite fill (-1e9, "
        "finfo.min, -1e4) leaks masked values into those rows; harmless when they are padding "
        "queries whose outputs are discarded",
    ),
    "zeros": ("info", "rows with nothing to attend give zeros, as PyTorch's SDPA does"),
}
BEHAVIOUR_RANK = {"zeros": 0, "uniform": 1, "other": 2, "nan": 3}
OVERFLOW = ("without overflow", "cannot be converted to type")


class Diagnoses:
    """Diagnoses by code, in the order found; each remembers the scenarios it explains."""

    def __init__(self) -> None:
        self.by_code: dict[str, Diagnosis] = {}

    def add(
        self, code: str, severity: str, message: str, scenario: str | None = None, dtype: str | None = None
    ) -> Diagnosis:
        diagnosis = self.by_code.setdefault(code, Diagnosis(code, message, severity=severity))
        if Severity(severity).rank > Severity(diagnosis.severity).rank:
            diagnosis.severity, diagnosis.message = severity, message
        if scenario and scenario not in diagnosis.scenarios:
            diagnosis.scenarios.append(scenario)
        if dtype and dtype not in diagnosis.dtypes:
            diagnosis.dtypes.append(dtype)
        return diagnosis

    def explains(self, result: Result) -> bool:
        return any(
            result.scenario in d.scenarios and (not d.dtypes or result.dtype in d.dtypes)
            for d in self.by_code.values()
        )


def diagnose(impl: Implementation, report: SweepReport, device: str, align: str) -> None:
    """Fill ``report.diagnoses``: the bugs a signature names first, then what the exceptions
    and the rows with nothing to attend show, then whatever failure is left."""
    found = Diagnoses()
    _fits(impl, report, found, device, align)
    mask_semantics = {"MSK003", "MSK004"} & set(found.by_code)
    ordinary_masks_pass = not any(
        r.dtype == "float32" and r.verdict == "fail" and r.scenario.startswith("padding")
        for r in report.results
    )
    weak_fill = None
    if report.mask_perturbation == "fail" and ordinary_masks_pass:
        weak_fill = _weak_fill(impl, device, align)
    if weak_fill is not None and not mask_semantics:
        found.add(
            "MSK007",
            "warning",
            f"masked keys are filled with {weak_fill:g}, added to their scores: they weigh nothing while "
            f"scores stay within about {-weak_fill:g} of each other, but a key that scores higher leaks "
            f"({report.notes[0]}); fill with -inf or torch.finfo(scores.dtype).min",
        )
    elif report.mask_perturbation == "fail" and not mask_semantics:
        found.add("MSK002", "error", "masked key/value positions leak: " + report.notes[0])
    elif report.mask_perturbation == "fail":
        for code in mask_semantics:
            found.by_code[code].evidence += f"mask perturbation: {report.notes[0]}"
    if report.gradcheck_float64 == "fail":
        found.add("GRD001", "error", f"float64 gradcheck: {report.notes[1]}: the backward is wrong")
    _exceptions(report, found)
    if report.mask_perturbation == "error":
        found.add("GRD004", "error", "the implementation raised: " + report.notes[0])
    _masked_rows(report, found)
    if mask_semantics:  # under a misread mask, what rows with nothing to attend do means nothing
        found.by_code.pop("MSK001", None)
    _unexplained(report, found)
    _declared_scale(impl, found)
    report.diagnoses = sorted(found.by_code.values(), key=lambda d: -Severity(d.severity).rank)


def _declared_scale(impl: Implementation, found: Diagnoses) -> None:
    """A signature whose scale parameter defaults to a number declares that scale: the sweep
    checks the function as attention with it, and says so — callers that leave it out do
    not get 1/√d."""
    value, name = impl.declared_scale, impl.scale_parameter
    if value is None:
        return
    if value == 1.0:
        found.add(
            "SCL001",
            "info",
            f"declares {name}=1 by default (no 1/√d), and was checked as such: right where the query "
            f"projection absorbs 1/√d (T5), missing wherever a caller leaves {name} out",
        )
        return
    found.add(
        "SCL002",
        "info",
        f"declares a fixed {name}={value:g} by default whatever the head size, and was checked as "
        f"such: callers with other head sizes must pass {name}",
    )


WEAK_FILLS = (-10.0, -100.0, -1000.0, -10000.0)


def _weak_fill(impl: Implementation, device: str, align: str) -> float | None:
    """The finite fill an implementation adds to masked scores, when that is what lets keys
    through: on inputs where every masked key scores exactly -fill and the others about 0,
    a fill of that size gives the masked keys real weight — the output is the reference's
    with that fill, neither the masked one nor the unmasked one. None when no such fill
    explains the leak (a mask applied after the softmax, one that masks nothing)."""
    from attndbg.attention import reference_attention

    s = impl.adapt(Scenario("perturbation", mask="bool-padding"))
    c = make_case(s, 1, device, align)
    keep = c["keep"]
    masked = (~keep[:, 0, 0])[:, None, :, None]  # (B, 1, Lk, 1)
    scale = s.scale if s.scale is not None else s.d**-0.5
    direction = torch.nn.functional.normalize(c["q"][:1, :1, :1], dim=-1)  # one unit query for every row
    q = direction.expand(c["q"].shape).clone()
    for fill in WEAK_FILLS:
        k = torch.where(masked, direction * (-fill / scale), 0.1 * c["k"])
        try:
            with torch.no_grad():
                test = call_with(impl, s, {**c, "q": q, "k": k}, False)(q, k, c["v"]).double()
        except Exception:
            return None
        matches = Matcher(test, None)
        bias = torch.zeros(keep.shape, dtype=torch.float64, device=keep.device).masked_fill(~keep, fill)
        if matches(reference_attention(q.double(), k.double(), c["v"].double(), mask=bias, scale=s.scale)):
            return fill
    return None


def _exceptions(report: SweepReport, found: Diagnoses) -> None:
    for result in report.results:
        if result.verdict != "error":
            continue
        message = result.reasons[0] if result.reasons else "an exception"
        if any(marker in message for marker in OVERFLOW) and result.dtype != "float32":
            diagnosis = found.add(
                "MSK007",
                "error",
                f"a fill value does not fit {result.dtype}: masking raises ({message}); fill with "
                "torch.finfo(scores.dtype).min, or -inf with a guard for rows with nothing to attend",
                result.scenario,
                result.dtype,
            )
        else:
            diagnosis = found.add(
                "GRD004",
                "error",
                f"the implementation raised ({message}): it fails on these inputs",
                result.scenario,
                result.dtype,
            )
        if message not in diagnosis.evidence:
            diagnosis.evidence = "; ".join(filter(None, [diagnosis.evidence, message]))


def _masked_rows(report: SweepReport, found: Diagnoses) -> None:
    behaviours: dict[str, str] = {}
    scenarios = []
    for result in report.results:
        if result.masked_rows is None:
            continue
        scenarios.append(result.scenario)
        worst = behaviours.get(result.dtype)
        if worst is None or BEHAVIOUR_RANK[result.masked_rows] > BEHAVIOUR_RANK[worst]:
            behaviours[result.dtype] = result.masked_rows
        nan_grads = [r for r in result.reasons if "non-finite" in r and r[:2] in ("dQ", "dK")]
        if nan_grads and result.masked_rows in ("zeros", "uniform"):
            found.add(
                "GRD002",
                "error",
                "NaN gradients on rows with nothing to attend while the forward is finite: -inf added "
                "to the scores then nan_to_num hides the NaN in the forward only; use masked_fill, "
                "or SDPA",
                result.scenario,
            )
    if not behaviours:
        return
    base = behaviours.get("float32") or min(behaviours.values(), key=BEHAVIOUR_RANK.__getitem__)
    severity, message = MASKED_ROWS[base]
    diagnosis = found.add("MSK001", severity, message)
    diagnosis.scenarios = sorted(set(scenarios))
    diagnosis.dtypes = [d for d, b in behaviours.items() if b == base]
    diagnosis.evidence = ", ".join(f"{dtype}: {b}" for dtype, b in behaviours.items())
    for dtype, behaviour in behaviours.items():
        if BEHAVIOUR_RANK[behaviour] > BEHAVIOUR_RANK[base] and behaviour in ("nan", "other"):
            narrowed = found.add(
                "MSK007",
                "error",
                f"the fill value overflows in low precision: rows with nothing to attend are {base} "
                f"in float32 but {behaviour} in {dtype} (a fill like -1e6 or finfo(float32).min becomes "
                "-inf); fill with torch.finfo(scores.dtype).min",
                dtype=dtype,
            )
            narrowed.scenarios = sorted(set(scenarios) | set(narrowed.scenarios))
            narrowed.evidence = diagnosis.evidence


# ---- fitting the float32 failures against variants of the reference -------------------------
def _fits(impl: Implementation, report: SweepReport, found: Diagnoses, device: str, align: str) -> None:
    for result in report.results:
        s = SCENARIOS.get(result.scenario)
        if result.verdict == "fail" and result.dtype == "float32" and s is not None:
            _fit_scenario(impl, s, found, device, align)


def _fit_scenario(impl: Implementation, s: Scenario, found: Diagnoses, device: str, align: str) -> None:
    """Compare the function's float32 output on ``s`` with variants of the reference; the
    first variant that explains it names the bug."""
    from attndbg.attention import reference_attention

    s = impl.adapt(s)
    c = make_case(s, 0, device, align)
    causal_only = s.causal and c["keep"] is None
    try:
        with torch.no_grad():
            test = call_with(impl, s, c, causal_only)(c["q"], c["k"], c["v"]).double()
    except Exception:  # it ran in the sweep; a second call that fails names nothing
        return
    matches = Matcher(test, None if c["dead"] is None else ~c["dead"][..., None])
    handed = c["keep"]  # the keep-mask the function was handed, causal folded in
    if causal_only and impl.causal_parameter is None:
        handed = causal_keep(s.lq, s.lk, align, test.device)
    q, k, v = (c[n].double() for n in "qkv")
    mask = c["bias"].double() if c["bias"] is not None else c["keep"]

    def attention(mask=mask, is_causal=causal_only, scale=s.scale, k=k, v=v, **variant):  # noqa: ANN001, ANN003, ANN202
        return reference_attention(
            q, k, v, mask=mask, is_causal=is_causal, scale=scale, align=align, **variant
        )

    if matches(attention()):  # the forward is right here: only the gradients can be wrong
        return
    for fit in (
        partial(_fit_scale, s, attention, matches, found),
        partial(_fit_softmax_axis, s, attention, matches, found),
        partial(_fit_causal, s, c, impl, attention, matches, found, align),
        partial(_fit_mask, s, handed, c["bias"], attention, matches, found),
        partial(_fit_mask_after_softmax, s, handed, (q, k, v), matches, found),
        partial(_fit_gqa, s, k, v, attention, matches, found),
        partial(_fit_alibi, s, c["bias"] if c["bias"] is not None else handed, attention, matches, found),
    ):
        if fit():
            return


class Matcher:
    """Compares candidate outputs with the implementation's float32 output on the rows that
    have something to attend and where both are finite."""

    def __init__(self, test: torch.Tensor, live: torch.Tensor | None) -> None:
        self.test, self.live = test, live

    def distance(self, candidate: torch.Tensor) -> float:
        if candidate.shape != self.test.shape or self.test.numel() == 0:
            return math.inf
        both = torch.isfinite(candidate) & torch.isfinite(self.test)
        if self.live is not None:
            both = both & self.live
        return float((candidate - self.test).abs()[both].max()) if bool(both.any()) else math.inf

    @property
    def tolerance(self) -> float:
        return 1e-4 * max(1.0, float(self.test.nan_to_num().abs().max()))

    def __call__(self, candidate: torch.Tensor) -> bool:
        return self.distance(candidate) <= self.tolerance


def _fit_scale(s: Scenario, attention: Callable, matches: Matcher, found: Diagnoses) -> bool:
    """The scale the outputs were computed with: a named scale, else the best fit."""
    fitted = fit_log_scale(
        lambda scale: matches.distance(attention(scale=scale)), s.d, s.h, enough=matches.tolerance
    )
    return matches(attention(scale=fitted)) and _name_scale(s, fitted, found)


def _name_scale(s: Scenario, value: float, found: Diagnoses) -> bool:
    expected = s.scale if s.scale is not None else s.d**-0.5
    if abs(math.log(value / expected)) < 1e-6:
        return False
    name = describe_scale(value, s.d, s.h)
    if s.scale is not None:
        found.add(
            "SCL002",
            "error",
            f"the scale it is passed is ignored: scenario {s.name} passed scale={s.scale:g}, the "
            f"outputs match scale {name}",
            s.name,
        )
        return True
    if value == 1.0:
        found.add(
            "SCL001",
            "error",
            "outputs match the reference computed without the 1/√d scale: missing scale",
            s.name,
        )
        return True
    diagnosis = found.add(
        "SCL002",
        "error",
        f"the scale is present but wrong: outputs match scale {name} where 1/√{s.d} is expected",
        s.name,
    )
    # the message names the first scenario's scale; each scenario's own sizes give its own value
    fit = f"{s.name}: fitted scale {value:.4g}, expected {expected:.4g} (d_head {s.d}, heads {s.h})"
    diagnosis.evidence = "; ".join(filter(None, [diagnosis.evidence, fit]))
    return True


def _fit_softmax_axis(s: Scenario, attention: Callable, matches: Matcher, found: Diagnoses) -> bool:
    if matches(attention(softmax_dim=-2)):
        found.add(
            "SMX002", "error", "outputs match softmax over the query axis: softmax over the wrong dim", s.name
        )
        return True
    return False


def _fit_causal(
    s: Scenario,
    c: dict,
    impl: Implementation,
    attention: Callable,
    matches: Matcher,
    found: Diagnoses,
    align: str,
) -> bool:
    """Which causal diagonal the function applied, when it applies its own (a causal flag)."""
    if not s.causal or c["keep"] is not None or impl.causal_parameter is None:
        return False
    lq, lk = s.lq, s.lk
    expected = lk - lq if align == "lower-right" else 0
    other = 0 if align == "lower-right" else lk - lq
    for offset in sorted({other, expected - 1, expected + 1} - {expected}, key=lambda o: o != other):
        keep = torch.ones(lq, lk, dtype=torch.bool, device=c["q"].device).tril(offset)
        if not matches(attention(mask=keep, is_causal=False)):
            continue
        if offset == other:
            other_name = "lower-right" if align == "upper-left" else "upper-left"
            found.add(
                "MSK006",
                "error",
                f"causal outputs match the {other_name} alignment, not {align}: the causal mask is "
                "aligned the other way (PyTorch's is_causal is upper-left; FlashAttention's is lower-right)",
                s.name,
            )
        else:
            leak = offset > expected
            found.add(
                "MSK005",
                "error",
                "the causal diagonal is off by one: each query "
                + ("sees one future key" if leak else "misses the last key it may see"),
                s.name,
            )
        return True
    return False


def _fit_mask(
    s: Scenario,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    attention: Callable,
    matches: Matcher,
    found: Diagnoses,
) -> bool:
    """How a mask the function was handed was read: added as 0/1, or inverted."""
    if keep is None:
        return False
    if bias is None and matches(attention(mask=keep.double(), is_causal=False)):
        found.add(
            "MSK003",
            "error",
            "the bool keep-mask was added to the scores (as 0/1), so it masks nothing: the function "
            "treats every mask as additive — convert with torch.zeros(...).masked_fill(~mask, -inf)",
            s.name,
        )
        return True
    if matches(attention(mask=~keep, is_causal=False)):
        found.add(
            "MSK004",
            "error",
            "outputs match the mask read inverted: True/1 taken as 'masked' (key_padding_mask's "
            "convention) where it means 'attend'",
            s.name,
        )
        return True
    return False


def _fit_mask_after_softmax(
    s: Scenario, keep: torch.Tensor | None, qkv: tuple[torch.Tensor, ...], matches: Matcher, found: Diagnoses
) -> bool:
    """Weights multiplied by the mask after the softmax, not renormalised: rows no longer sum to 1."""
    if keep is None:
        return False
    from attndbg.attention import expand_kv_heads

    q, k, v = qkv
    k, v = expand_kv_heads(k, q.shape[-3]), expand_kv_heads(v, q.shape[-3])
    scale = s.scale if s.scale is not None else q.shape[-1] ** -0.5
    weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) * keep
    if matches(weights @ v):
        found.add(
            "SMX001",
            "error",
            "the mask is applied by multiplying the weights after the softmax, without renormalising: "
            "rows with masked keys sum to less than 1 — mask the scores before the softmax",
            s.name,
        )
        return True
    return False


def _fit_gqa(
    s: Scenario, k: torch.Tensor, v: torch.Tensor, attention: Callable, matches: Matcher, found: Diagnoses
) -> bool:
    if not s.hk or s.hk == s.h:
        return False
    reps = s.h // s.hk
    if matches(attention(k=k.repeat(1, reps, 1, 1), v=v.repeat(1, reps, 1, 1))):
        found.add(
            "GRD005",
            "warning",
            "grouped-query attention maps query head h to KV head h % kv_heads (KV heads tiled), not "
            "h // (heads / kv_heads) as repeat_kv, repeat_interleave and SDPA's enable_gqa do: right "
            "for checkpoints trained with it, wrong for weights trained the usual way",
            s.name,
        )
        return True
    return False


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's per-head slopes (Press et al.): 2^(-8/n)·k for n heads, interleaved when the
    head count is not a power of two."""

    def geometric(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return geometric(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return geometric(closest) + alibi_slopes(2 * closest)[0::2][: heads - closest]


def _fit_alibi(
    s: Scenario, mask: torch.Tensor | None, attention: Callable, matches: Matcher, found: Diagnoses
) -> bool:
    """Outputs that are attention plus ALiBi's linear distance bias -m_h·(i - j): a position
    bias by design (BLOOM, MPT, fairseq's ALiBi), named so that it is not taken for a bug."""
    slopes = torch.tensor(alibi_slopes(s.h), dtype=torch.float64)
    i = torch.arange(s.lq)[:, None] + (s.lk - s.lq)
    j = torch.arange(s.lk)[None, :]
    bias = (slopes[:, None, None] * (j - i)).to(matches.test.device)  # (H, Lq, Lk)
    if mask is not None and mask.dtype == torch.bool:
        bias = torch.where(mask, bias, float("-inf"))
    elif mask is not None:
        bias = bias + mask
    if not matches(attention(mask=bias, is_causal=s.causal and mask is None)):
        return False
    found.add(
        "SMX004",
        "warning",
        "outputs match plain attention plus ALiBi's linear position bias (per-head slopes 2^(-8k/heads) "
        "times the key–query distance): a position bias by design, not a bug — pass the bias as "
        "attn_mask to the reference to compare the rest",
        s.name,
    )
    return True


def _unexplained(report: SweepReport, found: Diagnoses) -> None:
    float32_passed = {r.scenario for r in report.results if r.dtype == "float32" and r.verdict == "pass"}
    for result in report.results:
        if result.verdict != "fail" or found.explains(result):
            continue
        forward = any(reason.startswith("out") for reason in result.reasons)
        finite = not any("non-finite" in reason for reason in result.reasons)
        if result.dtype != "float32" and result.scenario in float32_passed and finite:
            diagnosis = found.add(
                "SMX004",
                "warning",
                "right in float32 but less precise than plain attention in low precision: errors "
                "beyond the bound the same math in that dtype meets (an epsilon in a "
                "renormalisation, a sum or softmax in the input dtype)",
                result.scenario,
                result.dtype,
            )
        elif forward:
            diagnosis = found.add(
                "SMX004",
                "error",
                "outputs differ from the reference attention, with no known bug's signature",
                result.scenario,
                result.dtype,
            )
        else:
            diagnosis = found.add(
                "GRD001",
                "error",
                "the forward matches but the gradients do not: the backward is wrong",
                result.scenario,
                result.dtype,
            )
        example = f"{result.scenario} [{result.dtype}]: {result.reasons[0]}" if result.reasons else ""
        if example and len(diagnosis.evidence) < 400:
            diagnosis.evidence = "; ".join(filter(None, [diagnosis.evidence, example]))
