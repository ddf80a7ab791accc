"""The implementation under test: what its signature accepts, and how attndbg calls it."""

from __future__ import annotations

import copy
import inspect as pyinspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from attndbg.attention import MASKED_BIAS, causal_keep, expand_kv_heads
from attndbg.errors import InputError, UsageError, first_line
from attndbg.gradcheck.layouts import LAYOUTS, SEQUENCE_FIRST, Layout, candidates, runs_as_attention
from attndbg.gradcheck.scenarios import Scenario

CAUSAL_PARAMETERS = ("is_causal", "causal")
SCALE_PARAMETERS = ("scale", "softmax_scale", "sm_scale", "scaling")
# attention_mask is Hugging Face's name: an additive float mask, 0 or finfo(dtype).min;
# attn_bias is xformers': an additive bias, -inf where masked
MASK_PARAMETERS = ("attn_mask", "attention_mask", "mask", "attn_bias")
PADDING_PARAMETER = "key_padding_mask"  # nn.MultiheadAttention / fairseq: (B, Lk), True = padding
HEAD_COUNTS = ("num_heads", "n_head", "n_heads", "heads", "nhead", "num_attention_heads")
HEAD_SIZES = ("head_dim", "dim_head", "d_head", "head_size", "d_k")
MODEL_WIDTHS = ("embed_dim", "embed_size", "dim", "n_state", "d_model", "hidden_size", "inner_dim")


