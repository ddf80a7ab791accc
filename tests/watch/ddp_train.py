"""Run under torchrun (gloo, CPU): a small GPT trained a few steps under DDP or FSDP with
attndbg.watch; at step 4, rank 1 alone puts a NaN into head 1 of layer 1's keys. Each rank
writes the alerts it saw."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # this checkout's attndbg, and the test model
from watch_model import TinyGPT, random_batches  # noqa: E402

import attndbg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-rank", action="store_true")
    parser.add_argument("--wrap", choices=("ddp", "fsdp"), default="ddp")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = TinyGPT(layers=2)
    if args.wrap == "ddp":
        wrapped = DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        wrapped = fully_shard(model)
    poisoned = False

    def poison_keys(_module, _inputs, keys):  # noqa: ANN001, ANN202
        if poisoned:
            keys = keys.clone()
            keys[0, 3, 16:32] = float("nan")  # head 1 (head dim 16), one position
        return keys

    model.blocks[1].attn.k_proj.register_forward_hook(poison_keys)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    with attndbg.watch(wrapped, every=2, log=args.out, per_rank=args.per_rank, on_alert="ignore") as watcher:
        for step, (ids, targets) in enumerate(random_batches(7, seed=rank)):  # each rank its own data
            poisoned = step == 4 and rank == 1
            loss = wrapped(ids, targets)
            if step < 4:
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            watcher.step()
    seen = [[a.step, a.kind, a.layer, a.head] for a in watcher.alerts]
    Path(f"{args.out}.alerts.rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Everything is written and the process group destroyed; leave without running C++ static
    # destructors: FSDP2 on gloo sometimes aborts there ("terminate called without an active
    # exception", seen on a fresh CI machine after both ranks had written their files).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
