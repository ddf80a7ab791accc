"""The implementation under test: what its signature accepts, and how attndbg calls it."""

from __future__ import annotations

import inspect as pyinspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from attndbg.attention import MASKED_BIAS, causal_keep, expand_kv_heads
from attndbg.errors import InputError, UsageError
from attndbg.gradcheck.scenarios import Scenario

CAUSAL_PARAMETERS = ("is_causal", "causal")
SCALE_PARAMETERS = ("scale", "softmax_scale", "sm_scale", "scaling")


@dataclass
class Implementation:
    """The user's function and what its signature accepts. Only what it accepts is passed:
    a mask (``attn_mask``: SDPA semantics; ``mask``: True/1 = attend), a causal flag, a scale,
    ``enable_gqa``. Without a causal flag the causal mask is built here, aligned as asked."""

    name: str
    fn: Callable
    mask_parameter: str | None = None
    causal_parameter: str | None = None
    scale_parameter: str | None = None
    gqa: bool = False  # takes enable_gqa
    grouped_kv: bool = False  # handles K/V with fewer heads by itself (probed)
    align: str = "upper-left"
    backend: bool = False  # one of PyTorch's SDPA backends: "no kernel for this input" is a refusal

    @property
    def convention(self) -> str:
        return {"attn_mask": "sdpa", "attention_mask": "sdpa", "mask": "seeds"}.get(
            self.mask_parameter or "", "qkv"
        )

    def accepts(self, s: Scenario) -> str | None:
        """Why the scenario cannot be run, or None."""
        if s.mask != "none" and self.mask_parameter is None:
            return "the implementation takes no mask"
        if s.causal and self.causal_parameter is None and self.mask_parameter is None:
            return "the implementation takes neither a mask nor a causal flag"
        if s.scale is not None and self.scale_parameter is None:
            return "the implementation takes no scale"
        return None

    def __call__(self, q, k, v, keep=None, bias=None, causal=False, scale=None):  # noqa: ANN001, ANN204
        """keep: bool (…, Lq, Lk) True = attend; bias: additive float. A causal flag goes to
        the function when it takes one and no mask is given (SDPA refuses both); otherwise
        the causal mask is folded into the mask, aligned as ``self.align``."""
        kwargs: dict[str, Any] = {}
        if k.shape[-3] != q.shape[-3]:
            if self.gqa:
                kwargs["enable_gqa"] = True
            elif not self.grouped_kv:
                k, v = expand_kv_heads(k, q.shape[-3]), expand_kv_heads(v, q.shape[-3])
        if causal and self.causal_parameter and keep is None and bias is None:
            kwargs[self.causal_parameter] = True
        elif causal:
            tri = causal_keep(q.shape[-2], k.shape[-2], self.align, q.device)
            if bias is not None:
                bias = bias.masked_fill(~tri, float("-inf"))
            else:
                keep = tri if keep is None else keep & tri
        if self.mask_parameter == "attn_mask":
            if bias is not None:
                kwargs["attn_mask"] = bias.to(q.dtype)
            elif keep is not None:
                kwargs["attn_mask"] = keep
        elif self.mask_parameter == "attention_mask":
            if bias is not None:
                kwargs["attention_mask"] = bias.to(q.dtype)
            elif keep is not None:
                hidden = torch.finfo(q.dtype).min
                kwargs["attention_mask"] = torch.zeros(
                    keep.shape, dtype=q.dtype, device=q.device
                ).masked_fill(~keep, hidden)
        elif self.mask_parameter == "mask":
            if bias is not None:
                keep = bias > MASKED_BIAS if keep is None else keep & (bias > MASKED_BIAS)
            if keep is not None:
                kwargs["mask"] = keep
        if scale is not None and self.scale_parameter:
            kwargs[self.scale_parameter] = scale
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
    return implementation_of(spec, fn)


def implementation_of(name: str, fn: Callable) -> Implementation:
    """Read what ``fn``'s signature accepts."""
    try:
        names = set(pyinspect.signature(fn).parameters)
    except (TypeError, ValueError):
        names = set()
    # attention_mask is Hugging Face's name: an additive float mask, 0 or finfo(dtype).min
    mask = next((n for n in ("attn_mask", "attention_mask", "mask") if n in names), None)
    return Implementation(
        name,
        fn,
        mask_parameter=mask,
        causal_parameter=next((n for n in CAUSAL_PARAMETERS if n in names), None),
        scale_parameter=next((n for n in SCALE_PARAMETERS if n in names), None),
        gqa="enable_gqa" in names,
    )


def describe_convention(impl: Implementation) -> str:
    masks = {
        "attn_mask": "attn_mask (bool True = attend, float added)",
        "attention_mask": "attention_mask (additive float: 0, or finfo(dtype).min where masked)",
        "mask": "mask (bool, True = attend)",
    }
    taken = [masks[impl.mask_parameter]] if impl.mask_parameter else []
    if impl.causal_parameter:
        taken.append(f"{impl.causal_parameter}=True")
    if impl.scale_parameter:
        taken.append(f"{impl.scale_parameter}")
    if impl.gqa:
        taken.append("enable_gqa")
    text = "(query, key, value" + "".join(f", {t}" for t in taken) + ")"
    if impl.mask_parameter is None:
        text += ": mask scenarios skipped"
    if impl.causal_parameter is None and impl.mask_parameter is not None:
        text += f": causal masks built by attndbg, aligned {impl.align}"
    return text
