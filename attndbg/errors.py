"""One exception root, so the CLI can map every failure to an exit code."""


class AttndbgError(Exception):
    """Base class of attndbg's own errors (exit code 3 unless a subclass says otherwise)."""

    exit_code = 3


class InputError(AttndbgError):
    """A file or tensor the user gave cannot be used (exit code 2)."""

    exit_code = 2


class UsageError(AttndbgError):
    """A command-line option or API argument is invalid (exit code 2)."""

    exit_code = 2


def first_line(exc: BaseException | str) -> str:
    """The first line of an exception's message, or its type name when it has none: library
    errors are re-raised as one line that names the file."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
