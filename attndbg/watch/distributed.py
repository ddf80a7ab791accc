"""Cross-rank aggregation under torch.distributed: every rank reduces its own calls, then one
``all_gather_object`` of those small per-head summaries gives every rank the same merged step
(max of max logits, min of entropies, sum of non-finite counts: :data:`~attndbg.watch.reduce.MERGE`),
so that alerts — and ``on_alert="raise"`` — agree on all ranks. Rank 0 writes the log."""

from __future__ import annotations

from pathlib import Path

from attndbg.watch.reduce import LayerSample, merge


def rank_and_size() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_path(path: Path, rank: int) -> Path:
    """``run.jsonl`` → ``run.rank1.jsonl``."""
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix or '.jsonl'}")


def aggregate(local: list[LayerSample]) -> list[LayerSample]:
    """The layers of this step merged over all ranks (the local ones when not distributed), in
    the order of the first rank that saw each layer."""
    _, world = rank_and_size()
    if world == 1:
        return local
    import torch.distributed as dist

    gathered: list[list[LayerSample] | None] = [None] * world
    dist.all_gather_object(gathered, local)
    merged: dict[str, LayerSample] = {}
    for rank_layers in gathered:
        for layer in rank_layers or []:
            previous = merged.get(layer.name)
            merged[layer.name] = layer if previous is None else merge(previous, layer)
    for layer in merged.values():
        # the same finding on several ranks is one finding
        layer.findings = list({f["code"]: f for f in layer.findings}.values())
    return list(merged.values())
