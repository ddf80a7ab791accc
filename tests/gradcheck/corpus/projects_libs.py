"""Attention from libraries and reference implementations (fairseq, timm, ONNX, AllenNLP,
burn, flash-attn's and xformers' test references), re-implemented in our own words with the
same fill values, softmax dtype, scale, mask handling, GQA mapping and causal alignment.
``CASES``: the verdict a careful reviewer gives, and why."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def fairseq_multihead_attention(query, key, value, attn_mask=None):
    """facebookresearch/fairseq fairseq/modules/multihead_attention.py @ 806855bf
    (MultiheadAttention.forward, the non-fused path): q *= head_dim ** -0.5 before the bmm,
    attn_mask is added (float), a bool padding mask is applied with
    masked_fill(..., float("-inf")), utils.softmax(attn_weights, dim=-1) computes in float32
    (F.softmax(x.float())), then .type_as(attn_weights)."""
    b, h, lq, d = query.shape
    q = (query * d**-0.5).reshape(b * h, lq, d)
    k = key.reshape(b * h, key.shape[-2], d)
    v = value.reshape(b * h, value.shape[-2], value.shape[-1])
    lk, dv = key.shape[-2], value.shape[-1]
    attn_weights = torch.bmm(q, k.transpose(1, 2)).view(b, h, lq, lk)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_weights = attn_weights.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        attn_weights = attn_weights + attn_mask
    attn_weights_float = F.softmax(attn_weights.float(), dim=-1)
    attn_probs = attn_weights_float.type_as(attn_weights).view(b * h, lq, lk)
    return torch.bmm(attn_probs, v).view(b, h, lq, dv)


def timm_attention(query, key, value, attn_mask=None):
    """huggingface/pytorch-image-models timm/layers/attention.py @ f354b305 (Attention.forward
    with fused_attn off): q = q * scale, attn = q @ k^T, maybe_add_mask(attn, attn_mask) —
    the mask is always *added* — softmax(dim=-1), attn @ v. The fused path hands the same
    mask to F.scaled_dot_product_attention, which reads a bool mask as keep."""
    scale = query.shape[-1] ** -0.5
    attn = (query * scale) @ key.transpose(-2, -1)
    attn = attn if attn_mask is None else attn + attn_mask
    attn = attn.softmax(dim=-1)
    return attn @ value


def onnx_reference_attention(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """onnx/onnx onnx/reference/ops/op_attention.py @ 04138e07 (_compute_attention, no past
    key): sqrt(scale) applied to Q and to K, a bool mask turned into 0/-inf, is_causal via
    triu(k=1) of -inf aligned to the upper left (past_sequence_length 0), GQA by np.repeat
    (each KV head repeated in a row), softmax in the input dtype."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scale = math.sqrt(scale)
    lq, lk = query.shape[-2], key.shape[-2]
    attn_bias = torch.zeros(lq, lk, dtype=query.dtype, device=query.device)
    if is_causal:
        triu = torch.triu(torch.ones(lq, lk, dtype=query.dtype, device=query.device), diagonal=1)
        attn_bias = attn_bias.masked_fill(triu == 1, float("-inf"))
    elif attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            additive = (~attn_mask).to(query.dtype)
            attn_mask = additive.masked_fill(additive == 1, float("-inf"))
        attn_bias = attn_bias + attn_mask
    if query.shape[1] != key.shape[1] and query.shape[1] % key.shape[1] == 0:
        reps = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(reps, dim=1), value.repeat_interleave(reps, dim=1)
    qk = torch.matmul(query * scale, key.transpose(-1, -2) * scale) + attn_bias
    shifted = qk - qk.amax(dim=-1, keepdim=True)
    tmp = torch.exp(shifted)
    qk_softmax = tmp / tmp.sum(dim=-1, keepdim=True)
    return torch.matmul(qk_softmax, value)


def allennlp_attention(query, key, value, mask=None):
    """allenai/allennlp allennlp/nn/util.py (masked_softmax, memory_efficient=False) behind
    allennlp/modules/attention/scaled_dot_product_attention.py: scores / sqrt(d),
    softmax(vector * mask), * mask, / (sum + tiny_value_of_dtype) — so a fully masked row
    is zeros, and masked keys take no weight."""
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.shape[-1])
    if mask is None:
        weights = torch.softmax(scores, dim=-1)
    else:
        mask = mask.bool()
        tiny = 1e-4 if scores.dtype == torch.float16 else 1e-13
        result = torch.softmax(scores * mask, dim=-1)
        result = result * mask
        weights = result / (result.sum(dim=-1, keepdim=True) + tiny)
    return torch.matmul(weights, value)


def burn_multihead_attention(query, key, value, mask=None):
    """tracel-ai/burn crates/burn-nn/src/modules/attention/mha.rs @ 14120676
    (attn_scores, attn_weights): scores / sqrt(d_k), mask_fill(mask_pad, min_float) with
    min_float = -1.0e4 and mask_pad True = padding, plain softmax (quiet_softmax off)."""
    min_float = -1.0e4
    scores = query.matmul(key.transpose(-2, -1)) / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), min_float)
    return torch.softmax(scores, dim=-1).matmul(value)


