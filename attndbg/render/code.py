"""Code in the terminal: highlighted, indented, and never wrapped or cut.

A fix snippet is meant to be pasted. Word-wrapping moves the end of a comment onto a code line
(a syntax error once pasted) and cropping cuts a call in half, so a line longer than the
console overflows instead (the terminal soft-wraps it and copies it back as one line). Print it
with ``crop=False`` and outside any ``Padding`` (which crops to its width).
"""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.syntax import Syntax


class CodeBlock:
    def __init__(self, code: str, indent: int = 0, language: str = "python") -> None:
        self.code = code.strip("\n")
        self.indent = indent
        self.language = language

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        syntax = Syntax(self.code, self.language, theme="ansi_dark", background_color="default")
        for line in syntax.highlight(self.code).split("\n"):
            line.rstrip()
            yield Segment(" " * self.indent)
            yield from line.render(console, end="")
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        longest = max((len(line) for line in self.code.splitlines()), default=0) + self.indent
        return Measurement(min(longest, options.max_width), min(longest, options.max_width))
