"""Run a zoo architecture the ways users do and record what attndbg sees.

Scenarios:

* ``padded`` — a batch of two sequences of different lengths: right padding, or left padding for
  decoder-only models (how ``generate`` pads a batch);
* ``decode`` — a prefill with a KV cache, then one new token per sequence with the mask extended;
* ``chunked`` — a prefill in two chunks, the second attending to the cached first;
* ``images`` / ``audio`` — a batch of pixel values or input features.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import transformers
from arch_zoo import BY_NAME, Arch

import attndbg
from attndbg.recording.recorder import Calls

LENGTHS = (12, 7)  # the two sequences of a padded batch
# Median row std of the attention logits (after the model's scale) that the sweep gives the
# sharpest layer of every architecture: about what a trained model's layers show, and what a
# gain of 2 on the query and key projections gives a 1/sqrt(d) model at these widths.
TARGET_SPREAD = 3.0
QK_GAIN = 2.0  # when a model records no logits to measure
MASKED_LOGIT = -1e4  # a logit at or below this is a mask's fill, not a score
# Below this median row std attention is near-uniform. Models that normalise q and k after the
# projections (QK-norm: Qwen3, OLMo-2, Gemma 3, Persimmon) undo the gain and stay near 0.75.
NEAR_UNIFORM_SPREAD = TARGET_SPREAD / 5
TINY_INIT = 0.25  # std * sqrt(fan_in) below this: a fixed-std init meant for much wider models
# Names of the query/key projections (or of a fused projection that holds them) across the library.
QK_PROJECTIONS = {
    "q_proj", "k_proj", "query", "key", "q", "k", "q_lin", "k_lin", "c_attn", "query_key_value",
    "qkv", "qkv_proj", "Wqkv", "in_proj", "to_q", "to_k", "q_attn", "Wq", "Wk", "query_proj",
    "key_proj",
}  # fmt: skip


# Every finding on correct library code that the sweep has found is fixed in the catalogue, and
# the sweep holds the code to it (there is no list of exemptions): MSK001 and MSK005 on
# padding-query rows, MSK001 on LongT5's blocked local attention (padding queries recognised in
# the (batch·blocks, heads, block, 3·block) layout), MSK007 on GPT-Neo's finfo.min masks whose
# sum overflows to -inf (harmless unless a fully masked row sits at a real token), SHP004 on
# falcon's broadcast K/V head, SCL002 on Granite's μP scale, SCL001 on models with scale 1 by
# design (T5, GPT-Neo, ESM: no scale step in library code is read as a deliberate scale 1 and
# judged by its statistics, which the sweep's query_key_gain keeps at a trained model's spread).


def scenarios(arch: Arch) -> list[str]:
    if arch.family == "vision":
        return ["images"]
    if arch.family == "audio":
        return ["audio", "decode", "chunked"] if arch.has_cache else ["audio"]
    if arch.family == "text-vision":
        return ["padded"]
    return ["padded", "decode", "chunked"] if arch.has_cache else ["padded"]


def build(arch: Arch, implementation: str, seed: int = 0) -> torch.nn.Module:
    model = _initialised(arch, implementation, seed)
    sharpen_attention(model, query_key_gain(arch.name, seed))
    return model


def _initialised(arch: Arch, implementation: str, seed: int) -> torch.nn.Module:
    config = transformers.AutoConfig.for_model(arch.name, **arch.config)
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config, attn_implementation=implementation).eval()
    normalise_init(model)
    return model


@functools.cache
def query_key_gain(arch_name: str, seed: int = 0) -> float:
    """The factor on the query and key projections that brings the logits of this
    architecture's sharpest attention layer, after the model's own scale, to TARGET_SPREAD.
    Measured once on the first scenario's inputs, with the same target for every architecture
    (1/sqrt(d) or not, μP, a scale folded into the init, position biases), so that no model is
    sharpened past what a trained one has. Both projections are multiplied, so the logits
    grow with the square of the gain."""
    arch = BY_NAME[arch_name]
    implementation = "eager" if "eager" in arch.implementations else arch.implementations[0]
    model = _initialised(arch, implementation, seed)
    prepare, recorded = _forward(arch, model, scenarios(arch)[0], torch.Generator().manual_seed(seed))
    with torch.no_grad():
        state = prepare()
        with attndbg.capture(model) as calls:
            recorded(state)
    per_call = [r.median() for r in map(row_spreads, calls) if r is not None and r.numel()]
    sharpest = float(max(per_call)) if per_call else 0.0
    return (TARGET_SPREAD / sharpest) ** 0.5 if sharpest > 0 else QK_GAIN


def logit_spread(calls: Calls) -> float:
    """Median over query rows of the std of the scaled attention logits over the keys a row
    attends (masked keys left out): what the softmax sees, bias and scale included."""
    rows = [row_spreads(call) for call in calls]
    rows = [r for r in rows if r is not None and r.numel()]
    return float(torch.cat(rows).median()) if rows else 0.0


def row_spreads(call) -> torch.Tensor | None:  # noqa: ANN001
    """The std of each query row's logits over the keys it attends, or None without logits."""
    if call.scores is not None:
        logits = call.scores.float()
    elif call.q is not None and call.k is not None:
        q, k = call.q.float(), call.k.float()
        if k.shape[-3] != q.shape[-3]:  # grouped K/V heads
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        scale = call.scale if call.scale is not None else q.shape[-1] ** -0.5
        logits = q @ k.transpose(-2, -1) * scale
        if call.mask is not None and call.mask.is_floating_point():
            logits = logits + call.mask.float()
    else:
        return None
    valid = torch.isfinite(logits) & (logits > MASKED_LOGIT)
    count = valid.sum(-1)
    mean = torch.where(valid, logits, 0.0).sum(-1) / count.clamp(min=1)
    variance = (torch.where(valid, logits - mean[..., None], 0.0) ** 2).sum(-1) / count.clamp(min=1)
    return variance.sqrt()[count > 1].flatten()


