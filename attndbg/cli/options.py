"""Shared option types and ``Annotated`` aliases: one line per parameter in every command.

Only Typer and the standard library here, so that ``attndbg --help`` stays torch-free.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from attndbg.errors import UsageError
from attndbg.vocab import CausalAlign as CausalAlign  # re-exported: commands find every option type here
from attndbg.vocab import FailOn as FailOn
from attndbg.vocab import MaskSemantics as MaskSemantics


class OutputFormat(str, Enum):
    rich = "rich"
    json = "json"
    sarif = "sarif"


class RulesFormat(str, Enum):
    """What `rules` prints: a table, JSON, SARIF (tool.driver.rules alone), or docs/rules.md."""

    rich = OutputFormat.rich.value
    json = OutputFormat.json.value
    sarif = OutputFormat.sarif.value
    markdown = "markdown"


class Level(str, Enum):
    quick = "quick"
    default = "default"
    thorough = "thorough"


# ---- shared by several commands ------------------------------------------------------------
Device = Annotated[str, typer.Option(help="cpu, cuda or auto.")]
CaseGlob = Annotated[str | None, typer.Option("--case", help="Only cases whose name matches this glob.")]
Output = Annotated[Path | None, typer.Option("-o", "--output", help="Write the report to this file.")]
Format = Annotated[OutputFormat, typer.Option("--format", help="Report format.")]

# ---- inspect: how to read the tensors ------------------------------------------------------
Layout = Annotated[str | None, typer.Option(help="Layout of q/k/v/out, e.g. bhsd, bshd, bsd, sbd.")]
Causal = Annotated[bool | None, typer.Option("--causal/--no-causal", help="Override is_causal.")]
Scale = Annotated[float | None, typer.Option(help="Override the softmax scale.")]
MaskMeaning = Annotated[
    MaskSemantics | None,
    typer.Option(
        metavar="MEANING", help="How to read the mask: keep (1 = attend), drop (1 = ignore), additive."
    ),
]

# ---- inspect: what to run ------------------------------------------------------------------
DeviceOrConfig = Annotated[str | None, typer.Option(help=escape("cpu, cuda or auto [default: cpu]."))]
MaxMemory = Annotated[
    str | None, typer.Option(help=escape("Memory budget for score chunks, e.g. 512MiB [default: 1GiB]."))
]
Grad = Annotated[bool, typer.Option(help="Also run the gradient stage.")]
Select = Annotated[list[str] | None, typer.Option(help="Only these codes or prefixes (SHP, MSK00, PAT004).")]
Ignore = Annotated[list[str] | None, typer.Option(help="Skip these codes or prefixes.")]
FailOnOption = Annotated[
    FailOn | None,
    typer.Option(
        metavar="SEVERITY",
        help=escape("Exit 1 on a finding at or above: error, warning, info, or never [default: error]."),
    ),
]
ConfigFile = Annotated[
    Path | None, typer.Option(help=escape("pyproject.toml to read [tool.attndbg] from (default: nearest)."))
]
Baseline = Annotated[
    Path | None, typer.Option(help="Findings listed in this baseline file do not fail the run.")
]

# ---- inspect: where the report goes --------------------------------------------------------
WriteBaseline = Annotated[
    Path | None, typer.Option(help="Write every finding of this run to a baseline file, exit 0.")
]
Html = Annotated[
    Path | None, typer.Option(help="Also write the interactive HTML report: every head, one offline file.")
]
Svg = Annotated[Path | None, typer.Option(help="Also save the Rich report as SVG.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="One line per finding, then the summary.")]
Timings = Annotated[bool, typer.Option("--timings/--no-timings", help="Stage seconds in JSON.")]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``--max-memory`` text (512MiB, 2G, 1.5gb) as bytes; at least 1 MiB."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"--max-memory {text!r}: expected a size such as 512MiB or 2G")
    number, unit = float(match[1]), (match[2] or "").lower().rstrip("b").rstrip("i")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]
    size = int(number * factor)
    if size < 1 << 20:
        raise UsageError(f"--max-memory {text!r}: at least 1MiB is needed")
    return size
