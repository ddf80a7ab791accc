"""The HTML page: static sections (summary, findings, cases) written here, the interactive
overview grid and heatmap drawn by the inline script from two embedded JSON blocks — the report
itself (``Report.to_dict``, the same document as ``--format json``) and the pooled maps.

Nothing is fetched: scripts, styles and data are inline, and a Content-Security-Policy forbids
every network request, so the file works offline and can be attached to an issue as it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from html import escape
from importlib import resources
from typing import Any

from attndbg.render.html.maps import CaseMaps
from attndbg.render.json_report import render_json
from attndbg.report import CaseReport, Finding, Report, Severity

_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)


def _static(name: str) -> str:
    static = resources.files("attndbg.render.html").joinpath("static")
    return static.joinpath(name).read_text(encoding="utf-8")


def _json_script(element_id: str, data: Any) -> str:
    """JSON inside a <script> element: ``<`` escaped so that no string can close the element."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if not math.isfinite(value) or value == 0:
        return str(value) if value else "0"
    return f"{value:.3e}" if abs(value) >= 1e5 or abs(value) < 1e-3 else f"{value:.4g}"


def _evidence_value(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(_evidence_value(v) for v in value[:12])
        return f"[{shown}{', …' if len(value) > 12 else ''}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_evidence_value(v)}" for k, v in value.items()) + "}"
    return _number(value)


# Pygments comes with Rich; it ships no type hints (types-Pygments is not a dependency), and the
# three calls below return str.
def _highlight(code: str) -> str:
    from pygments import highlight  # type: ignore[import-untyped]
    from pygments.formatters import HtmlFormatter  # type: ignore[import-untyped]
    from pygments.lexers import PythonLexer  # type: ignore[import-untyped]

    return str(highlight(code, PythonLexer(), HtmlFormatter(cssclass="code")))


def _code_styles() -> str:
    from pygments.formatters import HtmlFormatter

    return str(HtmlFormatter(style="default").get_style_defs(".code"))


def _location(finding: Finding) -> dict[str, Any] | None:
    """The source location a traced capture attaches to a finding, when there is one."""
    location = getattr(finding, "location", None)
    if location is None:
        return None
    if dataclasses.is_dataclass(location) and not isinstance(location, type):
        return dataclasses.asdict(location)
    return dict(location) if isinstance(location, dict) else {"text": str(location)}


def _message(finding: Finding) -> str:
    return finding.message.removeprefix(f"case {finding.case}: ")


def named_heads(finding: Finding) -> list[int]:
    """The heads a finding is about: its ``head``, and the ``heads`` its evidence lists (a pattern
    check names one finding for every head it caught)."""
    listed = finding.evidence.get("heads") if isinstance(finding.evidence, dict) else None
    heads = [finding.head] if finding.head is not None else []
    if isinstance(listed, list):
        heads += [h for h in listed if isinstance(h, int) and not isinstance(h, bool)]
    return list(dict.fromkeys(heads))


def _finding_html(finding: Finding, case_index: int) -> str:
    severity = finding.severity.value
    heads = named_heads(finding)
    target = f"case={case_index}" + (f"&head={heads[0]}" if heads else "")
    where = escape(finding.case) + (
        f" · head{'s' if len(heads) > 1 else ''} {', '.join(map(str, heads))}" if heads else ""
    )
    parts = [
        f'<article class="finding sev-{severity}" data-case="{case_index}"'
        f' data-heads="{" ".join(map(str, heads))}" data-code="{escape(finding.code)}">',
        '<header><span class="badge">' + escape(severity) + "</span> "
        f"<code>{escape(finding.code)}</code> {escape(finding.name)}"
        + (' <span class="muted">(baseline)</span>' if finding.baselined else "")
        + f' <a class="goto" href="#{target}">{where}</a></header>',
        f"<p>{escape(_message(finding))}</p>",
    ]
    if finding.evidence:
        rows = "".join(
            f"<dt>{escape(str(key))}</dt><dd>{escape(_evidence_value(value))}</dd>"
            for key, value in finding.evidence.items()
        )
        parts.append(f'<dl class="evidence">{rows}</dl>')
    location = _location(finding)
    if location:
        place = ":".join(str(location[k]) for k in ("file", "line") if location.get(k) is not None)
        function = f" in <code>{escape(str(location['function']))}</code>" if location.get("function") else ""
        parts.append(f'<div class="location">at <code>{escape(place)}</code>{function}</div>')
        code = location.get("code") or location.get("text")
        if code:
            parts.append(_highlight(str(code)))
    if finding.fix:
        parts.append(f'<div class="fix"><div class="muted">fix</div>{_highlight(finding.fix)}</div>')
    parts.append("</article>")
    return "".join(parts)


