"""Committed notebooks are reviewable: no outputs, exactly one typed parameters cell, the python3 kernel."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from runbook_lib.run.notebook import KINDS, PARAMETERS
from runbook_lib.run.report import available

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
EXPECTED = ["00_preflight", "10_backup", "20_add_masters", "25_add_replicas", "30_plan", "40_migrate",
            "60_validate", "70_monitoring", "90_rollback"]
EXTRA = {"40_migrate": {"max_batches"}}
"""Parameters a notebook declares beyond the common ones (`runbook run` passes only those, so each has a default)."""


def test_every_section_has_a_notebook():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


def test_the_runner_finds_them_in_run_order():
    assert available() == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs: strip them"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged parameters"
    tree = ast.parse(tagged[0].source)
    names = {}
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Constant), "parameters: literals with a type only"
        names[node.target.id] = node.annotation.id
    assert {k: names.get(k) for k in PARAMETERS} == {k: v.__name__ for k, v in PARAMETERS.items()}
    assert set(names.values()) <= set(KINDS), f"parameter types must be one of {sorted(KINDS)}"
    assert set(names) - set(PARAMETERS) == EXTRA.get(path.stem, set()), "a parameter of its own: list it in EXTRA"
    assert all("#" in line for line in tagged[0].source.splitlines()), "each parameter needs a # help comment"
    assert "open_section(" in nb.cells[nb.cells.index(tagged[0]) + 1].source, "the next cell must validate the parameters"
    for cell in nb.cells:
        assert "input(" not in cell.source and "sys.exit" not in cell.source