def normalise_init(model: torch.nn.Module) -> None:
    """Give a random model the weight scale of a trained one: most configs initialise
    projections at a fixed std (``initializer_range`` / ``init_std`` 0.02, chosen for widths
    in the thousands); at width 32 that makes every score almost 0. Those weights are brought
    to 1/sqrt(fan_in); width-aware inits keep their scale (T5 folds 1/sqrt(d) into its query
    init)."""
    with torch.no_grad():
        for weight, fan_in, _ in _projections(model):
            spread = float(weight.std())
            if 0 < spread * fan_in**0.5 < TINY_INIT:
                weight.mul_(1 / (spread * fan_in**0.5))


def sharpen_attention(model: torch.nn.Module, gain: float) -> int:
    """Multiply every query/key projection (and nn.MultiheadAttention's fused input projection)
    by ``gain``, so that the random model's attention is not near-uniform by construction.
    Returns how many query/key projections were sharpened."""
    count = 0
    with torch.no_grad():
        for weight, _, query_key in _projections(model):
            if query_key:
                weight.mul_(gain)
                count += 1
    return count


def _projections(model: torch.nn.Module) -> Iterator[tuple[torch.Tensor, int, bool]]:
    """(weight, fan_in, is a query/key projection) of every linear projection."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.MultiheadAttention) and module.in_proj_weight is not None:
            yield module.in_proj_weight, module.in_proj_weight.shape[1], True
        elif isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            # Linear stores (out, in); GPT-2's Conv1D stores (in, out).
            fan_in = module.weight.shape[0 if type(module).__name__ == "Conv1D" else 1]
            yield module.weight, fan_in, name.rpartition(".")[2] in QK_PROJECTIONS


def padded_ids(arch: Arch, side: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(LENGTHS)
    ids = torch.randint(3, 100, (len(LENGTHS), longest), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(LENGTHS):
        if side == "left":
            mask[row, longest - length :] = 1
        else:
            mask[row, :length] = 1
    pad = arch.config.get("pad_token_id", 1) or 0
    ids = ids.masked_fill(mask == 0, pad)
    return ids, mask


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The innermost modules named *Attention*: each that runs must record one call (or more)."""
    found = {}
    for name, module in model.named_modules():
        if "Attention" not in type(module).__name__:
            continue
        children = [m for m in module.modules() if m is not module]
        if any("Attention" in type(child).__name__ for child in children):
            continue
        found[name] = module
    return found


@dataclass
class Outcome:
    calls: Calls
    ran: list[str]  # attention modules that ran during the recorded forward
    seconds: float
    report: attndbg.Report | None = None

    def missing(self) -> list[str]:
        recorded = [c.module for c in self.calls]
        return [m for m in self.ran if not any(r == m or r.startswith(m + ".") for r in recorded)]


