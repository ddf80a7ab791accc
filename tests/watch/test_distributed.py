"""torchrun with 2 CPU processes on gloo: each rank reduces its own calls, rank 0 writes one log
of cross-rank aggregates, every rank sees the same alerts; --per-rank keeps a log per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attndbg.watch.log import read_log

SCRIPT = Path(__file__).with_name("ddp_train.py")


def torchrun(out: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, str(SCRIPT), "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def floats(values: list) -> list[float]:
    return [float(v) for v in values]  # non-finite values are logged as "inf"/"nan" strings


def steps(path: Path) -> dict[int, dict[str, dict]]:
    return {
        r["step"]: {layer["name"]: layer for layer in r["layers"]}
        for r in read_log(path)
        if r["type"] == "step"
    }


def test_ddp_rank_zero_writes_the_worst_over_ranks(tmp_path):
    log = tmp_path / "run.jsonl"
    torchrun(log, "--per-rank")
    header = read_log(log)[0]
    assert header["world_size"] == 2 and header["rank"] is None
    merged, rank0, rank1 = (
        steps(log),
        steps(tmp_path / "run.rank0.jsonl"),
        steps(tmp_path / "run.rank1.jsonl"),
    )
    assert sorted(merged) == sorted(rank0) == sorted(rank1) == [0, 2, 4, 6]
    for step, layers in merged.items():
        for name, layer in layers.items():
            a, b = rank0[step][name], rank1[step][name]
            assert a["max_logit"] != b["max_logit"]  # the ranks saw different data ...
            # ... and the log keeps the worst of each head
            assert floats(layer["max_logit"]) == [
                max(x, y) for x, y in zip(floats(a["max_logit"]), floats(b["max_logit"]))
            ]
            assert floats(layer["entropy"]) == [
                min(x, y) for x, y in zip(floats(a["entropy"]), floats(b["entropy"]))
            ]
            assert layer["nonfinite"] == [x + y for x, y in zip(a["nonfinite"], b["nonfinite"])]
            assert layer["calls"] == 2
    assert (
        merged[4]["module.blocks.1.attn"]["nonfinite"][1]
        > 0
        == sum(rank0[4]["module.blocks.1.attn"]["nonfinite"])
    )
    alerts = [r for r in read_log(log) if r["type"] == "alert"]
    first = next(a for a in alerts if a["kind"] == "non-finite")
    assert (first["step"], first["layer"], first["head"], first["details"]["tensor"]) == (
        4,
        "module.blocks.1.attn",
        1,
        "k",
    )
    seen = [json.loads((tmp_path / f"run.jsonl.alerts.rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == seen[1] == [[a["step"], a["kind"], a["layer"], a["head"]] for a in alerts]


@pytest.mark.slow
def test_fsdp_on_cpu(tmp_path):
    log = tmp_path / "run.jsonl"
    torchrun(log, "--wrap", "fsdp")
    assert not list(tmp_path.glob("run.rank*.jsonl"))  # no per-rank logs unless asked
    merged = steps(log)
    assert sorted(merged) == [0, 2, 4, 6]
    assert list(merged[0]) == ["blocks.0.attn", "blocks.1.attn"]
    assert merged[4]["blocks.1.attn"]["nonfinite"][1] > 0
    kinds = {(a["step"], a["kind"]) for a in read_log(log) if a["type"] == "alert"}
    assert (4, "non-finite") in kinds
