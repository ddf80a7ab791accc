"""TensorBoard scalars through ``torch.utils.tensorboard`` (needs the ``tensorboard`` package:
``pip install 'attndbg[watch]'``). Per layer: the max logit and the min entropy over heads, and
the sum of non-finite values; one scalar counts the alerts."""

from __future__ import annotations

from typing import Any

from attndbg.errors import UsageError


def scalar_writer(spec: Any) -> Any:
    """``spec``: a SummaryWriter (anything with ``add_scalar``), or a directory to create one in."""
    if hasattr(spec, "add_scalar"):
        return spec
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(
            "watch(tensorboard=...) needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(log_dir=str(spec))


def write_step(writer: Any, step: int, layers: list[Any], alerts: list[Any]) -> None:
    for layer in layers:
        logits = [x for x in layer.metrics["max_logit"] if x is not None]
        entropies = [x for x in layer.metrics["entropy"] if x is not None]
        if logits:
            writer.add_scalar(f"attention/{layer.name}/max_logit", max(logits), step)
        if entropies:
            writer.add_scalar(f"attention/{layer.name}/min_entropy", min(entropies), step)
        writer.add_scalar(f"attention/{layer.name}/nonfinite", sum(layer.metrics["nonfinite"]), step)
    writer.add_scalar("attention/alerts", len(alerts), step)
