"""The architecture zoo: tiny random-init Hugging Face models, one config per architecture.

Each entry is what a user would train at full size, shrunk to 2 layers and small widths so the
whole table runs in seconds. Widths go through each config's own argument names (GPT-2's
``n_embd``, T5's ``d_model`` …) because not every config maps ``hidden_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VOCAB = 128
TEXT = dict(vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0, eos_token_id=2, pad_token_id=1)
# The common LLaMA-family spelling of "2 layers, 4 query heads over 2 key/value heads".
LLAMA_LIKE = dict(
    TEXT,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
BERT_LIKE = dict(
    TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, type_vocab_size=2
)
BART_LIKE = dict(
    TEXT,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
)
GPT_LIKE = dict(
    vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=2
)
T5_LIKE = dict(
    vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
)
WAV2VEC2_LIKE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16),
    conv_stride=(5, 4),
    conv_kernel=(10, 8),
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=4,
    vocab_size=VOCAB,
)
VISION = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
)


@dataclass(frozen=True)
class Arch:
    name: str  # the model_type
    family: str  # "decoder" | "encoder" | "encoder-decoder" | "vision" | "audio" | "text-vision"
    config: dict[str, Any] = field(default_factory=dict)
    implementations: tuple[str, ...] = ("sdpa", "eager")
    # set: the last query of a full-length sequence may attend to exactly this many keys (its own
    # and those just before it) in at least one layer
    sliding_window: int | None = None
    # The scale the library passes on purpose: "1" when q is pre-scaled (Whisper, ESM) or
    # 1/sqrt(d) is folded into the query init (the T5 family), "1/d" under μP (Granite).
    scale: str = "1/sqrt(d)"
    not_captured: str | None = None  # why capture cannot see this architecture's attention yet
    # why the library's own cache cannot run the decode/chunked scenarios (none: it can)
    no_cache: str | None = None

    @property
    def has_decoder(self) -> bool:
        """An encoder-decoder (text or speech): cross-attention, and a decoder cache."""
        return self.family == "encoder-decoder" or self.name == "whisper"

    @property
    def has_cache(self) -> bool:
        return (self.family == "decoder" or self.has_decoder) and self.no_cache is None


ZOO: list[Arch] = [
    # decoder-only
    Arch("gpt2", "decoder", GPT_LIKE),
    Arch("llama", "decoder", LLAMA_LIKE),
    Arch("mistral", "decoder", dict(LLAMA_LIKE, sliding_window=6), sliding_window=6),
    Arch("qwen2", "decoder", LLAMA_LIKE),
    Arch("qwen3", "decoder", dict(LLAMA_LIKE, head_dim=8)),
    Arch("phi", "decoder", dict(LLAMA_LIKE, num_key_value_heads=4)),
    Arch("phi3", "decoder", dict(LLAMA_LIKE, pad_token_id=0)),
    Arch("gemma", "decoder", dict(LLAMA_LIKE, head_dim=8)),
    Arch(
        "gemma2",
        "decoder",
        dict(LLAMA_LIKE, head_dim=8, sliding_window=6, attn_logit_softcapping=None),
        implementations=("eager",),
        sliding_window=6,
    ),
    Arch("gpt_neox", "decoder", dict(LLAMA_LIKE)),
    Arch(
        "ctrl",
        "decoder",
        dict(TEXT, n_embd=32, n_layer=2, n_head=4, dff=64, n_positions=64),
        implementations=("eager",),
    ),
    Arch(
        "opt",
        "decoder",
        dict(
            TEXT,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=32,
        ),
        scale="1",  # q is multiplied by 1/sqrt(d) before the call
    ),
    Arch("falcon", "decoder", dict(TEXT, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)),
    Arch("bloom", "decoder", dict(TEXT, hidden_size=32, n_layer=2, n_head=4), implementations=("eager",)),
    Arch("gptj", "decoder", dict(GPT_LIKE, rotary_dim=4)),
    Arch("starcoder2", "decoder", dict(LLAMA_LIKE, sliding_window=None)),
    Arch("gpt_bigcode", "decoder", GPT_LIKE),
    Arch("olmo2", "decoder", LLAMA_LIKE),
    Arch("stablelm", "decoder", LLAMA_LIKE),
    Arch("mixtral", "decoder", dict(LLAMA_LIKE, num_local_experts=2, num_experts_per_tok=1)),
    Arch(
        "qwen2_moe",
        "decoder",
        dict(
            LLAMA_LIKE,
            num_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
    ),
    Arch(
        "gemma3_text",
        "decoder",
        dict(LLAMA_LIKE, head_dim=8, query_pre_attn_scalar=8, sliding_window=6),
        sliding_window=6,
    ),
    Arch("cohere", "decoder", LLAMA_LIKE),
    # Granite 3 checkpoints use μP: attention_multiplier = 1/head_dim (1/128 for head_dim 128)
    Arch("granite", "decoder", dict(LLAMA_LIKE, attention_multiplier=1 / 8), scale="1/d"),
    Arch("olmo", "decoder", LLAMA_LIKE),
    Arch("persimmon", "decoder", dict(LLAMA_LIKE, num_key_value_heads=4)),
    Arch(
        "gpt_neo",
        "decoder",
        dict(
            TEXT,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            window_size=6,
        ),
        implementations=("eager",),
        sliding_window=6,
        scale="1",  # GPT-Neo never scales q·k
    ),
    Arch("codegen", "decoder", dict(GPT_LIKE, rotary_dim=4)),
    Arch(
        "mpt",
        "decoder",
        dict(TEXT, d_model=32, n_heads=4, n_layers=2, expansion_ratio=2),
        implementations=("eager",),
    ),
    Arch(
        "xglm",
        "decoder",
        dict(TEXT, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64),
        implementations=("eager",),
    ),
    Arch("biogpt", "decoder", BERT_LIKE),
    # encoder-only
    Arch("bert", "encoder", BERT_LIKE),
    Arch("roberta", "encoder", dict(BERT_LIKE, max_position_embeddings=66, pad_token_id=1)),
    Arch("xlm-roberta", "encoder", dict(BERT_LIKE, max_position_embeddings=66, pad_token_id=1)),
    Arch("distilbert", "encoder", dict(TEXT, dim=32, hidden_dim=64, n_layers=2, n_heads=4)),
    Arch("electra", "encoder", dict(BERT_LIKE, embedding_size=32)),
    Arch("albert", "encoder", dict(BERT_LIKE, embedding_size=16)),
    Arch(
        "deberta-v2",
        "encoder",
        dict(BERT_LIKE, relative_attention=True, position_buckets=16, max_relative_positions=32),
        implementations=("eager",),
    ),
    Arch("camembert", "encoder", dict(BERT_LIKE, max_position_embeddings=66, pad_token_id=1)),
    Arch("roformer", "encoder", dict(BERT_LIKE, embedding_size=32), implementations=("eager",)),
    Arch("megatron-bert", "encoder", BERT_LIKE, implementations=("eager",)),
    Arch("ernie", "encoder", BERT_LIKE),
    Arch("data2vec-text", "encoder", dict(BERT_LIKE, max_position_embeddings=66, pad_token_id=1)),
    Arch(
        "esm",
        "encoder",
        dict(BERT_LIKE, pad_token_id=1, mask_token_id=2, position_embedding_type="rotary"),
        scale="1",
    ),
    Arch(
        "longformer",
        "encoder",
        dict(BERT_LIKE, max_position_embeddings=66, attention_window=4, pad_token_id=1),
        implementations=("eager",),
    ),
    Arch("big_bird", "encoder", dict(BERT_LIKE, attention_type="original_full"), implementations=("eager",)),
    Arch(
        "reformer",
        "encoder",
        dict(
            TEXT,
            hidden_size=32,
            num_attention_heads=4,
            attention_head_size=8,
            feed_forward_size=64,
            attn_layers=["local", "lsh"],
            axial_pos_embds=False,
            local_attn_chunk_length=4,
            lsh_attn_chunk_length=4,
            num_buckets=2,
            is_decoder=False,
        ),
        implementations=("eager",),
        not_captured="chunked local/LSH attention normalises with exp(x - logsumexp(x)), no softmax call",
    ),
    Arch("mpnet", "encoder", dict(BERT_LIKE, max_position_embeddings=66), implementations=("eager",)),
    Arch(
        "modernbert",
        "encoder",
        dict(BERT_LIKE, local_attention=8, global_attn_every_n_layers=2, cls_token_id=0, sep_token_id=2),
        sliding_window=5,  # 4 keys either side: the last row keeps itself and the 4 before it
    ),
    # encoder-decoder
    Arch(
        "fsmt",
        "encoder-decoder",
        dict(
            src_vocab_size=VOCAB,
            tgt_vocab_size=VOCAB,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            langs=["en", "de"],
        ),
        implementations=("eager",),
        no_cache="FSMTModel.forward requires input_ids even when encoder_outputs are given",
    ),
    Arch(
        "led",
        "encoder-decoder",
        dict(
            BART_LIKE,
            attention_window=4,
            max_encoder_position_embeddings=64,
            max_decoder_position_embeddings=64,
        ),
        implementations=("eager",),
    ),
    Arch(
        "longt5",
        "encoder-decoder",
        dict(T5_LIKE, local_radius=3, encoder_attention_type="local"),
        implementations=("eager",),
        scale="1",
    ),
    Arch(
        "prophetnet",
        "encoder-decoder",
        dict(
            vocab_size=VOCAB,
            hidden_size=32,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_encoder_layers=2,
            num_decoder_layers=2,
            num_encoder_attention_heads=4,
            num_decoder_attention_heads=4,
            ngram=2,
            max_position_embeddings=64,
        ),
        implementations=("eager",),
        no_cache="use_cache is only supported for decoder_input_ids of length 1 (no cached prefill)",
        scale="1",  # q is multiplied by 1/sqrt(d) before the product
    ),
    Arch("t5", "encoder-decoder", T5_LIKE, scale="1"),
    Arch("bart", "encoder-decoder", BART_LIKE),
    Arch(
        "marian", "encoder-decoder", dict(BART_LIKE, pad_token_id=VOCAB - 1, decoder_start_token_id=VOCAB - 1)
    ),
    Arch("pegasus", "encoder-decoder", dict(BART_LIKE, pad_token_id=0, decoder_start_token_id=0)),
    Arch("m2m_100", "encoder-decoder", BART_LIKE),
    Arch("mbart", "encoder-decoder", BART_LIKE),
    Arch("blenderbot", "encoder-decoder", BART_LIKE),
    Arch("plbart", "encoder-decoder", BART_LIKE),
    Arch("mt5", "encoder-decoder", T5_LIKE, scale="1"),
    Arch("umt5", "encoder-decoder", T5_LIKE, scale="1"),
    # vision
    Arch("vit", "vision", VISION),
    Arch("deit", "vision", VISION),
    Arch("beit", "vision", dict(VISION, use_relative_position_bias=True)),
    Arch("dinov2", "vision", dict(VISION, mlp_ratio=2)),
    Arch("vit_msn", "vision", VISION),
    Arch(
        "swinv2",
        "vision",
        dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
        implementations=("eager",),
    ),
    Arch(
        "segformer",
        "vision",
        dict(
            image_size=32,
            num_channels=3,
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 32],
            num_attention_heads=[1, 2],
            patch_sizes=[7, 3],
            strides=[4, 2],
            mlp_ratios=[2, 2],
        ),
    ),
    Arch("data2vec-vision", "vision", VISION),
    Arch("yolos", "vision", dict(VISION, image_size=[32, 32], num_detection_tokens=4)),
    Arch("vit_mae", "vision", dict(VISION, mask_ratio=0.0)),
    Arch(
        "swin",
        "vision",
        dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
    ),
    Arch(
        "clip",
        "text-vision",
        dict(
            text_config=dict(BERT_LIKE, max_position_embeddings=64),
            vision_config=VISION,
            projection_dim=16,
        ),
    ),
    Arch(
        "siglip",
        "text-vision",
        dict(text_config=dict(BERT_LIKE, max_position_embeddings=64), vision_config=VISION),
    ),
    # audio
    Arch(
        "whisper",
        "audio",
        dict(
            BART_LIKE,
            num_mel_bins=16,
            max_source_positions=16,
            max_target_positions=32,
            pad_token_id=VOCAB - 1,
            bos_token_id=VOCAB - 2,
            eos_token_id=VOCAB - 2,
            decoder_start_token_id=VOCAB - 3,
            suppress_tokens=None,
            begin_suppress_tokens=None,
        ),
        scale="1",
    ),
    *(Arch(name, "audio", WAV2VEC2_LIKE) for name in ("hubert", "data2vec-audio", "unispeech", "sew")),
    Arch("wavlm", "audio", WAV2VEC2_LIKE, implementations=("eager",)),
    Arch("wav2vec2", "audio", WAV2VEC2_LIKE),
]

BY_NAME = {arch.name: arch for arch in ZOO}
