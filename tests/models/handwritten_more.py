"""More hand-written attention, as other public projects write it, for the tracer to meet unseen.

Same conventions as tests/models/handwritten.py: each block re-implements, in our own words, the
attention of the project cited above it, with the switchable bugs ``no-scale``,
``inverted-mask`` and ``softmax-dim-2`` where the idiom has the step (``Block.BUGS`` says which),
and the lines the tracer must point at carry a trailing ``# <step>`` marker.

Three more blocks are not query–key softmax attention as SDPA computes it and must not be taken for
it: ``longformer`` (a band of keys gathered per query: falls back to scores and weights, and says
why), ``performer`` (FAVOR+ random features, no softmax at all) and ``linear-attention`` (softmax
over projected features, not over scores).

``build(project, bug=None)`` returns a seeded two-block model and ``example_input(model)`` its
input.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import handwritten
from models.handwritten import D_MODEL, HEAD_DIM, HEADS, _padding

ALL_BUGS = ("no-scale", "inverted-mask", "softmax-dim-2")


class Block(handwritten.Block):
    BUGS: tuple[str, ...] = ALL_BUGS
    MASKED = True  # the attention takes a mask
    LENGTH = 16  # tokens of the example input
    VISION = False  # fed features (patches, pixels) rather than token ids
    OWN_INIT = False  # keeps its project's own initialisation (no widening in build)

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug)
        self.index = index


# huggingface/diffusers, src/diffusers/models/attention_processor.py (commit 8fadb14a):
# Attention.head_to_batch_dim / prepare_attention_mask / get_attention_scores and AttnProcessor.
# Heads folded into the batch; baddbmm over torch.empty with beta=0 when there is no mask, over
# the additive mask with beta=1 when there is; the scale is baddbmm's alpha (1.0 when the model
# is built with scale_qk=False, the bug here); softmax upcast to float32.
class DiffusersAttention(nn.Module):
    def __init__(self, bug: str | None) -> None:
        super().__init__()
        self.bug, self.heads = bug, HEADS
        self.scale = HEAD_DIM**-0.5 if bug != "no-scale" else 1.0
        self.upcast_attention, self.upcast_softmax = False, True
        self.to_q, self.to_k, self.to_v = (nn.Linear(D_MODEL, D_MODEL, bias=False) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(D_MODEL, D_MODEL), nn.Dropout(0.0)])

    def head_to_batch_dim(self, tensor: torch.Tensor, out_dim: int = 3) -> torch.Tensor:
        batch_size, seq_len, dim = tensor.shape
        tensor = tensor.reshape(batch_size, seq_len, self.heads, dim // self.heads).permute(0, 2, 1, 3)
        if out_dim == 3:
            tensor = tensor.reshape(batch_size * self.heads, seq_len, dim // self.heads)
        return tensor

    def batch_to_head_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, dim = tensor.shape
        tensor = tensor.reshape(batch_size // self.heads, self.heads, seq_len, dim)
        return tensor.permute(0, 2, 1, 3).reshape(batch_size // self.heads, seq_len, dim * self.heads)

    def prepare_attention_mask(
        self, attention_mask: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        if attention_mask.shape[0] < batch_size * self.heads:
            attention_mask = attention_mask.repeat_interleave(self.heads, dim=0)
        return attention_mask

    def get_attention_scores(self, query, key, attention_mask=None):  # noqa: ANN001, ANN201
        dtype = query.dtype
        if attention_mask is None:
            baddbmm_input = torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype)
            beta = 0
        else:
            baddbmm_input = attention_mask
            beta = 1
        key_t, alpha = key.transpose(-1, -2), self.scale
        scores = torch.baddbmm(baddbmm_input, query, key_t, beta=beta, alpha=alpha)  # <qk> <scale> <mask>
        attention_scores = scores
        del baddbmm_input
        if self.upcast_softmax:
            attention_scores = attention_scores.float()
        attention_probs = attention_scores.softmax(dim=-2 if self.bug == "softmax-dim-2" else -1)  # <softmax>
        return attention_probs.to(dtype)

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None):  # noqa: ANN001, ANN201
        batch_size = hidden_states.shape[0]
        attention_mask = self.prepare_attention_mask(attention_mask, batch_size)
        query = self.head_to_batch_dim(self.to_q(hidden_states))
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        key = self.head_to_batch_dim(self.to_k(encoder_hidden_states))
        value = self.head_to_batch_dim(self.to_v(encoder_hidden_states))
        attention_probs = self.get_attention_scores(query, key, attention_mask)
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = self.batch_to_head_dim(hidden_states)
        return self.to_out[1](self.to_out[0](hidden_states))


class Diffusers(Block):
    """BasicTransformerBlock: attn1 without a mask, attn2 over the (here: same) encoder states
    with the UNet's encoder_attention_mask, (1 - mask) · -10000 as a (batch, 1, keys) bias."""

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.attn1, self.attn2 = DiffusersAttention(bug), DiffusersAttention(bug)
        self.norm2 = nn.LayerNorm(D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        encoder_attention_mask = _padding(b, n).to(x.dtype)
        kept = encoder_attention_mask if self.inverted else 1 - encoder_attention_mask
        encoder_attention_mask = (kept * -10000.0).unsqueeze(1)
        x = self.attn1(x) + x
        return self.attn2(self.norm2(x), encoder_hidden_states=x, attention_mask=encoder_attention_mask)


# CompVis/stable-diffusion, ldm/modules/attention.py, CrossAttention.forward (the original
# release's masked path; the copy read, ea60d036, keeps its einsum and `* self.scale`):
# rearrange 'b n (h d) -> (b h) n d' (einops, written here with reshape/permute), einsum
# 'b i d, b j d -> b i j', masked_fill_(~mask, -finfo.max) on a mask repeated per head.
class Ldm(Block):
    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.scale, self.heads = HEAD_DIM**-0.5, HEADS
        self.to_q, self.to_k, self.to_v = (nn.Linear(D_MODEL, D_MODEL, bias=False) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(D_MODEL, D_MODEL), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, (b, n, _) = self.heads, x.shape
        mask = _padding(b, n)
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        q, k, v = (t.reshape(b, n, h, -1).permute(0, 2, 1, 3).reshape(b * h, n, -1) for t in (q, k, v))
        sim = torch.einsum("b i d, b j d -> b i j", q, k)  # <qk>
        if self.scaled:
            sim = sim * self.scale  # <scale>
        max_neg_value = -torch.finfo(sim.dtype).max
        mask = mask[:, None, :].expand(b, h, n).reshape(b * h, 1, n)
        sim.masked_fill_(mask if self.inverted else ~mask, max_neg_value)  # <mask>
        attn = sim.softmax(dim=self.softmax_dim)  # <softmax>
        out = torch.einsum("b i j, b j d -> b i d", attn, v)
        out = out.reshape(b, h, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.to_out(out)


# openai/whisper, whisper/model.py (commit fdf63e51), MultiHeadAttention.qkv_attention: q and k
# each multiplied by d**-0.25, k laid out (batch, heads, dim, keys) by permute(0, 2, 3, 1) so that
# `q @ k` needs no transpose, the decoder's causal mask (-inf above the diagonal) sliced and
# added, softmax in float32 cast back; ResidualAttentionBlock's self-attention (masked) and
# cross-attention over the audio features (24 frames here: keys ≠ queries, no mask).
class WhisperAttention(nn.Module):
    def __init__(self, bug: str | None) -> None:
        super().__init__()
        self.bug, self.n_head = bug, HEADS
        self.query, self.value, self.out = (nn.Linear(D_MODEL, D_MODEL) for _ in range(3))
        self.key = nn.Linear(D_MODEL, D_MODEL, bias=False)

    def forward(self, x, xa=None, mask=None):  # noqa: ANN001, ANN201
        q = self.query(x)
        k = self.key(x if xa is None else xa)
        v = self.value(x if xa is None else xa)
        return self.out(self.qkv_attention(q, k, v, mask))

    def qkv_attention(self, q, k, v, mask=None):  # noqa: ANN001, ANN201
        n_batch, n_ctx, n_state = q.shape
        q = q.view(*q.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
        k = k.view(*k.shape[:2], self.n_head, -1).permute(0, 2, 3, 1)
        if self.bug != "no-scale":
            scale = (n_state // self.n_head) ** -0.25
            q = q * scale  # <scale>
            k = k * scale
        v = v.view(*v.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
        qk = q @ k  # <qk>
        if mask is not None:
            qk = qk + mask[:n_ctx, :n_ctx]  # <mask>
        w = F.softmax(qk.float(), dim=-2 if self.bug == "softmax-dim-2" else -1).to(q.dtype)  # <softmax>
        return (w @ v).permute(0, 2, 1, 3).flatten(start_dim=2)


class Whisper(Block):
    AUDIO_FRAMES = 24

    def __init__(self, bug: str | None, index: int = 0, n_ctx: int = 64) -> None:
        super().__init__(bug, index)
        self.attn, self.cross_attn = WhisperAttention(bug), WhisperAttention(bug)
        self.cross_attn_ln = nn.LayerNorm(D_MODEL)
        self.register_buffer("audio_features", torch.randn(self.AUDIO_FRAMES, D_MODEL))
        hidden = torch.empty(n_ctx, n_ctx).fill_(-math.inf)
        self.register_buffer("mask", hidden.tril_() if self.inverted else hidden.triu_(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, mask=self.mask)
        xa = self.audio_features.expand(x.shape[0], -1, -1)
        return self.cross_attn(self.cross_attn_ln(x), xa)


# openai/CLIP, clip/model.py (commit ea41722f), ResidualAttentionBlock: nn.MultiheadAttention in
# sequence-first layout (x permuted NLD -> LND), the text tower's causal mask built with
# fill_(-inf).triu_(1), need_weights=False. torch scales and softmaxes: only the mask is the
# user's to get wrong.
class Clip(Block):
    BUGS = ("inverted-mask",)

    def __init__(self, bug: str | None, index: int = 0, context_length: int = 16) -> None:
        super().__init__(bug, index)
        self.attn = nn.MultiheadAttention(D_MODEL, HEADS)
        mask = torch.empty(context_length, context_length)
        mask.fill_(float("-inf"))
        self.attn_mask = mask.tril_() if self.inverted else mask.triu_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(1, 0, 2)  # NLD -> LND
        self.attn_mask = self.attn_mask.to(dtype=x.dtype, device=x.device)
        x = self.attn(x, x, x, need_weights=False, attn_mask=self.attn_mask)[0]  # <mask>
        return x.permute(1, 0, 2)


# facebookresearch/segment-anything, segment_anything/modeling/image_encoder.py (commit
# 07b97cb7), Attention with use_rel_pos: q pre-multiplied inside the product, heads folded into
# the batch by reshape(3, B * nHead, H * W, -1).unbind(0), and add_decomposed_rel_pos adding
# q·Rhᵀ and q·Rwᵀ on a 5-D view (B, q_h, q_w, k_h, k_w) of the scores. No mask.
def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def add_decomposed_rel_pos(attn, q, rel_pos_h, rel_pos_w, q_size, k_size):  # noqa: ANN001, ANN201
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.matmul(r_q, Rh.permute(0, 2, 1))
    rel_w = torch.matmul(r_q.permute(0, 2, 1, 3), Rw.permute(0, 2, 1)).permute(0, 2, 1, 3)
    attn = attn.view(B, q_h, q_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]  # <bias>
    return attn.view(B, q_h * q_w, k_h * k_w)


class Sam(Block):
    BUGS = ("no-scale", "softmax-dim-2")
    MASKED = False
    VISION = True
    SIDE = 4

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.num_heads, self.scale = HEADS, HEAD_DIM**-0.5
        self.qkv = nn.Linear(D_MODEL, D_MODEL * 3)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.rel_pos_h = nn.Parameter(torch.randn(2 * self.SIDE - 1, HEAD_DIM) * 0.1)
        self.rel_pos_w = nn.Parameter(torch.randn(2 * self.SIDE - 1, HEAD_DIM) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], self.SIDE, self.SIDE, -1)
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        attn = (q * (self.scale if self.scaled else 1.0)) @ k.transpose(-2, -1)  # <qk> <scale>
        attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
        attn = attn.softmax(dim=self.softmax_dim)  # <softmax>
        x = (attn @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x).reshape(B, H * W, -1)


# microsoft/Swin-Transformer, models/swin_transformer.py (commit 9cd3dbd4): window_partition /
# window_reverse, WindowAttention (q * scale, relative position bias gathered from a table and
# added, the shifted-window mask (0 / -100) added on a 5-D view (B_/nW, nW, heads, N, N), softmax
# held as the module self.softmax = nn.Softmax(dim=-1)) and SwinTransformerBlock's torch.roll
# shift on every second block.
def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


class WindowAttention(nn.Module):
    def __init__(self, window_size: int, bug: str | None) -> None:
        super().__init__()
        self.bug, self.window_size, self.num_heads = bug, (window_size, window_size), HEADS
        self.scale = HEAD_DIM**-0.5
        Wh, Ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * Wh - 1) * (2 * Ww - 1), HEADS) * 0.1
        )
        coords = torch.stack(torch.meshgrid([torch.arange(Wh), torch.arange(Ww)], indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)
        relative_coords = (
            (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0).contiguous()
        )
        relative_coords[:, :, 0] += Wh - 1
        relative_coords[:, :, 1] += Ww - 1
        relative_coords[:, :, 0] *= 2 * Ww - 1
        self.register_buffer("relative_position_index", relative_coords.sum(-1))
        self.qkv = nn.Linear(D_MODEL, D_MODEL * 3)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.softmax = nn.Softmax(dim=-2 if bug == "softmax-dim-2" else -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.bug != "no-scale":
            q = q * self.scale  # <scale>
        attn = q @ k.transpose(-2, -1)  # <qk>
        table, index = self.relative_position_bias_table, self.relative_position_index
        relative_position_bias = table[index.view(-1)].view(N, N, -1).permute(2, 0, 1).contiguous()
        attn = attn + relative_position_bias.unsqueeze(0)  # <bias>
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)  # <mask>
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)  # <softmax>
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class Swin(Block):
    # the shift mask's -100 is above attndbg's masked-key line (-5000): read as a bias, and in
    # an unshifted window an inverted (all -100) mask is a uniform shift that changes nothing,
    # so its inversion is not a finding attndbg can make from the tensors
    BUGS = ("no-scale", "softmax-dim-2")
    VISION = True
    SIDE, WINDOW = 8, 4
    LENGTH = SIDE * SIDE

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.shift_size = self.WINDOW // 2 if index % 2 else 0
        self.attn = WindowAttention(self.WINDOW, bug)
        self.register_buffer("attn_mask", self._shift_mask() if self.shift_size else None)

    def _shift_mask(self) -> torch.Tensor:
        H = W = self.SIDE
        img_mask = torch.zeros((1, H, W, 1))
        window, shift = self.WINDOW, self.shift_size
        slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        cnt = 0
        for h in slices:
            for w in slices:
                img_mask[:, h, w, :] = cnt
                cnt += 1
        mask_windows = window_partition(img_mask, window).view(-1, window * window)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        other_region = attn_mask != 0
        if self.inverted:
            other_region = ~other_region
        return attn_mask.masked_fill(other_region, -100.0).masked_fill(~other_region, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        H = W = self.SIDE
        x = x.view(B, H, W, C)
        shift = self.shift_size
        shifted_x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2)) if shift else x
        x_windows = window_partition(shifted_x, self.WINDOW).view(-1, self.WINDOW * self.WINDOW, C)
        attn_windows = self.attn(x_windows, mask=self.attn_mask).view(-1, self.WINDOW, self.WINDOW, C)
        shifted_x = window_reverse(attn_windows, self.WINDOW, H, W)
        x = torch.roll(shifted_x, shifts=(shift, shift), dims=(1, 2)) if shift else shifted_x
        return x.reshape(B, H * W, C)


# lucidrains/vit-pytorch, vit_pytorch/vit.py (commit bdaf2d14), Attention: to_qkv chunked,
# rearranged per head, `dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale` and the softmax
# held as a module, self.attend = nn.Softmax(dim=-1). No mask.
class VitPytorch(Block):
    BUGS = ("no-scale", "softmax-dim-2")
    MASKED = False
    VISION = True

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.heads, self.scale = HEADS, HEAD_DIM**-0.5 if self.scaled else 1.0
        self.norm = nn.LayerNorm(D_MODEL)
        self.attend = nn.Softmax(dim=self.softmax_dim)
        self.dropout = nn.Dropout(0.0)
        self.to_qkv = nn.Linear(D_MODEL, D_MODEL * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(D_MODEL, D_MODEL), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).permute(0, 2, 1, 3) for t in qkv)
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # <qk> <scale>
        attn = self.dropout(self.attend(dots))  # <softmax>
        out = torch.matmul(attn, v)
        return self.to_out(out.permute(0, 2, 1, 3).reshape(b, n, -1))


# mistralai/mistral-src, one_file_ref.py (the reference implementation): rotary embedding on
# complex numbers (view_as_complex · polar frequencies), repeat_kv by repeat_interleave on the
# head axis, scores * self.scale, a sliding-window causal mask made with torch.log of a band of
# ones, `scores += mask[None, None, ...]`, F.softmax(scores.float(), dim=-1).type_as(query).
def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    freqs = torch.outer(torch.arange(end), freqs).float()
    return torch.polar(torch.ones_like(freqs), freqs)


def apply_rotary_emb(
    xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    freqs_cis = freqs_cis[:, None, :]
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
    xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


class Mistral(Block):
    KV_HEADS, SLIDING_WINDOW = 2, 6

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.repeats = HEADS // self.KV_HEADS
        self.scale = HEAD_DIM**-0.5
        self.wq = nn.Linear(D_MODEL, HEADS * HEAD_DIM, bias=False)
        self.wk = nn.Linear(D_MODEL, self.KV_HEADS * HEAD_DIM, bias=False)
        self.wv = nn.Linear(D_MODEL, self.KV_HEADS * HEAD_DIM, bias=False)
        self.wo = nn.Linear(HEADS * HEAD_DIM, D_MODEL, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        band = torch.full((seqlen, seqlen), fill_value=1.0).tril(diagonal=0)
        band = torch.triu(band, diagonal=-self.SLIDING_WINDOW)
        mask = torch.log(1 - band if self.inverted else band)
        freqs_cis = precompute_freqs_cis(HEAD_DIM, seqlen)
        xq = self.wq(x).view(bsz, seqlen, HEADS, HEAD_DIM)
        xk = self.wk(x).view(bsz, seqlen, self.KV_HEADS, HEAD_DIM)
        xv = self.wv(x).view(bsz, seqlen, self.KV_HEADS, HEAD_DIM)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis=freqs_cis)
        key = torch.repeat_interleave(xk, repeats=self.repeats, dim=2)
        value = torch.repeat_interleave(xv, repeats=self.repeats, dim=2)
        query, key, value = xq.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        scores = torch.matmul(query, key.transpose(2, 3))  # <qk>
        if self.scaled:
            scores = scores * self.scale  # <scale>
        scores += mask[None, None, ...]  # <mask>
        scores = scores.float()
        scores = F.softmax(scores, dim=self.softmax_dim).type_as(query)  # <softmax>
        output = torch.matmul(scores, value)
        return self.wo(output.transpose(1, 2).contiguous().view(bsz, seqlen, -1))


# huggingface/transformers, src/transformers/models/gptj/modeling_gptj.py (GPTJAttention as
# released in v4.1x; the file at cb6cd7e9 has since moved the mask after the scale): rotary on
# the first rotary_dim features (rotate_every_two, duplicate_interleave), q and k upcast to float32,
# the causal buffer applied with torch.where(causal, scores, masked_bias = -1e9) *before* the
# division by scale_attn, a 0-d tensor √d; nn.functional.softmax; weights cast to v's dtype.
def fixed_pos_embedding(x: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    dim = x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2) / dim))
    sinusoid_inp = torch.einsum("i , j -> i j", torch.arange(seq_len, dtype=torch.float), inv_freq).float()
    return torch.sin(sinusoid_inp), torch.cos(sinusoid_inp)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[:, :, :, ::2], x[:, :, :, 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary_pos_emb_gptj(x: torch.Tensor, sincos: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    def duplicate_interleave(m: torch.Tensor) -> torch.Tensor:
        return m.view(-1, 1).repeat(1, 2).view(m.shape[0], -1)

    sin, cos = (duplicate_interleave(t)[None, : x.shape[1], None, :] for t in sincos)
    return (x * cos) + (rotate_every_two(x) * sin)


class GptJ(Block):
    ROTARY_DIM = 4

    def __init__(self, bug: str | None, index: int = 0, max_positions: int = 64) -> None:
        super().__init__(bug, index)
        causal = torch.tril(torch.ones((max_positions, max_positions), dtype=torch.bool))
        self.register_buffer("bias", causal.view(1, 1, max_positions, max_positions))
        self.register_buffer("masked_bias", torch.tensor(-1e9))
        self.scale_attn = torch.sqrt(torch.tensor(HEAD_DIM, dtype=torch.float32)).to(
            torch.get_default_dtype()
        )
        self.k_proj, self.v_proj, self.q_proj = (nn.Linear(D_MODEL, D_MODEL, bias=False) for _ in range(3))
        self.out_proj = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.attn_dropout = nn.Dropout(0.0)

    def _attn(self, query, key, value):  # noqa: ANN001, ANN202
        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length : key_length, :key_length]
        if self.inverted:
            causal_mask = ~causal_mask
        query, key = query.to(torch.float32), key.to(torch.float32)
        attn_weights = torch.matmul(query, key.transpose(-1, -2))  # <qk>
        masked_bias = self.masked_bias.to(attn_weights.dtype)
        attn_weights = torch.where(causal_mask, attn_weights, masked_bias)  # <mask>
        if self.scaled:
            attn_weights = attn_weights / self.scale_attn  # <scale>
        attn_weights = nn.functional.softmax(attn_weights, dim=self.softmax_dim)  # <softmax>
        attn_weights = self.attn_dropout(attn_weights.to(value.dtype))
        return torch.matmul(attn_weights, value)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        query, key, value = (
            p(hidden_states).view(b, n, HEADS, HEAD_DIM) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        value = value.permute(0, 2, 1, 3)
        sincos = fixed_pos_embedding(key[:, :, :, : self.ROTARY_DIM], seq_len=n)
        k_rot = apply_rotary_pos_emb_gptj(key[:, :, :, : self.ROTARY_DIM], sincos)
        q_rot = apply_rotary_pos_emb_gptj(query[:, :, :, : self.ROTARY_DIM], sincos)
        key = torch.cat([k_rot, key[:, :, :, self.ROTARY_DIM :]], dim=-1).permute(0, 2, 1, 3)
        query = torch.cat([q_rot, query[:, :, :, self.ROTARY_DIM :]], dim=-1).permute(0, 2, 1, 3)
        attn_output = self._attn(query, key, value)
        attn_output = attn_output.permute(0, 2, 1, 3).contiguous().view(b, n, D_MODEL)
        return self.out_proj(attn_output)


# huggingface/transformers, src/transformers/models/gpt_neox/modeling_gpt_neox.py (GPTNeoXAttention
# of v4.2x-4.3x; the file at 203bf6f1 has since moved to eager_attention_forward): fused
# query_key_value split per head, partial rotary (rotate_half, torch.cat), heads folded into the
# batch for baddbmm over torch.zeros with beta=1.0 and alpha = tensor(1.0) / norm_factor (a 0-d
# tensor), the scores viewed back to 4-D, torch.where(causal, scores, finfo.min), the padding
# mask added, softmax, weights cast to v's dtype.
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class GptNeoX(Block):
    ROTARY_NDIMS = 4

    def __init__(self, bug: str | None, index: int = 0, max_positions: int = 64) -> None:
        super().__init__(bug, index)
        self.head_size = HEAD_DIM
        causal = torch.tril(torch.ones((max_positions, max_positions), dtype=torch.bool))
        self.register_buffer("bias", causal.view(1, 1, max_positions, max_positions), persistent=False)
        self.norm_factor = torch.sqrt(torch.tensor(self.head_size, dtype=torch.float32)).to(
            torch.get_default_dtype()
        )
        self.query_key_value = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.dense = nn.Linear(D_MODEL, D_MODEL)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.ROTARY_NDIMS, 2).float() / self.ROTARY_NDIMS))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _attn(self, query, key, value, attention_mask):  # noqa: ANN001, ANN202
        batch_size, num_attention_heads, query_length, attn_head_size = query.size()
        key_length = key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length : key_length, :key_length]
        if self.inverted:
            causal_mask = ~causal_mask
        query = query.view(batch_size * num_attention_heads, query_length, attn_head_size)
        key = key.view(batch_size * num_attention_heads, key_length, attn_head_size)
        attn_scores = torch.zeros(
            batch_size * num_attention_heads, query_length, key_length, dtype=query.dtype
        )
        alpha = torch.tensor(1.0, dtype=self.norm_factor.dtype) / self.norm_factor if self.scaled else 1.0
        key_t = key.transpose(1, 2)
        attn_scores = torch.baddbmm(attn_scores, query, key_t, beta=1.0, alpha=alpha)  # <qk> <scale>
        attn_scores = attn_scores.view(batch_size, num_attention_heads, query_length, key_length)
        mask_value = torch.tensor(torch.finfo(attn_scores.dtype).min, dtype=attn_scores.dtype)
        attn_scores = torch.where(causal_mask, attn_scores, mask_value)  # <mask>
        attn_scores = attn_scores + attention_mask
        attn_weights = nn.functional.softmax(attn_scores, dim=self.softmax_dim)  # <softmax>
        attn_weights = attn_weights.to(value.dtype)
        return torch.matmul(attn_weights, value)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        attention_mask = (1.0 - _padding(b, n).to(hidden_states.dtype))[:, None, None, :]
        attention_mask = attention_mask * torch.finfo(hidden_states.dtype).min
        qkv = self.query_key_value(hidden_states).view(b, n, HEADS, 3 * self.head_size)
        query = qkv[..., : self.head_size].permute(0, 2, 1, 3)
        key = qkv[..., self.head_size : 2 * self.head_size].permute(0, 2, 1, 3)
        value = qkv[..., 2 * self.head_size :].permute(0, 2, 1, 3)
        freqs = torch.outer(torch.arange(n, dtype=self.inv_freq.dtype), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        rotary = self.ROTARY_NDIMS
        q_rot, k_rot = query[..., :rotary], key[..., :rotary]
        q_rot = (q_rot * cos) + (rotate_half(q_rot) * sin)
        k_rot = (k_rot * cos) + (rotate_half(k_rot) * sin)
        query = torch.cat((q_rot, query[..., rotary:]), dim=-1)
        key = torch.cat((k_rot, key[..., rotary:]), dim=-1)
        attn_output = self._attn(query, key, value, attention_mask)
        attn_output = attn_output.permute(0, 2, 1, 3).contiguous().view(b, n, D_MODEL)
        return self.dense(attn_output)


# huggingface/transformers, src/transformers/models/t5/modeling_t5.py, T5Attention (written by the
# user, library-free): no 1/√d anywhere (T5 folds it into the initialisation of q, which is
# kept here: OWN_INIT), a bucketed relative position bias from an nn.Embedding, the extended
# padding mask ((1 - mask) · finfo.min) added to the bias and the sum added in place to the
# scores, softmax(scores.float(), dim=-1).type_as(scores), dropout. Unscaled on purpose, so
# ``no-scale`` is not a bug to inject: the verdict on the missing scale is the test's subject.
class T5(Block):
    BUGS = ("inverted-mask", "softmax-dim-2")
    OWN_INIT = True
    NUM_BUCKETS, MAX_DISTANCE = 32, 128

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.q, self.k, self.v, self.o = (nn.Linear(D_MODEL, D_MODEL, bias=False) for _ in range(4))
        self.relative_attention_bias = nn.Embedding(self.NUM_BUCKETS, HEADS)
        self.dropout = 0.1
        with torch.no_grad():  # T5PreTrainedModel._init_weights
            self.q.weight.normal_(0.0, (D_MODEL * HEAD_DIM) ** -0.5)
            self.k.weight.normal_(0.0, D_MODEL**-0.5)
            self.v.weight.normal_(0.0, D_MODEL**-0.5)
            self.o.weight.normal_(0.0, (HEADS * HEAD_DIM) ** -0.5)
            self.relative_attention_bias.weight.normal_(0.0, D_MODEL**-0.5)

    @staticmethod
    def _relative_position_bucket(
        relative_position: torch.Tensor, num_buckets: int, max_distance: int
    ) -> torch.Tensor:
        num_buckets //= 2  # bidirectional
        relative_buckets = (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
        max_exact = num_buckets // 2
        is_small = relative_position < max_exact
        relative_position_if_large = max_exact + (
            torch.log(relative_position.float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).to(torch.long)
        relative_position_if_large = torch.min(
            relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
        )
        return relative_buckets + torch.where(is_small, relative_position, relative_position_if_large)

    def compute_bias(self, query_length: int, key_length: int) -> torch.Tensor:
        context_position = torch.arange(query_length, dtype=torch.long)[:, None]
        memory_position = torch.arange(key_length, dtype=torch.long)[None, :]
        bucket = self._relative_position_bucket(
            memory_position - context_position, self.NUM_BUCKETS, self.MAX_DISTANCE
        )
        return self.relative_attention_bias(bucket).permute([2, 0, 1]).unsqueeze(0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_length = hidden_states.shape[:2]
        kept = _padding(batch_size, seq_length).to(hidden_states.dtype)
        minimum = torch.finfo(hidden_states.dtype).min
        mask = (kept if self.inverted else 1.0 - kept)[:, None, None, :] * minimum

        def shape(states: torch.Tensor) -> torch.Tensor:
            return states.view(batch_size, -1, HEADS, HEAD_DIM).transpose(1, 2)

        query_states = shape(self.q(hidden_states))
        key_states = shape(self.k(hidden_states))
        value_states = shape(self.v(hidden_states))
        scores = torch.matmul(query_states, key_states.transpose(3, 2))  # <qk>
        position_bias = self.compute_bias(seq_length, seq_length) + mask
        scores += position_bias  # <mask>
        dim = self.softmax_dim
        attn_weights = nn.functional.softmax(scores.float(), dim=dim).type_as(scores)  # <softmax>
        attn_weights = nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)
        attn_output = torch.matmul(attn_weights, value_states)
        return self.o(attn_output.transpose(1, 2).contiguous().view(batch_size, -1, D_MODEL))


# CompVis/stable-diffusion, ldm/modules/diffusionmodules/model.py, AttnBlock (the VAE's
# attention): 1×1 convolutions, one head over the channels, q permuted to (b, hw, c) and k left
# (b, c, hw) for bmm, scaled by int(c)**-0.5, softmax over dim=2, and the PV product written
# channels-first: bmm(v, w_.permute(0, 2, 1)).
class SdVae(Block):
    BUGS = ("no-scale", "softmax-dim-2")
    MASKED = False
    VISION = True
    SIDE = 4

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.norm = nn.GroupNorm(num_groups=8, num_channels=D_MODEL, eps=1e-6, affine=True)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(D_MODEL, D_MODEL, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, channels = x.shape
        h_ = self.norm(x.transpose(1, 2).reshape(batch, channels, self.SIDE, self.SIDE))
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)  # b, hw, c
        k = k.reshape(b, c, h * w)  # b, c, hw
        w_ = torch.bmm(q, k)  # <qk>
        if self.scaled:
            w_ = w_ * (int(c) ** (-0.5))  # <scale>
        w_ = torch.nn.functional.softmax(w_, dim=1 if self.bug == "softmax-dim-2" else 2)  # <softmax>
        v = v.reshape(b, c, h * w)
        w_ = w_.permute(0, 2, 1)  # b, hw (keys), hw (queries)
        h_ = torch.bmm(v, w_).reshape(b, c, h, w)
        return self.proj_out(h_).reshape(b, c, n).transpose(1, 2)


# openai/guided-diffusion, guided_diffusion/unet.py, AttentionBlock with QKVAttentionLegacy:
# a 1×1 conv1d makes qkv, heads folded into the batch and split along the channels, q and k each
# scaled by ch**-0.25 ("more stable with f16 than dividing afterwards"), einsum "bct,bcs->bts",
# th.softmax(weight.float(), dim=-1).type(weight.dtype), einsum "bts,bcs->bct" with v.
# (proj_out is zero-initialised there; left random here so that the block does something.)
class QKVAttentionLegacy(nn.Module):
    def __init__(self, n_heads: int, bug: str | None) -> None:
        super().__init__()
        self.n_heads, self.bug = n_heads, bug

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch)) if self.bug != "no-scale" else 1.0
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)  # <qk> <scale>
        dim = -2 if self.bug == "softmax-dim-2" else -1
        weight = torch.softmax(weight.float(), dim=dim).type(weight.dtype)  # <softmax>
        a = torch.einsum("bts,bcs->bct", weight, v)
        return a.reshape(bs, -1, length)


