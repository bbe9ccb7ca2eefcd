"""Imports run one way (docs/ARCHITECTURE.md): cli -> stages -> train | eval | serve -> building blocks -> core.

Every module's imports are read with ``ast`` (function-level imports included, so a lazy import cannot hide a
crossing), without importing anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lumi"

# top-level part of a module name -> layer (higher imports lower, never the reverse). Inside the building blocks the
# order is core < formats < lm, model < data < lora < corpus, generation, loading: file formats know no model code,
# the loader (lumi/loading.py, the one way into a model) sits above everything it verifies and loads.
LAYERS = {"core": 1, "formats": 2, "lm": 3, "model": 3, "data": 4, "lora": 5, "corpus": 6, "generation": 6,
          "loading": 6, "train": 7, "eval": 7, "serve": 7, "stages": 8, "cli": 9}
# Crossings still to remove (issue #24: the stage-60/85 builders and the RL prompt sources move next to the corpus code
# they use -- the world resolved from its corpus config), each named
# by importer and imported package; a crossing not listed here fails, and so does an entry that no longer crosses.
KNOWN_CROSSINGS = {("lumi.data.sft_corpus", "corpus"), ("lumi.data.rl_prompts", "corpus")}
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
        elif LAYERS[target] > LAYERS[source] and (importer, target) not in KNOWN_CROSSINGS:
            crossings.append(f"{imported}: layer {target} ({LAYERS[target]}) sits above {source} ({LAYERS[source]})")
    assert not crossings, f"{importer} imports upwards:\n" + "\n".join(crossings)


def test_known_crossings_still_cross():
    """An entry of KNOWN_CROSSINGS that was fixed is removed from it, so the list only shrinks."""
    paths = {module_name(path): path for path in MODULES}
    for importer, target in sorted(KNOWN_CROSSINGS):
        assert any(top(imported) == target for imported in lumi_imports(paths[importer])), \
            f"{importer} no longer imports {target}: remove it from KNOWN_CROSSINGS"


def test_no_import_cycle_between_modules():
    """No module reaches itself through the imports of lumi modules (a cycle hides in lazy imports otherwise)."""
    known = {module_name(path) for path in MODULES}
    graph = {module_name(path): {name for name in lumi_imports(path) if name in known} for path in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycle = path[path.index(imported):] + [imported]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, path + [imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


# Everything that is not a command line: the library, and the tests, benchmarks, scripts and runs that use it.
STAGE_IMPORTERS = ("cli", "stages")
OUTSIDE_THE_PACKAGE = ("tests", "benchmarks", "scripts", "runs")
NON_STAGE_FILES = sorted([path for path in MODULES if top(module_name(path)) not in STAGE_IMPORTERS] +
                         [path for folder in OUTSIDE_THE_PACKAGE for path in (PACKAGE.parent / folder).rglob("*.py")])


@pytest.mark.parametrize("path", NON_STAGE_FILES, ids=lambda path: str(path.relative_to(PACKAGE.parent)))
def test_only_the_command_line_imports_a_stage(path: Path):
    """A stage module is its flags and its run(): what anything else needs from it (packing, tokenizer training, the
    evaluator, a corpus build) lives in the library below, and a stage's flags are reached through lumi.cli."""
    stages = sorted(name for name in lumi_imports(path) if name == "lumi.stages" or name.startswith("lumi.stages."))
    assert not stages, f"{path.relative_to(PACKAGE.parent)} imports {stages}: import the library module instead"


# The steps of the staging/replace protocol (issue #24): only lumi.core.files.OutputClaim takes them, for every
# stage output, corpus build and training run dir alike.
PROTOCOL_STEPS = {"restore_set_aside", "remove_stale_leftovers", "replace_dir", "aside_path"}
PROTOCOL_OWNER = PACKAGE / "core" / "files.py"


@pytest.mark.parametrize("path", [path for path in MODULES if path != PROTOCOL_OWNER],
                         ids=lambda path: module_name(path))
def test_one_owner_of_the_staging_protocol(path: Path):
    names = {node.id for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(node, ast.Name)}
    names |= {alias.name for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
              if isinstance(node, ast.ImportFrom) for alias in node.names}
    steps = sorted(names & PROTOCOL_STEPS)
    assert not steps, f"{module_name(path)} takes staging steps {steps} itself: go through lumi.core.files.OutputClaim"


def test_the_rule_catches_a_crossing(tmp_path: Path):
    """The parser sees function-level imports and the ``from package import module`` form."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from lumi.formats import packed\n    import lumi.cli\n")
    assert lumi_imports(module) == {"lumi.formats.packed", "lumi.cli"}
