"""Where a capture's model comes from, and what it is fed (design §6).

* a Hugging Face model directory (config.json + weights), loaded offline, remote code off;
* a ``torch.export`` program (``.pt2``);
* a factory ``module:function`` or ``path/to/file.py:function`` returning an ``nn.Module``,
  with optional ``--weights`` (safetensors, or a state dict read with
  ``torch.load(weights_only=True)`` — never an unrestricted unpickle).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attndbg.attention import expand_kv_heads, reference_attention
from attndbg.errors import InputError, UsageError, first_line


@dataclass
class LoadedModel:
    model: torch.nn.Module
    kind: str  # "hf" | "export" | "factory"
    name: str
    tokenizer: Any = None
    example: tuple[tuple, dict] | None = None  # an exported program's own example inputs


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
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot load the checkpoint ({first_line(exc)})") from None
        tokenizer = None
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
        except Exception:  # a checkpoint without tokenizer files: random ids still work
            tokenizer = None
        return LoadedModel(model.eval().to(device), "hf", path.name, tokenizer)
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
        encoded = loaded.tokenizer(list(text), return_tensors="pt", padding=True)
        return (), {k: v.to(device) for k, v in encoded.items()}
    if loaded.example is not None:
        args, kwargs = loaded.example
        return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs or {})
    generator = torch.Generator().manual_seed(seed)
    embedding = next((m for m in loaded.model.modules() if isinstance(m, torch.nn.Embedding)), None)
    if embedding is not None:
        vocab = getattr(getattr(loaded.model, "config", None), "vocab_size", None) or embedding.num_embeddings
        ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
        if loaded.kind == "hf":
            return (), {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        return (ids.to(device),), {}
    width = _input_width(loaded.model)
    return (torch.randn(batch, seq_len, width, generator=generator).to(device),), {}


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
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise InputError(
            f"{source}: the model raised {type(exc).__name__} on the capture input: {first_line(exc)}"
        ) from None
    if text and loaded.tokenizer is not None and "input_ids" in kwargs:
        calls.tokens = loaded.tokenizer.convert_ids_to_tokens(kwargs["input_ids"][0].tolist())
    if not len(calls):
        raise InputError(
            f"{source}: the model ran but made no attention call attndbg can see "
            "(SDPA, nn.MultiheadAttention, or a softmax of a q·k product)"
        )
    return calls


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
