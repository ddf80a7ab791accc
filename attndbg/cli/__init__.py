"""The command line: thin Typer commands over the loader, engine and renderers.

``app`` (the command table and exit codes), ``options`` (shared option types), ``output``
(renderer table, files, progress), and one module per command. Module level imports nothing
heavy: ``attndbg --help``, ``rules`` and ``explain`` never import torch.
"""

from attndbg.cli.app import app, main

__all__ = ["app", "main"]