class GuidedDiffusion(Block):
    BUGS = ("no-scale", "softmax-dim-2")
    MASKED = False
    VISION = True

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.norm = nn.GroupNorm(8, D_MODEL)
        self.qkv = nn.Conv1d(D_MODEL, D_MODEL * 3, 1)
        self.attention = QKVAttentionLegacy(HEADS, bug)
        self.proj_out = nn.Conv1d(D_MODEL, D_MODEL, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (b, c, spatial)
        h = self.attention(self.qkv(self.norm(x)))
        return self.proj_out(h).transpose(1, 2)


# Longformer-like sliding-window attention (allenai/longformer and HF's LongformerSelfAttention
# divide q by √d in place and multiply each query with its own band of 2w + 1 keys; written
# here with unfold and einsum instead of their chunked as_strided diagonals). The scores are
# (batch, heads, queries, band): not q·kᵀ for any one k, so the call falls back to scores and
# weights with the reason.
class Longformer(Block):
    BUGS = ()
    ONE_SIDED_WINDOW = 2

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.query, self.key, self.value = (nn.Linear(D_MODEL, D_MODEL) for _ in range(3))
        self.output = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        w = self.ONE_SIDED_WINDOW
        q, k, v = (
            p(hidden_states).view(b, n, HEADS, HEAD_DIM).transpose(1, 2)
            for p in (self.query, self.key, self.value)
        )
        q /= math.sqrt(HEAD_DIM)
        k_band = F.pad(k, (0, 0, w, w)).unfold(2, 2 * w + 1, 1).transpose(-1, -2)  # (b, h, n, 2w+1, d)
        v_band = F.pad(v, (0, 0, w, w)).unfold(2, 2 * w + 1, 1).transpose(-1, -2)
        scores = torch.einsum("bhld,bhlwd->bhlw", q, k_band)
        position = torch.arange(n)[:, None] + torch.arange(-w, w + 1)[None, :]
        scores = scores.masked_fill((position < 0) | (position >= n), float("-inf"))
        weights = scores.softmax(dim=-1)
        out = torch.einsum("bhlw,bhlwd->bhld", weights, v_band)
        return self.output(out.transpose(1, 2).reshape(b, n, D_MODEL))


# lucidrains/performer-pytorch, performer_pytorch/performer_pytorch.py (commit d86231b0):
# softmax_kernel (FAVOR+ positive random features: einsum with a projection matrix, exp of the
# shifted logits) and the non-causal linear_attention. There is no softmax: nothing to record.
def softmax_kernel(data, projection_matrix, is_query, eps=1e-4):  # noqa: ANN001, ANN201
    b, h = data.shape[:2]
    data_normalizer = data.shape[-1] ** -0.25
    ratio = projection_matrix.shape[0] ** -0.5
    projection = projection_matrix.expand(b, h, *projection_matrix.shape).type_as(data)
    data_dash = torch.einsum("...id,...jd->...ij", (data_normalizer * data), projection)
    diag_data = ((data**2).sum(dim=-1) / 2.0 * data_normalizer**2).unsqueeze(dim=-1)
    if is_query:
        stabiliser = torch.amax(data_dash, dim=-1, keepdim=True).detach()
    else:
        stabiliser = torch.amax(data_dash, dim=(-1, -2), keepdim=True).detach()
    return (ratio * (torch.exp(data_dash - diag_data - stabiliser) + eps)).type_as(data)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    k_cumsum = k.sum(dim=-2)
    D_inv = 1.0 / torch.einsum("...nd,...d->...n", q, k_cumsum.type_as(q))
    context = torch.einsum("...nd,...ne->...de", k, v)
    return torch.einsum("...de,...nd,...n->...ne", context, q, D_inv)


class Performer(Block):
    BUGS = ()
    MASKED = False
    NB_FEATURES = 16

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.to_q, self.to_k, self.to_v = (nn.Linear(D_MODEL, D_MODEL, bias=False) for _ in range(3))
        self.to_out = nn.Linear(D_MODEL, D_MODEL)
        blocks = torch.linalg.qr(torch.randn(HEAD_DIM, HEAD_DIM))[0].T  # orthogonal random features
        features = torch.cat([blocks, torch.linalg.qr(torch.randn(HEAD_DIM, HEAD_DIM))[0].T])
        self.register_buffer("projection_matrix", features * math.sqrt(HEAD_DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            p(x).view(b, n, HEADS, HEAD_DIM).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v)
        )
        q = softmax_kernel(q, self.projection_matrix, is_query=True)
        k = softmax_kernel(k, self.projection_matrix, is_query=False)
        out = linear_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, D_MODEL))


