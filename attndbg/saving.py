"""``attndbg.save``: write what an attention layer sees in the format ``attndbg inspect`` reads.

``safetensors.torch.save_file`` refuses ordinary tensors of a training step: a transposed view
("view size is not compatible" / non-contiguous) and tensors sharing memory (``k is v``, one
mask for every layer). ``save`` copies each tensor to a contiguous CPU tensor of its own, checks
the metadata as the loader will read it, and writes atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attndbg.errors import UsageError

if TYPE_CHECKING:
    import torch

ROLES = ("q", "k", "v", "mask", "scores", "weights", "out")


def save(
    path: str | Path,
    *,
    q: torch.Tensor | None = None,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    tokens: list[str] | list[list[str]] | None = None,
    **metadata: Any,
) -> Path:
    """Save one case: ``attndbg.save("step.safetensors", q=q, k=k, v=v, mask=mask, is_causal=True)``.

    ``metadata`` takes the settings ``attndbg inspect`` reads (``is_causal``, ``scale``,
    ``layout``, ``mask_semantics``, ``enable_gqa``, ``dropout_p``, ``source``) as Python values;
    ``tokens`` labels heatmaps: one list per batch row (a flat list is the first row's). The
    folder must exist. Returns the path written.
    """
    import torch
    from safetensors.torch import save_file

    from attndbg._io import atomic_write
    from attndbg.case import SETTING_KEYS, settings_from_strings

    path = Path(path)
    given = dict(q=q, k=k, v=v, mask=mask, scores=scores, weights=weights, out=out)
    tensors: dict[str, torch.Tensor] = {}
    for role, tensor in given.items():
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise UsageError(f"attndbg.save: {role} is a {type(tensor).__name__}, not a torch.Tensor")
        # A copy of its own: views, expanded masks and shared storage all save.
        tensors[role] = tensor.detach().to("cpu").contiguous().clone()
    if not tensors:
        raise UsageError(f"attndbg.save: no tensors given; pass some of {', '.join(ROLES)}")
    unknown = sorted(set(metadata) - set(SETTING_KEYS))
    if unknown:
        raise UsageError(
            f"attndbg.save: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTING_KEYS)}"
        )
    strings = {key: _metadata_string(value) for key, value in metadata.items() if value is not None}
    settings_from_strings(strings, str(path))  # a value inspect could not read fails now, not later
    if tokens is not None:
        rows = tokens if all(isinstance(row, list) for row in tokens) else [tokens]
        strings["tokens"] = json.dumps([[str(t) for t in row] for row in rows])
    if not path.resolve().parent.is_dir():
        raise UsageError(f"attndbg.save: folder {path.resolve().parent} does not exist")
    return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=strings))


def _metadata_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
