"""Bad input: one clear line on stderr, exit 2, no traceback, the input untouched."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _valid(tmp: Path) -> bytes:
    return (Path(__file__).resolve().parents[1] / "fixtures" / "clean_basic.safetensors").read_bytes()


def make_inputs(tmp: Path) -> dict[str, Path]:
    valid = _valid(tmp)
    (header_len,) = struct.unpack("<Q", valid[:8])
    cases: dict[str, bytes | None] = {
        "empty": b"",
        "short": b"\x01\x02\x03",
        "truncated_header": valid[: 8 + header_len // 2],
        "truncated_data": valid[: len(valid) - 100],
        "huge_header_length": struct.pack("<Q", 1 << 60) + valid[8:],
        "header_past_end": struct.pack("<Q", len(valid)) + valid[8:],
        "header_not_json": struct.pack("<Q", 16) + b"{not json at all" + b"\0" * 32,
        "random_bytes": bytes((i * 97 + 13) % 256 for i in range(4096)),
        "text_file": b"q,k,v\n1,2,3\n",
        "pickle": pickle.dumps({"q": [1.0, 2.0]}),
        "numpy": b"\x93NUMPY\x01\x00" + b"\0" * 64,
    }
    header = json.loads(valid[8 : 8 + header_len])
    first = next(k for k in header if k != "__metadata__")
    bad = dict(header)
    bad[first] = {**header[first], "dtype": "Q7"}
    blob = json.dumps(bad).encode()
    cases["unknown_dtype"] = struct.pack("<Q", len(blob)) + blob + valid[8 + header_len :]
    bad = dict(header)
    bad[first] = {**header[first], "shape": [3, 3]}
    blob = json.dumps(bad).encode()
    cases["shape_mismatch"] = struct.pack("<Q", len(blob)) + blob + valid[8 + header_len :]
    bad = dict(header)
    bad[first] = {**header[first], "data_offsets": [0, 10**9]}
    blob = json.dumps(bad).encode()
    cases["offsets_out_of_range"] = struct.pack("<Q", len(blob)) + blob + valid[8 + header_len :]
    paths = {}
    for name, content in cases.items():
        path = tmp / f"{name}.safetensors"
        path.write_bytes(content)
        paths[name] = path
    archive = tmp / "torch_save.pt"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"q": 1}))
    paths["torch_save_zip"] = archive
    (tmp / "a_directory").mkdir()
    paths["directory"] = tmp / "a_directory"
    paths["missing"] = tmp / "does_not_exist.safetensors"
    return paths


def _no_roles(tmp: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path = tmp / "no_roles.safetensors"
    save_file({"embedding.weight": torch.zeros(2, 2)}, str(path))
    return path


def _missing_v(tmp: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path = tmp / "missing_v.safetensors"
    save_file({"layer0.q": torch.zeros(1, 2, 4, 8), "layer0.k": torch.zeros(1, 2, 4, 8)}, str(path))
    return path


def _bad_metadata(tmp: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path = tmp / "bad_metadata.safetensors"
    t = torch.zeros(1, 2, 4, 8)
    save_file({"q": t, "k": t.clone(), "v": t.clone()}, str(path), metadata={"is_causal": "maybe"})
    return path


HOSTILE = [
    "empty",
    "short",
    "truncated_header",
    "truncated_data",
    "huge_header_length",
    "header_past_end",
    "header_not_json",
    "random_bytes",
    "text_file",
    "pickle",
    "numpy",
    "unknown_dtype",
    "shape_mismatch",
    "offsets_out_of_range",
    "torch_save_zip",
    "directory",
    "missing",
    "no_roles",
    "missing_v",
    "bad_metadata",
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("hostile")
    paths = make_inputs(tmp)
    paths["no_roles"] = _no_roles(tmp)
    paths["missing_v"] = _missing_v(tmp)
    paths["bad_metadata"] = _bad_metadata(tmp)
    return paths


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_input_is_one_line_exit_2(name: str, hostile: dict[str, Path]) -> None:
    path = hostile[name]
    before = digest(path)
    result = run_cli("inspect", str(path))
    assert result.returncode == 2, (name, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert str(path) in lines[0]
    assert digest(path) == before


def test_pickle_is_refused_without_being_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Exploit()))
    result = run_cli("inspect", str(path))
    assert result.returncode == 2
    assert "pickle" in result.stderr
    assert not marker.exists()


def test_one_bad_file_among_good_ones_fails_before_any_report(hostile, fixtures_dir) -> None:
    result = run_cli("inspect", str(fixtures_dir / "clean_basic.safetensors"), str(hostile["pickle"]))
    assert result.returncode == 2
    assert result.stdout == ""


def test_odd_dtypes_are_read_or_refused_clearly(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g) for _ in range(3))
    float8 = tmp_path / "float8.safetensors"
    save_file({n: t.to(torch.float8_e4m3fn) for n, t in zip("qkv", (q, k, v))}, str(float8))
    result = run_cli("inspect", str(float8))
    assert result.returncode == 0, result.stderr
    assert "assumed: q is float8_e4m3fn, read as float32" in result.stdout
    integers = tmp_path / "integers.safetensors"
    save_file({n: (t * 10).to(torch.int32) for n, t in zip("qkv", (q, k, v))}, str(integers))
    result = run_cli("inspect", str(integers))
    assert result.returncode == 2 and "q is int32" in result.stderr and "floating point" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_layout_typo_is_flagged_by_the_mask_it_contradicts(tmp_path: Path) -> None:
    # bhds for bhsd swaps seq and dim: the (6, 6) mask no longer fits an 8-long sequence
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g) for _ in range(3))
    path = tmp_path / "masked.safetensors"
    save_file({"q": q, "k": k, "v": v, "mask": torch.ones(1, 1, 6, 6, dtype=torch.bool).tril()}, str(path))
    assert run_cli("inspect", str(path), "--layout", "bhsd").returncode == 0
    typo = run_cli("inspect", str(path), "--layout", "bhds", "-q")
    assert typo.returncode == 1 and "SHP005" in typo.stdout