# lucidrains/denoising-diffusion-pytorch, denoising_diffusion_pytorch/denoising_diffusion_pytorch.py
# (commit 7897ddb9), LinearAttention (also ldm's LinearAttention): 1×1 convolutions, learned
# memory key/values concatenated, q.softmax(dim=-2) over features and k.softmax(dim=-1) over
# positions — softmaxes of projected features, not of query–key scores — then two einsums.
class LinearAttention(Block):
    BUGS = ()
    MASKED = False
    VISION = True
    SIDE, NUM_MEM_KV = 4, 4

    def __init__(self, bug: str | None, index: int = 0) -> None:
        super().__init__(bug, index)
        self.scale, self.heads = HEAD_DIM**-0.5, HEADS
        self.g = nn.Parameter(torch.ones(1, D_MODEL, 1, 1))
        self.mem_kv = nn.Parameter(torch.randn(2, HEADS, HEAD_DIM, self.NUM_MEM_KV))
        self.to_qkv = nn.Conv2d(D_MODEL, D_MODEL * 3, 1, bias=False)
        self.to_out = nn.Conv2d(D_MODEL, D_MODEL, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, self.SIDE, self.SIDE)
        x = F.normalize(x, dim=1) * self.g * c**0.5  # RMSNorm
        qkv = self.to_qkv(x).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, HEAD_DIM, n) for t in qkv)  # 'b (h c) x y -> b h c (x y)'
        mk, mv = (t.expand(b, *t.shape) for t in self.mem_kv)
        k, v = torch.cat((mk, k), dim=-1), torch.cat((mv, v), dim=-1)
        q = q.softmax(dim=-2)
        k = k.softmax(dim=-1)
        q = q * self.scale
        context = torch.einsum("b h d n, b h e n -> b h d e", k, v)
        out = torch.einsum("b h d e, b h d n -> b h e n", context, q)
        out = self.to_out(out.reshape(b, c, self.SIDE, self.SIDE))
        return out.reshape(b, c, n).transpose(1, 2)


