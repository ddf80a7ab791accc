"""The small-scale proxy of attention-logit-growth instability (Wortsman et al. 2023,
arXiv 2309.14322), on this CPU, watched by attndbg.watch.

A byte-level decoder-only transformer is trained on the Python standard library's own source
files (``Lib/*.py`` of the running interpreter) with a high learning rate, once without and once
with QK-layernorm (the same seed, data and schedule). Each run is watched (``every`` steps) into
its own JSON-lines log; the script then reports, per run, the loss, the max logit and min entropy
that ``watch`` logged, the step of each first alert and the step where the loss diverged or
stalled, and draws one figure.

    python scripts/watch_instability.py --out docs/images          # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from watch_model import TinyGPT  # noqa: E402

import attndbg  # noqa: E402
from attndbg.watch.trend import load_trend  # noqa: E402


def stdlib_bytes(limit: int) -> torch.Tensor:
    """The first ``limit`` bytes of the standard library's top-level modules, in name order."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    data = bytearray()
    for path in sorted(folder.glob("*.py")):
        data += path.read_bytes()
        if len(data) >= limit:
            break
    return torch.tensor(list(data[:limit]), dtype=torch.long)


def batches(data: torch.Tensor, steps: int, batch: int, context: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
        rows = torch.stack([data[s : s + context + 1] for s in starts.tolist()])
        yield rows[:, :-1], rows[:, 1:]


def divergence_step(losses: list[float], window: int = 10, margin: float = 0.5) -> int | None:
    """First step where the loss, averaged over ``window`` steps, is non-finite or sits ``margin``
    nats above the best such average so far: where training diverged, or undid its progress."""
    best = math.inf
    for end in range(window, len(losses) + 1):
        mean = sum(losses[end - window : end]) / window
        if not math.isfinite(mean) or mean > best + margin:
            return end - 1
        best = min(best, mean)
    return None


def smoothed(losses: list[float], window: int = 10) -> list[float]:
    return [
        sum(losses[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1)
        for i in range(len(losses))
    ]


def separation_step(plain: list[float], normed: list[float], margin: float = 0.1) -> int | None:
    """First step from which the plain run's smoothed loss stays ``margin`` nats above the
    QK-layernorm run's until the end: where the plain run fell behind for good (a plateau)."""
    gaps = [a - b for a, b in zip(smoothed(plain), smoothed(normed))]
    if not gaps or not gaps[-1] > margin:
        return None
    step = len(gaps) - 1
    while step > 0 and gaps[step - 1] > margin:
        step -= 1
    return step


def train(args: argparse.Namespace, data: torch.Tensor, qk_norm: bool, log: Path) -> dict:
    torch.manual_seed(args.seed)
    model = TinyGPT(
        vocab=256,
        width=args.width,
        heads=args.heads,
        layers=args.layers,
        context=args.context,
        qk_norm=qk_norm,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    losses: list[float] = []
    started = time.perf_counter()
    with attndbg.watch(model, every=args.every, log=log, on_alert="ignore") as watcher:
        for ids, targets in batches(data, args.steps, args.batch, args.context, args.seed):
            loss = model(ids, targets)
            losses.append(loss.item())
            if math.isfinite(losses[-1]):
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            watcher.step()
    alerts = watcher.alerts
    first = {kind: min((a.step for a in alerts if a.kind == kind), default=None) for kind in _KINDS}
    diverged = divergence_step(losses)
    first_alert = min((a.step for a in alerts), default=None)
    return {
        "qk_norm": qk_norm,
        "seconds": round(time.perf_counter() - started, 1),
        "losses": losses,
        "final_loss": sum(losses[-10:]) / 10,
        "best_loss": min(sum(losses[i - 10 : i]) / 10 for i in range(10, len(losses) + 1)),
        "alerts": len(alerts),
        "first_alert": first_alert,
        "first_alert_by_kind": first,
        "divergence_step": diverged,
        "lead_steps": None if diverged is None or first_alert is None else diverged - first_alert,
        "log": str(log),
    }


_KINDS = ("logit-growth", "entropy-collapse", "non-finite", "catalogue-error")


def figure(runs: list[dict], path: Path, falls_behind: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    colours = {False: "tab:red", True: "tab:blue"}
    for run in runs:
        label = "QK-layernorm" if run["qk_norm"] else "no QK-layernorm"
        colour = colours[run["qk_norm"]]
        axes[0].plot(run["losses"], color=colour, lw=0.8, label=label)
        trend = load_trend(run["log"])
        steps = trend.sampled_steps
        logits = [
            max((v for v in values if v is not None), default=math.nan)
            for values in zip(*(layer.max_logit for layer in trend.layers))
        ]
        entropy = [
            min((v for v in values if v is not None), default=math.nan)
            for values in zip(*(layer.min_entropy for layer in trend.layers))
        ]
        axes[1].plot(steps, logits, color=colour, label=label)
        axes[2].plot(steps, entropy, color=colour, label=label)
        for ax in axes:
            if run["first_alert"] is not None:
                ax.axvline(run["first_alert"], color=colour, ls="--", lw=1)
            if run["divergence_step"] is not None:
                ax.axvline(run["divergence_step"], color=colour, ls=":", lw=1.5)
    if falls_behind is not None:
        for ax in axes:
            ax.axvline(falls_behind, color="black", ls="-.", lw=1)
    axes[0].set_ylabel("training loss (nats/byte)")
    axes[1].set_ylabel("max |scaled logit|\n(any layer, head)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("min normalised entropy\n(any layer, head)")
    axes[2].set_xlabel(
        "step   (dashed: first alert; dotted: loss diverged; dash-dot: no-QK-norm loss falls behind for good)"
    )
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bytes", type=int, default=2_000_000)
    parser.add_argument("--only", choices=("plain", "qk-norm"), default=None)
    parser.add_argument("--replot", action="store_true", help="Redraw the figure from --out's results.")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((args.out / "watch-instability.json").read_text())
        figure(saved["runs"], args.out / "watch-instability.png", saved.get("plain_falls_behind_at"))
        return
    data = stdlib_bytes(args.bytes)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for qk_norm in (False, True):
        if args.only and (args.only == "qk-norm") != qk_norm:
            continue
        name = "qk-norm" if qk_norm else "plain"
        run = train(args, data, qk_norm, args.out / f"watch-instability-{name}.jsonl")
        runs.append(run)
        summary = {k: v for k, v in run.items() if k != "losses"}
        print(json.dumps(summary), flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = {"settings": settings, "runs": runs}  # losses included: --replot redraws from them
    if len(runs) == 2:
        results["plain_falls_behind_at"] = separation_step(runs[0]["losses"], runs[1]["losses"])
        behind, first_alert = results["plain_falls_behind_at"], runs[0]["first_alert"]
        results["alert_lead_steps"] = None if behind is None or first_alert is None else behind - first_alert
        print(json.dumps({k: results[k] for k in ("plain_falls_behind_at", "alert_lead_steps")}))
    (args.out / "watch-instability.json").write_text(json.dumps(results) + "\n")
    figure(runs, args.out / "watch-instability.png", results.get("plain_falls_behind_at"))


if __name__ == "__main__":
    main()
