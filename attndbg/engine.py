"""The pipeline: stages in order per case, checks from the registry, findings into a Report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from attndbg.case import Case, Settings, step_location
from attndbg.context import CaseContext, ShapeProblem
from attndbg.errors import UsageError
from attndbg.registry import Check, Hit, Plan, plan_checks
from attndbg.report import CaseReport, Finding, Location, Report, StageResult, TensorSummary
from attndbg.vocab import STAGES, Stage, StageStatus


@dataclass
class Options:
    device: str = "cpu"
    max_memory: int = 1 << 30
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    grad: bool = False
    fail_on: str = "error"
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline: set[str] = field(default_factory=set)


def resolve_device(device: str) -> str:
    device = device.lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda, but this PyTorch build sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device {device!r}: expected cpu, cuda or auto")
    return device


def summarize_tensor(
    role: str, key: str, tensor: torch.Tensor, counts: tuple[int, int, int] | None = None
) -> TensorSummary:
    """Shape, dtype, range, mean, std and NaN/Inf counts; ``counts`` (NaN, +Inf, -Inf) when the
    caller already has them, so a finite tensor is not scanned again."""
    from attndbg.stats.scan import finite_moments, nonfinite_counts

    values = tensor.detach()
    nan, posinf, neginf = counts if counts is not None else nonfinite_counts(values)
    moments = finite_moments(values, finite=nan + posinf + neginf == 0)
    low = high = average = spread = None
    if moments is not None:
        low, high, average, spread = moments.low, moments.high, moments.mean, moments.std
    return TensorSummary(
        role,
        key,
        list(tensor.shape),
        str(tensor.dtype).replace("torch.", ""),
        low,
        high,
        average,
        spread,
        nan=nan,
        posinf=posinf,
        neginf=neginf,
    )


# Below this many scores (B·H·Lq·Lk) a case runs with torch single-threaded: its operations are
# too small to share, and torch's threads would spend more on fork/join — or, on a busy machine,
# on waiting for a thread that lost its core — than on the work.
SMALL_CASE_SCORES = 1 << 20


def run_case(case: Case, options: Options, ctx: CaseContext | None = None) -> CaseReport:
    """One case through the pipeline: the planned checks stage by stage, then the report.
    ``ctx``: a context the caller keeps, to read its statistics afterwards (attndbg.watch)."""
    ctx = ctx or CaseContext(
        case, device=options.device, max_memory=options.max_memory, thresholds=options.thresholds
    )
    with _threads_for(ctx):
        return _run_case(case, options, ctx)


@contextlib.contextmanager
def _threads_for(ctx: CaseContext) -> Iterator[None]:
    previous = torch.get_num_threads()
    small = previous > 1 and str(ctx.device) == "cpu" and _scores(ctx) < SMALL_CASE_SCORES
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(previous)


def _scores(ctx: CaseContext) -> int:
    try:
        sizes = ctx.sizes
    except Exception:  # noqa: BLE001 — the shapes stage reports what is wrong with them
        return 0
    return int(sizes["B"]) * int(sizes["Hq"]) * int(sizes["Lq"]) * int(sizes["Lk"])


def _run_case(case: Case, options: Options, ctx: CaseContext) -> CaseReport:
    plan = plan_checks(options.select, options.ignore, grad=options.grad)
    ctx.wanted = plan.reads
    report = CaseReport(
        name=case.name, file=case.file, source=case.settings.source or "", device=options.device
    )
    report.tensors = [
        summarize_tensor(role, ctx.key(role), tensor, ctx.nonfinite(role))
        for role, tensor in _in_role_order(case.tensors)
    ]
    run = _run_stages(ctx, plan, options.grad)
    findings = [
        _finding(check, hit, case.name)
        for check, hit in run.hits
        if check.code in plan.reported and not _is_superseded(check, run.fired)
    ]
    for finding in findings:
        finding.baselined = finding.fingerprint(case.file) in options.baseline
        where = step_location(case.locations, finding.stage)
        finding.location = Location(**where) if where else None
    report.stages = _stage_results(run, findings)
    report.findings = findings
    _describe_case(report, ctx, blocked=bool(run.blocked))
    if ctx.has_stats:
        _attach_heatmaps(ctx, report.findings)
    return report


@dataclass
class _StageRun:
    """What the stage loop produced: every hit of the running checks (selected or not, so that
    supersession can see them), the stage timings, and what blocked the later stages."""

    hits: list[tuple[Check, Hit]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, tuple[StageStatus, str]] = field(default_factory=dict)
    blocked: str = ""

    @property
    def fired(self) -> set[str]:
        return {check.code for check, _ in self.hits}


def _run_stages(ctx: CaseContext, plan: Plan, grad: bool) -> _StageRun:
    run = _StageRun()
    for stage in STAGES:
        if run.blocked:
            run.skipped[stage] = (StageStatus.SKIPPED, run.blocked)
            continue
        if stage == Stage.GRADIENTS and not grad:
            run.skipped[stage] = (StageStatus.NOT_REQUESTED, "use --grad")
            continue
        started = time.perf_counter()
        try:
            for check in plan.for_stage(stage):
                for hit in check.evaluate(ctx) or ():
                    run.hits.append((check, hit))
                    if hit.blocking and not run.blocked:
                        run.blocked = f"{check.code} {check.name}"
        except ShapeProblem as exc:
            run.blocked = str(exc)
        if stage == Stage.SHAPES and not run.blocked:
            run.blocked = _empty_reason(ctx)
        run.seconds[stage] = time.perf_counter() - started
    return run


def _is_superseded(check: Check, fired: set[str]) -> bool:
    return any(code in fired for code in check.superseded_by)


def _finding(check: Check, hit: Hit, case: str) -> Finding:
    return Finding(
        code=check.code,
        name=check.name,
        severity=hit.severity or check.severity,
        stage=check.stage,
        message=hit.message,
        evidence=hit.evidence,
        fix=(hit.fix or check.fix).strip(),
        case=case,
        head=hit.head,
    )


def _stage_results(run: _StageRun, findings: list[Finding]) -> list[StageResult]:
    with_findings = {finding.stage for finding in findings}
    results = []
    for stage in STAGES:
        if stage in run.skipped:
            status, reason = run.skipped[stage]
            results.append(StageResult(stage, status, reason=reason))
        else:
            status = StageStatus.FINDINGS if stage in with_findings else StageStatus.OK
            results.append(StageResult(stage, status, run.seconds[stage]))
    return results


def _describe_case(report: CaseReport, ctx: CaseContext, blocked: bool) -> None:
    """Layout, shapes, dtype, settings, head table and guesses: what the renderers show
    around the findings."""
    report.layout = ctx.layout or ""
    report.shapes = {role: list(t.shape) for role, t in _in_role_order(ctx.case.tensors)}
    report.dtype = str(ctx.dtype).replace("torch.", "")
    if not blocked or ctx.has_stats:
        with contextlib.suppress(ShapeProblem):
            report.settings = ctx.describe_settings()
    if ctx.has_stats:
        report.heads = ctx.heads
    report.guesses = list(dict.fromkeys(ctx.guesses))


def _in_role_order(tensors: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return sorted(tensors.items(), key=lambda kv: _role_rank(kv[0]))


def _attach_heatmaps(ctx: CaseContext, findings: list[Finding]) -> None:
    """A small max-pooled map of the head a PAT/MSK/SCL finding is about, for the report."""
    from attndbg.heatmap import build_heatmap

    for finding in findings:
        if finding.head is None or finding.code[:3] not in ("PAT", "MSK", "SCL"):
            continue
        try:
            finding.heatmap = build_heatmap(ctx, 0, finding.head, max_rows=12, max_cols=24)
        except ShapeProblem:
            continue


def _empty_reason(ctx: CaseContext) -> str:
    """Zero-length sequences or head dims leave nothing to compute statistics on."""
    try:
        sizes = ctx.sizes
    except ShapeProblem as exc:
        return str(exc)
    empty = [name for name in ("B", "Hq", "Hk", "Lq", "Lk") if sizes[name] == 0]
    if ctx.has_qkv and sizes["D"] == 0:
        empty.append("D")
    if empty:
        labels = {"B": "batch", "Hq": "heads", "Hk": "k/v heads", "Lq": "q_len", "Lk": "k_len"}
        labels["D"] = "head dim"
        return "empty input (" + ", ".join(f"{labels[n]} 0" for n in empty) + ")"
    return ""


def _role_rank(role: str) -> int:
    from attndbg.case import ROLE_ORDER

    return ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)


def run_cases(
    cases: Iterable[Case],
    options: Options,
    inputs: list[str],
    on_case: Callable[[CaseReport], None] | None = None,
) -> Report:
    report = Report(inputs=inputs, fail_on=options.fail_on)
    for case in cases:
        case_report = run_case(case, options)
        report.cases.append(case_report)
        if on_case:
            on_case(case_report)
    return report


def diagnose(
    q: torch.Tensor | None = None,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    is_causal: bool | None = None,
    scale: float | None = None,
    layout: str | None = None,
    mask_semantics: str | None = None,
    enable_gqa: bool | None = None,
    name: str = "tensors",
    device: str = "cpu",
    max_memory: int = 1 << 30,
    select: list[str] | str | None = None,
    ignore: list[str] | str | None = None,
    fail_on: str = "error",
    grad: bool = False,
) -> Report:
    """Run the whole pipeline on tensors in memory and return the Report (nothing is printed).

    ``q`` may also be the :class:`attndbg.recording.recorder.Calls` recorded by ``attndbg.capture``.
    """
    from attndbg.case import parse_layout, parse_mask_semantics
    from attndbg.recording.recorder import Calls
    from attndbg.registry import parse_codes

    options = Options(
        device=resolve_device(device),
        max_memory=max_memory,
        select=parse_codes(select),
        ignore=parse_codes(ignore),
        grad=grad,
        fail_on=fail_on,
    )
    if isinstance(q, Calls):
        return run_cases(q.cases(), options, inputs=["<capture>"])

    given = {"q": q, "k": k, "v": v, "mask": mask, "weights": weights, "scores": scores, "out": out}
    tensors = {role: t.detach() for role, t in given.items() if t is not None}
    if not tensors:
        raise UsageError("diagnose() needs q, k and v, or weights or scores")
    if not all(r in tensors for r in "qkv") and not ({"weights", "scores"} & tensors.keys()):
        raise UsageError("diagnose() needs q, k and v together, or weights or scores")
    settings = Settings(
        is_causal=is_causal,
        scale=scale,
        layout=parse_layout(layout) if layout else None,
        mask_semantics=parse_mask_semantics(mask_semantics) if mask_semantics else None,
        enable_gqa=enable_gqa,
    )
    origins = {key: "argument" for key, value in vars(settings).items() if value is not None}
    case = Case(name=name, file="<memory>", tensors=tensors, settings=settings, origins=origins)
    return run_cases([case], options, inputs=["<memory>"])
