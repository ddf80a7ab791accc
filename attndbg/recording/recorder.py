"""Record every attention call of a model without editing its code (design §6).

A ``TorchFunctionMode`` sees each ``F.scaled_dot_product_attention`` call (HF ``sdpa``,
nanoGPT, LLaMA-style, timm), copies q, k, v, attn_mask, is_causal, scale and enable_gqa
with the name of the innermost module that was running, and lets the call proceed
unchanged. Module names come from forward pre/post hooks.

    with attndbg.capture(model) as calls:
        model(**inputs)
    calls.save("attn.safetensors")
    report = attndbg.diagnose(calls)
"""

from __future__ import annotations

import fnmatch
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
    kind: str = "sdpa"  # "sdpa", "multi_head_attention" or "eager" (recorded at its softmax)
    scores: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    @property
    def mask_semantics(self) -> str | None:
        if self.mask is None:
            return None
        return "additive" if self.mask.is_floating_point() else "keep"

    def tensors(self) -> dict[str, torch.Tensor]:
        roles = ("q", "k", "v", "mask", "scores", "weights")
        return {role: getattr(self, role) for role in roles if getattr(self, role) is not None}


@dataclass
class Calls:
    """The calls recorded by :func:`capture`, in call order."""

    calls: list[CapturedCall] = field(default_factory=list)
    tokens: list[str] | None = None  # of the first sequence, when the input came from text

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
                mask_semantics=call.mask_semantics,
                enable_gqa=call.enable_gqa,
                dropout_p=call.dropout_p or None,
                source=call.module,
            )
            origins = {k: "capture" for k, v in vars(settings).items() if v is not None}
            cases.append(
                Case(name=name, file="<capture>", tensors=tensors, settings=settings, origins=origins)
            )
        return cases

    def save(self, path: str | Path) -> Path:
        """Write the design §2 format atomically (attndbg._io)."""
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
        metadata["case_order"] = "\n".join(self.names())
        if self.tokens:
            import json

            metadata["tokens"] = json.dumps(self.tokens)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def _sdpa_arguments(args: tuple, kwargs: dict) -> dict:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


_SDPA = {F.scaled_dot_product_attention, torch.ops.aten.scaled_dot_product_attention.default}
_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax, torch.nn.functional.softmax}
_MHA_ARGS = (
    "query",
    "key",
    "value",
    "embed_dim_to_check",
    "num_heads",
    "in_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
    "add_zero_attn",
    "dropout_p",
    "out_proj_weight",
    "out_proj_bias",
    "training",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "use_separate_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "static_k",
    "static_v",
    "average_attn_weights",
    "is_causal",
)


def _copy(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is not None and _ON_DEVICE.get():
        return t.detach()
    return None if t is None else t.detach().to("cpu", copy=True)


class _Recorder(TorchFunctionMode):
    """Sees SDPA (also as the aten op inside torch.export programs), the functional core of
    nn.MultiheadAttention (which hides its SDPA call), and 4-D softmaxes (eager attention)."""

    def __init__(self, calls: Calls, stack: list[str], layers: str | None, max_calls: int | None):
        super().__init__()
        self.calls, self.stack, self.layers, self.max_calls = calls, stack, layers, max_calls

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _SDPA:
            self._record_sdpa(_sdpa_arguments(args, kwargs))
        elif func is F.multi_head_attention_forward:
            self._record_mha(dict(zip(_MHA_ARGS, args)) | kwargs)
        elif func in _SOFTMAX:
            result = func(*args, **kwargs)
            self._record_softmax(args, kwargs, result)
            return result
        return func(*args, **kwargs)

    def _wanted(self) -> str | None:
        module = self.stack[-1] if self.stack else ""
        if self.layers and not fnmatch.fnmatchcase(module, self.layers):
            return None
        if self.max_calls is not None and len(self.calls) >= self.max_calls:
            return None
        return module

    def _record_sdpa(self, call: dict) -> None:
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
            )
        )

    def _record_mha(self, call: dict) -> None:
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
            )
        )

    def _record_softmax(self, args: tuple, kwargs: dict, result: torch.Tensor) -> None:
        scores = args[0] if args else kwargs.get("input")
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if not isinstance(scores, torch.Tensor) or scores.dim() != 4 or dim not in (-1, 3):
            return
        module = self._wanted()
        if module is None:
            return
        self.calls.calls.append(
            CapturedCall(
                module=module,
                q=None,
                k=None,
                v=None,
                scores=_copy(scores),
                weights=_copy(result),
                kind="eager",
            )
        )


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

            def push(_module, _inputs, name=name):  # noqa: ANN001
                stack.append(name)

            def pop(_module, _inputs, _output):  # noqa: ANN001
                if stack:
                    stack.pop()

            handles.append(module.register_forward_pre_hook(push))
            handles.append(module.register_forward_hook(pop))
    try:
        with _Recorder(calls, stack, layers, max_calls):
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
