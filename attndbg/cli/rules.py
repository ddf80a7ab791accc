"""`attndbg rules` and `attndbg explain`: the check registry, listed and explained. Torch-free."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from attndbg.cli import options as opt
from attndbg.errors import UsageError


def rules(
    output_format: Annotated[
        opt.RulesFormat, typer.Option("--format", help="A table, JSON, SARIF tool.driver.rules, or Markdown.")
    ] = opt.RulesFormat.rich,
) -> None:
    """List every check: code, name, stage, default severity."""
    from attndbg.registry import load_checks

    checks = load_checks()
    if output_format == opt.RulesFormat.sarif:
        from attndbg.render.sarif import render_sarif_rules

        print(render_sarif_rules(), end="")
        return
    if output_format == opt.RulesFormat.json:
        import json

        from attndbg.render.rules import rule_dicts

        print(json.dumps(rule_dicts(checks.values()), indent=2))
        return
    if output_format == opt.RulesFormat.markdown:
        from attndbg.render.rules import rules_markdown

        print(rules_markdown(checks.values()), end="")
        return
    from rich.table import Table

    table = Table(header_style="bold", box=None)
    for column in ("code", "name", "stage", "severity", "summary"):
        table.add_column(column)
    for c in checks.values():
        table.add_row(c.code, c.name, c.stage, c.severity.value, c.summary)
    Console().print(table)


def explain(code: Annotated[str, typer.Argument(help="A check code, e.g. MSK003.")]) -> None:
    """Print one check's rationale and fix."""
    from rich.padding import Padding
    from rich.text import Text

    from attndbg.registry import load_checks, supersedes
    from attndbg.render.code import CodeBlock
    from attndbg.render.rules import supersession_lines

    checks = load_checks()
    check = checks.get(code.strip().upper())
    if check is None:
        close = [c for c in checks if c.startswith(code.strip().upper()[:3])]
        hint = f"; codes in that family: {', '.join(close)}" if close else "; `attndbg rules` lists them"
        raise UsageError(f"no check {code!r}{hint}")
    console = Console()
    console.print(Text(f"{check.code} {check.name}", style="bold"))
    console.print(Text(f"stage {check.stage} · default severity {check.severity.value}", style="dim"))
    console.print(Text(check.summary, style="italic"))
    console.print()
    console.print(Padding(Text(check.rationale), (0, 0, 0, 2)))
    console.print()
    if check.thresholds:
        values = ", ".join(f"{name} = {value:g}" for name, value in check.thresholds.items())
        console.print(Text(f"Thresholds: {values}", style="bold"))
        example = next(iter(check.thresholds))
        override = f"[tool.attndbg.thresholds] {check.code} = {{ {example} = … }}"
        console.print(Padding(Text(f"override in pyproject.toml: {override}", style="dim"), (0, 0, 0, 2)))
        console.print()
    for line in supersession_lines(list(check.superseded_by), supersedes(check.code)):
        console.print(Text(line))
        console.print()
    console.print(Text("Fix:", style="bold"))
    console.print(CodeBlock(check.fix, indent=2), crop=False)
