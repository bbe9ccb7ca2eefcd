"""Imports run one way (docs/ARCHITECTURE.md): cli -> stages -> train | eval | serve -> building blocks -> core.

Every module's imports are read with ``ast`` (function-level imports included, so a lazy import cannot hide a
crossing), without importing anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lumi"

# top-level part of a module name -> layer (higher imports lower, never the reverse)
LAYERS = {"core": 1, "formats": 2, "lm": 2, "data": 2, "corpus": 2, "generation": 2, "model": 2, "lora": 2,
          "train": 3, "eval": 3, "serve": 3, "stages": 4, "cli": 5}
# the package root (version) and ``python -m lumi`` sit outside the layers
UNLAYERED = {"__init__", "__main__"}
# layer-3 packages that must not import each other: what two of them share belongs below them
PEERS = {"train", "eval", "serve"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def lumi_imports(path: Path) -> set[str]:
    """Every ``lumi...`` module ``path`` imports (``from lumi.x import y`` counts as lumi.x.y when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "lumi")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "lumi":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").is_file() or \
                    (PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").is_file()
                found.add(candidate if is_module else node.module)
    return found


def top(name: str) -> str:
    """``lumi.train.objectives.pretrain`` -> ``train``; ``lumi`` itself -> ``__init__``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_layer():
    unknown = {top(module_name(path)) for path in MODULES} - set(LAYERS) - UNLAYERED
    assert not unknown, f"add {sorted(unknown)} to LAYERS here and to docs/ARCHITECTURE.md"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_imports_run_one_way(path: Path):
    importer = module_name(path)
    source = top(importer)
    crossings = []
    for imported in sorted(lumi_imports(path)):
        target = top(imported)
        if imported == "lumi" or target in UNLAYERED:
            continue
        if target == "cli" and source != "__main__":  # python -m lumi is an entry point, as the scripts are
            crossings.append(f"{imported}: nobody imports the CLI (the numbered scripts call lumi.cli.main)")
        elif source in UNLAYERED:
            continue
        elif source == "stages" and target == "stages" and imported != importer:
            crossings.append(f"{imported}: a stage module never imports another stage module")
        elif source != target and source in PEERS and target in PEERS:
            crossings.append(f"{imported}: train, eval and serve never import each other (share through lm/, "
                             "formats/ or data/)")
        elif LAYERS[target] > LAYERS[source]:
            crossings.append(f"{imported}: layer {target} ({LAYERS[target]}) sits above {source} ({LAYERS[source]})")
    assert not crossings, f"{importer} imports upwards:\n" + "\n".join(crossings)


def test_the_rule_catches_a_crossing(tmp_path: Path):
    """The parser sees function-level imports and the ``from package import module`` form."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from lumi.formats import packed\n    import lumi.cli\n")
    assert lumi_imports(module) == {"lumi.formats.packed", "lumi.cli"}
