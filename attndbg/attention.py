"""Attention's shared vocabulary of tensors: masked-bias threshold, causal masks, where a
mask puts each query's own key and which query rows are padding, GQA head expansion and the
one reference attention. A leaf: it imports nothing from attndbg, so the
context, the statistics pass, capture and gradcheck can all use it without cycles.

The reference has F.scaled_dot_product_attention's semantics: a bool mask means attend, a
float mask is added, causal is aligned to the upper left unless asked otherwise, and rows
with nothing to attend give zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, overload

if TYPE_CHECKING:  # torch is imported inside the functions: `attndbg rules` must not load it
    import torch

# An additive entry at or below this counts as masked: exp(-5000) is 0 in every dtype, while
# real scores and ALiBi-style biases stay far above it.
MASKED_BIAS = -5000.0


def causal_offset(lq: int, lk: int, align: str = "upper-left") -> int:
    """Diagonal offset of a causal mask: 0 aligns query 0 with key 0, ``lk - lq`` aligns the
    last query with the last key (KV-cache decoding, chunked prefill)."""
    return lk - lq if align == "lower-right" else 0


def causal_keep(
    lq: int, lk: int, align: str = "upper-left", device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(lq, lk) bool, True where a query may attend."""
    import torch

    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(causal_offset(lq, lk, align))


def causal_bias(
    rows: slice, lq: int, lk: int, align: str = "upper-left", device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Additive causal bias (0 or -inf) for the query rows ``rows`` of an (lq, lk) problem."""
    import torch

    i = torch.arange(rows.start, rows.stop, rows.step or 1, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    return torch.where(j <= i + causal_offset(lq, lk, align), 0.0, float("-inf")).to(device)


def expand_kv_heads(tensor: torch.Tensor, n_heads: int, dim: int = -3) -> torch.Tensor:
    """Grouped-query attention: repeat each KV head for the query heads that share it
    (``repeat_interleave``, the mapping SDPA's ``enable_gqa`` and Hugging Face use)."""
    kv_heads = tensor.shape[dim]
    if kv_heads == n_heads or not kv_heads or n_heads % kv_heads:
        return tensor
    return tensor.repeat_interleave(n_heads // kv_heads, dim=dim)


@overload
def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    align: str = "upper-left",
    softmax_dim: int = -1,
    return_weights: Literal[False] = False,
) -> torch.Tensor: ...


@overload
def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    align: str = "upper-left",
    softmax_dim: int = -1,
    *,
    return_weights: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    align: str = "upper-left",
    softmax_dim: int = -1,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Math attention in the dtype it is handed; ``softmax_dim=-2`` and ``scale`` let gradcheck
    name what a bug matches. With ``return_weights`` also the weights."""
    import torch

    k = expand_kv_heads(k, q.shape[-3])
    v = expand_kv_heads(v, q.shape[-3])
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
    if is_causal:
        keep = causal_keep(scores.shape[-2], scores.shape[-1], align, q.device)
    if mask is not None and mask.dtype == torch.bool:
        keep = keep & mask
    elif mask is not None:
        scores = scores + mask.to(scores.dtype)
    scores = scores.masked_fill(~keep, float("-inf"))
    dead = ~torch.isfinite(scores).any(dim=softmax_dim, keepdim=True) if softmax_dim == -1 else None
    if dead is not None:
        scores = scores.masked_fill(dead, 0.0)
    weights = torch.softmax(scores, dim=softmax_dim)
    if dead is not None:
        weights = weights.masked_fill(dead, 0.0)
    weights = torch.nan_to_num(weights, nan=0.0) if softmax_dim != -1 else weights
    out = torch.matmul(weights, v)
    return (out, weights) if return_weights else out


def own_key_offset(keep: torch.Tensor, lq: int, lk: int) -> int:
    """Where query i's own position sits on the key axis of a self-attention mask: key i + offset.

    ``keep`` is a bool mask (True = attended) broadcastable to (B, H, lq, lk). Bottom-right
    (lk - lq), as self-attention, KV caches and chunked prefill have it, unless the mask rules
    that out and names one other offset: every query that attends to anything attends to its
    own position (causal, bidirectional, banded and block-local masks alike). Blocked local
    attention (LongT5: each block of queries against the keys of its own and the neighbouring
    blocks) puts it at block + i. Undecided masks keep bottom-right."""
    import torch

    bottom_right = lk - lq
    if tuple(keep.shape[-2:]) != (lq, lk):
        return bottom_right  # broadcast over queries (or keys): nothing to read an offset from
    rows = keep.reshape(-1, lq, lk)
    live = rows.any(-1)

    def own_keys_kept(offset: int) -> bool:
        own = torch.diagonal(rows, offset=offset, dim1=-2, dim2=-1)
        return bool((own | ~live).all())

    if not bool(live.any()) or own_keys_kept(bottom_right):
        return bottom_right
    found = None
    for offset in range(bottom_right):
        if own_keys_kept(offset):
            if found is not None:
                return bottom_right  # two candidates: not decided by this mask
            found = offset
    return bottom_right if found is None else found


def padding_queries(keep: torch.Tensor | None, lq: int, lk: int) -> torch.Tensor | None:
    """(B or 1, lq) bool: query rows that sit at a padding position — their own key is masked
    for every query of the sample, while the sample has at least one attended key. ``keep`` is
    the mask as booleans (True = attended) broadcastable to (B, H, lq, lk); None without one.

    A padded batch's outputs at these rows are discarded. What the rows hold depends on the
    mask: a 4-D mask that also hides the padding queries leaves them fully masked; a key
    padding mask (B, 1, 1, lk) lets them attend the real keys like any other row, with
    whatever pattern the padding token's query gives them.

    In a blocked layout (batch·blocks on the batch axis, see :func:`own_key_offset`) a block
    that lies wholly in a sample's padding has no attended key at all; it counts as padding
    when the block before it ends in padding queries: right padding running on through
    consecutive blocks of one sample, as encoders pad. Not backwards: an inverted mask leaves
    the shorter samples a leading run of hidden queries and the longest sample nothing at all,
    and that empty sample must stay a finding."""
    if keep is None or lk < lq:
        return None
    offset = own_key_offset(keep, lq, lk)
    pad_key = ~keep.any(dim=1).any(dim=1)  # (B or 1, lk): no query of the sample attends it
    sample_live = keep.reshape(keep.shape[0], -1).any(-1, keepdim=True)
    padding = pad_key[:, offset : offset + lq] & sample_live
    if offset == lk - lq:
        return padding
    empty = ~sample_live[:, 0]  # blocks with no attended key at all
    for block in range(1, len(empty)):  # right padding runs on into the next block
        if empty[block] and bool(padding[block - 1, -1]):
            padding[block] = True
    return padding