def run(arch: Arch, implementation: str, scenario: str) -> Outcome:
    """Build the tiny model, run the scenario under capture and diagnose the calls. Cached: the
    sweep, the eager comparison and the window test read the same runs (models are seeded)."""
    return _run(arch.name, implementation, scenario)


@functools.cache
def _run(arch_name: str, implementation: str, scenario: str) -> Outcome:
    arch = BY_NAME[arch_name]
    start = time.perf_counter()
    model = build(arch, implementation)
    generator = torch.Generator().manual_seed(0)
    prepare, recorded = _forward(arch, model, scenario, generator)
    ran: list[str] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, _o, name=name: ran.append(name))
        for name, module in attention_modules(model).items()
    ]
    try:
        with torch.no_grad():
            state = prepare()
            ran.clear()
            with attndbg.capture(model) as calls:
                recorded(state)
    finally:
        for handle in handles:
            handle.remove()
    report = attndbg.diagnose(calls) if len(calls) else None
    return Outcome(calls, list(dict.fromkeys(ran)), time.perf_counter() - start, report)


def cache_argument(model: torch.nn.Module) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; take whichever forward accepts."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output) -> object:  # noqa: ANN001
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _forward(arch: Arch, model, scenario: str, generator: torch.Generator):  # noqa: ANN001, ANN202
    """(prepare, recorded): prepare runs unrecorded (a prefill) and returns the state that the
    recorded call continues from."""
    cache = cache_argument(model)
    if scenario == "images":
        size = arch.config["image_size"]
        height, width = (size, size) if isinstance(size, int) else size
        pixels = torch.randn(2, arch.config.get("num_channels", 3), height, width, generator=generator)
        return (lambda: None), (lambda _: model(pixel_values=pixels))
    if arch.family == "text-vision":
        ids, mask = padded_ids(arch, "right", generator)
        size = arch.config["vision_config"]["image_size"]
        pixels = torch.randn(2, 3, size, size, generator=generator)
        return (lambda: None), (lambda _: model(input_ids=ids, attention_mask=mask, pixel_values=pixels))
    if arch.family == "audio" and arch.name != "whisper":
        values = torch.randn(2, 1600, generator=generator)
        mask = torch.ones(2, 1600, dtype=torch.long)
        mask[1, 1200:] = 0
        return (lambda: None), (lambda _: model(input_values=values, attention_mask=mask))
    if arch.has_decoder:
        if arch.name == "whisper":
            config = model.config
            shape = (2, config.num_mel_bins, 2 * config.max_source_positions)
            encoder_inputs = {"input_features": torch.randn(shape, generator=generator)}
        else:
            ids, mask = padded_ids(arch, "right", generator)
            encoder_inputs = {"input_ids": ids, "attention_mask": mask}
        decoder_ids = torch.randint(3, 100, (2, 8), generator=generator)
        if scenario in ("padded", "audio"):
            return (lambda: None), (lambda _: model(**encoder_inputs, decoder_input_ids=decoder_ids))
        # decode: 7 decoder tokens cached, then 1; chunked: 5 cached, then a chunk of 3
        split = 7 if scenario == "decode" else 5

        def prefill():  # noqa: ANN202
            return model(**encoder_inputs, decoder_input_ids=decoder_ids[:, :split], use_cache=True)

        def step(state):  # noqa: ANN001, ANN202
            return model(
                encoder_outputs=(state.encoder_last_hidden_state,),
                attention_mask=encoder_inputs.get("attention_mask"),
                decoder_input_ids=decoder_ids[:, split:],
                use_cache=True,
                **{cache: cache_of(state)},
            )

        return prefill, step
    side = "left" if arch.family == "decoder" else "right"
    ids, mask = padded_ids(arch, side, generator)
    if scenario == "padded":
        return (lambda: None), (lambda _: model(input_ids=ids, attention_mask=mask))
    # decode: the padded batch is the prefill, then one new token with the mask extended;
    # chunked: the first 8 positions, then the remaining 4 against the cache
    if scenario == "decode":
        ids = torch.cat([ids, torch.randint(3, 100, (2, 1), generator=generator)], dim=1)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
    split = ids.shape[1] - 1 if scenario == "decode" else 8

    def first():  # noqa: ANN202
        return cache_of(model(input_ids=ids[:, :split], attention_mask=mask[:, :split], use_cache=True))

    def second(state):  # noqa: ANN001, ANN202
        return model(input_ids=ids[:, split:], attention_mask=mask, use_cache=True, **{cache: state})

    return first, second
