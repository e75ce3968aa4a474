"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace (a later block may use what an earlier one
defined, as a reader would), in a fresh temporary working directory that holds small stand-ins for
the files the documents name (:data:`FIXTURE_FILES`: a tiny CT as ``scan.nii.gz``/``ct.nii.gz``, a
small dataset spec as ``pelvis.toml``).

Markers, as HTML comments (not rendered) on the lines directly above a block's opening fence:

* ``<!-- docs-test: replace OLD => NEW -->``: run the block with ``OLD`` replaced by ``NEW``, e.g.
  fewer Monte Carlo photons. ``OLD`` must occur in the block, so a marker cannot outlive its text.
* ``<!-- docs-test: skip REASON -->``: do not run the block; the reason is required and shows in
  the Markdown source next to the block.

A traceback of a failing block points at the Markdown file and line.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
FIXTURE_FILES = ("scan.nii.gz", "ct.nii.gz", "pelvis.toml")

# The tiny CT behind the file names: the analytic pelvis on a 40 x 32 x 24 grid of 2.5 mm voxels
# (near the V-Net's 2 mm grid, so segmenting it stays small).
FIXTURE_CT_SHAPE = (40, 32, 24)
FIXTURE_CT_SPACING_MM = 2.5

# The example spec of `jaxdrr dataset init`, shrunk: key -> its value in the fixture.
FIXTURE_SPEC = {
    "images_per_ct": "4",
    "shape": "[32, 28, 24]",
    "height": "32",
    "width": "32",
    "pixel_mm": "[12.0, 14.0]",
    "shard_size": "4",
    "batch_size": "4",
    "scatter_probability": "0.0",  # the scatter network's compilation is the largest part
    "heatmaps": "false",
}


@dataclasses.dataclass(frozen=True)
class Block:
    """A ```python block: its source (markers applied), where it starts, and its skip reason."""

    source: str
    line: int  # 1-based line of the first line of code
    skip: str | None


def markers_above(lines: list[str], fence_index: int) -> list[tuple[int, str, str]]:
    """(line index, kind, argument) of the markers directly above line ``fence_index``, in order."""
    markers = []
    i = fence_index - 1
    while i >= 0 and (m := MARKER.match(lines[i])):
        markers.append((i, m.group(1), m.group(2)))
        i -= 1
    return markers[::-1]


def python_blocks(doc: pathlib.Path) -> list[Block]:
    """The ```python blocks of ``doc`` with their markers applied.

    Raises:
      ValueError: a marker that is unknown, not directly above a ```python block, a replace whose
        text is not in its block, or a skip without a reason.
    """
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, used, i = [], set(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, language = m.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if language == "python":
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]]
            source, skip = "\n".join(body) + "\n", None
            for n, kind, arg in markers_above(lines, i):
                used.add(n)
                where = f"{doc.name}:{i + 1}"
                if kind == "skip":
                    if not arg:
                        raise ValueError(f"{where}: docs-test skip needs a reason")
                    skip = arg
                elif kind == "replace":
                    old, sep, new = arg.partition(" => ")
                    if not sep or old not in source:
                        raise ValueError(f"{where}: docs-test replace {old!r}: not in the block")
                    source = source.replace(old, new)
                else:
                    raise ValueError(f"{where}: unknown docs-test marker {kind!r}")
            blocks.append(Block(source, i + 2, skip))
        i = end + 1
    stray = [n + 1 for n, line in enumerate(lines) if MARKER.match(line) and n not in used]
    if stray:
        raise ValueError(f"{doc.name}: docs-test markers not directly above a ```python block, lines {stray}")
    return blocks


DOCS_WITH_CODE = [doc for doc in DOCS if python_blocks(doc)]


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> pathlib.Path:
    """The stand-ins for the files the documents name, made once."""
    import nibabel as nib

    import jaxdrr
    import jaxdrr.datasets

    directory = tmp_path_factory.mktemp("docs_fixtures")
    ct = jaxdrr.phantom(shape=FIXTURE_CT_SHAPE, spacing=FIXTURE_CT_SPACING_MM)
    image = nib.Nifti1Image(np.asarray(ct.data, dtype=np.int16), np.asarray(ct.affine, dtype=np.float64))
    for name in ("scan.nii.gz", "ct.nii.gz"):
        nib.save(image, directory / name)
    spec = directory / "pelvis.toml"
    jaxdrr.datasets.write_example_spec(spec)
    text = spec.read_text()
    for key, value in FIXTURE_SPEC.items():
        text, count = re.subn(rf"(?m)^{key}\s*=\s*[^#\n]*", f"{key} = {value}  ", text)
        assert count == 1, f"the example spec has no single {key!r} line"
    spec.write_text(text)
    jaxdrr.datasets.load_spec(spec)  # still valid
    assert sorted(p.name for p in directory.iterdir()) == sorted(FIXTURE_FILES)
    return directory


@pytest.mark.parametrize("doc", DOCS_WITH_CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(doc, fixture_dir, tmp_path, monkeypatch):
    for name in FIXTURE_FILES:
        shutil.copy(fixture_dir / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for block in python_blocks(doc):
        if block.skip is None:
            # Padded so that line numbers in a traceback are the Markdown file's.
            code = compile("\n" * (block.line - 1) + block.source, str(doc), "exec")
            exec(code, namespace)


def test_markers_are_well_formed(tmp_path):
    for doc in DOCS:
        python_blocks(doc)  # raises on a stray, unknown or stale marker
    doc = tmp_path / "x.md"
    doc.write_text("<!-- docs-test: replace 256 => 32 -->\n```python\nx = 256\n```\n")
    assert python_blocks(doc) == [Block("x = 32\n", 3, None)]
    for text in (
        "<!-- docs-test: replace 512 => 32 -->\n```python\nx = 256\n```\n",  # stale
        "<!-- docs-test: skip -->\n```python\nx = 1\n```\n",  # no reason
        "<!-- docs-test: skip why -->\n```bash\nls\n```\n",  # not a python block
        "<!-- docs-test: skip why -->\n\n```python\nx = 1\n```\n",  # not directly above
        "<!-- docs-test: frobnicate -->\n```python\nx = 1\n```\n",
    ):
        doc.write_text(text)
        with pytest.raises(ValueError):
            python_blocks(doc)
