"""Record every attention call of a model without editing its code (docs/architecture.md).

A ``TorchFunctionMode`` sees each ``F.scaled_dot_product_attention`` call (HF ``sdpa``,
nanoGPT, LLaMA-style, timm), copies q, k, v, attn_mask, is_causal, scale and enable_gqa
with the name of the innermost module that was running, and lets the call proceed
unchanged. Module names come from forward pre/post hooks. Hand-written attention is traced
from its QK product to its PV product (:mod:`attndbg.recording.trace`); which operations the
mode looks at is one table (:mod:`attndbg.recording.intercepts`). Every call keeps the user's
source line of each step (:mod:`attndbg.recording.location`).

    with attndbg.capture(model) as calls:
        model(**inputs)
    calls.save("attn.safetensors")
    report = attndbg.diagnose(calls)
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attndbg._io import atomic_write
from attndbg.case import Case, Settings
from attndbg.recording import trace
from attndbg.recording.intercepts import INTERCEPTS
from attndbg.recording.location import Location, user_location
from attndbg.vocab import MaskSemantics


@dataclass
class CapturedCall:
    module: str
    q: torch.Tensor | None
    k: torch.Tensor | None
    v: torch.Tensor | None
    mask: torch.Tensor | None = None
    is_causal: bool = False
    scale: float | None = None
    enable_gqa: bool = False
    dropout_p: float = 0.0
    # "sdpa", "multi_head_attention", "traced" (hand-written, followed from the QK product) or
    # "eager" (recorded at its softmax only; ``notes`` says why)
    kind: str = "sdpa"
    scores: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    out: torch.Tensor | None = None
    semantics: str | None = None  # the mask's convention, when the code said it (masked_fill: drop)
    locations: dict[str, Location | None] = field(default_factory=dict)  # step -> the user's line
    notes: list[str] = field(default_factory=list)
    softmax: str = "softmax"
    lead: tuple[int, ...] = ()  # (batch, heads) of a traced call

    @property
    def mask_semantics(self) -> str | None:
        if self.mask is None:
            return None
        if self.semantics:
            return self.semantics
        return "additive" if self.mask.is_floating_point() else "keep"

    def tensors(self) -> dict[str, torch.Tensor]:
        roles = ("q", "k", "v", "mask", "scores", "weights", "out")
        return {role: getattr(self, role) for role in roles if getattr(self, role) is not None}

    def location_metadata(self) -> dict[str, dict]:
        return {step: where.to_dict() for step, where in self.locations.items() if where is not None}


@dataclass
class Calls:
    """The calls recorded by :func:`capture`, in call order."""

    calls: list[CapturedCall] = field(default_factory=list)
    tokens: list[list[str]] | None = None  # per batch row, when the input came from text
    notes: list[str] = field(default_factory=list)  # what the capture assumed about its input

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self) -> Iterator[CapturedCall]:
        return iter(self.calls)

    def __getitem__(self, index: int) -> CapturedCall:
        return self.calls[index]

    def names(self) -> list[str]:
        seen: dict[str, int] = {}
        names = []
        for call in self.calls:
            base = call.module or "attention"
            seen[base] = seen.get(base, 0) + 1
            names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
        return names

    def cases(self) -> list[Case]:
        cases = []
        for name, call in zip(self.names(), self.calls):
            tensors = call.tensors()
            settings = Settings(
                is_causal=call.is_causal,
                scale=call.scale,
                layout="bhsd" if call.q is not None else None,
                mask_semantics=MaskSemantics(call.mask_semantics) if call.mask_semantics else None,
                enable_gqa=call.enable_gqa,
                dropout_p=call.dropout_p or None,
                source=call.module,
            )
            origins = {k: "capture" for k, v in vars(settings).items() if v is not None}
            cases.append(
                Case(
                    name=name,
                    file="<capture>",
                    tensors=tensors,
                    settings=settings,
                    origins=origins,
                    notes=[*self.notes, *call.notes],
                    tokens=self.tokens,
                    locations=call.location_metadata(),
                )
            )
        return cases

    def save(self, path: str | Path) -> Path:
        """Write the capture as a safetensors file of cases (``NAME.q``, ``NAME.weights``, … and
        ``NAME.*`` metadata) atomically (:func:`attndbg._io.atomic_write`)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors: dict[str, torch.Tensor] = {}
        metadata: dict[str, str] = {}
        for name, call in zip(self.names(), self.calls):
            # Copies, so that shared or aliased storage (one mask for every layer, q is k) saves.
            for role, tensor in call.tensors().items():
                tensors[f"{name}.{role}"] = tensor.detach().to("cpu").contiguous().clone()
            metadata[f"{name}.is_causal"] = "true" if call.is_causal else "false"
            if call.scale is not None:
                metadata[f"{name}.scale"] = repr(float(call.scale))
            if call.q is not None:
                metadata[f"{name}.layout"] = "bhsd"
            if call.mask_semantics:
                metadata[f"{name}.mask_semantics"] = call.mask_semantics
            metadata[f"{name}.enable_gqa"] = "true" if call.enable_gqa else "false"
            if call.dropout_p:
                metadata[f"{name}.dropout_p"] = repr(float(call.dropout_p))
            metadata[f"{name}.source"] = call.module
            metadata[f"{name}.captured_from"] = call.kind
            if call.locations:
                metadata[f"{name}.locations"] = json.dumps(call.location_metadata())
            if call.notes:
                metadata[f"{name}.notes"] = "\n".join(call.notes)
            if call.softmax != "softmax":
                metadata[f"{name}.softmax"] = call.softmax
        metadata["case_order"] = "\n".join(self.names())
        if self.tokens:
            metadata["tokens"] = json.dumps(self.tokens)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