@dataclass
class Implementation:
    """The user's function (or ``nn.Module``) and what its signature accepts. Only what it
    accepts is passed: a mask (``attn_mask``: SDPA semantics; ``mask``: True/1 = attend;
    ``attention_mask``/``attn_bias``: additive), a key padding mask (True = padding), a causal
    flag, a scale, a head count, ``enable_gqa``. Without a causal flag the causal mask is built
    here, aligned as asked. Q, K, V are handed in the function's layout."""

    name: str
    fn: Callable
    mask_parameter: str | None = None
    causal_parameter: str | None = None
    scale_parameter: str | None = None
    gqa: bool = False  # takes enable_gqa
    grouped_kv: bool = False  # handles K/V with fewer heads by itself (probed)
    align: str = "upper-left"
    backend: bool = False  # one of PyTorch's SDPA backends: "no kernel for this input" is a refusal
    padding_parameter: str | None = None
    heads_parameter: str | None = None
    fixed_heads: int | None = None  # a module's own head count (merged layouts split by it)
    fixed_head_dim: int | None = None  # a module's own head size (its scale may be fixed by it)
    declared_scale: float | None = None  # the scale parameter's numeric default
    layout: Layout = field(default_factory=lambda: LAYOUTS["bhld"])
    layout_source: str | None = None  # given | probed | documented; None until resolved
    argument_order: str = "qkv"  # the order its first three parameters name query, key, value
    _copies: dict[torch.dtype, Callable] = field(default_factory=dict, repr=False)

    @property
    def convention(self) -> str:
        return {"attn_mask": "sdpa", "attention_mask": "sdpa", "mask": "seeds"}.get(
            self.mask_parameter or "", "qkv"
        )

    @property
    def takes_mask(self) -> bool:
        return self.mask_parameter is not None or self.padding_parameter is not None

    def adapt(self, s: Scenario) -> Scenario:
        """The scenario as this function can run it: every key of one batch element padded
        where only a key padding mask can express rows with nothing to attend; a module's own
        head count and head size; the scale its signature declares."""
        changes: dict[str, Any] = {}
        if s.mask == "fully-masked" and self.padding_parameter and self.mask_parameter is None:
            changes["mask"] = "fully-padded"
        if self.fixed_heads and self.heads_parameter is None:
            changes["h"] = self.fixed_heads
        if self.fixed_head_dim:
            changes["d"] = changes["dv"] = self.fixed_head_dim
        if s.scale is None and self.declared_scale is not None:
            changes["scale"] = self.declared_scale
        return replace(s, **changes) if changes else s

    def accepts(self, s: Scenario) -> str | None:
        """Why the scenario cannot be run, or None."""
        if s.mask != "none" and not self.takes_mask:
            return "the implementation takes no mask"
        if s.causal and self.causal_parameter is None and self.mask_parameter is None:
            if self.padding_parameter:
                return "the implementation takes only a key padding mask and no causal flag"
            return "the implementation takes neither a mask nor a causal flag"
        if s.scale is not None and self.scale_parameter is None:
            return "the implementation takes no scale"
        if s.hk and (s.hk >= s.h or s.h % s.hk or self.layout.merged_heads) and self.fixed_heads:
            return f"the module has its own {self.fixed_heads} heads: no grouped K/V to give it"
        return None

    def __call__(self, q, k, v, keep=None, bias=None, causal=False, scale=None):  # noqa: ANN001, ANN204
        """(B, H, L, D) in, (B, H, Lq, Dv) out. keep: bool (…, Lq, Lk) True = attend; bias:
        additive float. A causal flag goes to the function when it takes one and no mask is
        given (SDPA refuses both); otherwise the causal mask is folded into the mask, aligned
        as ``self.align``."""
        b, h = q.shape[0], q.shape[1]
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
        if self.padding_parameter:
            self._key_padding(kwargs, keep, bias, q, h)
        elif self.mask_parameter:
            mask = self._mask(keep, bias, q)
            if mask is not None:
                kwargs[self.mask_parameter] = self._mask_shape(mask, b, h)
        if scale is not None and self.scale_parameter:
            kwargs[self.scale_parameter] = scale
        if self.heads_parameter:
            kwargs[self.heads_parameter] = h
        given = {"q": q, "k": k, "v": v}
        fn = self._in_dtype(q.dtype)
        out = fn(*(self.layout.to(given[name]) for name in self.argument_order), **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return self.layout.back(out, b, h)

    def _in_dtype(self, dtype: torch.dtype) -> Callable:
        """A module with floating-point weights or buffers runs in the dtype under test, as a
        model cast with .half() would: a copy per dtype, the user's module untouched."""
        if not isinstance(self.fn, torch.nn.Module):
            return self.fn
        tensors = [*self.fn.parameters(), *self.fn.buffers()]
        if all(not t.is_floating_point() or t.dtype == dtype for t in tensors):
            return self.fn
        if dtype not in self._copies:
            self._copies[dtype] = copy.deepcopy(self.fn).to(dtype)
        return self._copies[dtype]

    def _mask(
        self, keep: torch.Tensor | None, bias: torch.Tensor | None, q: torch.Tensor
    ) -> torch.Tensor | None:
        """The mask in the form the parameter's name promises."""
        name = self.mask_parameter
        if name == "mask" or (name == "attn_mask" and bias is None):
            if bias is not None:
                keep = _keep_of(keep, bias)
            return keep
        if bias is not None:
            return bias.to(q.dtype)
        if keep is None:
            return None
        fill = torch.finfo(q.dtype).min if name == "attention_mask" else float("-inf")
        return torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, fill)

    def _key_padding(
        self,
        kwargs: dict[str, Any],
        keep: torch.Tensor | None,
        bias: torch.Tensor | None,
        q: torch.Tensor,
        h: int,
    ) -> None:
        """nn.MultiheadAttention's convention: the keys no query attends to as a (B, Lk)
        key_padding_mask (True = padding), whatever else as an additive attn_mask."""
        if bias is not None:
            keep = _keep_of(keep, bias)
        if keep is None:
            return
        rest = keep
        if keep.dim() == 4:
            padding = (~keep.any(-2)).all(1)  # (B, Lk)
            if bool(padding.any()):
                kwargs[self.padding_parameter or PADDING_PARAMETER] = padding
            rest = keep | padding[:, None, None, :]
        if bool(rest.all()):
            return
        if self.mask_parameter is None:
            raise ValueError("a per-query mask cannot be passed as a key padding mask")
        additive = torch.zeros(rest.shape, dtype=q.dtype, device=q.device).masked_fill(~rest, float("-inf"))
        kwargs[self.mask_parameter] = self._mask_shape(additive, q.shape[0], h, collapse=True)

    def _mask_shape(self, mask: torch.Tensor, b: int, h: int, collapse: bool = False) -> torch.Tensor:
        """(Lq, Lk) when every batch element and head shares it (what a function taking
        another layout broadcasts safely), else (B·H, Lq, Lk) where heads fold into the batch
        (bmm code, nn.MultiheadAttention's 3-d attn_mask), else as built."""
        if mask.dim() != 4 or (self.layout.name == "bhld" and not collapse):
            return mask
        if bool((mask == mask[:1, :1]).all()):
            return mask[0, 0]
        if self.layout.name in ("(bh)ld", "l(bh)d", "lbe") or collapse:  # heads folded into the batch
            return mask.expand(b, h, *mask.shape[-2:]).reshape(b * h, *mask.shape[-2:])
        return mask


