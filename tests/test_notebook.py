"""notebooks/explore.ipynb runs end to end on the tables of a real (smoke) workflow run.

It reads the session's smoke workflow run (tests/conftest.py, a temporary directory); the notebook runs in a kernel of this very interpreter (a kernelspec
written to a temporary JUPYTER_PATH, so no `ipykernel install` and no other Python is picked up).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

from support.workflow import REPO

BIN = Path(sys.executable).parent
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"
KERNEL = "personadrift-test-venv"


def test_notebook_is_committed_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i} has committed outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'RESULTS = "results/embedded-default"' in params[0].source
    assert "PERSONADRIFT_RESULTS" in "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= sum(c.cell_type == "code" for c in nb.cells)
    assert [c for c in nb.cells if "figure" in c.metadata.get("tags", [])], "no cell tagged figure"


@pytest.fixture(scope="module")
def smoke_results(smoke):
    """results/smoke of the session's real smoke workflow run (tests/conftest.py)."""
    results = smoke / "results" / "smoke"
    assert (results / "tables/none/by_round.csv").exists() and (results / "scores/none.csv").exists()
    return results


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A kernelspec named KERNEL that starts ipykernel with sys.executable (the venv's Python)."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "personadrift venv (tests)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend draws into the outputs
    return KERNEL


@pytest.mark.slow
def test_notebook_runs_on_the_smoke_study(smoke_results, venv_kernel, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("PERSONADRIFT_RESULTS", str(smoke_results))  # the kernel inherits it
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # run in a folder with no results/ in it: only the environment variable can point at the study
    NotebookClient(nb, kernel_name=venv_kernel, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    figures = [c for c in nb.cells if "figure" in c.metadata.get("tags", [])]
    assert len(figures) >= 2
    for cell in figures:
        images = [o for o in cell.outputs if o.output_type == "display_data" and "image/png" in o.data]
        assert images, f"figure cell drew no image:\n{cell.source[:200]}"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")
    assert str(smoke_results) in text and "3 conversations" in text
