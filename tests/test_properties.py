"""Property-based: random shapes, dtypes, masks and layouts always end in a report or a clean
usage/input error — never another exception. And a fuzz corpus of damaged files."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attndbg
import attndbg.engine
from attndbg.errors import AttndbgError
from attndbg.loader import iter_cases

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = [None, "bhsd", "bshd", "bsd", "sbd", "sd"]


@st.composite
def attention_inputs(draw):  # noqa: ANN201
    rank = draw(st.sampled_from([2, 3, 4, 5]))
    dims = [draw(st.integers(0 if i == rank - 2 else 1, 5)) for i in range(rank)]
    q_shape = dims
    k_shape = list(dims)
    if draw(st.booleans()):
        k_shape[-2] = draw(st.integers(1, 6))
    if draw(st.booleans()):
        k_shape[-1] = draw(st.integers(1, 6))
    v_shape = list(k_shape)
    if draw(st.booleans()):
        v_shape[-1] = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1.0, 10.0, 1e3]))
    q, k, v = (torch.randn(s, generator=gen).mul(scale).to(dtype) for s in (q_shape, k_shape, v_shape))
    if draw(st.booleans()) and q.numel():
        q.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), 0.0]))
    mask = None
    kind = draw(st.sampled_from(["none", "bool", "float01", "additive", "random-shape"]))
    lq, lk = q_shape[-2] if rank >= 2 else 1, k_shape[-2] if rank >= 2 else 1
    if kind == "bool":
        mask = torch.rand(lq, lk, generator=gen) > 0.3
    elif kind == "float01":
        mask = (torch.rand(lq, lk, generator=gen) > 0.3).float()
    elif kind == "additive":
        fill = draw(st.sampled_from([float("-inf"), -1e9, -1e4, torch.finfo(torch.float16).min]))
        mask = torch.zeros(lq, lk).masked_fill(torch.rand(lq, lk, generator=gen) > 0.5, fill)
    elif kind == "random-shape":
        mask = (
            torch.rand([draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 4)))], generator=gen) > 0.5
        )
    return {
        "q": q,
        "k": k,
        "v": v,
        "mask": mask,
        "is_causal": draw(st.sampled_from([None, True, False])),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "scale": draw(st.sampled_from([None, 1.0, 0.01])),
    }


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(attention_inputs())
def test_pipeline_always_ends_in_a_report_or_a_clean_error(inputs) -> None:  # noqa: ANN001
    try:
        report = attndbg.diagnose(**inputs)
    except AttndbgError as exc:
        assert exc.exit_code == 2, exc
        return
    assert report.exit_code() in (0, 1)
    for case in report.cases:
        assert [s.name for s in case.stages][:6] == [
            "shapes",
            "numerics",
            "scaling",
            "mask",
            "softmax",
            "patterns",
        ]
        for finding in case.findings:
            assert finding.code and finding.fix and isinstance(finding.evidence, dict)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 6), min_size=2, max_size=4), st.sampled_from(DTYPES), st.booleans())
def test_weights_only_cases_never_crash(shape, dtype, normalise) -> None:  # noqa: ANN001
    w = torch.rand(shape).to(dtype)
    if normalise:
        w = torch.softmax(w.float(), dim=-1).to(dtype)
    report = attndbg.diagnose(weights=w)
    assert report.exit_code() in (0, 1)


def _corpus(valid: bytes) -> dict[str, bytes]:
    (header_len,) = struct.unpack("<Q", valid[:8])
    corpus = {}
    for offset in sorted({*range(0, 8 + header_len + 16, 7), *range(0, len(valid), 509)}):
        corpus[f"truncated_{offset}"] = valid[:offset]
    for i, byte in enumerate((0x00, 0x22, 0x7B, 0x7D, 0xFF)):
        for position in range(8, 8 + header_len, max(1, header_len // 12)):
            damaged = bytearray(valid)
            damaged[position] = byte
            corpus[f"header_byte_{i}_{position}"] = bytes(damaged)
    return corpus


def test_fuzz_corpus_of_damaged_files(tmp_path: Path) -> None:
    """Every damaged file either loads (the damage missed anything that matters) or raises the
    one input error; nothing else, and the file is never modified."""
    valid = (ROOT / "fixtures" / "clean_padding_mask.safetensors").read_bytes()
    corpus = _corpus(valid)
    assert len(corpus) > 100
    outcomes = {"loaded": 0, "refused": 0}
    for name, content in corpus.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        before = hashlib.sha256(content).hexdigest()
        try:
            report = attndbg.engine.run_cases(iter_cases([path]), attndbg.engine.Options(), [str(path)])
            assert report.exit_code() in (0, 1)
            outcomes["loaded"] += 1
        except AttndbgError as exc:
            assert exc.exit_code == 2 and str(path) in str(exc), (name, exc)
            outcomes["refused"] += 1
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert outcomes["refused"] > 50


@pytest.mark.parametrize("offset", [0, 5, 8, 40, 200, 900])
def test_fuzz_through_the_console_script(offset: int, tmp_path: Path) -> None:
    valid = (ROOT / "fixtures" / "clean_padding_mask.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(valid[:offset])
    result = run_cli("inspect", str(path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
