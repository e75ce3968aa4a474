"""Shared by the notebook generators: write a list of ("md" | "code", source) cells as a notebook."""

import pathlib

import nbformat as nbf


def write_notebook(cells, name: str) -> pathlib.Path:
    """Writes ``notebooks/<name>`` (unexecuted; the test suite executes it) and returns its path."""
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells
    ]
    out = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / name
    nbf.write(nb, out)
    print(f"wrote {out}")
    return out
