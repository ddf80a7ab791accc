"""Language-model attention from public projects, re-implemented in our own words with the
same fill values, dtypes, softmax dtype, scale, mask handling, GQA mapping and causal
alignment, behind the calling conventions `attndbg gradcheck --impl` understands.

Every function cites where it comes from. ``CASES`` is the verdict a careful reviewer gives:
the exit code, the diagnosis codes that must be named and the scenarios that must fail.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nanogpt_attention(query, key, value, is_causal=False):
    """karpathy/nanoGPT model.py @ 04a1d697 (CausalSelfAttention.forward, the manual path
    without flash): a (block_size, block_size) lower-triangular buffer sliced to [:T, :T]
    with T the query length, masked_fill(== 0, -inf), softmax in the input dtype, scale
    1/sqrt(k.size(-1)). nanoGPT has no padding mask."""
    block_size = 64
    bias = torch.tril(torch.ones(block_size, block_size, device=query.device)).view(
        1, 1, block_size, block_size
    )
    att = (query @ key.transpose(-2, -1)) * (1.0 / math.sqrt(key.size(-1)))
    if is_causal:
        t = query.size(-2)
        att = att.masked_fill(bias[:, :, :t, :t] == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    return att @ value


def annotated_transformer_attention(query, key, value, mask=None):
    """harvardnlp/annotated-transformer the_annotated_transformer.py (attention()): scores
    / sqrt(d_k), masked_fill(mask == 0, -1e9), softmax, returns (p_attn @ value, p_attn).
    -1e9 does not fit float16: masked_fill raises there (NVIDIA/apex#1052)."""
    d_k = query.size(-1)
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e9)
    p_attn = scores.softmax(dim=-1)
    return torch.matmul(p_attn, value), p_attn


def d2l_attention(query, key, value, mask=None):
    """d2l-ai/d2l-en d2l/torch.py (masked_softmax, sequence_mask, DotProductAttention):
    bmm / sqrt(d), then masked_softmax with per-row valid lengths: X[~mask] = -1e6, softmax.
    d2l takes valid_lens, not a mask: every mask attndbg builds is a prefix per row (padding
    at the end, causal, fully masked rows), so valid_lens = mask.sum(-1) is exact."""
    b, h, lq, d = query.shape
    lk = key.shape[-2]
    q, k, v = (t.reshape(b * h, t.shape[-2], t.shape[-1]) for t in (query, key, value))
    scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(d)
    if mask is None:
        weights = torch.softmax(scores, dim=-1)
    else:
        valid_lens = mask.bool().expand(b, h, lq, lk).sum(-1).reshape(-1)
        flat = scores.reshape(-1, lk).clone()
        keep = torch.arange(lk, device=flat.device)[None, :] < valid_lens[:, None]
        flat[~keep] = -1e6  # sequence_mask(value=-1e6): -inf once cast to float16
        weights = torch.softmax(flat.reshape(scores.shape), dim=-1)
    return torch.bmm(weights, v).reshape(b, h, lq, value.shape[-1])


def labml_attention(query, key, value, mask=None):
    """labmlai/annotated_deep_learning_paper_implementations labml_nn/transformers/mha.py
    (MultiHeadAttention.forward): sequence-first [seq, batch, heads, d_k] tensors,
    einsum('ibhd,jbhd->ijbh'), scores *= 1/sqrt(d_k), masked_fill(mask == 0, -inf),
    softmax over dim=1 (the key axis of ijbh), einsum('ijbh,jbhd->ibhd')."""
    q, k, v = (t.permute(2, 0, 1, 3) for t in (query, key, value))  # b h s d -> s b h d
    scale = 1 / math.sqrt(q.shape[-1])
    scores = torch.einsum("ibhd,jbhd->ijbh", q, k) * scale
    if mask is not None:
        ijbh = mask.bool().expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        scores = scores.masked_fill(ijbh.permute(2, 3, 0, 1) == 0, float("-inf"))
    attn = torch.softmax(scores, dim=1)
    out = torch.einsum("ijbh,jbhd->ibhd", attn, v)
    return out.permute(1, 2, 0, 3)


