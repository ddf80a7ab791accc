"""attndbg — find the attention bugs that never raise.

``import attndbg`` is cheap: torch is imported only when :func:`diagnose` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["diagnose", "capture", "watch", "save", "Report", "Finding", "Severity", "__version__"]

if TYPE_CHECKING:
    from attndbg.engine import diagnose
    from attndbg.recording.recorder import capture
    from attndbg.report import Finding, Report, Severity
    from attndbg.saving import save


def __getattr__(name: str) -> Any:
    if name == "diagnose":
        from attndbg.engine import diagnose

        return diagnose
    if name == "capture":
        from attndbg.recording.recorder import capture

        return capture
    if name == "watch":
        import importlib

        return importlib.import_module("attndbg.watch")  # callable: attndbg.watch(model, every=10)
    if name == "save":
        from attndbg.saving import save

        return save
    if name in ("Report", "Finding", "Severity", "CaseReport"):
        from attndbg import report

        return getattr(report, name)
    raise AttributeError(f"module 'attndbg' has no attribute {name!r}")


def __dir__() -> list[str]:
    """``dir(attndbg)`` and tab completion list the lazy API too."""
    return sorted({*__all__, "CaseReport", *(name for name in globals() if name.startswith("__"))})