def _keep_of(keep: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
    """An additive mask as a keep-mask, folded into the keep-mask already there."""
    return bias > MASKED_BIAS if keep is None else keep & (bias > MASKED_BIAS)


def load_implementation(spec: str, layout: str | None = None) -> Implementation:
    """A function, an ``nn.Module`` instance, or an ``nn.Module`` class built with no
    arguments, named as module:name or path/to/file.py:name."""
    from attndbg.recording.sources import _import, _split_factory

    split = _split_factory(spec)
    if split is None:
        raise UsageError(f"--impl {spec!r}: expected module:function or path/to/file.py:function")
    module = _import(split[0])
    target = getattr(module, split[1], None)
    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        try:
            target = target()
        except TypeError as exc:
            raise InputError(
                f"--impl {spec}: {split[1]}() needs arguments ({first_line(exc)}): build one in the "
                f"file (attention = {split[1]}(...)) and pass that name"
            ) from None
    if isinstance(target, torch.nn.Module):
        target.eval()  # dropout off: the sweep compares deterministic outputs
    if not callable(target):
        raise InputError(f"--impl {spec}: {split[0]} has no function {split[1]}")
    impl = implementation_of(spec, target)
    if layout is not None:
        if layout not in LAYOUTS:
            raise UsageError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        impl.layout, impl.layout_source = LAYOUTS[layout], "given"
    return impl


def implementation_of(name: str, fn: Callable) -> Implementation:
    """Read what ``fn``'s signature accepts (a module's ``forward``), and a module's own
    head count and head size."""
    module = fn if isinstance(fn, torch.nn.Module) else None
    try:
        parameters = dict(pyinspect.signature(module.forward if module is not None else fn).parameters)
    except (TypeError, ValueError):
        parameters = {}
    scale = next((n for n in SCALE_PARAMETERS if n in parameters), None)
    default = parameters[scale].default if scale else None
    declared = float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else None
    impl = Implementation(
        name,
        fn,
        mask_parameter=next((n for n in MASK_PARAMETERS if n in parameters), None),
        causal_parameter=next((n for n in CAUSAL_PARAMETERS if n in parameters), None),
        scale_parameter=scale,
        gqa="enable_gqa" in parameters,
        padding_parameter=PADDING_PARAMETER if PADDING_PARAMETER in parameters else None,
        heads_parameter=next((n for n in HEAD_COUNTS if n in parameters), None),
        declared_scale=declared,
        argument_order=_argument_order(list(parameters)),
    )
    if module is not None:
        impl.fixed_heads = _int_attribute(module, HEAD_COUNTS)
        impl.fixed_head_dim = _int_attribute(module, HEAD_SIZES)
        width = _int_attribute(module, MODEL_WIDTHS)
        if impl.fixed_head_dim is None and width and impl.fixed_heads and width % impl.fixed_heads == 0:
            impl.fixed_head_dim = width // impl.fixed_heads
    return impl


def _argument_order(names: list[str]) -> str:
    """(values, keys, query, mask) is called with V, K, Q: the first three parameters, when
    their initials are q, k and v in some order, say which is which."""
    initials = "".join(name[:1].lower() for name in names[:3])
    return initials if sorted(initials) == ["k", "q", "v"] else "qkv"


def _int_attribute(module: torch.nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def resolve_layout(impl: Implementation, device: str) -> str | None:
    """Which layout the function takes Q, K, V in: (batch, heads, seq, head_dim) when it runs
    as attention on it; otherwise the one layout that does, a sequence-first docstring or a
    module's ``batch_first=False`` choosing between several. None when the default is taken."""
    if impl.layout_source is not None:
        return f"Q, K, V handed as {impl.layout.shape} (--layout {impl.layout.name})"
    heads = impl.fixed_heads if impl.heads_parameter is None and impl.fixed_heads else 3
    d = impl.fixed_head_dim or 4
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, heads, n, d, generator=g).to(device) for n in (5, 7, 7))
    # a padding mask too, in the form the function takes: bmm code that ignores the layout
    # without a mask fails with one
    keep = torch.ones(2, 1, 5, 7, dtype=torch.bool, device=device)
    keep[1, ..., -2:] = False
    passing = []
    for layout in candidates(impl.heads_parameter is not None or impl.fixed_heads is not None):
        impl.layout = layout
        if runs_as_attention(lambda q, k, v: impl(q, k, v), q, k, v) and _runs_with(impl, q, k, v, keep):
            passing.append(layout)
    hint = _sequence_first_hint(impl.fn)
    hinted = [layout for layout in passing if hint is not None and layout.sequence_first == hint]
    if not passing or passing[0].name == "bhld":
        impl.layout, impl.layout_source = LAYOUTS["bhld"], "default"
        return (
            None
            if passing
            else "no layout ran as plain attention on a probe: (batch, heads, seq, head_dim) assumed"
        )
    how = "a probe"
    if len(hinted) == 1:
        chosen, how = hinted[0], "its docstring or batch_first, and a probe"
    elif len(passing) == 1:
        chosen = passing[0]
    else:  # several run as attention: the one that computes plain attention, if one clearly does
        distances = {layout.name: _distance_to_reference(impl, layout, q, k, v) for layout in passing}
        # layouts that all give plain attention are equivalent: the first (4-d before 3-d) is taken
        ranked = sorted(passing, key=lambda layout: max(distances[layout.name], 1e-4))
        best, second = (max(distances[layout.name], 1e-4) for layout in ranked[:2])
        if not (best < 0.5 * second or second <= 1e-4):
            names = ", ".join(f"{layout.name} {layout.shape}" for layout in passing)
            raise InputError(
                f"--impl {impl.name}: runs as attention in several layouts ({names}): say which with --layout"
            )
        chosen, how = ranked[0], "a probe (the layout closest to plain attention)"
    impl.layout, impl.layout_source = chosen, "probed"
    return f"Q, K, V handed as {chosen.shape}: the layout {how} shows it takes"


