"""A PyTorch Lightning callback: ``Trainer(callbacks=[AttentionWatchCallback(every=50, log="attn.jsonl")])``.

Needs ``lightning`` (or the older ``pytorch_lightning``) installed; the watcher starts at fit
start on the LightningModule, steps after every training batch, and closes at fit end."""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the package's older name
    try:
        # the same class under the old package name; mypy sees two distinct Callback types
        from pytorch_lightning import Callback  # type: ignore[assignment]
    except ImportError:
        raise ImportError("AttentionWatchCallback needs PyTorch Lightning: pip install lightning") from None

from attndbg.watch.monitor import Watcher


class AttentionWatchCallback(Callback):
    """``attndbg.watch`` as a Lightning callback; ``every``, ``log`` and the other keyword
    arguments are those of :class:`~attndbg.watch.monitor.Watcher`. ``watcher`` is the live
    watcher during fit (its ``alerts``, ``findings`` and ``last`` stay readable after)."""

    def __init__(self, every: int = 10, log: str | None = None, **options: Any) -> None:
        super().__init__()
        self.every, self.log_path, self.options = every, log, options
        self.watcher: Watcher | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.watcher = Watcher(pl_module, self.every, self.log_path, **self.options).start()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.watcher is not None:
            self.watcher.step()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watcher is not None:
            self.watcher.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.watcher is not None:
            self.watcher.close()
