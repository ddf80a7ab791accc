"""Benchmark: attndbg's inspection against one F.scaled_dot_product_attention forward.

    python scripts/bench.py [--sizes 1024,4096,16384] [--device cpu|cuda] [--repeats 3]

For each N it runs, each in a fresh child process (so peak memory is its own):
  * sdpa         one F.scaled_dot_product_attention forward (median of repeats, after a warm-up)
  * inspect      attndbg's whole pipeline on the same tensors (attndbg.diagnose, default budget)
  * materialize  the naive way — full scores, softmax, statistics from the N×N matrix —
                 where it fits in memory
and prints the ratio of each to sdpa, measured in this one run, and the peak memory above
the inputs (RSS on CPU, torch.cuda.max_memory_allocated on CUDA).
Shapes: batch 1, 8 heads, d = 64, float32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HEADS, DIM = 8, 64


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the high-water mark (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(mode: str, n: int, device: str, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    import attndbg

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, n, DIM, device=device) for _ in range(3))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def materialize() -> None:
        scores = q @ k.transpose(-1, -2) / DIM**0.5
        weights = torch.softmax(scores, dim=-1)
        del scores
        (weights * torch.log(weights.clamp_min(1e-30))).sum(-1)
        weights.amax(-1)
        weights[..., 0].mean()
        weights @ v

    run = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "inspect": lambda: attndbg.diagnose(q, k, v, device=device),
        "materialize": materialize,
    }[mode]
    if mode == "inspect":
        from attndbg.registry import load_checks

        load_checks()  # import every module before the baseline: their memory is not the run's
    sync()
    # The peak covers every run from the first on, so memory pooled by an earlier run is counted.
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        base = _rss_bytes()
    started = time.perf_counter()
    run()
    sync()
    first = time.perf_counter() - started  # the materialising run is timed once, here
    times = []
    for _ in range(repeats if mode != "materialize" else 0):
        started = time.perf_counter()
        result = run()
        sync()
        times.append(time.perf_counter() - started)
        del result
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_bytes()
    return {
        "seconds": statistics.median(times) if times else first,
        "peak_above_inputs": max(0, peak - base),
        "threads": torch.get_num_threads(),
    }


def measure(mode: str, n: int, device: str, repeats: int) -> dict | None:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--sizes",
        str(n),
        "--device",
        device,
        "--repeats",
        str(repeats),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def fits_materialized(n: int, device: str) -> bool:
    need = 3 * HEADS * n * n * 4  # scores, weights, one temporary
    if device == "cuda":
        import torch

        return need < 0.8 * torch.cuda.get_device_properties(0).total_memory
    return need < 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1024,4096,16384")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, sizes[0], args.device, args.repeats)))
        return
    mib = 1 << 20
    print(f"attndbg benchmark: batch 1, {HEADS} heads, d={DIM}, float32, device {args.device}")
    header = (
        f"{'N':>6}  {'sdpa s':>8}  {'inspect s':>9}  {'ratio':>6}  {'peak MiB':>8}  "
        f"{'materialize s':>13}  {'ratio':>6}  {'peak MiB':>8}"
    )
    print(header)
    for n in sizes:
        sdpa = measure("sdpa", n, args.device, args.repeats)
        inspect = measure("inspect", n, args.device, args.repeats)
        mat = measure("materialize", n, args.device, 1) if fits_materialized(n, args.device) else None
        if sdpa is None or inspect is None:
            print(f"{n:>6}  failed")
            continue
        mat_text = (
            (
                f"{mat['seconds']:>13.3f}  {mat['seconds'] / sdpa['seconds']:>5.2f}x  "
                f"{mat['peak_above_inputs'] / mib:>8.0f}"
            )
            if mat
            else f"{'does not fit':>13}  {'':>6}  {'':>8}"
        )
        print(
            f"{n:>6}  {sdpa['seconds']:>8.3f}  {inspect['seconds']:>9.3f}  "
            f"{inspect['seconds'] / sdpa['seconds']:>5.2f}x  {inspect['peak_above_inputs'] / mib:>8.0f}  "
            + mat_text,
            flush=True,
        )
    print(
        f"(threads: {sdpa['threads'] if sdpa else '?'}; peak = RSS high-water mark above the inputs "
        "on CPU, max_memory_allocated above the inputs on CUDA)"
    )


if __name__ == "__main__":
    main()
