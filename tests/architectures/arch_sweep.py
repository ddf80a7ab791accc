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
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from arch_zoo import BY_NAME, Arch

import attndbg
from attndbg.recording.recorder import Calls

LENGTHS = (12, 7)  # the two sequences of a padded batch
QK_GAIN = 2.0
TINY_INIT = 0.25  # std * sqrt(fan_in) below this: a fixed-std init meant for much wider models
# Names of the query/key projections (or of a fused projection that holds them) across the library.
QK_PROJECTIONS = {
    "q_proj", "k_proj", "query", "key", "q", "k", "q_lin", "k_lin", "c_attn", "query_key_value",
    "qkv", "qkv_proj", "Wqkv", "in_proj", "to_q", "to_k", "q_attn", "Wq", "Wk",
}  # fmt: skip


@dataclass(frozen=True)
class KnownFalseAlarm:
    """A finding on correct library code that is a catalogue calibration problem, reported
    to the check owners (/work/signals/archs-false-alarms.md). Listed so the sweep stays
    strict about everything else; delete an entry once its check is fixed."""

    code: str
    applies: Callable[[Arch, str, str], bool]
    why: str


# Fixed since the sweep found them (the sweep now holds the code to it): MSK001 and MSK005 on
# padding-query rows, SHP004 on falcon's broadcast K/V head, SCL002 on Granite's μP scale.

KNOWN_FALSE_ALARMS = [
    KnownFalseAlarm(
        "MSK001",
        lambda arch, impl, scenario: scenario == "padded" and arch.name == "longt5",
        "LongT5's local attention is traced in (batch·blocks, heads, block, 3·block) layout: the "
        "fully masked rows are padding queries, read through the block layout as real tokens",
    ),
    KnownFalseAlarm(
        "MSK007",
        lambda arch, impl, scenario: arch.name == "gpt_neo" and impl == "eager",
        "GPT-Neo fills the causal mask with finfo.min and adds the padding mask's finfo.min: the "
        "sum overflows to -inf where both hide a key; only rows that are padding queries change",
    ),
    KnownFalseAlarm(
        "SCL001",
        lambda arch, impl, scenario: arch.scale == "1",
        "scale 1 by design (T5 folds 1/sqrt(d) into its query init, Whisper/OPT/ESM pre-scale q, "
        "GPT-Neo never scales): neither the logit spread nor recomputed weights can tell that "
        "from a forgotten scale",
    ),
]


def known_false_alarms(arch: Arch, implementation: str, scenario: str) -> dict[str, str]:
    """{code: why} of the known false alarms that apply to this run."""
    return {a.code: a.why for a in KNOWN_FALSE_ALARMS if a.applies(arch, implementation, scenario)}


def scenarios(arch: Arch) -> list[str]:
    if arch.family == "vision":
        return ["images"]
    if arch.family == "audio":
        return ["audio", "decode", "chunked"] if arch.has_cache else ["audio"]
    if arch.family == "text-vision":
        return ["padded"]
    return ["padded", "decode", "chunked"] if arch.has_cache else ["padded"]


def build(arch: Arch, implementation: str, seed: int = 0) -> torch.nn.Module:
    config = transformers.AutoConfig.for_model(arch.name, **arch.config)
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config, attn_implementation=implementation).eval()
    sharpen_attention(model)
    return model


def sharpen_attention(model: torch.nn.Module, gain: float = QK_GAIN) -> int:
    """Give a random model the weight scale of a trained one, so that its attention is not
    near-uniform by construction.

    Most configs initialise projections at a fixed std (``initializer_range`` / ``init_std``
    0.02, chosen for widths in the thousands); at width 32 that makes every score almost 0.
    Those weights are brought to 1/sqrt(fan_in); width-aware inits keep their scale (T5 folds
    1/sqrt(d) into its query init). Then every query/key projection (and
    nn.MultiheadAttention's fused input projection) is multiplied by ``gain``. Returns how many
    query/key projections were sharpened."""
    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.MultiheadAttention) and module.in_proj_weight is not None:
                weight, fan_in, query_key = module.in_proj_weight, module.in_proj_weight.shape[1], True
            elif isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
                weight = module.weight
                # Linear stores (out, in); GPT-2's Conv1D stores (in, out).
                fan_in = weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[1]
                query_key = name.rpartition(".")[2] in QK_PROJECTIONS
            else:
                continue
            spread = float(weight.std())
            if 0 < spread * fan_in**0.5 < TINY_INIT:
                weight.mul_(1 / (spread * fan_in**0.5))
            if query_key:
                weight.mul_(gain)
                count += 1
    return count


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
