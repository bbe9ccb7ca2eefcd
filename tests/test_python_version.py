"""pyproject's requires-python is a version the code's syntax runs on (issue #24): ``Literal[*NAMES]`` -- a starred
expression inside a subscript (PEP 646) -- is a SyntaxError before Python 3.11, so a package using it declares 3.11."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

REPO_ROOT = Path(__file__).resolve().parent.parent


def starred_subscripts() -> list[str]:
    """``file:line`` of every ``X[*Y]`` in the package (the 3.11-only syntax it uses)."""
    found = []
    for path in sorted((REPO_ROOT / "lumi").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Subscript) and any(isinstance(part, ast.Starred) for part in ast.walk(node.slice)):
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_requires_python_admits_no_version_the_syntax_fails_on():
    requires = SpecifierSet(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    uses = starred_subscripts()
    assert not (uses and "3.10" in requires), f"requires-python {requires} admits 3.10, but {uses[0]} needs 3.11"
