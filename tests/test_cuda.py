"""The same engine on the GPU: identical findings and statistics. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli
from make_fixtures import EXPECTED

from attndbg.case import Case
from attndbg.context import CaseContext
from attndbg.engine import Options, run_cases
from attndbg.loader import iter_cases
from attndbg.stats import compute_stats

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_codes_on_cuda(name: str, fixtures_dir: Path) -> None:
    path = fixtures_dir / f"{name}.safetensors"
    report = run_cases(iter_cases([path]), Options(device="cuda"), [str(path)])
    assert set(report.codes()) == EXPECTED[name]
    assert all(case.device == "cuda" for case in report.cases)


def test_statistics_match_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 32, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 300, 300, generator=g) > 0.1
    tensors = {"q": q, "k": k, "v": v, "mask": mask}
    cpu = compute_stats(CaseContext(Case("c", "m", tensors)))
    gpu = compute_stats(CaseContext(Case("c", "m", tensors), device="cuda", max_memory=1 << 20))
    for name in ("lse", "entropy", "max_weight", "sink", "diagonal", "n_kept", "max_logit"):
        assert torch.allclose(getattr(cpu, name), getattr(gpu, name), atol=1e-4), name
    assert torch.allclose(cpu.out, gpu.out.cpu(), atol=1e-4)


def test_cli_device_cuda(fixtures_dir: Path) -> None:
    assert (
        run_cli("inspect", str(fixtures_dir / "clean_basic.safetensors"), "--device", "cuda").returncode == 0
    )
    assert (
        run_cli(
            "inspect", str(fixtures_dir / "SCL001_missing_scale.safetensors"), "--device", "auto"
        ).returncode
        == 1
    )


def test_overflow_located_on_cuda() -> None:
    import attndbg

    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    q[0, 1, 3] = 1e30
    k[0, 1, 2] = 1e30
    report = attndbg.diagnose(q, k, v, device="cuda")
    num002 = next(f for f in report.findings if f.code == "NUM002")
    assert num002.evidence["first"] == [0, 1, 3, 2]


def test_gradcheck_backends_on_cuda() -> None:
    import json

    result = run_cli("gradcheck", "--device", "cuda", "--format", "json")
    data = json.loads(result.stdout)
    names = {r["implementation"] for r in data}
    assert {"sdpa[math]", "sdpa[flash_attention]", "sdpa[efficient_attention]"} <= names
    math = next(r for r in data if r["implementation"] == "sdpa[math]")
    assert {r["verdict"] for r in math["results"]} <= {"pass", "refused"}


def test_gradient_stage_on_cuda(fixtures_dir: Path) -> None:
    path = fixtures_dir / "MSK001_fully_masked_rows.safetensors"
    report = run_cases(iter_cases([path]), Options(device="cuda", grad=True), [str(path)])
    assert set(report.codes()) == {"MSK001", "GRD002"}
