"""Shared by the notebook generators: build a notebook from ("md" | "code", source) cells, execute it, write it.

The notebooks are stored executed, with their printed output and figures, so that a reader on GitHub
sees results and not only code; ``tests/test_notebooks.py`` executes them again and checks that the
stored cells are the generators' cells.
"""

import os
import pathlib
import tempfile

import nbformat as nbf
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"

# Per-cell limit while executing (the notebooks run in about a minute on a laptop CPU).
CELL_TIMEOUT_S = 1200


def build_notebook(cells) -> nbf.NotebookNode:
    """An unexecuted notebook of ``cells``: ("md" | "code", source) pairs."""
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells
    ]
    return nb


def execute_notebook(nb: nbf.NotebookNode) -> nbf.NotebookNode:
    """Executes ``nb`` in place, in a temporary working directory (whatever it writes is discarded).

    Cell timing metadata is not recorded: it changes on every run and tells a reader nothing.
    JAXDRR_REPO tells a notebook that reads the repository's data (05) where the clone is.
    """
    os.environ.setdefault("JAXDRR_REPO", str(NOTEBOOKS.parent))
    with tempfile.TemporaryDirectory() as workdir:
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT_S,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": workdir}},
        )
        client.execute()
    return nb


def write_notebook(cells, name: str, *, execute: bool = True) -> pathlib.Path:
    """Writes ``notebooks/<name>``, executed unless ``execute`` is False, and returns its path."""
    nb = build_notebook(cells)
    if execute:
        execute_notebook(nb)
    out = NOTEBOOKS / name
    nbf.write(nb, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB)")
    return out
