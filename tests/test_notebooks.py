"""The notebooks are stored without outputs and run top to bottom against the ml package.

Executed here with nbclient (the engine behind nbmake and nbconvert), so the ordinary
``pytest`` run in ``make test`` covers them; ``pytest --nbmake notebooks/`` works too.
"""
from __future__ import annotations

import time

import nbformat
import pytest

from ml.spec.config import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT = 120  # seconds per cell; both notebooks together take well under a minute

pytestmark = pytest.mark.slow


def test_both_notebooks_are_present():
    assert [p.name for p in NOTEBOOKS] == ["1.0-german-credit-exploration.ipynb",
                                           "2.0-model-selection.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_errors(path):
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert time.perf_counter() - started < 60
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    # Every code cell produced something to look at (a table, a figure or a line).
    assert all(c.outputs for c in notebook.cells if c.cell_type == "code")