def _repeat_kv(hidden, n_rep):
    """transformers' repeat_kv: (b, kvh, s, d) -> (b, kvh * n_rep, s, d) with each KV head
    repeated n_rep times in a row (expand + reshape, i.e. repeat_interleave)."""
    b, kvh, s, d = hidden.shape
    if n_rep == 1:
        return hidden
    return hidden[:, :, None, :, :].expand(b, kvh, n_rep, s, d).reshape(b, kvh * n_rep, s, d)


def _hf_additive(attn_mask, dtype):
    """Hugging Face builds additive masks with torch.finfo(dtype).min, never -inf."""
    if attn_mask is None:
        return None
    min_dtype = torch.finfo(dtype).min
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
            ~attn_mask, min_dtype
        )
    return attn_mask.to(dtype).clamp(min=min_dtype)


def hf_llama_eager_attention(query, key, value, attn_mask=None, scale=None):
    """huggingface/transformers src/transformers/models/llama/modeling_llama.py @ 5dd4a635
    (eager_attention_forward): repeat_kv by num_key_value_groups, matmul * scaling, + the
    additive causal mask sliced to the key length, softmax(dim=-1, dtype=torch.float32)
    then .to(query.dtype), matmul with the value states."""
    scaling = query.shape[-1] ** -0.5 if scale is None else scale
    n_rep = query.shape[1] // key.shape[1]
    key_states, value_states = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    mask = _hf_additive(attn_mask, query.dtype)
    if mask is not None:
        attn_weights = attn_weights + mask[..., : key_states.shape[-2]]
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(attn_weights, value_states)


def hf_bert_eager_attention(query, key, value, attn_mask=None):
    """huggingface/transformers src/transformers/models/bert/modeling_bert.py (v4.x
    BertSelfAttention.forward): scores / sqrt(attention_head_size), + the extended
    attention mask (1 - mask) * finfo(dtype).min, softmax in the input dtype."""
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
    mask = _hf_additive(attn_mask, scores.dtype)
    if mask is not None:
        scores = scores + mask
    probs = F.softmax(scores, dim=-1)
    return torch.matmul(probs, value)


def x_transformers_attend(query, key, value, mask=None, causal=False):
    """lucidrains/x-transformers x_transformers/attend.py @ 004dd51c (Attend.forward, not
    flash): GQA by repeat(t, 'b kvh n d -> b (r kvh) n d') — query head h reads KV head
    h % kv_heads, unlike repeat_kv; masked_fill(~mask, -finfo.max); causal by
    ones(i, j).triu(j - i + 1) (aligned to the lower right); softmax(dtype=float32) then
    .type(dtype); rows with nothing to attend are zeroed after the fact."""
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads < heads:
        r = heads // kv_heads
        key, value = (t.repeat(1, r, 1, 1) for t in (key, value))  # 'b kvh n d -> b (r kvh) n d'
    scale = query.shape[-1] ** -0.5
    sim = torch.einsum("bhid,bhjd->bhij", query, key) * scale
    i, j = sim.shape[-2:]
    mask_value = -torch.finfo(sim.dtype).max
    if mask is not None:
        mask = mask.bool()
        sim = sim.masked_fill(~mask, mask_value)
    if causal and i > 1:
        causal_mask = torch.ones((i, j), device=sim.device, dtype=torch.bool).triu(j - i + 1)
        sim = sim.masked_fill(causal_mask, mask_value)
    attn = F.softmax(sim, dim=-1, dtype=torch.float32).type(sim.dtype)
    out = torch.einsum("bhij,bhjd->bhid", attn, value)
    if mask is not None:
        row_is_entirely_masked = ~mask.any(dim=-1)
        out = out.masked_fill(row_is_entirely_masked[..., None], 0.0)
    return out


