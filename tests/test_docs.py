"""Documents generated from the code stay in step with it."""

from __future__ import annotations

from conftest import ROOT, run_cli

from attndbg.registry import load_checks
from attndbg.render.rules import REGENERATE


def test_rules_md_is_up_to_date() -> None:
    result = run_cli("rules", "--format", "markdown")
    assert result.returncode == 0, result.stderr
    committed = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    assert result.stdout == committed, f"docs/rules.md is stale: run `{REGENERATE}`"


def test_rules_md_has_every_check_and_its_fix() -> None:
    text = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    for check in load_checks().values():
        assert f"\n## {check.code}\n" in text
        assert check.fix.strip().splitlines()[0] in text


def test_no_document_a_user_lacks_is_cited() -> None:
    # "design §N" pointed at a document outside the repository; docs/architecture.md replaces it
    sources = [*(ROOT / "attndbg").rglob("*.py"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    citing = [str(p.relative_to(ROOT)) for p in sources if "design §" in p.read_text(encoding="utf-8")]
    assert citing == []
    assert (ROOT / "docs" / "architecture.md").exists()
