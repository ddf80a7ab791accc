"""A Hugging Face ``TrainerCallback``:
``Trainer(..., callbacks=[AttentionWatchTrainerCallback(every=50, log="attn.jsonl")])``.

Needs ``transformers``; the watcher starts at train begin on the Trainer's model, steps at each
optimizer step (gradient accumulation: the forwards of a step are merged), closes at train end."""

from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("AttentionWatchTrainerCallback needs transformers: pip install 'attndbg[hf]'") from None

from attndbg.watch.monitor import Watcher


class AttentionWatchTrainerCallback(TrainerCallback):
    """``attndbg.watch`` as a Trainer callback; ``every``, ``log`` and the other keyword arguments
    are those of :class:`~attndbg.watch.monitor.Watcher`."""

    def __init__(self, every: int = 10, log: str | None = None, **options: Any) -> None:
        self.every, self.log_path, self.options = every, log, options
        self.watcher: Watcher | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.watcher = Watcher(model, self.every, self.log_path, **self.options).start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watcher is not None:
            self.watcher.step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watcher is not None:
            self.watcher.close()
