"""TensorBoard scalars, the Lightning callback and the Hugging Face TrainerCallback, each with the
real library: a few training steps, then the log / event file is read back."""

from __future__ import annotations

import pytest
import torch
from watch_model import TinyGPT, random_batches

import attndbg
from attndbg.watch.log import read_log


def sampled_steps(log) -> list[int]:
    return [r["step"] for r in read_log(log) if r["type"] == "step"]


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with attndbg.watch(model, every=2, tensorboard=tmp_path / "tb") as watcher:
        for ids, targets in random_batches(5):
            model(ids, targets).backward()
            optimizer.step()
            optimizer.zero_grad()
            watcher.step()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "attention/blocks.0.attn/max_logit",
        "attention/blocks.1.attn/min_entropy",
        "attention/alerts",
    } <= tags
    logits = events.Scalars("attention/blocks.0.attn/max_logit")
    assert [e.step for e in logits] == [0, 2, 4]
    assert logits[-1].value == pytest.approx(
        max(watcher.last["blocks.0.attn"].metrics["max_logit"]), rel=1e-6
    )


def test_lightning_callback(tmp_path):
    lightning = pytest.importorskip("lightning.pytorch")
    from attndbg.watch import AttentionWatchCallback

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = TinyGPT()

        def training_step(self, batch, batch_idx):
            return self.model(*batch)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-3)

    data = list(random_batches(6))
    callback = AttentionWatchCallback(every=2, log=tmp_path / "attn.jsonl", on_alert="raise")
    trainer = lightning.Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(Module(), train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert sampled_steps(tmp_path / "attn.jsonl") == [0, 2, 4]
    assert list(callback.watcher.last) == ["model.blocks.0.attn", "model.blocks.1.attn"]
    assert read_log(tmp_path / "attn.jsonl")[-1]["type"] == "end"


def test_hugging_face_trainer_callback(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from attndbg.watch import AttentionWatchTrainerCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    model.config._attn_implementation = "sdpa"
    ids = torch.randint(0, 64, (8, 16))
    dataset = [{"input_ids": row, "labels": row} for row in ids]
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=5,
        per_device_train_batch_size=2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = AttentionWatchTrainerCallback(every=2, log=tmp_path / "attn.jsonl")
    transformers.Trainer(model=model, args=arguments, train_dataset=dataset, callbacks=[callback]).train()
    records = read_log(tmp_path / "attn.jsonl")
    assert sampled_steps(tmp_path / "attn.jsonl") == [0, 2, 4]
    layers = [layer["name"] for layer in records[1]["layers"]]
    assert layers == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert records[1]["layers"][0]["heads"] == 2 and records[-1]["type"] == "end"