def flash_attn_reference(query, key, value, attn_mask=None, is_causal=False):
    """Dao-AILab/flash-attention tests/test_flash_attn.py (attention_ref, upcast=True):
    q, k, v upcast to float32, GQA by repeat 'b s h d -> b s (h g) d' (each KV head in a
    row), scores / sqrt(d), padding by masked_fill(-inf), causal by construct_local_mask
    aligned to the lower right (col > row + sk - sq), softmax, rows with every key masked
    set to 0, output cast back to the input dtype."""
    dtype_og = query.dtype
    q, k, v = query.float(), key.float(), value.float()
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    d = q.shape[-1]
    scores = torch.einsum("bhtd,bhsd->bhts", q / math.sqrt(d), k)
    sq, sk = scores.shape[-2:]
    masked = torch.zeros(scores.shape[-2:], dtype=torch.bool, device=q.device)
    if is_causal:
        row = torch.arange(sq, device=q.device)[:, None]
        col = torch.arange(sk, device=q.device)[None, :]
        masked = col > row + sk - sq
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        masked = masked | ~attn_mask
    elif attn_mask is not None:  # an additive bias, as attention_ref's attn_bias
        scores = scores + attn_mask.float()
        masked = masked | torch.isneginf(attn_mask)
    scores = scores.masked_fill(masked, float("-inf"))
    attention = torch.softmax(scores, dim=-1)
    attention = attention.masked_fill(torch.all(masked, dim=-1, keepdim=True), 0.0)
    return torch.einsum("bhts,bhsd->bhtd", attention, v).to(dtype_og)


def xformers_reference(query, key, value, attn_mask=None, is_causal=False):
    """facebookresearch/xformers tests/test_mem_eff_attention.py (ref_attention): q, k, v
    in float32, q * (1 / d ** 0.5), q @ k^T + the materialised attn_bias
    (LowerTriangularMask: -inf above the diagonal from the upper left), softmax(-1), @ v."""
    dtype = query.dtype
    q, k, v = query.float(), key.float(), value.float()
    q = q * (1 / q.shape[-1] ** 0.5)
    attn = q @ k.transpose(-2, -1)
    if is_causal:
        bias = torch.full(attn.shape[-2:], float("-inf"), device=q.device).triu(1)
        attn = attn + bias
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, device=q.device).masked_fill(~attn_mask, float("-inf"))
        attn = attn + attn_mask.float()
    attn = attn.softmax(-1)
    return (attn @ v).to(dtype)


CASES = [
    {
        "fn": "fairseq_multihead_attention",
        "source": "facebookresearch/fairseq fairseq/modules/multihead_attention.py"
        "@806855bf660ea748ed7ffb42fe8dcc881ca3aca0",
        "args": [],
        "exit": 1,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct, float32 softmax judged at float32 precision (no false GRD001); -inf "
        "padding turns fully masked rows NaN (error)",
    },
    {
        "fn": "timm_attention",
        "source": "huggingface/pytorch-image-models "
        "timm/layers/attention.py@f354b305260bfd7c03b44421eb83f6350216d619",
        "args": [],
        "exit": 1,
        "codes": ["MSK003"],
        "failing": ["padding-bool", "causal"],
        "why": "correct with an additive mask (padding-additive passes); the manual path adds "
        "whatever mask it gets, so a bool keep-mask — which its fused SDPA path honours — "
        "masks nothing (MSK003)",
    },
    {
        "fn": "onnx_reference_attention",
        "source": "onnx/onnx onnx/reference/ops/op_attention.py@04138e07da14f1eb60f5619f038e044eec365c1e",
        "args": [],
        "exit": 1,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct scale (passed and honoured), upper-left causal and interleaved GQA; "
        "fully masked rows NaN (error)",
    },
    {
        "fn": "allennlp_attention",
        "source": "allenai/allennlp allennlp/nn/util.py (masked_softmax)",
        "args": [],
        "exit": 0,
        "codes": ["MSK001", "SMX004"],
        "failing": ["causal"],
        "why": "correct semantics; fully masked rows are zeros, as SDPA (info); in float16 the "
        "softmax over masked positions then renormalisation by sum + 1e-4 loses precision beyond "
        "what plain float16 attention loses (warning, float16 only)",
    },
    {
        "fn": "burn_multihead_attention",
        "source": "tracel-ai/burn "
        "crates/burn-nn/src/modules/attention/mha.rs@141206769ad9e303b70892616ead55b475944c40",
        "args": [],
        "exit": 0,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct; min_float = -1e4 fits float16, fully masked rows uniform (warning)",
    },
    {
        "fn": "flash_attn_reference",
        "source": "Dao-AILab/flash-attention tests/test_flash_attn.py (attention_ref)",
        "args": ["--causal-align", "lower-right"],
        "exit": 0,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct under its lower-right alignment; upcast to float32 judged at float32 "
        "precision; fully masked rows zeros (info)",
    },
    {
        "fn": "xformers_reference",
        "source": "facebookresearch/xformers tests/test_mem_eff_attention.py (ref_attention)",
        "args": [],
        "exit": 1,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct upper-left causal and float32 math; fully masked rows NaN (error)",
    },
]
