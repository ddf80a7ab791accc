"""Real attention bugs from issue trackers and fix commits, each as the code before and
after the fix, re-implemented in our own words. ``CASES``: the verdict a careful reviewer
gives before and after, and why."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# mlc-ai/mlc-llm#3426 "fix missing 1/sqrt(d) scaling in attention fallback path": the
# op_ext.attention fallback called _attention_sequence_prefill with sm_scale=1.0 (its
# default) instead of head_dim ** -0.5; the kernel accumulates in float32.
def _mlc_prefill(query, key, value, sm_scale):
    scores = torch.matmul(query.float(), key.float().transpose(-2, -1)) * sm_scale
    return torch.matmul(torch.softmax(scores, dim=-1), value.float()).to(query.dtype)


def mlc_llm_fallback_before(query, key, value):
    return _mlc_prefill(query, key, value, sm_scale=1.0)


def mlc_llm_fallback_after(query, key, value):
    return _mlc_prefill(query, key, value, sm_scale=query.shape[-1] ** -0.5)


# lucidrains/vit-pytorch#65 (fixed in 85314cf): Attention used self.scale = dim ** -0.5 with
# dim the model width (heads * dim_head) instead of dim_head ** -0.5.
def vit_pytorch_before(query, key, value):
    dim = query.shape[1] * query.shape[-1]  # the model width: heads * dim_head
    dots = torch.matmul(query, key.transpose(-1, -2)) * dim**-0.5
    return torch.matmul(dots.softmax(dim=-1), value)


def vit_pytorch_after(query, key, value):
    dots = torch.matmul(query, key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    return torch.matmul(dots.softmax(dim=-1), value)


# esceptico/perceiver-io#9: self.scale = qk_head_dim ** -0.5, but the scores were *divided*
# by it (so multiplied by sqrt(d)); the fix multiplies.
def perceiver_io_before(query, key, value):
    scale = query.shape[-1] ** -0.5
    return (query @ key.transpose(-2, -1) / scale).softmax(dim=-1) @ value


def perceiver_io_after(query, key, value):
    scale = query.shape[-1] ** -0.5
    return (query @ key.transpose(-2, -1) * scale).softmax(dim=-1) @ value


# onnx/onnx#7274 "Update attention gqa to use repeat interleave within repeat kv": the
# Attention function body expanded KV heads with Tile ([h0, h1, h0, h1]); PyTorch and the
# reference implementation repeat each KV head in a row ([h0, h0, h1, h1]).
def onnx_gqa_before(query, key, value, scale=None):
    reps = query.shape[1] // key.shape[1]
    key, value = key.repeat(1, reps, 1, 1), value.repeat(1, reps, 1, 1)  # Tile
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(query @ key.transpose(-1, -2) * scale, dim=-1) @ value


def onnx_gqa_after(query, key, value, scale=None):
    reps = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(reps, dim=1), value.repeat_interleave(reps, dim=1)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(query @ key.transpose(-1, -2) * scale, dim=-1) @ value


# pytorch/pytorch#41508 "nn.MultiheadAttention causes gradients to become NaN under some use
# cases" (and #103749 for SDPA): a query row whose keys are all padding gets softmax of all
# -inf, NaN forward and NaN gradients for the whole batch. The fix in PyTorch's SDPA returns
# zeros for such rows, which is what the "after" calls.
def torch_mha_padding_before(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    return torch.softmax(scores, dim=-1) @ value


def torch_mha_padding_after(query, key, value, attn_mask=None):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)


# bentrevett/pytorch-seq2seq#191 (same error as NVIDIA/apex#1052, fairseq#3575): Tutorial 6's
# energy.masked_fill(mask == 0, -1e10) raises "value cannot be converted to type at::Half
# without overflow" in float16; the fix proposed there is -1e4.
def seq2seq_tutorial_before(query, key, value, mask=None):
    energy = torch.matmul(query, key.permute(0, 1, 3, 2)) / math.sqrt(query.shape[-1])
    if mask is not None:
        energy = energy.masked_fill(mask == 0, -1e10)
    return torch.matmul(torch.softmax(energy, dim=-1), value)


def seq2seq_tutorial_after(query, key, value, mask=None):
    energy = torch.matmul(query, key.permute(0, 1, 3, 2)) / math.sqrt(query.shape[-1])
    if mask is not None:
        energy = energy.masked_fill(mask == 0, -1e4)
    return torch.matmul(torch.softmax(energy, dim=-1), value)


# thu-ml/SageAttention#372 "Fix Sage2 causal attention for unequal qkv lengths" (the same bug
# as gittensor-ai-lab/sparkinfer#3): the causal bound kv_idx <= q_idx is aligned to the
# upper left; with a KV cache (q_len < kv_len) it must be kv_idx <= q_idx + kv_len - q_len.
def sage_causal_before(query, key, value, is_causal=False):
    scores = query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5
    if is_causal:
        q_idx = torch.arange(scores.shape[-2], device=query.device)[:, None]
        kv_idx = torch.arange(scores.shape[-1], device=query.device)[None, :]
        scores = scores.masked_fill(kv_idx > q_idx, float("-inf"))
    return torch.softmax(scores, dim=-1) @ value


def sage_causal_after(query, key, value, is_causal=False):
    scores = query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5
    if is_causal:
        q_len, kv_len = scores.shape[-2:]
        q_idx = torch.arange(q_len, device=query.device)[:, None]
        kv_idx = torch.arange(kv_len, device=query.device)[None, :]
        scores = scores.masked_fill(kv_idx > q_idx + kv_len - q_len, float("-inf"))
    return torch.softmax(scores, dim=-1) @ value


# pytorch/pytorch#27968 "MultiheadAttention incorrectly handles mask": key_padding_mask is
# True where a key is *padding*; code that hands it a Hugging Face style attention mask
# (1 = attend) masks the real tokens and attends to the padding.
def key_padding_inverted_before(query, key, value, mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if mask is not None:
        key_padding_mask = mask.bool()  # the bug: passed through as "True = ignore"
        scores = scores.masked_fill(key_padding_mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1)) @ value


def key_padding_inverted_after(query, key, value, mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if mask is not None:
        key_padding_mask = ~mask.bool()
        scores = scores.masked_fill(key_padding_mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1)) @ value


CASES = [
    {
        "fn": "mlc_llm_fallback_before",
        "source": "mlc-ai/mlc-llm#3426 (before)",
        "args": [],
        "exit": 1,
        "codes": ["SCL001"],
        "failing": ["basic"],
        "why": "sm_scale 1.0: the 1/sqrt(d) scale is missing",
    },
    {
        "fn": "mlc_llm_fallback_after",
        "source": "mlc-ai/mlc-llm#3426 (after)",
        "args": [],
        "exit": 0,
        "codes": [],
        "failing": [],
        "why": "correct; float32 accumulation judged at float32 precision",
    },
    {
        "fn": "vit_pytorch_before",
        "source": "lucidrains/vit-pytorch#65 (before 85314cf)",
        "args": [],
        "exit": 1,
        "codes": ["SCL002"],
        "failing": ["basic"],
        "why": "scale 1/sqrt(heads * dim_head) = 1/sqrt(d_model): present but wrong, fitted "
        "from the outputs and named",
    },
    {
        "fn": "vit_pytorch_after",
        "source": "lucidrains/vit-pytorch#65 (after 85314cf)",
        "args": [],
        "exit": 0,
        "codes": [],
        "failing": [],
        "why": "correct",
    },
    {
        "fn": "perceiver_io_before",
        "source": "esceptico/perceiver-io#9 (before)",
        "args": [],
        "exit": 1,
        "codes": ["SCL002"],
        "failing": ["basic"],
        "why": "divides by the scale: scores multiplied by sqrt(d) instead of 1/sqrt(d)",
    },
    {
        "fn": "perceiver_io_after",
        "source": "esceptico/perceiver-io#9 (after)",
        "args": [],
        "exit": 0,
        "codes": [],
        "failing": [],
        "why": "correct",
    },
    {
        "fn": "onnx_gqa_before",
        "source": "onnx/onnx#7274 (before: Tile)",
        "args": [],
        "exit": 0,
        "codes": ["GRD005"],
        "failing": ["gqa"],
        "why": "KV heads tiled ([h0, h1, h0, h1]) instead of repeated in a row: its own GQA code "
        "is exercised (K/V passed grouped) and the mapping named",
    },
    {
        "fn": "onnx_gqa_after",
        "source": "onnx/onnx#7274 (after: repeat-interleave)",
        "args": [],
        "exit": 0,
        "codes": [],
        "failing": [],
        "why": "correct, GQA mapping as PyTorch's enable_gqa; scale passed and honoured",
    },
    {
        "fn": "torch_mha_padding_before",
        "source": "pytorch/pytorch#41508, #103749 (before)",
        "args": [],
        "exit": 1,
        "codes": ["MSK001"],
        "failing": [],
        "why": "fully masked rows NaN in the forward and every gradient (error)",
    },
    {
        "fn": "torch_mha_padding_after",
        "source": "pytorch/pytorch#41508, #103749 (after: SDPA zeros)",
        "args": [],
        "exit": 0,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct; zeros on fully masked rows (info)",
    },
    {
        "fn": "seq2seq_tutorial_before",
        "source": "bentrevett/pytorch-seq2seq#191 (before: -1e10)",
        "args": [],
        "exit": 1,
        "codes": ["MSK001", "MSK007"],
        "failing": ["padding-bool"],
        "why": "masked_fill(-1e10) raises in float16 whenever a mask is given (error); fully "
        "masked rows uniform in float32/bfloat16 (warning)",
    },
    {
        "fn": "seq2seq_tutorial_after",
        "source": "bentrevett/pytorch-seq2seq#191 (after: -1e4)",
        "args": [],
        "exit": 0,
        "codes": ["MSK001"],
        "failing": [],
        "why": "runs in every dtype; fully masked rows uniform (warning)",
    },
    {
        "fn": "sage_causal_before",
        "source": "thu-ml/SageAttention#372, gittensor-ai-lab/sparkinfer#3 (before)",
        "args": ["--causal-align", "lower-right"],
        "exit": 1,
        "codes": ["MSK006"],
        "failing": ["causal q_len<k_len"],
        "why": "upper-left causal bound where the KV-cache call needs lower-right",
    },
    {
        "fn": "sage_causal_after",
        "source": "thu-ml/SageAttention#372 (after)",
        "args": ["--causal-align", "lower-right"],
        "exit": 0,
        "codes": [],
        "failing": [],
        "why": "correct lower-right causal mask",
    },
    {
        "fn": "key_padding_inverted_before",
        "source": "pytorch/pytorch#27968 (before: attention mask passed as key_padding_mask)",
        "args": [],
        "exit": 1,
        "codes": ["MSK004"],
        "failing": ["padding-bool"],
        "why": "the keep-mask is read as a padding mask: real tokens masked, padding attended",
    },
    {
        "fn": "key_padding_inverted_after",
        "source": "pytorch/pytorch#27968 (after: inverted)",
        "args": [],
        "exit": 0,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct; masked_fill + nan_to_num gives zeros on fully masked rows (info)",
    },
]
