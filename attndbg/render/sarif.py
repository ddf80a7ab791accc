"""SARIF 2.1.0 output: the rule registry as tool.driver.rules, one result per finding."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attndbg import __version__
from attndbg.report import Location, Report

LEVEL = {"error": "error", "warning": "warning", "info": "note"}
SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def rule_entries(codes: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """``tool.driver.rules`` for ``codes`` (every registered check when None), in that order."""
    from attndbg.registry import load_checks

    checks = load_checks()
    rules = []
    for check in checks.values() if codes is None else (checks[code] for code in codes):
        rules.append(
            {
                "id": check.code,
                "name": "".join(part.capitalize() for part in check.name.split("-")),
                "shortDescription": {"text": check.summary},
                "fullDescription": {"text": check.rationale},
                "help": {
                    "text": f"{check.rationale}\n\nFix:\n{check.fix.strip()}",
                    "markdown": f"{check.rationale}\n\n```python\n{check.fix.strip()}\n```",
                },
                "defaultConfiguration": {"level": LEVEL[check.severity.value]},
                "properties": {"tags": [check.stage, "attention"]},
            }
        )
    return rules


def _uri(file: str) -> str:
    if file.startswith("<"):
        return file.strip("<>")
    path = Path(file)
    return path.as_posix() if not path.is_absolute() else path.as_uri()


def _physical(location: Location | None, file: str) -> dict[str, Any]:
    """The user's source line when the capture recorded one (code scanning annotates it),
    else the tensor file."""
    if location is None:
        return {"artifactLocation": {"uri": _uri(file)}}
    region: dict[str, Any] = {"startLine": location.line}
    if location.code:
        region["snippet"] = {"text": location.code}
    return {"artifactLocation": {"uri": _uri(location.file)}, "region": region}


def render_sarif(report: Report) -> str:
    rules = rule_entries()
    index = {rule["id"]: i for i, rule in enumerate(rules)}
    results = []
    for case in report.cases:
        for finding in case.findings:
            result: dict[str, Any] = {
                "ruleId": finding.code,
                "ruleIndex": index[finding.code],
                "level": LEVEL[finding.severity.value],
                "message": {"text": f"case {finding.case}: {finding.message}"},
                "locations": [
                    {
                        "physicalLocation": _physical(finding.location, case.file),
                        "logicalLocations": [
                            {
                                "name": case.name,
                                "fullyQualifiedName": f"{case.file}::{case.name}",
                                "kind": "object",
                            }
                        ],
                    }
                ],
                "partialFingerprints": {"attndbg/v1": f"{case.name}:{finding.code}:{finding.head}"},
                "properties": {
                    "evidence": finding.evidence,
                    "stage": finding.stage,
                    "fix": finding.fix,
                    **({"head": finding.head} if finding.head is not None else {}),
                },
            }
            if getattr(finding, "baselined", False):
                result["baselineState"] = "unchanged"
                result["suppressions"] = [{"kind": "external", "justification": "in the baseline"}]
            results.append(result)
    invocation = {"executionSuccessful": True, "exitCode": report.exit_code()}
    return sarif_log(rules, results, invocations=[invocation])


def render_sarif_rules() -> str:
    """The rule registry alone (``attndbg rules --format sarif``): a run with no results."""
    return sarif_log(rule_entries(), [])


def sarif_log(rules: list[dict[str, Any]], results: list[dict[str, Any]], **run: Any) -> str:
    """One SARIF 2.1.0 run of attndbg with these rules and results (``run`` adds run fields)."""
    sarif = {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "attndbg",
                        "version": __version__,
                        "informationUri": "https://github.com/attndbg/attndbg",
                        "rules": rules,
                    }
                },
                **run,
                "results": results,
            }
        ],
    }
    from attndbg.render.json_report import to_json

    return to_json(sarif)
