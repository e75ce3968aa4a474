"""The notebooks: stored executed (outputs and figures, as a reader on GitHub sees them), equal to their
generators' cells, and still running end to end (their cells assert their own results)."""

import importlib
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Notebook -> the tools/ script that writes (and executes) it. 02 predates the generators; it is
# stored executed as well, and test_registration.py runs it.
GENERATORS = {
    "01_quickstart.ipynb": "make_quickstart_notebook",
    "03_dataset.ipynb": "make_dataset_notebook",
    "04_tools.ipynb": "make_tools_notebook",
    "05_real_fluoroscopy.ipynb": "make_real_fluoro_notebook",
}
NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_registration.ipynb",
    "03_dataset.ipynb",
    "04_tools.ipynb",
    "05_real_fluoroscopy.ipynb",
)

# A stored notebook is a few modest figures and short printouts; more means a figure or an output
# grew out of hand.
MAX_NOTEBOOK_BYTES = 800_000


def run_notebook(name: str, workdir: pathlib.Path) -> str:
    """Executes notebooks/<name> in ``workdir``; returns the text of its outputs."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_is_executed_with_figures(name):
    path = ROOT / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a cell was not executed"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure stored"
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES


@pytest.mark.parametrize(("name", "generator"), GENERATORS.items())
def test_stored_notebook_is_its_generators(name, generator, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    cells = importlib.import_module(generator).CELLS
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    stored = [(c.cell_type, c.source) for c in nb.cells]
    expected = [("markdown" if kind == "md" else "code", source) for kind, source in cells]
    assert stored == expected, f"notebooks/{name} is stale: run python tools/{generator}.py"


def test_quickstart_notebook_runs(tmp_path):
    assert "recovered (LAO, CRAN)" in run_notebook("01_quickstart.ipynb", tmp_path)


def test_dataset_notebook_runs(tmp_path):
    assert "dataset checks passed: 8 samples" in run_notebook("03_dataset.ipynb", tmp_path)
    assert (tmp_path / "data" / "coco.json").is_file()


def test_tools_notebook_runs(tmp_path):
    assert "final: tip" in run_notebook("04_tools.ipynb", tmp_path)


def test_real_fluoroscopy_notebook_runs(tmp_path, monkeypatch):
    # The notebook reads data/ of the clone; CI installs jaxdrr into site-packages, so say where the clone is.
    monkeypatch.setenv("JAXDRR_REPO", str(ROOT))
    assert "similarity checks passed" in run_notebook("05_real_fluoroscopy.ipynb", tmp_path)