COMMON = "default level"
CASES = [
    {
        "fn": "nanogpt_attention",
        "source": "karpathy/nanoGPT model.py@04a1d697ddc57aadb2edbe95816bf86c6b8918b0",
        "args": [],
        "exit": 1,
        "codes": ["GRD004"],
        "failing": ["causal q_len<k_len"],
        "why": "correct causal attention for training; its [:T, :T] causal buffer cannot serve "
        "q_len < k_len (no KV cache), so that scenario raises — named, with the message; mask "
        "scenarios are skipped since it takes no mask",
    },
    {
        "fn": "annotated_transformer_attention",
        "source": "harvardnlp/annotated-transformer the_annotated_transformer.py (attention)",
        "args": [],
        "exit": 1,
        "codes": ["MSK007", "MSK001"],
        "failing": ["padding-bool"],
        "why": "correct in float32/bfloat16, but masked_fill(-1e9) raises in float16 with any mask "
        "(MSK007, error); fully masked rows average the masked values (MSK001, warning)",
    },
    {
        "fn": "d2l_attention",
        "source": "d2l-ai/d2l-en d2l/torch.py (masked_softmax, DotProductAttention)",
        "args": [],
        "exit": 1,
        "codes": ["MSK007", "MSK001"],
        "failing": [],
        "why": "-1e6 fill: fully masked rows uniform in float32/bfloat16 (warning) but -1e6 "
        "overflows to -inf in float16 and those rows turn NaN (MSK007, error)",
    },
    {
        "fn": "labml_attention",
        "source": "labmlai/annotated_deep_learning_paper_implementations labml_nn/transformers/mha.py",
        "args": [],
        "exit": 1,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct on every live row; -inf fill makes fully masked rows NaN (error: NaN "
        "poisons the loss and every gradient of the batch)",
    },
    {
        "fn": "hf_llama_eager_attention",
        "source": "huggingface/transformers src/transformers/models/llama/modeling_llama.py"
        "@5dd4a63548857797727ae73eeb6a6e886ea02a3e (eager_attention_forward, repeat_kv)",
        "args": [],
        "exit": 0,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct: softmax in float32 on purpose is judged at float32 precision, its own "
        "repeat_kv and scaling are exercised; finfo.min fill gives uniform fully masked rows "
        "(warning only)",
    },
    {
        "fn": "hf_bert_eager_attention",
        "source": "huggingface/transformers src/transformers/models/bert/modeling_bert.py "
        "(v4 BertSelfAttention.forward, get_extended_attention_mask)",
        "args": [],
        "exit": 0,
        "codes": ["MSK001"],
        "failing": [],
        "why": "correct; additive finfo.min mask gives uniform fully masked rows (warning)",
    },
    {
        "fn": "x_transformers_attend",
        "source": "lucidrains/x-transformers "
        "x_transformers/attend.py@004dd51c1ba44284cdd24b1b9792c83e0039ac24",
        "args": ["--causal-align", "lower-right"],
        "exit": 0,
        "codes": ["GRD005", "MSK001"],
        "failing": ["gqa"],
        "why": "correct under its own lower-right causal alignment and float32 softmax; fully "
        "masked rows zeroed like SDPA; its GQA maps query head h to KV head h % kv_heads, not "
        "SDPA's / Hugging Face's h // group — named as a warning (right for its own checkpoints, "
        "wrong for weights trained with repeat_kv)",
    },
    {
        "fn": "x_transformers_attend",
        "source": "lucidrains/x-transformers "
        "x_transformers/attend.py@004dd51c1ba44284cdd24b1b9792c83e0039ac24",
        "args": [],
        "exit": 1,
        "codes": ["MSK006", "GRD005", "MSK001"],
        "failing": ["causal q_len<k_len"],
        "why": "checked against the default upper-left alignment its lower-right causal mask is "
        "named (MSK006)",
    },
]
