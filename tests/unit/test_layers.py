"""The package's layers (docs/design.md, Layers): imports run downwards only, and no module imports itself back
through others."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "runbook_lib"
BASE = {"runbook_lib", "runbook_lib.acl", "runbook_lib.addresses", "runbook_lib.config", "runbook_lib.exceptions",
        "runbook_lib.checks", "runbook_lib.files", "runbook_lib.meminfo", "runbook_lib.progress"}
ALLOWED = {
    "base": BASE,
    "cluster": BASE | {"runbook_lib.cluster"},
    "watch": BASE | {"runbook_lib.cluster", "runbook_lib.watch"},
    "sections": BASE | {"runbook_lib.cluster", "runbook_lib.watch", "runbook_lib.sections"},
    "sandbox": BASE | {"runbook_lib.cluster", "runbook_lib.sandbox"},
    "run": BASE | {"runbook_lib.cluster", "runbook_lib.watch", "runbook_lib.sections", "runbook_lib.run",
                   "runbook_lib.sandbox"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every runbook_lib module a file imports, at the top or inside functions, TYPE_CHECKING blocks included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runbook_lib"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                         or (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).is_dir())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("runbook_lib"))
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "base"


def allowed(module: str, target: str) -> bool:
    return target in ALLOWED[layer(module)] or any(target.startswith(p + ".") for p in ALLOWED[layer(module)]
                                                   if p != "runbook_lib")


GRAPH = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_downwards(module):
    wrong = sorted(t for t in GRAPH[module] if not allowed(module, t))
    assert not wrong, f"{module} ({layer(module)} layer) imports {wrong}"


def test_the_engine_imports_no_section_watcher_or_runner():
    engine = {m: t for m, t in GRAPH.items() if m.startswith("runbook_lib.cluster")}
    assert engine, "no engine modules found"
    for module, targets in engine.items():
        assert not [t for t in targets if t.split(".")[1:2] and t.split(".")[1] in ("sections", "watch", "run",
                                                                                   "sandbox")], module


def test_no_import_cycle():
    def visit(module, path):
        for target in GRAPH.get(module, ()):
            if target in path:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            visit(target, path + [target])
    for module in GRAPH:
        visit(module, [module])


def test_the_check_finds_a_violation(tmp_path):
    """The layer rule fails where it should: a cluster module importing a section is refused."""
    assert not allowed("runbook_lib.cluster.mover", "runbook_lib.sections.validate")
    assert not allowed("runbook_lib.watch.throttle", "runbook_lib.sections.preflight")
    assert not allowed("runbook_lib.sandbox.local", "runbook_lib.sections.validate")
    assert allowed("runbook_lib.sections.rollback", "runbook_lib.cluster.mover")


NOTEBOOKS = PACKAGE.parent / "notebooks"
NOTEBOOK_MAY_IMPORT = ("runbook_lib.sections", "runbook_lib.run.notebook", "runbook_lib.run.charts")
"""Notebooks are the user interface: they call the sections and the notebook helpers, never the engine below."""


def notebook_imports(path: Path) -> set[str]:
    """Every runbook_lib module a notebook's code cells import."""
    cells = json.loads(path.read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runbook_lib"):
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("runbook_lib"))
    return found


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_import_only_sections_and_the_notebook_helpers(path):
    wrong = sorted(m for m in notebook_imports(path) if not m.startswith(NOTEBOOK_MAY_IMPORT))
    assert not wrong, f"{path.name} imports {wrong}: call a section instead"


def test_the_notebook_rule_fails_on_an_engine_import(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["from runbook_lib.cluster import topology\n"]}]}))
    assert "runbook_lib.cluster.topology" in notebook_imports(bad)
    assert not "runbook_lib.cluster.topology".startswith(NOTEBOOK_MAY_IMPORT)
