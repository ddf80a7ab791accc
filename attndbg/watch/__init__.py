"""Watch attention while a model trains: ``attndbg.watch(model, every=10, log="attn.jsonl")``.

This package is callable — ``attndbg.watch(...)`` is :func:`attndbg.watch.monitor.watch` — and
cheap to import: torch is imported only when a watcher is made, so ``attndbg trend`` (which
reads logs through :mod:`attndbg.watch.trend`) never loads it.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

__all__ = [
    "watch",
    "Watcher",
    "Thresholds",
    "Alert",
    "AttentionAlert",
    "AttentionWarning",
    "AttentionWatchCallback",
    "AttentionWatchTrainerCallback",
]

if TYPE_CHECKING:
    from attndbg.watch.alerts import Alert, AttentionAlert, AttentionWarning, Thresholds
    from attndbg.watch.huggingface import AttentionWatchTrainerCallback
    from attndbg.watch.lightning import AttentionWatchCallback
    from attndbg.watch.monitor import Watcher, watch

_HOMES = {
    "watch": "attndbg.watch.monitor",
    "Watcher": "attndbg.watch.monitor",
    "Thresholds": "attndbg.watch.alerts",
    "Alert": "attndbg.watch.alerts",
    "AttentionAlert": "attndbg.watch.alerts",
    "AttentionWarning": "attndbg.watch.alerts",
    "AttentionWatchCallback": "attndbg.watch.lightning",
    "AttentionWatchTrainerCallback": "attndbg.watch.huggingface",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'attndbg.watch' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """Lets ``attndbg.watch(model, ...)`` call :func:`watch` although ``attndbg.watch`` is this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from attndbg.watch.monitor import watch

        return watch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
