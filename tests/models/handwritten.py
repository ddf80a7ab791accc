"""Hand-written attention as public projects write it, inside small models built by factories.

Each block is a re-implementation in our own words of the attention code of one project (the
source is cited above it), with three switchable bugs: ``no-scale`` (the 1/√d step removed),
``inverted-mask`` (the mask's meaning flipped) and ``softmax-dim-2`` (softmax over the queries).
The lines the tracer must point at carry a trailing ``# <step>`` marker (qk, scale, mask,
softmax), so that tests can compare a finding's location with the line that caused it.

``build(project, bug=None)`` returns the model; ``PROJECTS`` lists the projects, and ``MASKED``
those whose attention takes a mask (the inverted-mask bug needs one).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import attndbg
import attndbg.recording.recorder

D_MODEL, HEADS = 32, 4
HEAD_DIM = D_MODEL // HEADS


def _padding(batch: int, length: int) -> torch.Tensor:
    """(batch, length) bool, True = a real token: the second sequence ends in padding."""
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[1:, length - length // 4 :] = False
    return keep


def _causal(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()


class Block(nn.Module):
    def __init__(self, bug: str | None) -> None:
        super().__init__()
        self.bug = bug

    @property
    def scaled(self) -> bool:
        return self.bug != "no-scale"

    @property
    def softmax_dim(self) -> int:
        return -2 if self.bug == "softmax-dim-2" else -1

    @property
    def inverted(self) -> bool:
        return self.bug == "inverted-mask"


# The textbook attention: the code a newcomer writes from the paper's formula.
class Textbook(Block):
    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D_MODEL, D_MODEL) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (p(x).view(b, n, HEADS, HEAD_DIM).transpose(1, 2) for p in projections)
        d_k = q.size(-1)
        mask = _causal(n)
        scores = torch.matmul(q, k.transpose(-2, -1))  # <qk>
        if self.scaled:
            scores = scores / math.sqrt(d_k)  # <scale>
        scores = scores.masked_fill(mask == (1 if self.inverted else 0), float("-inf"))  # <mask>
        weights = F.softmax(scores, dim=self.softmax_dim)  # <softmax>
        out = torch.matmul(weights, v)
        return out.transpose(1, 2).reshape(b, n, D_MODEL)


# karpathy/nanoGPT, model.py, CausalSelfAttention.forward (the manual path, flash off).
class NanoGPT(Block):
    def __init__(self, bug: str | None, block_size: int = 64) -> None:
        super().__init__(bug)
        self.c_attn = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.attn_dropout = nn.Dropout(0.1)
        causal = torch.tril(torch.ones(block_size, block_size))
        self.register_buffer("bias", causal.view(1, 1, block_size, block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(D_MODEL, dim=2)
        k = k.view(B, T, HEADS, C // HEADS).transpose(1, 2)
        q = q.view(B, T, HEADS, C // HEADS).transpose(1, 2)
        v = v.view(B, T, HEADS, C // HEADS).transpose(1, 2)
        if self.scaled:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # <qk> <scale>
        else:
            att = q @ k.transpose(-2, -1)  # <qk>
        att = att.masked_fill(self.bias[:, :, :T, :T] == (1 if self.inverted else 0), float("-inf"))  # <mask>
        att = F.softmax(att, dim=self.softmax_dim)  # <softmax>
        att = self.attn_dropout(att)
        y = att @ v
        return y.transpose(1, 2).contiguous().view(B, T, C)


# karpathy/minGPT, mingpt/model.py, CausalSelfAttention (separate key/query/value layers in the
# first release; nn.Softmax-free: F.softmax on att).
class MinGPT(Block):
    def __init__(self, bug: str | None, block_size: int = 64) -> None:
        super().__init__(bug)
        self.key, self.query, self.value = (nn.Linear(D_MODEL, D_MODEL) for _ in range(3))
        causal = torch.tril(torch.ones(block_size, block_size))
        self.register_buffer("mask", causal.view(1, 1, block_size, block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        k = self.key(x).view(B, T, HEADS, C // HEADS).transpose(1, 2)
        q = self.query(x).view(B, T, HEADS, C // HEADS).transpose(1, 2)
        v = self.value(x).view(B, T, HEADS, C // HEADS).transpose(1, 2)
        att = q @ k.transpose(-2, -1)  # <qk>
        if self.scaled:
            att = att * (1.0 / math.sqrt(k.size(-1)))  # <scale>
        att = att.masked_fill(self.mask[:, :, :T, :T] == (1 if self.inverted else 0), float("-inf"))  # <mask>
        att = nn.Softmax(dim=self.softmax_dim)(att)  # <softmax>
        y = att @ v
        return y.transpose(1, 2).contiguous().view(B, T, C)


# harvardnlp/annotated-transformer, the_annotated_transformer.py: attention() and
# MultiHeadedAttention (padding mask (batch, 1, keys), 1 = real token, filled with -1e9).
def annotated_attention(query, key, value, mask, dropout, bug):  # noqa: ANN001, ANN201
    d_k = query.size(-1)
    scores = torch.matmul(query, key.transpose(-2, -1))  # <qk>
    if bug != "no-scale":
        scores = scores / math.sqrt(d_k)  # <scale>
    if mask is not None:
        scores = scores.masked_fill(mask == (1 if bug == "inverted-mask" else 0), -1e9)  # <mask>
    p_attn = scores.softmax(dim=-2 if bug == "softmax-dim-2" else -1)  # <softmax>
    if dropout is not None:
        p_attn = dropout(p_attn)
    return torch.matmul(p_attn, value), p_attn


class Annotated(Block):
    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.linears = nn.ModuleList(nn.Linear(D_MODEL, D_MODEL) for _ in range(4))
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nbatches, n, _ = x.shape
        mask = _padding(nbatches, n).unsqueeze(-2).unsqueeze(1)  # (batch, 1, 1, keys)
        query, key, value = (
            lin(t).view(nbatches, -1, HEADS, HEAD_DIM).transpose(1, 2)
            for lin, t in zip(self.linears, (x, x, x))
        )
        out, _ = annotated_attention(query, key, value, mask, self.dropout, self.bug)
        out = out.transpose(1, 2).contiguous().view(nbatches, -1, D_MODEL)
        return self.linears[-1](out)


# d2l-ai/d2l-en, d2l/torch.py: masked_softmax (valid lengths, X[~mask] = -1e6 on a 2-D view)
# and DotProductAttention with batched bmm, heads folded into the batch by transpose_qkv.
def d2l_masked_softmax(X, valid_lens, bug):  # noqa: ANN001, ANN201
    shape = X.shape
    valid_lens = torch.repeat_interleave(valid_lens, shape[1])
    X = X.reshape(-1, shape[-1])
    keep = torch.arange(shape[-1], dtype=torch.float32)[None, :] < valid_lens[:, None]
    X[keep if bug == "inverted-mask" else ~keep] = -1e6  # <mask>
    return F.softmax(X.reshape(shape), dim=-2 if bug == "softmax-dim-2" else -1)  # <softmax>


class D2L(Block):
    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(D_MODEL, D_MODEL, bias=False) for _ in range(4))
        self.dropout = nn.Dropout(0.1)

    @staticmethod
    def transpose_qkv(X: torch.Tensor) -> torch.Tensor:
        X = X.reshape(X.shape[0], X.shape[1], HEADS, -1).permute(0, 2, 1, 3)
        return X.reshape(-1, X.shape[2], X.shape[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        valid_lens = _padding(b, n).sum(-1).repeat_interleave(HEADS)
        queries, keys, values = (self.transpose_qkv(w(x)) for w in (self.W_q, self.W_k, self.W_v))
        d = queries.shape[-1]
        scores = torch.bmm(queries, keys.transpose(1, 2))  # <qk>
        if self.scaled:
            scores = scores / math.sqrt(d)  # <scale>
        attention_weights = d2l_masked_softmax(scores, valid_lens, self.bug)
        out = torch.bmm(self.dropout(attention_weights), values)
        out = out.reshape(-1, HEADS, n, d).permute(0, 2, 1, 3).reshape(b, n, D_MODEL)
        return self.W_o(out)


# huggingface/transformers, models/bert/modeling_bert.py, BertSelfAttention (eager): an
# additive extended mask (1 - mask) * finfo.min added to the scaled scores.
class Bert(Block):
    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.query, self.key, self.value = (nn.Linear(D_MODEL, D_MODEL) for _ in range(3))
        self.dropout = nn.Dropout(0.1)

    def transpose_for_scores(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.size()[:-1], HEADS, HEAD_DIM).permute(0, 2, 1, 3)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        attention_mask = _padding(b, n).to(hidden_states.dtype)[:, None, None, :]
        kept = attention_mask if self.inverted else 1.0 - attention_mask
        extended = kept * torch.finfo(hidden_states.dtype).min
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))  # <qk>
        if self.scaled:
            attention_scores = attention_scores / math.sqrt(HEAD_DIM)  # <scale>
        attention_scores = attention_scores + extended  # <mask>
        attention_probs = nn.functional.softmax(attention_scores, dim=self.softmax_dim)  # <softmax>
        attention_probs = self.dropout(attention_probs)
        context = torch.matmul(attention_probs, value_layer)
        return context.permute(0, 2, 1, 3).contiguous().view(b, n, D_MODEL)


# huggingface/transformers, models/llama/modeling_llama.py: repeat_kv (grouped-query heads
# expanded) and eager_attention_forward (scaling multiplied, causal mask added, float32 softmax).
def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    batch, kv_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, kv_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, kv_heads * n_rep, slen, head_dim)


class Llama(Block):
    KV_HEADS = 2

    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.q_proj = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.k_proj = nn.Linear(D_MODEL, self.KV_HEADS * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(D_MODEL, self.KV_HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.scaling = HEAD_DIM**-0.5

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(b, n, -1, HEAD_DIM).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(b, n, -1, HEAD_DIM).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(b, n, -1, HEAD_DIM).transpose(1, 2)
        minimum = torch.finfo(hidden_states.dtype).min
        hidden = torch.full((n, n), minimum)
        causal_mask = (hidden.tril() if self.inverted else hidden.triu(1))[None, None]
        key_states = repeat_kv(key_states, HEADS // self.KV_HEADS)
        value_states = repeat_kv(value_states, HEADS // self.KV_HEADS)
        scaling = self.scaling if self.scaled else 1.0
        attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling  # <qk> <scale>
        attn_weights = attn_weights + causal_mask[:, :, :, : key_states.shape[-2]]  # <mask>
        dim = self.softmax_dim
        attn_weights = F.softmax(attn_weights, dim=dim, dtype=torch.float32).to(query.dtype)  # <softmax>
        attn_weights = F.dropout(attn_weights, p=0.0, training=self.training)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous()
        return self.o_proj(attn_output.reshape(b, n, D_MODEL))


# huggingface/pytorch-image-models, timm/models/vision_transformer.py, Attention.forward with
# fused_attn off: q pre-multiplied by the scale, no mask.
class Timm(Block):
    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.qkv = nn.Linear(D_MODEL, D_MODEL * 3)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.attn_drop = nn.Dropout(0.0)
        self.scale = HEAD_DIM**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.scaled:
            q = q * self.scale  # <scale>
        attn = q @ k.transpose(-2, -1)  # <qk>
        attn = attn.softmax(dim=self.softmax_dim)  # <softmax>
        attn = self.attn_drop(attn)
        x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


# facebookresearch/fairseq, fairseq/modules/multihead_attention.py, MultiheadAttention.forward:
# sequence-first, q *= scaling in place, heads folded into the batch, bmm, a key padding mask
# (True = pad) filled with -inf on a 4-D view, softmax in float32.
class Fairseq(Block):
    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(D_MODEL, D_MODEL) for _ in range(4))
        self.scaling = HEAD_DIM**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = x.transpose(0, 1)  # (tgt_len, bsz, embed)
        tgt_len, bsz, embed_dim = query.size()
        key_padding_mask = ~_padding(bsz, tgt_len)
        if self.inverted:
            key_padding_mask = ~key_padding_mask
        q, k, v = self.q_proj(query), self.k_proj(query), self.v_proj(query)
        if self.scaled:
            q *= self.scaling  # <scale>
        q = q.contiguous().view(tgt_len, bsz * HEADS, HEAD_DIM).transpose(0, 1)
        k = k.contiguous().view(-1, bsz * HEADS, HEAD_DIM).transpose(0, 1)
        v = v.contiguous().view(-1, bsz * HEADS, HEAD_DIM).transpose(0, 1)
        src_len = k.size(1)
        attn_weights = torch.bmm(q, k.transpose(1, 2))  # <qk>
        attn_weights = attn_weights.view(bsz, HEADS, tgt_len, src_len)
        padded = key_padding_mask.unsqueeze(1).unsqueeze(2)
        attn_weights = attn_weights.masked_fill(padded, float("-inf"))  # <mask>
        attn_weights = attn_weights.view(bsz * HEADS, tgt_len, src_len)
        attn_probs = F.softmax(attn_weights.float(), dim=self.softmax_dim).type_as(attn_weights)  # <softmax>
        attn = torch.bmm(attn_probs, v)
        attn = attn.transpose(0, 1).contiguous().view(tgt_len, bsz, embed_dim)
        return self.out_proj(attn).transpose(0, 1)


# huggingface/transformers, models/bloom/modeling_bloom.py, BloomAttention.forward: baddbmm adds
# the ALiBi bias and applies the scale (alpha) in one product; a bool mask (True = masked) is
# filled with finfo.min; float32 softmax; the weights viewed back to 3-D for the PV bmm.
def alibi_slopes(heads: int) -> torch.Tensor:
    return torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)])


class Bloom(Block):
    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.query_key_value = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.dense = nn.Linear(D_MODEL, D_MODEL)
        self.inv_norm_factor = 1.0 / math.sqrt(HEAD_DIM)
        self.beta = 1.0

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        fused = self.query_key_value(hidden_states).view(b, n, HEADS, 3, HEAD_DIM)
        query_layer = fused[..., 0, :].transpose(1, 2).reshape(b * HEADS, n, HEAD_DIM)
        key_layer = fused[..., 1, :].permute(0, 2, 3, 1).reshape(b * HEADS, HEAD_DIM, n)
        value_layer = fused[..., 2, :].transpose(1, 2).reshape(b * HEADS, n, HEAD_DIM)
        positions = torch.arange(n, dtype=torch.float32)
        alibi = (alibi_slopes(HEADS)[:, None] * positions[None, :]).repeat(b, 1)[:, None, :]
        attention_mask = ~_causal(n) if not self.inverted else _causal(n)
        alpha = self.inv_norm_factor if self.scaled else 1.0
        q, k, beta = query_layer, key_layer, self.beta
        matmul_result = alibi.baddbmm(batch1=q, batch2=k, beta=beta, alpha=alpha)  # <qk> <scale>
        attention_scores = matmul_result.view(b, HEADS, n, n)
        fill = torch.finfo(attention_scores.dtype).min
        attn_weights = torch.masked_fill(attention_scores, attention_mask, fill)  # <mask>
        attention_probs = F.softmax(attn_weights, dim=self.softmax_dim, dtype=torch.float32)  # <softmax>
        attention_probs_reshaped = attention_probs.view(b * HEADS, n, n)
        context_layer = torch.bmm(attention_probs_reshaped, value_layer)
        context_layer = context_layer.view(b, HEADS, n, HEAD_DIM).permute(0, 2, 1, 3).reshape(b, n, D_MODEL)
        return self.dense(context_layer)


# lucidrains/x-transformers, x_transformers/attend.py, Attend.forward (non-flash path): einsum
# similarities, scale multiplied, masked_fill(~mask, -finfo.max) with mask True = attend, a
# causal mask from triu, softmax, einsum with v.
class XTransformers(Block):
    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.to_q = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.to_kv = nn.Linear(D_MODEL, 2 * D_MODEL, bias=False)
        self.to_out = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.scale = HEAD_DIM**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, HEADS, HEAD_DIM).transpose(1, 2)
        k, v = (t.view(b, n, HEADS, HEAD_DIM).transpose(1, 2) for t in self.to_kv(x).chunk(2, dim=-1))
        scale = self.scale if self.scaled else 1.0
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * scale  # <qk> <scale>
        mask_value = -torch.finfo(sim.dtype).max
        i, j = sim.shape[-2:]
        causal_mask = torch.ones((i, j), dtype=torch.bool).triu(j - i + 1)
        if self.inverted:
            causal_mask = ~causal_mask
        sim = sim.masked_fill(causal_mask, mask_value)  # <mask>
        attn = sim.softmax(dim=self.softmax_dim)  # <softmax>
        out = torch.einsum("b h i j, b h j d -> b h i d", attn, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, D_MODEL))


# huggingface/transformers, models/gemma2/modeling_gemma2.py, eager_attention_forward: the
# logits are soft-capped with tanh before the causal mask (finfo.min) is added. tanh is not a
# step the tracer follows: the call falls back to scores and weights, and says why.
class Gemma2(Block):
    SOFTCAP = 50.0

    def __init__(self, bug: str | None) -> None:
        super().__init__(bug)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(D_MODEL, D_MODEL) for _ in range(4))
        self.scaling = HEAD_DIM**-0.5

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        query, key_states, value_states = (
            p(hidden_states).view(b, n, HEADS, HEAD_DIM).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        causal_mask = torch.full((n, n), torch.finfo(hidden_states.dtype).min).triu(1)
        attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * self.scaling
        attn_weights = attn_weights / self.SOFTCAP
        attn_weights = torch.tanh(attn_weights)  # <softcap>
        attn_weights = attn_weights * self.SOFTCAP
        attn_weights = attn_weights + causal_mask
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
        attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).reshape(b, n, D_MODEL)
        return self.o_proj(attn_output)


FALLBACKS: dict[str, type[Block]] = {"gemma2": Gemma2}
PROJECTS: dict[str, type[Block]] = {
    "textbook": Textbook,
    "nanogpt": NanoGPT,
    "mingpt": MinGPT,
    "annotated": Annotated,
    "d2l": D2L,
    "bert": Bert,
    "llama": Llama,
    "timm": Timm,
    "fairseq": Fairseq,
    "bloom": Bloom,
    "x-transformers": XTransformers,
}
MASKED = [name for name in PROJECTS if name != "timm"]


class Stack(nn.Module):
    """Two blocks over a token embedding (vision models get patch features directly)."""

    def __init__(self, block: type[Block], bug: str | None, vocab: int = 50) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, D_MODEL) if block is not Timm else None
        self.blocks = nn.ModuleList(block(bug) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(D_MODEL) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        for norm, block in zip(self.norms, self.blocks):
            x = x + block(norm(x))
        return x


def build(project: str, bug: str | None = None, seed: int = 0) -> Stack:
    """A seeded two-block model; projections are widened so that attention is not uniform at
    initialisation (a trained model's logits spread; PyTorch's default init barely does)."""
    torch.manual_seed(seed)
    model = Stack({**PROJECTS, **FALLBACKS}[project], bug).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "embed" not in name:
                parameter.mul_(3.0)
    return model


def example_input(model: Stack, batch: int = 2, length: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if model.embed is not None:
        return torch.randint(0, model.embed.num_embeddings, (batch, length), generator=generator)
    return torch.randn(batch, length, D_MODEL, generator=generator)


def gemma2_softcap() -> Stack:
    """``tests/models/handwritten.py:gemma2_softcap`` for the CLI: a chain that falls back."""
    return build("gemma2")


def capture_unchanged(model: nn.Module, x: torch.Tensor) -> attndbg.recording.recorder.Calls:
    """``attndbg.capture`` of one forward, asserting that recording does not change what the
    model computes (NaN included, for the broken variants)."""
    with torch.no_grad():
        expected = model(x)
        with attndbg.capture(model) as calls:
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    return calls
