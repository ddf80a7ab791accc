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
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attndbg.case import Case, Settings


@dataclass
class CapturedCall:
    module: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None = None
    is_causal: bool = False
    scale: float | None = None
    enable_gqa: bool = False
    dropout_p: float = 0.0

    @property
    def mask_semantics(self) -> str | None:
        if self.mask is None:
            return None
        return "additive" if self.mask.is_floating_point() else "keep"


@dataclass
class Calls:
    """The calls recorded by :func:`capture`, in call order."""

    calls: list[CapturedCall] = field(default_factory=list)

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
            tensors = {"q": call.q, "k": call.k, "v": call.v}
            if call.mask is not None:
                tensors["mask"] = call.mask
            settings = Settings(
                is_causal=call.is_causal,
                scale=call.scale,
                layout="bhsd" if call.q.dim() == 4 else None,
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
        """Write the design §2 format atomically: a temporary file in the same folder, then rename."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors: dict[str, torch.Tensor] = {}
        metadata: dict[str, str] = {}
        for name, call in zip(self.names(), self.calls):
            # Copies, so that shared or aliased storage (one mask for every layer, q is k) saves.
            for role in ("q", "k", "v", "mask"):
                tensor = getattr(call, role)
                if tensor is not None:
                    tensors[f"{name}.{role}"] = tensor.detach().to("cpu").contiguous().clone()
            metadata[f"{name}.is_causal"] = "true" if call.is_causal else "false"
            if call.scale is not None:
                metadata[f"{name}.scale"] = repr(float(call.scale))
            metadata[f"{name}.layout"] = "bhsd"
            if call.mask_semantics:
                metadata[f"{name}.mask_semantics"] = call.mask_semantics
            metadata[f"{name}.enable_gqa"] = "true" if call.enable_gqa else "false"
            if call.dropout_p:
                metadata[f"{name}.dropout_p"] = repr(float(call.dropout_p))
            metadata[f"{name}.source"] = call.module
        metadata["case_order"] = "\n".join(self.names())
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata=metadata)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path


def _sdpa_arguments(args: tuple, kwargs: dict) -> dict:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


class _Recorder(TorchFunctionMode):
    def __init__(self, calls: Calls, stack: list[str], layers: str | None, max_calls: int | None):
        super().__init__()
        self.calls, self.stack, self.layers, self.max_calls = calls, stack, layers, max_calls

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self._record(_sdpa_arguments(args, kwargs))
        return func(*args, **kwargs)

    def _record(self, call: dict) -> None:
        module = self.stack[-1] if self.stack else ""
        if self.layers and not fnmatch.fnmatchcase(module, self.layers):
            return
        if self.max_calls is not None and len(self.calls) >= self.max_calls:
            return

        def copy(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to("cpu", copy=True)

        self.calls.calls.append(
            CapturedCall(
                module=module,
                q=copy(call["query"]),
                k=copy(call["key"]),
                v=copy(call["value"]),
                mask=copy(call.get("attn_mask")),
                is_causal=bool(call.get("is_causal", False)),
                scale=None if call.get("scale") is None else float(call["scale"]),
                enable_gqa=bool(call.get("enable_gqa", False)),
                dropout_p=float(call.get("dropout_p", 0.0) or 0.0),
            )
        )


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
