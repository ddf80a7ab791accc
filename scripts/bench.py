"""Benchmark: attndbg's inspection against one F.scaled_dot_product_attention forward.

    python scripts/bench.py [--sizes 4096,16384] [--repeats 3] [--device cpu|cuda]
                            [--stages-at 4096] [--no-stages]

Shapes: batch 1, 8 heads, d = 64, float32. Every measurement runs in a fresh child process
(so its peak memory is its own), after one warm-up run. Printed, all from this one run:

* per N: one SDPA forward and the whole ``attndbg.diagnose`` pipeline, min / median / max of
  ``--repeats`` runs in wall-clock seconds, the ratio of the medians, the same ratio in process
  CPU time (steadier on a shared machine), and the peak memory above the inputs (RSS
  high-water mark on CPU, ``torch.cuda.max_memory_allocated`` on CUDA);
* at ``--stages-at`` N: what each stage costs — the median of ``diagnose(select=FAMILY)``
  for each family of checks, since a stage's statistics are computed only when it runs;
* at the same N: a profile of the statistics pass (Q·Kᵀ, the softmax core, each reducer),
  on one thread so that each part's CPU time is its own;
* streaming (``--stream``): the memory high-water mark of ``attndbg inspect`` over one file of
  100 and of 1,000 small cases, and over 20 and 200 files — flat memory means the larger run
  peaks no higher than the smaller.

``--sizes 65536,131072 --repeats 1 --no-stages --no-warmup`` measures the large cases
(``make bench-large``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's attndbg
HEADS, DIM = 8, 64
STAGE_SELECTIONS = {  # stage -> the checks selected to pay for it
    "shapes": "SHP",
    "numerics": "NUM",
    "scaling": "SCL",
    "mask": "MSK",
    "softmax": "SMX",
    "patterns": "PAT",
    "patterns without PAT005": "PAT001,PAT002,PAT003,PAT004",
}


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


def child(mode: str, n: int, device: str, repeats: int, threads: int, warmup: bool) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    import attndbg
    from attndbg.registry import load_checks

    if threads:
        torch.set_num_threads(threads)

    load_checks()  # import every module before the baseline: their memory is not the run's
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, n, DIM, device=device) for _ in range(3))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if mode == "profile":
        torch.set_num_threads(1)
        return profile_pass(q, k, v)
    if mode == "sdpa":
        run: Callable[[], object] = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    else:
        select = None if mode == "inspect" else mode.split(":", 1)[1]
        run = lambda: attndbg.diagnose(q, k, v, device=device, select=select)  # noqa: E731
    if warmup:
        run()  # kernels, allocator pools, lazily imported modules
        sync()
    # The peak covers every timed run, so memory pooled by an earlier run is counted.
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        base = _rss_bytes()
    wall, cpu = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = run()
        sync()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        del result
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_bytes()
    return {
        "wall": wall,
        "cpu": cpu,
        "peak_above_inputs": max(0, peak - base),
        "threads": torch.get_num_threads(),
    }


def profile_pass(q: Any, k: Any, v: Any) -> dict[str, Any]:
    """CPU seconds of each part of one statistics pass, as the engine runs it (all checks)."""
    from attndbg.case import Case
    from attndbg.context import CaseContext
    from attndbg.registry import plan_checks
    from attndbg.stats import REDUCERS, compute_stats, driver

    spent: dict[str, float] = {}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - started

        return wrapper

    originals = [(driver, name, getattr(driver, name)) for name in ("_product", "_chunk", "_reduce_chunk")]
    driver._product = timed("Q·Kᵀ", driver._product)
    driver._chunk = timed("row max/min, bias", driver._chunk)
    driver._reduce_chunk = timed("after Q·Kᵀ", driver._reduce_chunk)
    for reducer in REDUCERS:
        for hook in ("scores", "weights", "finish"):
            originals.append((reducer, hook, getattr(reducer, hook)))
            setattr(reducer, hook, timed(reducer.__name__, getattr(reducer, hook)))
    ctx = CaseContext(Case("bench", "<memory>", {"q": q, "k": k, "v": v}))
    ctx.wanted = plan_checks([], []).reads
    started = time.process_time()
    compute_stats(ctx)
    total = time.process_time() - started
    for owner, name, original in originals:
        setattr(owner, name, original)
    reducer_names = {r.__name__ for r in REDUCERS}
    reducers = sum(seconds for name, seconds in spent.items() if name in reducer_names)
    parts = {name: spent.get(name, 0.0) for name in ("Q·Kᵀ", "row max/min, bias")}
    parts["exp, row sums, entropy dot"] = spent.get("after Q·Kᵀ", 0.0) - reducers
    parts.update({name: seconds for name, seconds in spent.items() if name in reducer_names})
    return {"total": total, "parts": parts}


STREAM_CASE = (1, 2, 32, 16)  # batch, heads, length, head dim of each small case


def stream_child(kind: str, count: int) -> dict[str, Any]:
    """Peak memory of ``attndbg inspect`` over ``count`` small cases in one file, or over
    ``count`` files of one case each, above the memory before the run."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    from attndbg.cli.app import app
    from attndbg.registry import load_checks

    load_checks()
    folder = Path(tempfile.mkdtemp(prefix="attndbg-bench-"))
    g = torch.Generator().manual_seed(0)

    def case() -> dict[str, torch.Tensor]:
        return {role: torch.randn(*STREAM_CASE, generator=g) for role in "qkv"}

    if kind == "cases":
        tensors = {f"layer{i}.{role}": t for i in range(count) for role, t in case().items()}
        save_file(tensors, str(folder / "cases.safetensors"))
        inputs = [str(folder / "cases.safetensors")]
        del tensors
    else:
        inputs = []
        for i in range(count):
            save_file(case(), str(folder / f"file{i:04d}.safetensors"))
            inputs.append(str(folder / f"file{i:04d}.safetensors"))
    report = str(folder / "report.json")
    _reset_peak_rss()
    base = _rss_bytes()
    started = time.perf_counter()
    app(args=["inspect", *inputs, "--format", "json", "-o", report], standalone_mode=False)
    seconds = time.perf_counter() - started
    peak = _peak_rss_bytes()
    return {"seconds": seconds, "peak_above_start": max(0, peak - base)}


