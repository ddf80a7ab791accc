"""The Typer app: the command table, the root options, and ``main`` (exit codes).

Adding a command: a module in ``attndbg/cli/`` with one function, and one line in ``COMMANDS``.
Command modules import torch only inside their functions, so ``attndbg --help`` stays light.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from attndbg import __version__
from attndbg.cli.capture import capture
from attndbg.cli.gradcheck import gradcheck
from attndbg.cli.inspect import inspect
from attndbg.cli.output import err_console
from attndbg.cli.rules import explain, rules
from attndbg.cli.show import show
from attndbg.cli.trend import trend
from attndbg.errors import AttndbgError

DEBUG_FLAG = "--debug"

app = typer.Typer(
    name="attndbg",
    help="Find the attention bugs that never raise: layouts, scaling, masks, softmax, NaN rows.",
    epilog=f"Add {DEBUG_FLAG} anywhere (or set ATTNDBG_DEBUG=1) to see the traceback of an internal error.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

COMMANDS = (inspect, show, capture, gradcheck, trend, rules, explain)
for command in COMMANDS:
    app.command()(command)


def _version(value: bool) -> None:
    if value:
        print(f"attndbg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """attndbg inspects saved Q/K/V/mask tensors and reports what is wrong with the attention."""


def _is_click_exception(exc: BaseException) -> bool:
    return "click" in type(exc).__module__ and (hasattr(exc, "show") or type(exc).__name__ == "Abort")


def main() -> None:
    """Console-script entry point: map every way out to the documented exit codes."""
    args = sys.argv[1:]
    # --debug is main's own flag, not a command option: accepted anywhere, removed before Typer.
    debug = DEBUG_FLAG in args or bool(os.environ.get("ATTNDBG_DEBUG"))
    args = [arg for arg in args if arg != DEBUG_FLAG]
    try:
        code = app(args=args, prog_name="attndbg", standalone_mode=False)
    except AttndbgError as exc:
        err_console.print(f"attndbg: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        err_console.print("attndbg: interrupted")
        code = 130
    except Exception as exc:  # attndbg's own failure: one line unless --debug
        if _is_click_exception(exc):  # bad option or missing argument (Typer vendors Click)
            if type(exc).__name__ == "Abort":
                err_console.print("attndbg: interrupted")
                sys.exit(130)
            exc.show(file=sys.stderr)  # type: ignore[attr-defined]  # a ClickException
            sys.exit(2)
        if debug:
            raise
        err_console.print(
            f"attndbg: internal error: {type(exc).__name__}: {exc} — please report it at "
            "https://github.com/attndbg/attndbg/issues with the output of --debug",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        code = 3
    sys.exit(code if isinstance(code, int) else 0)