def _runs_with(
    impl: Implementation, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor
) -> bool:
    """The function runs with a padding mask, when it takes one, and gives a finite output."""
    if not impl.takes_mask:
        return True
    try:
        with torch.no_grad():
            out = impl(q, k, v, keep=keep)
    except Exception:
        return False
    expected = (*q.shape[:-1], v.shape[-1])
    return torch.is_tensor(out) and out.shape == expected and bool(torch.isfinite(out).all())


def _distance_to_reference(
    impl: Implementation, layout: Layout, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> float:
    from attndbg.attention import reference_attention

    impl.layout = layout
    with torch.no_grad():
        out = impl(q, k, v)
        return float((out.double() - reference_attention(q.double(), k.double(), v.double())).abs().max())


def _sequence_first_hint(fn: Callable) -> bool | None:
    """True or False when a module's batch_first or the docstring says, else None."""
    batch_first = getattr(fn, "batch_first", None)
    if isinstance(batch_first, bool):
        return not batch_first
    texts = [pyinspect.getdoc(fn) or ""]
    if isinstance(fn, torch.nn.Module):
        texts.append(pyinspect.getdoc(fn.forward) or "")
    return True if any(SEQUENCE_FIRST.search(text) for text in texts) else None


def describe_convention(impl: Implementation) -> str:
    masks = {
        "attn_mask": "attn_mask (bool True = attend, float added)",
        "attention_mask": "attention_mask (additive float: 0, or finfo(dtype).min where masked)",
        "mask": "mask (bool, True = attend)",
        "attn_bias": "attn_bias (additive float: 0, or -inf where masked)",
    }
    taken = []
    if impl.padding_parameter:
        taken.append(f"{impl.padding_parameter} (bool (batch, k_len), True = padding)")
        if impl.mask_parameter:
            taken.append(f"{impl.mask_parameter} (additive float: 0, or -inf where masked)")
    elif impl.mask_parameter:
        taken.append(masks[impl.mask_parameter])
    if impl.causal_parameter:
        taken.append(f"{impl.causal_parameter}=True")
    if impl.scale_parameter:
        declared = f" (default {impl.declared_scale:g})" if impl.declared_scale is not None else ""
        taken.append(f"{impl.scale_parameter}{declared}")
    if impl.heads_parameter:
        taken.append(f"{impl.heads_parameter}")
    if impl.gqa:
        taken.append("enable_gqa")
    names = {"q": "query", "k": "key", "v": "value"}
    text = "(" + ", ".join(names[n] for n in impl.argument_order) + "".join(f", {t}" for t in taken) + ")"
    if impl.layout.name != "bhld":
        text += f" as {impl.layout.shape}"
    if impl.fixed_heads and impl.heads_parameter is None:
        text += f", the module's {impl.fixed_heads} heads"
    if impl.fixed_head_dim:
        text += f", head size {impl.fixed_head_dim} (the module's)"
    if not impl.takes_mask:
        text += ": mask scenarios skipped"
    if impl.causal_parameter is None and impl.mask_parameter is not None:
        text += f": causal masks built by attndbg, aligned {impl.align}"
    return text