def _ordered(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-f.severity.rank, f.code, -1 if f.head is None else f.head))


def _findings_section(report: Report) -> str:
    blocks = [
        _finding_html(finding, index)
        for index, case in enumerate(report.cases)
        for finding in _ordered(case.findings)
    ]
    body = "".join(blocks) if blocks else '<p class="ok">No findings.</p>'
    return f'<section id="findings"><h2>Findings</h2>{body}</section>'


def _tensor_rows(case: CaseReport) -> str:
    rows = []
    for t in case.tensors:
        bad = t.nan + t.posinf + t.neginf
        cells = [
            escape(t.role),
            escape(t.key),
            "×".join(map(str, t.shape)) or "scalar",
            escape(t.dtype),
            *(_number(x) if x is not None else "—" for x in (t.min, t.max, t.mean, t.std)),
        ]
        cells.append(f'<span class="{"bad" if bad else "muted"}">{t.nan}/{t.posinf + t.neginf}</span>')
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{c}</th>" for c in ("role", "tensor", "shape", "dtype", "min", "max", "mean", "std", "nan/inf")
    )
    return f'<table class="tensors"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _case_section(case: CaseReport, index: int) -> str:
    counts = case.counts()
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
    settings = {k: v for k, v in case.settings.items() if k != "origins"}
    setting_text = "  ".join(f"{k}={_number(v)}" for k, v in settings.items())
    stages = " ".join(
        f'<span class="stage st-{escape(s.status)}" title="{escape(s.reason)}">{escape(s.name)}</span>'
        for s in case.stages
    )
    guesses = "".join(f'<li class="assumed">assumed: {escape(g)}</li>' for g in case.guesses)
    source = f" · source {escape(case.source)}" if case.source else ""
    return (
        f'<section class="case" id="case-{index}"><h3>{escape(case.name)}</h3>'
        f'<p class="muted">{escape(case.file)}{source} · {escape(tally)}</p>'
        f"{_tensor_rows(case) if case.tensors else ''}"
        f'<p class="settings">layout {escape(case.layout or "—")} · dtype {escape(case.dtype)} · device '
        f"{escape(case.device)} · {escape(setting_text)}</p>"
        f'<ul class="guesses">{guesses}</ul><p class="stages">stages {stages}</p></section>'
    )


def _summary(report: Report) -> str:
    counts = report.counts()
    parts = [
        f'<span class="count sev-{s.value}">{counts[s.value]} {s.value}{"s" if counts[s.value] != 1 else ""}'
        "</span>"
        for s in Severity
    ]
    cases = len(report.cases)
    inputs = ", ".join(escape(i) for i in report.inputs)
    return (
        f'<p class="summary">{cases} case{"s" if cases != 1 else ""}: {" ".join(parts)} '
        f'<span class="muted">(fail-on {escape(report.fail_on)}: exit {report.exit_code()})</span></p>'
        f'<p class="muted">inputs: {inputs}</p>'
    )


def _maps_by_case(report: Report, maps: Sequence[CaseMaps]) -> list[dict[str, Any] | None]:
    """The maps aligned with ``report.cases`` (by file and case name), None where a case has none."""
    by_key = {(m.file, m.case): m for m in maps}
    return [by_key[(c.file, c.name)].to_dict() if (c.file, c.name) in by_key else None for c in report.cases]


def render_html(
    report: Report,
    maps: Sequence[CaseMaps] = (),
    *,
    title: str = "attndbg report",
    open_head: tuple[int, int, int] | None = None,
) -> str:
    """One self-contained HTML document of ``report``, with the heatmaps of ``maps``.

    ``open_head`` = (case index, head, batch row) is the head shown first (by default the head
    the most severe finding names); an address such as ``report.html#case=3&head=5`` wins."""
    from attndbg import __version__

    cases = "".join(_case_section(case, i) for i, case in enumerate(report.cases))
    return _static("page.html").format_map(
        {
            "title": escape(title),
            "open": "/".join(map(str, open_head)) if open_head else "",
            "csp": _CSP,
            "version": escape(__version__),
            "style": _static("report.css") + _code_styles(),
            "summary": _summary(report),
            "findings": _findings_section(report),
            "cases": cases,
            "report_json": _json_script("attndbg-report", json.loads(render_json(report))),
            "maps_json": _json_script("attndbg-maps", _maps_by_case(report, maps)),
            "script": _static("report.js"),
        }
    )
