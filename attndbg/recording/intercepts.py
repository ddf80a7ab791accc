"""The intercept table: which torch operations the recorder looks at, and what each does.

Adding an intercepted operation is one ``@intercept(...)`` handler here. A handler receives the
recorder (its traces, the current module, a way to add a call), the torch function and its
arguments; it runs the function itself and returns the result unchanged.

Operations that are not in the table are run untouched, except that a traced score tensor
passing through one is marked as broken, with the operation's name and line, so that the call
can say why its q/k/v are missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from attndbg.recording import trace as tr

if TYPE_CHECKING:
    from attndbg.recording.recorder import Recorder

Handler = Callable[["Recorder", Callable, tuple, dict], Any]
INTERCEPTS: dict[Any, Handler] = {}


def intercept(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler for ``torch.X``, ``torch.Tensor.X`` or ``F.X`` (those that exist)."""

    def register(handler: Handler) -> Handler:
        for name in names:
            owner_name, _, attribute = name.rpartition(".")
            owner = {"torch": torch, "Tensor": torch.Tensor, "F": F, "aten": torch.ops.aten}[owner_name]
            function = getattr(owner, attribute, None)
            if function is not None:
                INTERCEPTS[function] = handler
        return handler

    return register


def _argument(args: tuple, kwargs: dict, position: int, *names: str, default: Any = None) -> Any:
    if len(args) > position:
        return args[position]
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return default


def _is_activation(tensor: Any) -> bool:
    return (
        isinstance(tensor, torch.Tensor)
        and tensor.dim() >= 2
        and tensor.is_floating_point()
        and not isinstance(tensor, torch.nn.Parameter)
    )


# ---- fused attention --------------------------------------------------------------------------


