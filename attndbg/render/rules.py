"""The check registry as data and as Markdown (``attndbg rules --format json|markdown``).

``docs/rules.md`` is this Markdown, committed; a test keeps it in step with the registry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attndbg.registry import Check

REGENERATE = "attndbg rules --format markdown > docs/rules.md"


def rule_dicts(checks: Iterable[Check]) -> list[dict[str, Any]]:
    """One dict per check, in registry order (the JSON of ``attndbg rules --format json``)."""
    from attndbg.registry import supersedes

    return [
        {
            "code": c.code,
            "name": c.name,
            "stage": c.stage,
            "severity": c.severity.value,
            "summary": c.summary,
            "thresholds": dict(c.thresholds),
            "superseded_by": list(c.superseded_by),
            "supersedes": supersedes(c.code),
            "rationale": c.rationale,
            "fix": c.fix.strip(),
        }
        for c in checks
    ]


def rules_markdown(checks: Iterable[Check]) -> str:
    """Every check as a Markdown page: an index table, then one section per check."""
    rules = rule_dicts(checks)
    lines = [
        "# Rules",
        "",
        f"Generated from the check registry by `{REGENERATE}`; do not edit by hand.",
        "`attndbg explain CODE` prints the same text in the terminal.",
        "",
        "| code | name | stage | severity | summary |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| [{r['code']}](#{r['code'].lower()}) | {r['name']} | {r['stage']} | {r['severity']} "
        f"| {_cell(r['summary'])} |"
        for r in rules
    ]
    for r in rules:
        lines += ["", f"## {r['code']}", "", f"**{r['name']}** · stage {r['stage']}", ""]
        lines += [f"Default severity: {r['severity']}. {r['summary']}", "", r["rationale"].strip(), ""]
        if r["thresholds"]:
            values = ", ".join(f"`{name} = {value:g}`" for name, value in r["thresholds"].items())
            lines += [
                f"Thresholds: {values} — override in `pyproject.toml` under "
                f"`[tool.attndbg.thresholds]`, e.g. `{r['code']} = {{ {next(iter(r['thresholds']))} = … }}`.",
                "",
            ]
        lines += [f"{line}\n" for line in supersession_lines(r["superseded_by"], r["supersedes"])]
        lines += ["Fix:", "", "```python", r["fix"], "```"]
    return "\n".join(lines) + "\n"


def supersession_lines(superseded_by: list[str], supersedes: list[str]) -> list[str]:
    """How a check and the checks naming the same symptom more precisely silence each other."""
    lines = []
    if superseded_by:
        lines.append(
            f"Not reported when {' or '.join(superseded_by)} fires on the same case (a more precise cause)."
        )
    if supersedes:
        lines.append(f"When it fires, {', '.join(supersedes)} is not reported on the same case.")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
