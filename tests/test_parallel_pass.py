"""The statistics pass shares blocks of query rows among threads on the CPU: every statistic
must be the one a single thread computes, whatever the case's shape, mask and non-finite
values, and torch's own thread count must be left as it was."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from attndbg.case import Case
from attndbg.context import CaseContext
from attndbg.registry import load_checks, plan_checks
from attndbg.stats.driver import in_parallel, reference_pass


def _cases() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 200, 16, generator=g) * 2 for _ in range(3))
    padding = torch.ones(3, 1, 1, 200, dtype=torch.bool)
    padding[0, ..., 150:] = False
    padding[2, ..., :] = False  # a sample with nothing to attend: every row fully masked
    nan_q = q.clone()
    nan_q[1, 2, 7] = float("nan")
    additive = torch.zeros(3, 1, 200, 200).masked_fill(~padding, torch.finfo(torch.float32).min)
    return {
        "plain": {"q": q, "k": k, "v": v},
        "bool mask with a dead sample": {"q": q, "k": k, "v": v, "mask": padding},
        "additive mask": {"q": q, "k": k, "v": v, "mask": additive},
        "NaN in q": {"q": nan_q, "k": k, "v": v},
        "fewer keys": {"q": q, "k": k[:, :, :90], "v": v[:, :, :90]},
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_threads_compute_what_one_thread_computes(name: str) -> None:
    load_checks()
    tensors = _cases()[name]
    results = []
    for workers in (1, 2, 3):
        # a small budget: many blocks of rows, so that the threads interleave
        ctx = CaseContext(Case(name, "<memory>", tensors), max_memory=1 << 18)
        ctx.wanted = None  # every reducer, the reference output and the head Gram included
        results.append(reference_pass(ctx, threads=workers))
    serial = results[0]
    assert serial.chunks > 8
    for parallel in results[1:]:
        for field in fields(serial):
            mine, theirs = getattr(serial, field.name), getattr(parallel, field.name)
            if field.name in ("chunk_rows", "chunks", "chunk_bytes"):
                continue  # the budget is shared by the workers
            if isinstance(mine, torch.Tensor):
                # other block sizes: float sums in another order
                assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5, equal_nan=True), field.name
            else:
                assert mine == theirs, field.name


def test_the_full_plan_runs_in_threads_and_restores_the_thread_count() -> None:
    load_checks()
    before = torch.get_num_threads()
    seen: set[int] = set()

    def record(task: int) -> None:
        import threading

        seen.add(threading.get_ident())
        assert torch.get_num_threads() == 1
        torch.randn(64, 64) @ torch.randn(64, 64)

    in_parallel(record, list(range(32)), threads=2)
    assert torch.get_num_threads() == before
    assert len(seen) >= 1
    ctx = CaseContext(Case("c", "<memory>", _cases()["plain"]))
    ctx.wanted = plan_checks([], []).reads
    assert reference_pass(ctx, threads=2).entropy.isfinite().all()
    assert torch.get_num_threads() == before


def test_a_worker_error_reaches_the_caller() -> None:
    def fail(task: int) -> None:
        if task == 5:
            raise ValueError("task 5")

    with pytest.raises(ValueError, match="task 5"):
        in_parallel(fail, list(range(10)), threads=2)


def test_threads_beyond_the_worker_cap_go_to_torch_inside_each_worker() -> None:
    import threading

    from attndbg.stats.driver import MAX_WORKERS

    seen: dict[int, int] = {}

    def record(task: int) -> None:
        seen[threading.get_ident()] = torch.get_num_threads()

    before = torch.get_num_threads()
    in_parallel(record, list(range(64)), threads=2 * MAX_WORKERS)
    assert torch.get_num_threads() == before
    assert 1 <= len(seen) <= MAX_WORKERS
    assert set(seen.values()) == {2}
