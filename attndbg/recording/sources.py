"""Where a capture's model comes from, and what it is fed (docs/architecture.md, "Capture").

* a Hugging Face model directory (config.json + weights), loaded offline, remote code off;
* a ``torch.export`` program (``.pt2``);
* a factory ``module:function`` or ``path/to/file.py:function`` returning an ``nn.Module``,
  with optional ``--weights`` (safetensors, or a state dict read with
  ``torch.load(weights_only=True)`` — never an unrestricted unpickle).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attndbg.attention import expand_kv_heads, reference_attention
from attndbg.errors import AttndbgError, InputError, UsageError, first_line


@dataclass
class LoadedModel:
    model: torch.nn.Module
    kind: str  # "hf" | "export" | "factory"
    name: str
    tokenizer: Any = None
    example: tuple[tuple, dict] | None = None  # an exported program's own example inputs
    directory: Path | None = None  # a Hugging Face checkpoint's folder (its preprocessor config)


def is_model_source(text: str) -> bool:
    path = Path(text)
    if path.is_dir():
        return (path / "config.json").exists()
    if path.suffix == ".pt2":
        return True
    return ":" in text and not path.exists() and _split_factory(text) is not None


def _split_factory(text: str) -> tuple[str, str] | None:
    module, _, function = text.rpartition(":")
    if not module or not function.isidentifier():
        return None
    return module, function


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError(
            "loading a Hugging Face checkpoint needs transformers: pip install 'attndbg[hf]'"
        ) from None
    return transformers


def load_model(
    source: str,
    weights: Path | None = None,
    attn_implementation: str = "sdpa",
    device: str = "cpu",
) -> LoadedModel:
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise InputError(f"{path}: a model directory needs a config.json")
        transformers = _transformers()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        transformers.utils.logging.disable_progress_bar()
        kwargs = {"local_files_only": True, "trust_remote_code": False}
        try:
            model = transformers.AutoModel.from_pretrained(
                str(path), attn_implementation=attn_implementation, **kwargs
            )
        except AttndbgError:
            raise
        except Exception as exc:  # an unknown model type, a missing optional dependency, bad weights
            raise InputError(f"{path}: cannot load the checkpoint ({first_line(exc)})") from None
        tokenizer = None
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
        except Exception:  # a checkpoint without tokenizer files: random ids still work
            tokenizer = None
        return LoadedModel(model.eval().to(device), "hf", path.name, tokenizer, directory=path)
    if path.suffix == ".pt2":
        if not path.exists():
            raise InputError(f"{path}: no such file")
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise InputError(f"{path}: not a torch.export program ({first_line(exc)})") from None
        example = getattr(program, "example_inputs", None)
        return LoadedModel(program.module().to(device), "export", path.stem, example=example)
    split = _split_factory(source)
    if split is None:
        raise UsageError(f"{source!r}: expected a model directory, a .pt2 file or module:function")
    module_name, function = split
    module = _import(module_name)
    factory = getattr(module, function, None)
    if factory is None:
        raise InputError(f"{source}: {module_name} has no {function}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{source}: returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        model.load_state_dict(load_state_dict(weights))
    return LoadedModel(model.eval().to(device), "factory", function)


def _import(name: str):  # noqa: ANN202
    if name.endswith(".py"):
        path = Path(name)
        if not path.exists():
            raise InputError(f"{path}: no such file")
        spec = importlib.util.spec_from_file_location(f"attndbg_factory_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise InputError(f"{path}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise InputError(f"cannot import {name}: {exc}") from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise InputError(f"{path}: not a valid safetensors file ({first_line(exc)})") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"{path}: refused or unreadable as a weights-only state dict ({first_line(exc)})"
        ) from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def make_inputs(
    loaded: LoadedModel,
    text: list[str] | None = None,
    seq_len: int = 16,
    batch: int = 2,
    input_file: Path | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[tuple, dict]:
    """(args, kwargs) for the model: a file of named inputs, text through the tokenizer, an
    exported program's own example, or seeded random token ids (floats for models without
    an embedding)."""
    if input_file is not None:
        from safetensors.torch import load_file

        try:
            named = load_file(str(input_file))
        except Exception as exc:
            raise InputError(f"{input_file}: not a valid safetensors file ({first_line(exc)})") from None
        return (), {k: v.to(device) for k, v in named.items()}
    if text:
        if loaded.tokenizer is None:
            raise UsageError("--text needs a checkpoint with a tokenizer; use --seq-len/--batch")
        limit = token_limit(loaded)
        encoded = loaded.tokenizer(
            list(text), return_tensors="pt", padding=True, truncation=limit is not None, max_length=limit
        )
        return (), {k: v.to(device) for k, v in encoded.items()}
    if loaded.example is not None:
        args, kwargs = loaded.example
        return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs or {})
    generator = torch.Generator().manual_seed(seed)
    if loaded.kind == "hf":
        inputs = hf_inputs(loaded.model, loaded.directory, batch, seq_len, generator)
        return (), {k: v.to(device) for k, v in inputs.items()}
    embedding = next((m for m in loaded.model.modules() if isinstance(m, torch.nn.Embedding)), None)
    if embedding is not None:
        ids = torch.randint(0, embedding.num_embeddings, (batch, seq_len), generator=generator)
        return (ids.to(device),), {}
    width = _input_width(loaded.model)
    return (torch.randn(batch, seq_len, width, generator=generator).to(device),), {}


def token_limit(loaded: LoadedModel) -> int | None:
    """The longest input the checkpoint takes: its tokenizer's limit, else its position table."""
    limit = getattr(loaded.tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:  # HF uses a huge number for "unknown"
        return limit
    positions = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else None


def _truncation_note(loaded: LoadedModel, text: list[str]) -> str | None:
    limit = token_limit(loaded)
    if loaded.tokenizer is None or limit is None:
        return None
    longest = max(len(ids) for ids in loaded.tokenizer(list(text), verbose=False)["input_ids"])
    if longest <= limit:
        return None
    return f"--text truncated to {limit} tokens, the model's limit (the longest text has {longest})"


def hf_inputs(
    model: torch.nn.Module,
    directory: Path | None,
    batch: int,
    seq_len: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Default inputs for a Hugging Face model of any modality, read from what its forward takes
    and its config (or preprocessor config): token ids (text, and the text tower of an
    image-text model), pixel values (vision), input features or raw audio (speech), and decoder
    ids for encoder-decoders."""
    config = model.config
    accepts = inspect.signature(model.forward).parameters
    main = getattr(model, "main_input_name", "input_ids")
    preprocessor = _preprocessor_config(directory)
    inputs: dict[str, torch.Tensor] = {}
    # A dual encoder (CLIP, SigLIP …) needs both towers' inputs; other models only their main one.
    dual = hasattr(model, "get_text_features") and hasattr(model, "get_image_features")
    if main == "input_ids" or (dual and "input_ids" in accepts):
        vocab = _config_value(config, "vocab_size", ("text_config",)) or 2
        inputs["input_ids"] = torch.randint(0, vocab, (batch, seq_len), generator=generator)
        if "attention_mask" in accepts:
            inputs["attention_mask"] = torch.ones(batch, seq_len, dtype=torch.long)
    if main == "pixel_values" or (dual and "pixel_values" in accepts):
        channels = _config_value(config, "num_channels", ("vision_config",)) or 3
        height, width = _image_size(config, preprocessor)
        inputs["pixel_values"] = torch.randn(batch, channels, height, width, generator=generator)
    if main == "input_features":
        shape = _feature_shape(config, preprocessor, batch)
        inputs["input_features"] = torch.randn(shape, generator=generator)
    if main == "input_values":
        # enough samples for seq_len frames after the convolutional feature encoder
        stride = math.prod(getattr(config, "conv_stride", None) or (320,))
        inputs["input_values"] = torch.randn(batch, max(seq_len, 2) * stride, generator=generator)
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in accepts:
        vocab = _config_value(config, "vocab_size", ("text_config", "decoder")) or 2
        ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
        start = getattr(config, "decoder_start_token_id", None)
        if isinstance(start, int) and 0 <= start < vocab:
            ids[:, 0] = start
        inputs["decoder_input_ids"] = ids
    if not inputs:
        raise UsageError(
            f"cannot build a default input for {type(model).__name__} (main input {main!r}); "
            "pass --input FILE.safetensors with its named inputs"
        )
    return inputs


def _config_value(config: Any, name: str, parts: tuple[str, ...]) -> Any:
    """``config.name``, else the first sub-config (text_config, vision_config …) that has it."""
    value = getattr(config, name, None)
    for part in parts:
        if value is not None:
            break
        value = getattr(getattr(config, part, None), name, None)
    return value


def _preprocessor_config(directory: Path | None) -> dict[str, Any]:
    if directory is None or not (directory / "preprocessor_config.json").exists():
        return {}
    import json

    try:
        data = json.loads((directory / "preprocessor_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{directory}/preprocessor_config.json: unreadable ({first_line(exc)})") from None
    return data if isinstance(data, dict) else {}


def _image_size(config: Any, preprocessor: dict[str, Any]) -> tuple[int, int]:
    """(height, width) the model is fed: the preprocessor's crop or resize size when the
    checkpoint has one, else the config's image_size, else 224."""
    for key in ("crop_size", "size"):
        size = preprocessor.get(key)
        if isinstance(size, int):
            return size, size
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return int(size["height"]), int(size["width"])
            if "shortest_edge" in size:
                return int(size["shortest_edge"]), int(size["shortest_edge"])
    size = _config_value(config, "image_size", ("vision_config",)) or 224
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _feature_shape(config: Any, preprocessor: dict[str, Any], batch: int) -> tuple[int, int, int]:
    """(batch, mel bins, frames) of a Whisper-style spectrogram encoder: its convolutions halve
    the frames to max_source_positions, which the encoder requires exactly."""
    bins = getattr(config, "num_mel_bins", None) or preprocessor.get("feature_size")
    positions = getattr(config, "max_source_positions", None)
    frames = 2 * positions if positions else preprocessor.get("nb_max_frames")
    if not bins or not frames:
        raise UsageError("cannot size this model's input features; pass --input FILE.safetensors")
    return batch, int(bins), int(frames)


def _input_width(model: torch.nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            return module.embed_dim
        if isinstance(module, torch.nn.Linear):
            return module.in_features
    raise UsageError("cannot guess this model's input; pass --input FILE.safetensors")


def capture_source(
    source: str,
    *,
    weights: Path | None = None,
    text: list[str] | None = None,
    seq_len: int = 16,
    batch: int = 2,
    input_file: Path | None = None,
    layers: str | None = None,
    max_calls: int | None = None,
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    seed: int = 0,
):  # noqa: ANN201 - returns attndbg.recording.recorder.Calls
    """Load ``source``, run one input through it, and return every attention call."""
    from attndbg.recording.recorder import capture

    loaded = load_model(source, weights, attn_implementation, device)
    args, kwargs = make_inputs(loaded, text, seq_len, batch, input_file, seed, device)
    try:
        with torch.no_grad(), capture(loaded.model, layers=layers, max_calls=max_calls) as calls:
            loaded.model(*args, **kwargs)
    except AttndbgError:
        raise
    except Exception as exc:
        if _attndbg_failed(exc, loaded.model, args, kwargs):
            raise  # attndbg's own failure while recording: an internal error, not the model's
        raise InputError(
            f"{source}: the model raised {type(exc).__name__} on the capture input: {first_line(exc)}"
        ) from None
    note = _truncation_note(loaded, text) if text else None
    if note:
        calls.notes.append(note)
    if text and loaded.tokenizer is not None and "input_ids" in kwargs:
        calls.tokens = [loaded.tokenizer.convert_ids_to_tokens(row) for row in kwargs["input_ids"].tolist()]
    if not len(calls):
        raise InputError(
            f"{source}: the model ran but made no attention call attndbg can see "
            "(SDPA, nn.MultiheadAttention, or a softmax of a q·k product)"
        )
    return calls


def _attndbg_failed(exc: BaseException, model: torch.nn.Module, args: tuple, kwargs: dict) -> bool:
    """True when attndbg's recorder, not the model, caused ``exc``. The recorder runs inside the
    model's forward and passes every op on, so a model's own failing op also surfaces in
    attndbg's frames: when it does, the model runs once more without the recorder to decide."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    package = Path(__file__).resolve().parents[1]
    if not frames or not Path(frames[-1].filename).resolve().is_relative_to(package):
        return False  # raised in the model's or a library's code
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception:
        return False  # it fails without attndbg too
    return True


def compare_eager(source: str, **options: Any) -> list[dict[str, Any]]:
    """Run a Hugging Face checkpoint under sdpa and under eager on the same input and report,
    per layer, how far the eager weights (and outputs) are from what sdpa computes."""
    sdpa = [c for c in capture_source(source, attn_implementation="sdpa", **options) if c.q is not None]
    eager = [
        c for c in capture_source(source, attn_implementation="eager", **options) if c.weights is not None
    ]
    rows = []
    for fast, slow in zip(sdpa, eager):
        mask = fast.mask.float() if fast.mask is not None and fast.mask.is_floating_point() else fast.mask
        v = expand_kv_heads(fast.v.float(), fast.q.shape[1], dim=1)
        _, reference = reference_attention(
            fast.q.float(),
            fast.k.float(),
            v,
            mask=mask,
            is_causal=fast.is_causal,
            scale=fast.scale,
            return_weights=True,
        )
        weights = slow.weights.float()
        rows.append(
            {
                "layer": fast.module,
                "max_weight_difference": float((weights - reference).abs().max()),
                "max_output_difference": float((weights @ v - reference @ v).abs().max()),
            }
        )
    return rows
