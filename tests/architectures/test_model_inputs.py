"""``attndbg capture DIR`` / ``inspect DIR`` with default inputs for every modality: token ids,
pixel values (sized by the preprocessor config when the checkpoint has one), spectrogram
features, raw audio, decoder ids for encoder-decoders. A model that rejects its input is the
model's error (exit 2 with its message); attndbg's own failure stays an internal error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
from arch_sweep import attention_modules, build  # noqa: E402
from arch_zoo import BY_NAME, ZOO  # noqa: E402
from conftest import run_cli  # noqa: E402

import attndbg  # noqa: E402
from attndbg.errors import InputError  # noqa: E402
from attndbg.recording import recorder  # noqa: E402
from attndbg.recording.sources import capture_source  # noqa: E402
from attndbg.report import Severity  # noqa: E402


def _save(tmp_path: Path, name: str, implementation: str = "sdpa", **preprocessor) -> Path:
    model = build(BY_NAME[name], implementation)
    folder = tmp_path / name
    model.save_pretrained(folder)
    if preprocessor:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            arch.name,
            marks=[
                pytest.mark.xfail(reason=arch.not_captured, raises=(InputError, AssertionError), strict=False)
            ]
            if arch.not_captured
            else [],
        )
        for arch in ZOO
    ],
)
def test_default_inputs_reach_every_attention_layer(tmp_path: Path, name: str) -> None:
    """``capture DIR`` with no input options, for every zoo architecture in its first
    implementation: the inputs are valid and every attention module records a call."""
    implementation = BY_NAME[name].implementations[0]
    folder = _save(tmp_path, name, implementation)
    calls = capture_source(str(folder), seq_len=10, batch=2, attn_implementation=implementation)
    expected = attention_modules(
        transformers.AutoModel.from_pretrained(folder, attn_implementation=implementation)
    )
    recorded = {c.module for c in calls}
    assert all(any(r == m or r.startswith(m + ".") for r in recorded) for m in expected), (expected, recorded)
    loud = [f for f in attndbg.diagnose(calls).findings if f.severity is not Severity.INFO]
    assert not [f.message for f in loud]


def test_pixel_size_comes_from_the_preprocessor_config(tmp_path: Path) -> None:
    # DINOv2 interpolates its position embeddings, so a 48-pixel crop is legal for a 32-pixel
    # config: 6 × 6 patches of 8 plus the class token.
    folder = _save(tmp_path, "dinov2", crop_size={"height": 48, "width": 48})
    calls = capture_source(str(folder), batch=1)
    assert calls[0].q.shape[2] == 37
    assert capture_source(str(_save(tmp_path / "plain", "dinov2")), batch=1)[0].q.shape[2] == 17


def test_a_model_that_rejects_its_input_is_the_models_error(tmp_path: Path) -> None:
    # ViT without interpolation refuses a crop that its config does not match.
    folder = _save(tmp_path, "vit", size={"height": 48, "width": 48})
    with pytest.raises(InputError, match="Input image size"):
        capture_source(str(folder))
    result = run_cli("capture", str(folder), "-o", str(tmp_path / "out.safetensors"))
    assert result.returncode == 2, result.stderr
    assert "Input image size" in result.stderr and "internal error" not in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_a_checkpoint_that_cannot_load_exits_2(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(InputError, match="cannot load the checkpoint"):
        capture_source(str(tmp_path))


class _Rejects(torch.nn.Module):
    """A model whose own check fails with an exception type libraries use for bad input."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] % 3 == 0, f"sequence length {x.shape[1]} is not a multiple of 3"
        return self.proj(x)


def rejects() -> torch.nn.Module:
    return _Rejects()


class _MismatchedProduct(torch.nn.Module):
    """q·kᵀ with the wrong transpose: the op fails inside capture's handling of matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = k = self.proj(x)
        return torch.softmax(torch.matmul(q, k), dim=-1)


def mismatched_product() -> torch.nn.Module:
    return _MismatchedProduct()


def test_any_exception_from_the_model_exits_2(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="AssertionError.*not a multiple of 3"):
        capture_source(f"{__file__}:rejects", seq_len=16)
    # an op the model calls that fails (shape mismatch in F.linear) passes through the recorder:
    # still the model's error
    with pytest.raises(InputError, match="RuntimeError"):
        capture_source(f"{__file__}:rejects", seq_len=16, input_file=_wrong_width(tmp_path))
    with pytest.raises(InputError, match="RuntimeError"):
        capture_source(f"{__file__}:mismatched_product", seq_len=6)


def _wrong_width(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"x": torch.randn(1, 6, 5)}, str(path))
    return path


def test_a_failure_inside_the_recorder_stays_internal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder, "_copy", None)  # the recorder now fails in its own code
    with pytest.raises(TypeError, match="not callable"):
        capture_source(str(_save(tmp_path, "bert")))


def test_cli_inspect_directories_with_default_inputs(tmp_path: Path) -> None:
    """One ``inspect`` of an audio encoder-decoder, a vision model and a text encoder-decoder, as
    a user points it at checkpoint folders (one process: each start loads torch and transformers)."""
    names = ["whisper", "vit", "t5"]
    folders = [str(_save(tmp_path, name)) for name in names]
    result = run_cli("inspect", *folders, "--format", "json", "--no-timings")
    assert result.returncode in (0, 1) and "internal error" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    by_source = {
        name: [c for c in report["cases"] if c["file"] == folder] for name, folder in zip(names, folders)
    }
    for name, cases in by_source.items():
        assert cases, f"{name}: no attention call recorded"
        loud = [f for c in cases for f in c["findings"] if f["severity"] != "info"]
        assert not loud, (name, loud)