PROJECTS: dict[str, type[Block]] = {
    "diffusers": Diffusers,
    "ldm": Ldm,
    "whisper": Whisper,
    "clip": Clip,
    "sam": Sam,
    "swin": Swin,
    "vit-pytorch": VitPytorch,
    "mistral": Mistral,
    "gpt-j": GptJ,
    "gpt-neox": GptNeoX,
    "t5": T5,
    "sd-vae": SdVae,
    "guided-diffusion": GuidedDiffusion,
}
NOT_SOFTMAX_ATTENTION: dict[str, type[Block]] = {"performer": Performer, "linear-attention": LinearAttention}
FALLBACKS: dict[str, type[Block]] = {"longformer": Longformer}
ALL = {**PROJECTS, **NOT_SOFTMAX_ATTENTION, **FALLBACKS}


class Stack(nn.Module):
    """Two blocks (the second told it is the second: Swin shifts its windows there) over a
    token embedding, or over features for vision blocks."""

    def __init__(self, block: type[Block], bug: str | None, vocab: int = 50) -> None:
        super().__init__()
        self.block = block
        self.embed = None if block.VISION else nn.Embedding(vocab, D_MODEL)
        self.blocks = nn.ModuleList(block(bug, index) for index in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(D_MODEL) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        for norm, block in zip(self.norms, self.blocks):
            x = x + block(norm(x))
        return x


def build(project: str, bug: str | None = None, seed: int = 0) -> Stack:
    """A seeded two-block model; weights are widened (×3) so that attention is not uniform at
    initialisation, except where the project's own initialisation is the point (T5)."""
    torch.manual_seed(seed)
    block = ALL[project]
    model = Stack(block, bug).eval()
    if not block.OWN_INIT:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.dim() >= 2 and "embed" not in name:
                    parameter.mul_(3.0)
    return model


def example_input(model: Stack, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    length = model.block.LENGTH
    if model.embed is not None:
        return torch.randint(0, model.embed.num_embeddings, (batch, length), generator=generator)
    return torch.randn(batch, length, D_MODEL, generator=generator)
