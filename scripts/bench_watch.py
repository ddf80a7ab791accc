"""Benchmark: the training-step time of a small GPT with ``attndbg.watch`` against none.

    python scripts/bench_watch.py [--runs 5] [--steps 40] [--device cpu|cuda]

Each run trains a fresh, seeded model (4 layers, width 128, 4 heads, context 128, batch 8, AdamW)
for ``--steps`` steps after a warm-up, and takes the mean time of a step — sampled steps
included, which is what ``every`` amortises. The configurations take turns run by run, so
that a busy machine slows them alike; the figure of each is the median of its runs, and the
overhead is that median over the median without watch, all measured in this one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from watch_model import TinyGPT  # noqa: E402

import attndbg  # noqa: E402

CONFIGS = {
    "no watch": None,
    "watch(every=10)": {"every": 10},
    "watch(every=10, catalogue=False)": {"every": 10, "catalogue": False},
    "watch(every=10, max_batch=2)": {"every": 10, "max_batch": 2},
    "watch(every=1)": {"every": 1},
}


def run(config: dict | None, steps: int, warmup: int, device: str) -> float:
    torch.manual_seed(0)
    model = TinyGPT(vocab=256, width=128, heads=4, layers=4, context=128).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (warmup + steps, 8, 129), generator=generator).to(device)
    watcher = attndbg.watch(model, on_alert="ignore", **config).start() if config else None

    def step(batch: torch.Tensor) -> None:
        model(batch[:, :-1], batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if watcher:
            watcher.step()

    for index in range(warmup):
        step(data[index])
    if device != "cpu":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for index in range(warmup, warmup + steps):
        step(data[index])
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    if watcher:
        watcher.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)  # a multiple of every: sampled steps stay 1 in 10
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.runs):
        for name, config in CONFIGS.items():
            times[name].append(run(config, args.steps, args.warmup, args.device))
    base = statistics.median(times["no watch"])
    print(
        f"small GPT training step on {args.device}, {torch.get_num_threads()} threads, "
        f"median of {args.runs} runs × {args.steps} steps (mean step time per run)"
    )
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        overhead = median / base - 1
        rows.append({"config": name, "median_ms": median * 1e3, "runs_ms": [v * 1e3 for v in values]})
        rows[-1]["overhead"] = overhead
        spread = f"{min(values) * 1e3:.1f}–{max(values) * 1e3:.1f}"
        print(f"  {name:34s} {median * 1e3:8.2f} ms/step  (runs {spread})  overhead {overhead:+.1%}")
    if args.json:
        args.json.write_text(
            json.dumps({"device": args.device, "threads": torch.get_num_threads(), "rows": rows})
        )


if __name__ == "__main__":
    main()
