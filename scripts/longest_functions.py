"""The longest functions of the attndbg package, in lines and statements, at a git revision.

    python scripts/longest_functions.py            # the working tree
    python scripts/longest_functions.py 7ed90f2    # a commit (read with git show, no checkout)

Used for the before/after table of a refactor: long functions are where changes collide.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources(revision: str | None) -> dict[str, str]:
    """Path → text of every module under attndbg/, at ``revision`` or in the working tree."""
    if revision is None:
        return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in ROOT.glob("attndbg/**/*.py")}
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", revision, "attndbg"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    return {
        path: subprocess.run(
            ["git", "show", f"{revision}:{path}"], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
        for path in listing
        if path.endswith(".py")
    }


def functions(path: str, text: str) -> list[tuple[int, int, str]]:
    """(lines, statements, qualified name) of every function, methods and nested ones included."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    statements = sum(isinstance(n, ast.stmt) for n in ast.walk(child)) - 1
                    found.append((child.end_lineno - child.lineno + 1, statements, f"{path}:{name}"))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(text), "")
    return found


def main() -> None:
    revision = sys.argv[1] if len(sys.argv) > 1 else None
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    everything = [f for path, text in sources(revision).items() for f in functions(path, text)]
    print(f"| lines | statements | function ({revision or 'working tree'}) |")
    print("| ---: | ---: | --- |")
    for lines, statements, name in sorted(everything, reverse=True)[:count]:
        print(f"| {lines} | {statements} | `{name}` |")


if __name__ == "__main__":
    main()