def measure_stream(kind: str, count: int) -> dict[str, Any] | None:
    command = [sys.executable, __file__, "--child", f"stream:{kind}:{count}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  streaming {count} {kind} failed: {result.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def stream_report() -> None:
    mib = 1 << 20
    shape = "×".join(str(n) for n in STREAM_CASE)
    print(f"\nstreaming: attndbg inspect, every case q/k/v {shape}, JSON report to a file")
    print(f"  {'input':<28} {'seconds':>8}  {'peak MiB':>8}")
    for kind, small, large in (("cases", 100, 1000), ("files", 20, 200)):
        runs = [measure_stream(kind, count) for count in (small, large)]
        if not all(runs):
            continue
        for count, run in zip((small, large), runs):
            label = f"1 file of {count} cases" if kind == "cases" else f"{count} files of 1 case"
            print(f"  {label:<28} {run['seconds']:>8.2f}  {run['peak_above_start'] / mib:>8.1f}")
        growth = (runs[1]["peak_above_start"] - runs[0]["peak_above_start"]) / mib
        print(f"  10× the {kind}: peak {growth:+.1f} MiB")


def measure(mode: str, n: int, args: argparse.Namespace, repeats: int | None = None) -> dict[str, Any] | None:
    command = [sys.executable, __file__, "--child", mode, "--sizes", str(n), "--device", args.device]
    command += ["--repeats", str(repeats or args.repeats), "--threads", str(args.threads)]
    command += [] if args.warmup else ["--no-warmup"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  {mode} at N = {n} failed: {result.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, load average {load:.1f}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="4096,16384")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages-at", type=int, default=4096)
    parser.add_argument("--no-stages", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--child", default=None)
    parser.add_argument("--stream", action="store_true", help="also measure streaming memory")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child and args.child.startswith("stream:"):
        _, kind, count = args.child.split(":")
        print(json.dumps(stream_child(kind, int(count))))
        return
    if args.child:
        print(json.dumps(child(args.child, sizes[0], args.device, args.repeats, args.threads, args.warmup)))
        return
    mib = 1 << 20
    print(f"attndbg benchmark: batch 1, {HEADS} heads, d={DIM}, float32, device {args.device}")
    print(f"machine: {machine(args.device)}")
    warm = "after a warm-up run" if args.warmup else "without a warm-up run"
    print(f"seconds as min / median / max of {args.repeats} runs, {warm}\n")
    print(
        f"{'N':>6}  {'sdpa s':>23}  {'inspect s':>23}  {'ratio':>6}  {'cpu ratio':>9}  "
        f"{'inputs MiB':>10}  {'peak MiB':>8}"
    )
    threads = "?"
    for n in sizes:
        sdpa = measure("sdpa", n, args)
        inspect = measure("inspect", n, args)
        if sdpa is None or inspect is None:
            continue
        threads = sdpa["threads"]
        ratio = statistics.median(inspect["wall"]) / statistics.median(sdpa["wall"])
        cpu_ratio = statistics.median(inspect["cpu"]) / statistics.median(sdpa["cpu"])
        inputs = 3 * HEADS * n * DIM * 4
        print(
            f"{n:>6}  {spread(sdpa['wall']):>23}  {spread(inspect['wall']):>23}  {ratio:>5.2f}x  "
            f"{cpu_ratio:>8.2f}x  {inputs / mib:>10.0f}  {inspect['peak_above_inputs'] / mib:>8.0f}",
            flush=True,
        )
    print(
        f"(threads: {threads}; ratio = median inspect / median SDPA, wall clock; cpu ratio = "
        "the same in process CPU time; peak = memory high-water mark above the inputs)"
    )
    if args.stream:
        stream_report()
    if args.no_stages:
        return
    n = args.stages_at
    print(f"\nwhat each stage costs at N = {n} (diagnose with only that stage's checks selected;")
    print("median seconds, wall clock and process CPU):")
    for stage, select in STAGE_SELECTIONS.items():
        result = measure(f"select:{select}", n, args)
        if result:
            wall, cpu = statistics.median(result["wall"]), statistics.median(result["cpu"])
            print(f"  {stage:<26} {wall:>7.3f} s  {cpu:>7.3f} s cpu   --select {select}")
    profile = measure("profile", n, args, repeats=1)
    if profile:
        print(
            f"\nwhere the statistics pass spends its CPU time at N = {n}, one thread "
            f"({profile['total']:.3f} s):"
        )
        for part, seconds in sorted(profile["parts"].items(), key=lambda kv: -kv[1]):
            print(f"  {part:<28} {seconds:>7.3f} s  {seconds / profile['total']:>4.0%}")


if __name__ == "__main__":
    main()
