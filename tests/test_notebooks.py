"""Executes the notebooks end to end (their cells assert their own results)."""

import pathlib

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_notebook(name: str, workdir: pathlib.Path) -> str:
    """Executes notebooks/<name> in ``workdir``; returns the text of its outputs."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_quickstart_notebook_runs(tmp_path):
    assert "recovered (LAO, CRAN)" in run_notebook("01_quickstart.ipynb", tmp_path)


def test_dataset_notebook_runs(tmp_path):
    assert "dataset checks passed: 8 samples" in run_notebook("03_dataset.ipynb", tmp_path)
    assert (tmp_path / "data" / "coco.json").is_file()