@intercept("F.scaled_dot_product_attention")
def sdpa(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    rec.record_sdpa(dict(zip(names, args)) | kwargs)
    return func(*args, **kwargs)


INTERCEPTS[torch.ops.aten.scaled_dot_product_attention.default] = sdpa


MHA_ARGUMENTS = (
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


@intercept("F.multi_head_attention_forward")
def multi_head_attention(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    rec.record_mha(dict(zip(MHA_ARGUMENTS, args)) | kwargs)
    return func(*args, **kwargs)


# ---- projections ------------------------------------------------------------------------------


@intercept(
    "F.linear",
    "F.bilinear",
    "torch.conv1d",
    "torch.conv2d",
    "torch.conv3d",
    "F.conv1d",
    "F.conv2d",
    "F.conv3d",
)
def projection(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    result = func(*args, **kwargs)
    if _is_activation(result):
        rec.traces.set(result, tr.PROJECTED)
    return result


# ---- products ---------------------------------------------------------------------------------


@intercept("torch.matmul", "Tensor.matmul", "Tensor.__matmul__", "torch.bmm", "Tensor.bmm")
def product(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    a = _argument(args, kwargs, 0, "input")
    b = _argument(args, kwargs, 1, "other", "mat2")
    result = func(*args, **kwargs)
    weights_b = rec.traces.get(b)
    if isinstance(rec.traces.get(a), tr.WeightsTrace):
        rec.complete(rec.traces.get(a), b, result)
    elif isinstance(weights_b, tr.WeightsTrace) and weights_b.transposed and isinstance(a, torch.Tensor):
        # channels-first attention (Stable Diffusion's VAE AttnBlock): outᵀ = vᵀ · wᵀ
        straight = tr.WeightsTrace(weights_b.call, weights_b.reordered)
        rec.complete(straight, a.transpose(-2, -1), result.transpose(-2, -1))
    elif _is_activation(a) and _is_activation(b):
        rec.start(a, b.transpose(-2, -1), result, (rec.traces.get(a), rec.traces.get(b)))
    return result


@intercept("torch.baddbmm", "Tensor.baddbmm")
def product_with_bias(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``beta·input + alpha·(batch1 @ batch2)``: alpha is the scale, input an additive bias."""
    bias = _argument(args, kwargs, 0, "input")
    a = _argument(args, kwargs, 1, "batch1")
    b = _argument(args, kwargs, 2, "batch2")
    beta, alpha = float(kwargs.get("beta", 1)), float(kwargs.get("alpha", 1))
    result = func(*args, **kwargs)
    if _is_activation(a) and _is_activation(b):
        scale = alpha if alpha != 1 else None
        started = rec.start(a, b.transpose(-2, -1), result, (rec.traces.get(a), rec.traces.get(b)), scale)
        if started is not None and beta != 0 and isinstance(bias, torch.Tensor):
            # ALiBi (a bias) or diffusers' attention mask: the mask step when it hides keys
            bias = bias if beta == 1 else bias * beta
            rec.traces.set(result, tr.masked(started, "additive", bias, result.shape, rec.here()))
    return result


_TOKEN = re.compile(r"\.\.\.|[A-Za-z]")


def _einsum_roles(equation: str) -> tuple[list[str], list[str], list[str]] | None:
    inputs, _, output = equation.replace(" ", "").partition("->")
    operands = inputs.split(",")
    if len(operands) != 2 or not output:
        return None
    return _TOKEN.findall(operands[0]), _TOKEN.findall(operands[1]), _TOKEN.findall(output)


def _einsum_pv(
    rec: Recorder, record: Any, w_spec: list[str], v: Any, v_spec: list[str], out_spec: list[str], out: Any
) -> bool:
    """An einsum of traced weights with v, in whichever operand order and axis layout
    ('…qk,…kd->…qd', guided-diffusion's 'bts,bcs->bct'): completes the call and says so."""
    if not isinstance(record, tr.WeightsTrace) or record.reordered or len(w_spec) < 2:
        return False
    lead, (query, key) = w_spec[:-2], (w_spec[-2:] if not record.transposed else w_spec[:-3:-1])
    features = [t for t in v_spec if t not in w_spec]
    if (
        len(features) != 1
        or sorted(v_spec) != sorted([*lead, key, *features])
        or sorted(out_spec) != sorted([*lead, query, *features])
    ):
        return False
    spec, (feature,) = "".join, features
    v = torch.einsum(f"{spec(v_spec)}->{spec(lead)}{key}{feature}", v)
    out = torch.einsum(f"{spec(out_spec)}->{spec(lead)}{query}{feature}", out)
    rec.complete(tr.WeightsTrace(record.call), v, out)
    return True


@intercept("torch.einsum")
def einsum(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``'…id,…jd->…ij'`` is a QK product (x-transformers); ``'…ij,…jd->…id'`` after a
    traced softmax is the PV product."""
    result = func(*args, **kwargs)
    operands = args[1:] if len(args) > 2 else tuple(args[1]) if len(args) == 2 else ()
    roles = _einsum_roles(args[0]) if args and isinstance(args[0], str) else None
    if roles is None or len(operands) != 2:
        return result
    (a_spec, b_spec, out_spec), (a, b) = roles, operands
    contracted = [t for t in a_spec if t in b_spec and t not in out_spec]
    if len(contracted) != 1 or len(out_spec) < 2:
        return result
    lead, (i, last), (d,) = out_spec[:-2], out_spec[-2:], contracted
    if any(t not in a_spec or t not in b_spec for t in lead):
        return result
    spec = "".join
    record = rec.traces.get(a)
    for weights, w_spec, v, v_spec in ((a, a_spec, b, b_spec), (b, b_spec, a, a_spec)):
        if _einsum_pv(rec, rec.traces.get(weights), w_spec, v, v_spec, out_spec, result):
            return result
    if isinstance(record, tr.WeightsTrace):
        return result  # weights in a product that is not PV: not a new QK product either
    if last in b_spec and last not in a_spec and i in b_spec and _is_activation(a) and _is_activation(b):
        # '…ld,…lwd->…lw': every query has keys of its own (a band or a window gathered per
        # query); no single k gives these scores, so they are not q·kᵀ
        rec.traces.set(
            result,
            tr.Broken(
                f"q/k/v not recorded: the scores come from einsum {args[0]!r}{rec.at()}, in which "
                "every query has keys of its own (a band or window per query), not one q·kᵀ"
            ),
        )
    elif last in b_spec and last not in a_spec and _is_activation(a) and _is_activation(b):
        q = torch.einsum(f"{spec(a_spec)}->{spec(lead)}{i}{d}", a)
        k = torch.einsum(f"{spec(b_spec)}->{spec(lead)}{last}{d}", b)
        rec.start(q, k, result, (record, rec.traces.get(b)))
    return result


# ---- steps between the products ---------------------------------------------------------------


@intercept(
    "torch.mul", "Tensor.mul", "Tensor.mul_", "Tensor.__mul__", "Tensor.__rmul__", "Tensor.__imul__",
    "torch.div", "Tensor.div", "Tensor.div_", "Tensor.__truediv__", "Tensor.__itruediv__",
)  # fmt: skip
def scale(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    tensor, other = _argument(args, kwargs, 0, "input"), _argument(args, kwargs, 1, "other")
    dividing = "div" in func.__name__
    swapped = not isinstance(rec.traces.get(tensor), tr.ScoreTrace) and isinstance(
        rec.traces.get(other), tr.ScoreTrace
    )
    if swapped and not dividing:
        tensor, other = other, tensor  # 0.125 * scores written as torch.mul(0.125, scores)
    result = func(*args, **kwargs)
    factor = tr.scalar_value(other)
    if factor is not None and dividing:
        factor = None if factor == 0 or kwargs.get("rounding_mode") else 1.0 / factor
    record = rec.traces.get(tensor)
    if factor is None or isinstance(record, tr.Broken):
        rec.broken(record, result, func)
    elif isinstance(record, tr.ScoreTrace):
        rec.traces.set(result, tr.scaled(record, factor, rec.here()))
    elif isinstance(result, torch.Tensor) and _is_activation(tensor):
        before = record.factor if isinstance(record, tr.PreScale) else 1.0
        rec.traces.set(result, tr.PreScale(before * factor, rec.here()))
    return result


@intercept("torch.add", "Tensor.add", "Tensor.add_", "Tensor.__add__", "Tensor.__radd__", "Tensor.__iadd__")
def add(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Adding a tensor to the scores: an additive mask or bias (ALiBi, T5, HF's causal mask)."""
    a, b = _argument(args, kwargs, 0, "input"), _argument(args, kwargs, 1, "other")
    result = func(*args, **kwargs)
    alpha = kwargs.get("alpha", 1)
    trace_a, trace_b = rec.traces.get(a), rec.traces.get(b)
    # Scores plus another product (SAM's and MViT's decomposed relative positions q·Rᵀ,
    # Transformer-XL's position term) is scores plus a bias whose values were computed from
    # q: the sum is the same, so the second term is kept as a bias. The scores are the chain
    # already as large as the sum (the other term is broadcast up to it), else the first.
    if _is_scores(trace_a, a, result) or (
        isinstance(trace_a, tr.ScoreTrace) and not _is_scores(trace_b, b, result)
    ):
        if isinstance(b, torch.Tensor) and not isinstance(trace_b, tr.WeightsTrace):
            bias = b if alpha == 1 else b * alpha
            rec.traces.set(result, tr.masked(trace_a, "additive", bias, result.shape, rec.here()))
        else:
            rec.broken(trace_a, result, func)
    elif (
        isinstance(trace_b, tr.ScoreTrace)
        and isinstance(a, torch.Tensor)
        and not isinstance(trace_a, tr.WeightsTrace)
        and alpha == 1
    ):
        rec.traces.set(result, tr.masked(trace_b, "additive", a, result.shape, rec.here()))
    else:
        rec.broken(trace_a if trace_a is not None else trace_b, result, func)
    return result


def _is_scores(record: Any, tensor: Any, result: Any) -> bool:
    return (
        isinstance(record, tr.ScoreTrace)
        and isinstance(tensor, torch.Tensor)
        and tensor.shape == result.shape
    )


@intercept("torch.masked_fill", "Tensor.masked_fill", "Tensor.masked_fill_")
def masked_fill(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    tensor = _argument(args, kwargs, 0, "input")
    condition = _argument(args, kwargs, 1, "mask")
    fill = tr.scalar_value(_argument(args, kwargs, 2, "value"))
    result = func(*args, **kwargs)
    rec.mask_step(rec.traces.get(tensor), result, "drop", condition, fill, func)
    return result


@intercept("Tensor.__setitem__")
def set_item(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``scores[~mask] = -1e6`` (d2l's masked softmax): a drop mask, in place."""
    tensor, index, value = args[0], args[1], args[2]
    func(*args, **kwargs)
    record = rec.traces.get(tensor)
    fill = tr.scalar_value(value)
    if isinstance(index, torch.Tensor) and index.dtype == torch.bool and index.shape == tensor.shape:
        rec.mask_step(record, tensor, "drop", index, fill, func)
    else:
        rec.broken(record, tensor, func)


@intercept("torch.where")
def where(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    """``torch.where(keep, scores, -inf)`` keeps where True; ``where(drop, -inf, scores)`` drops."""
    result = func(*args, **kwargs)
    if len(args) != 3:
        return result
    condition, a, b = args
    if isinstance(rec.traces.get(a), (tr.ScoreTrace, tr.Broken)):
        rec.mask_step(rec.traces.get(a), result, "keep", condition, tr.scalar_value(b), func)
    elif isinstance(rec.traces.get(b), (tr.ScoreTrace, tr.Broken)):
        rec.mask_step(rec.traces.get(b), result, "drop", condition, tr.scalar_value(a), func)
    return result


@intercept(
    *(f"Tensor.{name}" for name in tr.LAYOUT_METHODS),
    "torch.reshape", "torch.permute", "torch.transpose", "torch.flatten", "torch.unflatten",
    "torch.squeeze", "torch.unsqueeze",
)  # fmt: skip
def layout(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    result = func(*args, **kwargs)
    tensor, rest = args[0], args[1:]
    record = rec.traces.get(tensor)
    if record is None or not isinstance(result, torch.Tensor):
        return result
    if any(isinstance(a, torch.dtype) for a in rest):  # view(dtype) reinterprets bits
        rec.broken(record, result, func)
    elif isinstance(record, tr.ScoreTrace):
        op = tr.LayoutOp(func.__name__, tuple(rest), dict(kwargs), tensor.shape, result.shape)
        rec.traces.set(result, tr.relaid(record, op))
    elif isinstance(record, tr.WeightsTrace):
        op = tr.LayoutOp(func.__name__, tuple(rest), dict(kwargs), tensor.shape, result.shape)
        rec.traces.set(result, record.relaid(op))
    else:
        rec.traces.set(result, record)
    return result


@intercept(
    "Tensor.__getitem__", "Tensor.chunk", "torch.chunk", "Tensor.split", "torch.split",
    "Tensor.unbind", "torch.unbind", "Tensor.narrow", "Tensor.select", "Tensor.expand",
)  # fmt: skip
def selection(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Picking parts of a pre-scaled tensor keeps its scale (ProphetNet chunks its scaled q
    into streams, timm unbinds q, k, v); parts of the scores are not followed."""
    result = func(*args, **kwargs)
    record = rec.traces.get(args[0]) if args else None
    if isinstance(record, (tr.PreScale, tr.Projected)):
        for part in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(part, torch.Tensor):
                rec.traces.set(part, record)
    else:
        rec.broken(record, result, func)
    return result


@intercept("torch.cat", "torch.stack", "torch.concat")
def joined(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Stacking parts scaled by the same factor keeps the scale (ProphetNet's predict stream)."""
    result = func(*args, **kwargs)
    parts = _argument(args, kwargs, 0, "tensors")
    records = [rec.traces.get(part) for part in parts] if isinstance(parts, (tuple, list)) else []
    factors = {r.factor for r in records if isinstance(r, tr.PreScale)}
    if records and len(factors) == 1 and all(isinstance(r, tr.PreScale) for r in records):
        rec.traces.set(result, records[0])
    elif any(isinstance(r, tr.Projected) for r in records) and all(
        r is None or isinstance(r, tr.Projected) for r in records
    ):
        rec.traces.set(result, tr.PROJECTED)  # projected features joined with learned memory slots
    return result


@intercept(
    "Tensor.float", "Tensor.half", "Tensor.bfloat16", "Tensor.double",
    "Tensor.to", "Tensor.type_as", "Tensor.type",
)  # fmt: skip
def cast(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    result = func(*args, **kwargs)
    record = rec.traces.get(args[0])
    if record is not None and isinstance(result, torch.Tensor):
        rec.traces.set(result, record)
    return result


# ---- softmax and after ------------------------------------------------------------------------


@intercept(
    "torch.softmax", "F.softmax", "Tensor.softmax", "torch.log_softmax", "F.log_softmax", "Tensor.log_softmax"
)
def softmax(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    scores = _argument(args, kwargs, 0, "input")
    dim = _argument(args, kwargs, 1, "dim")
    result = func(*args, **kwargs)
    if isinstance(scores, torch.Tensor) and isinstance(dim, int) and isinstance(result, torch.Tensor):
        rec.record_softmax(scores, dim, result, log="log" in func.__name__)
    return result


@intercept("F.dropout", "torch.dropout", "Tensor.dropout")
def dropout(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    tensor = _argument(args, kwargs, 0, "input")
    p = float(_argument(args, kwargs, 1, "p", default=0.5))
    training = bool(_argument(args, kwargs, 2, "training", "train", default=True))
    result = func(*args, **kwargs)
    record = rec.traces.get(tensor)
    if isinstance(record, tr.WeightsTrace):
        if training:
            record.call.dropout_p = p
        rec.traces.set(result, record)
    else:
        rec.broken(record, result, func)
    return result