NO_QK_PRODUCT = (
    "q/k/v not recorded: the softmax input does not come from a matmul, @, bmm, baddbmm or "
    "einsum seen while recording"
)
NO_PV_PRODUCT = "v/out not recorded: the weights did not reach a matmul, @, bmm or einsum"


def _copy(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is not None and _ON_DEVICE.get():
        return t.detach()
    return None if t is None else t.detach().to("cpu", copy=True)


def _four_d(t: torch.Tensor) -> torch.Tensor:
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t.reshape(-1, *t.shape[-3:]) if t.dim() > 4 else t


class Recorder(TorchFunctionMode):
    """Sees SDPA (also as the aten op inside torch.export programs), the functional core of
    nn.MultiheadAttention (which hides its SDPA call), and hand-written attention: the chain
    from a QK product through scale, masks and softmax to the PV product (see
    :mod:`attndbg.recording.intercepts` for the table of operations)."""

    def __init__(self, calls: Calls, stack: list[str], layers: str | None, max_calls: int | None):
        super().__init__()
        self.calls, self.stack, self.layers, self.max_calls = calls, stack, layers, max_calls
        self.traces = trace.Traces()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        handler = INTERCEPTS.get(func)
        if handler is not None:
            return handler(self, func, args, kwargs)
        result = func(*args, **kwargs)
        if isinstance(result, torch.Tensor):
            for arg in args:
                record = self.traces.get(arg)
                if isinstance(record, (trace.ScoreTrace, trace.Broken)):
                    self.broken(record, result, func)
                    break
        return result

    # ---- services for the handlers -----------------------------------------------------------
    def here(self) -> Location | None:
        return user_location()

    def at(self) -> str:
        """ " at FILE:LINE" of the user's line, for a message; empty when there is none."""
        where = self.here()
        return f" at {where.file}:{where.line}" if where else ""

    def _wanted(self) -> str | None:
        module = self.stack[-1] if self.stack else ""
        if self.layers and not fnmatch.fnmatchcase(module, self.layers):
            return None
        if self.max_calls is not None and len(self.calls) >= self.max_calls:
            return None
        return module

    def broken(self, record: object, result: object, func: object) -> None:
        """A traced score tensor went through ``func``, which the tracer does not follow."""
        if isinstance(record, trace.Broken) and isinstance(result, torch.Tensor):
            self.traces.set(result, record)  # the first reason stays the reason
        elif isinstance(record, trace.ScoreTrace) and isinstance(result, torch.Tensor):
            name = getattr(func, "__name__", str(func))
            self.traces.set(
                result,
                trace.Broken(
                    f"q/k/v not recorded: the scores go through {name}{self.at()}, which attndbg "
                    "does not follow"
                ),
            )

    def start(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        result: torch.Tensor,
        prescales: tuple,
        scale: float | None = None,
    ) -> trace.ScoreTrace | None:
        if q.shape[-1] != k.shape[-1] or q.dim() < 2:
            return None
        started = trace.start(q, k, result, self.here(), prescales, scale)
        self.traces.set(result, started)
        return started

    def mask_step(
        self,
        record: object,
        result: torch.Tensor,
        kind: str,
        condition: object,
        fill: float | None,
        func: object,
    ) -> None:
        if isinstance(record, trace.Broken):
            self.broken(record, result, func)  # keep the first reason through the mask step
            return
        if not isinstance(record, trace.ScoreTrace):
            return
        if fill is None or not isinstance(condition, torch.Tensor):
            self.broken(record, result, func)
            return
        try:
            self.traces.set(result, trace.masked(record, kind, condition, result.shape, self.here(), fill))
        except trace.Untraceable as reason:
            self.traces.set(result, trace.Broken(f"q/k/v not recorded: {reason}"))

    # ---- recording calls ---------------------------------------------------------------------
    def record_sdpa(self, call: dict) -> None:
        module = self._wanted()
        if module is None:
            return
        self.calls.calls.append(
            CapturedCall(
                module=module,
                q=_copy(call["query"]),
                k=_copy(call["key"]),
                v=_copy(call["value"]),
                mask=_copy(call.get("attn_mask")),
                is_causal=bool(call.get("is_causal", False)),
                scale=None if call.get("scale") is None else float(call["scale"]),
                enable_gqa=bool(call.get("enable_gqa", False)),
                dropout_p=float(call.get("dropout_p", 0.0) or 0.0),
                locations={"call": self.here()},
            )
        )

    def record_mha(self, call: dict) -> None:
        """Re-derive q, k, v the way F.multi_head_attention_forward does (inputs are
        (seq, batch, embed)), and express its masks (True = *not* allowed) as one SDPA mask."""
        module = self._wanted()
        if module is None or call.get("bias_k") is not None or call.get("add_zero_attn"):
            return
        with torch.no_grad():
            query, key, value = call["query"], call["key"], call["value"]
            heads = int(call["num_heads"])
            if query.dim() == 2:  # unbatched
                query, key, value = query[:, None], key[:, None], value[:, None]
            embed = query.shape[-1]
            if call.get("use_separate_proj_weight"):
                weights = (call["q_proj_weight"], call["k_proj_weight"], call["v_proj_weight"])
            else:
                weights = call["in_proj_weight"].chunk(3)
            biases = call["in_proj_bias"].chunk(3) if call.get("in_proj_bias") is not None else (None,) * 3
            projected = [F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases)]

            def split(x: torch.Tensor) -> torch.Tensor:  # (L, N, E) -> (N, H, L, E/H)
                return x.reshape(x.shape[0], x.shape[1], heads, embed // heads).permute(1, 2, 0, 3)

            q, k, v = (split(x) for x in projected)
            mask = _mha_mask(
                call.get("attn_mask"), call.get("key_padding_mask"), q.shape[0], heads, q.shape[2], k.shape[2]
            )
        self.calls.calls.append(
            CapturedCall(
                module=module,
                q=_copy(q),
                k=_copy(k),
                v=_copy(v),
                mask=_copy(mask),
                is_causal=False,
                scale=None,
                dropout_p=float(call.get("dropout_p") or 0.0) if call.get("training") else 0.0,
                kind="multi_head_attention",
                locations={"call": self.here()},
            )
        )

    def record_softmax(self, scores: torch.Tensor, dim: int, result: torch.Tensor, log: bool) -> None:
        record = self.traces.get(scores)
        rank = scores.dim()
        over = dim + rank if dim < 0 else dim
        weights = result.exp() if log else result
        if isinstance(record, trace.ScoreTrace) and rank >= 2 and over in (rank - 1, rank - 2):
            try:
                finished = trace.finish(record, scores, weights)
            except trace.Untraceable as reason:
                self._record_scores_only(scores, weights, f"q/k/v not recorded: {reason}", log)
                return
            module = self._wanted()
            if module is None:
                return
            locations = dict(finished.locations)
            locations["softmax"] = self.here()
            call = CapturedCall(
                module=module,
                q=_copy(finished.q),
                k=_copy(finished.k),
                v=None,
                mask=_copy(finished.mask),
                semantics=finished.mask_semantics,
                is_causal=finished.is_causal,
                scale=finished.scale,
                kind="traced",
                scores=_copy(finished.scores),
                weights=_copy(finished.weights),
                locations=locations,
                notes=[*finished.notes, NO_PV_PRODUCT],
                softmax="log_softmax" if log else "softmax",
                lead=finished.lead,
            )
            self.calls.calls.append(call)
            self.traces.set(result, trace.WeightsTrace(call))
        elif over == rank - 1 and (
            isinstance(record, trace.Broken) or (rank == 4 and not isinstance(record, trace.Projected))
        ):
            why = record.reason if isinstance(record, trace.Broken) else NO_QK_PRODUCT
            self._record_scores_only(scores, weights, why, log)

    def _record_scores_only(
        self, scores: torch.Tensor, weights: torch.Tensor, reason: str, log: bool
    ) -> None:
        module = self._wanted()
        if module is None or not scores.dim() >= 2:
            return
        self.calls.calls.append(
            CapturedCall(
                module=module,
                q=None,
                k=None,
                v=None,
                scores=_copy(_four_d(scores)),
                weights=_copy(_four_d(weights)),
                kind="eager",
                locations={"softmax": self.here()},
                notes=[reason],
                softmax="log_softmax" if log else "softmax",
            )
        )

    def complete(self, record: trace.WeightsTrace, v: torch.Tensor, out: torch.Tensor) -> None:
        """The PV product of a traced call: its v and out."""
        call = record.call
        if call.v is not None or not isinstance(v, torch.Tensor):
            return
        lead = call.lead
        if v.dim() == out.dim() and v.shape[:-2] != out.shape[:-2]:
            v = v.expand(*out.shape[:-2], *v.shape[-2:])  # broadcast in the product (multi-query)
        if (
            record.reordered
            or record.transposed
            or v.shape[:-2].numel() != math.prod(lead)
            or v.shape[-2] != call.k.shape[-2]
        ):
            call.notes = [n for n in call.notes if n != NO_PV_PRODUCT]
            call.notes.append(
                f"v/out not recorded: the PV product's v is {tuple(v.shape)}, which does not line up "
                f"with weights {tuple(call.weights.shape)}"
            )
            return
        call.v = _copy(v.reshape(*lead, *v.shape[-2:]))
        call.out = _copy(out.reshape(*lead, *out.shape[-2:]))
        call.locations["pv"] = self.here()
        call.notes = [n for n in call.notes if n != NO_PV_PRODUCT]
        group = _shared_heads(call.k, call.v)
        if group > 1:  # repeat_kv before the products: record what SDPA with enable_gqa sees
            call.k, call.v, call.enable_gqa = call.k[:, ::group].clone(), call.v[:, ::group].clone(), True


def _shared_heads(k: torch.Tensor, v: torch.Tensor) -> int:
    """The largest number of consecutive query heads that read identical k and v heads (the
    grouped-query layout ``repeat_kv`` / ``repeat_interleave`` produces), else 1."""
    heads = k.shape[1]
    for group in range(heads, 1, -1):
        if heads % group:
            continue
        grouped = [t.reshape(t.shape[0], heads // group, group, *t.shape[2:]) for t in (k, v)]
        if all(bool((t == t[:, :, :1]).all()) for t in grouped):
            return group
    return 1


def _mha_mask(attn_mask, key_padding_mask, batch, heads, lq, lk):  # noqa: ANN001, ANN202
    """nn.MultiheadAttention's masks mean True = masked out (or a float to add); SDPA's bool
    mask means True = attend. Returns None, a bool keep mask, or an additive float mask."""
    parts = []
    for mask, kind in ((attn_mask, "attn"), (key_padding_mask, "kpm")):
        if mask is None:
            continue
        if kind == "kpm":
            mask = mask.reshape(batch, 1, 1, lk)
        elif mask.dim() == 3:
            mask = mask.reshape(batch, heads, lq, lk)
        parts.append(mask)
    if not parts:
        return None
    if all(p.dtype == torch.bool for p in parts):
        keep = torch.ones(1, 1, lq, lk, dtype=torch.bool, device=parts[0].device)
        for part in parts:
            keep = keep & ~part
        return keep
    bias = torch.zeros(1, 1, lq, lk, device=parts[0].device)
    for part in parts:
        part = (
            torch.zeros(part.shape, device=part.device).masked_fill(part, float("-inf"))
            if part.dtype == torch.bool
            else part.float()
        )
        bias = bias + part
    return bias


_SOFTMAX_MODULES = (torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.Softmin)


@contextmanager
def capture(
    model: torch.nn.Module | None = None,
    layers: str | None = None,
    max_calls: int | None = None,
) -> Iterator[Calls]:
    """Record attention calls made inside the ``with`` block; ``model`` gives module names."""
    calls = Calls()
    stack: list[str] = []
    handles = []
    if model is not None:
        for name, module in model.named_modules():
            if isinstance(module, _SOFTMAX_MODULES):
                # nn.Softmax(dim=-1) held as self.attend is a step of the attention around it:
                # the call is named after that module, not after the softmax
                continue

            def push(_module, _inputs, name=name):  # noqa: ANN001
                stack.append(name)

            def pop(_module, _inputs, _output):  # noqa: ANN001
                if stack:
                    stack.pop()

            handles.append(module.register_forward_pre_hook(push))
            handles.append(module.register_forward_hook(pop))
    try:
        with Recorder(calls, stack, layers, max_calls):
            yield calls
    finally:
        for handle in handles:
            handle.remove()


_ON_DEVICE: ContextVar[bool] = ContextVar("attndbg_capture_on_device", default=False)


@contextmanager
def on_device() -> Iterator[None]:
    """Inside this block, :func:`capture` keeps each recorded tensor where it is, detached but
    not copied: for a consumer that reduces the calls on their device and drops them before
    the step ends (``attndbg.watch``). Without it, captures are CPU copies that outlive the step."""
    token = _ON_DEVICE.set(True)
    try:
        yield
    finally:
        _ON_DEVICE.reset(token)
