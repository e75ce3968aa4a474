"""On-disk layout of a dataset, atomic shard writing, and the reader (:func:`open_dataset`).

Layout of an output directory::

    spec.json                 the normalised spec and its digest (a resumed run must match it)
    shards/shard-000012.h5    one HDF5 file per shard: consecutive samples of one CT
    shards/shard-000012.json  its manifest entry: written (by rename) only after the .h5 is complete
    failures/ct-0003.json     a CT that could not be loaded, with the error (removed once it works)
    logs/process-000.log      one log per process
    manifest.json             written at the end: shard list, counts, failures, ``complete``
    coco.json                 COCO keypoints + RLE masks (``output.coco``), written at the end

Why HDF5, one file per shard: a shard is written once, by one process, to a temporary name and
renamed into place, and only then is its manifest entry renamed into place; a killed writer
leaves at most a temporary file (ignored and replaced on resume), never a half-written shard
that looks finished. HDF5 gives random access to every sample, compression, and readers in every
language (h5py in PyTorch ``Dataset`` code, also from JAX/NumPy); a shard file per (process, shard
index) needs neither parallel HDF5 nor locks. Why not one zarr store: two writers in one zarr shard
lose data, and a shard-per-file zarr is the same design with a less common reader.

Per-sample arrays in a shard (first axis = sample): ``index`` (global sample index), ``image``
[H, W] (``physics.output``: -ln transmission or transmission), ``P`` [3, 4], ``K`` [3, 3], ``R``
[3, 3], ``t`` [3] (``P = K [R | t]``, world mm RAS+ -> pixels (column, row)), ``source_mm`` [3],
the C-arm draw ``lao_deg``, ``cran_deg``, ``isocenter_mm`` [3], ``sdd_mm``, ``sid_mm``,
``pixel_mm``, the physics draw ``kvp``, ``photons_per_pixel``, ``scatter`` (bool),
``density_scale`` [M]; with landmarks ``landmarks_2d`` [L, 2] (column, row; pixel centres on
integers), ``landmarks_depth_mm`` [L], ``landmarks_in_image``, ``landmarks_in_front``,
``landmarks_visible`` (= both) [L]; optional ``heatmaps`` [L, H, W] float16, ``masks`` [labels, H,
W] uint8 (stored bit-packed along the label axis as ``masks_packed``, attribute ``mask_count``;
the reader unpacks them), ``path_lengths_mm`` [labels, H, W] float16, ``line_integrals`` [H, W, M] float16 (g/cm^2).
File attributes: ``ct``, ``ct_index``, ``landmark_names``, ``label_names``, ``label_ids``,
``material_names``, ``spec_digest`` (JSON strings where lists).

With ``[[tools]]`` (T tools, K = the largest keypoint count): ``tool_present`` [T] bool (drawn with
the tool's probability; an absent tool is out of the field of view), ``tool_pose`` [T, 4, 4] (the
drawn object -> world matrix, also for absent tools), ``tool_entry_mm`` [T, 3], ``tool_direction``
[T, 3] (unit axis, world), ``tool_depth_mm`` [T], ``tool_spin_deg`` [T] (a fixed pose: entry = tip,
depth = spin = 0), ``tool_keypoints_2d`` [T, K, 2] (column, row), ``tool_keypoints_depth_mm`` [T,
K], ``tool_keypoints_visible`` [T, K] (present, in front of the source and inside the detector;
False for padding), ``tool_masks`` [T, H, W] uint8 (path length > 0) and optional
``tool_path_length_mm`` [T, H, W] float16; ``line_integrals`` then have M + (tool materials)
channels (``material_names`` lists them). Attributes ``tool_names``, ``tool_kinds``,
``tool_keypoint_names`` (a list per tool).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxdrr import atomic
from jaxdrr.errors import JaxdrrError

SHARD_DIR = "shards"
FAILURE_DIR = "failures"
LOG_DIR = "logs"
FLOAT16_FIELDS = ("heatmaps", "path_lengths_mm", "line_integrals", "tool_path_length_mm")
COMPRESSED_FIELDS = (
    "image",
    "heatmaps",
    "masks_packed",
    "path_lengths_mm",
    "line_integrals",
    "tool_masks",
    "tool_path_length_mm",
)
PACKED_MASKS = "masks_packed"  # on disk: bits along the label axis, [n, ceil(labels / 8), H, W] uint8


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """[n, labels, H, W] bool -> [n, ceil(labels / 8), H, W] uint8 (8x smaller on disk)."""
    return np.packbits(np.asarray(masks, bool), axis=1)


def read_field(f, name: str, row: int) -> np.ndarray:
    """One sample's array ``name`` from an open shard; ``"masks"`` are unpacked to [labels, H, W] uint8."""
    if name == "masks":
        count = int(f.attrs["mask_count"])
        return np.unpackbits(np.asarray(f[PACKED_MASKS][row]), axis=0, count=count)
    return np.asarray(f[name][row])


def field_names(f) -> list[str]:
    """The per-sample array names of an open shard (``"masks"`` for the packed masks)."""
    return ["masks" if k == PACKED_MASKS else k for k in f.keys()]


class DatasetError(JaxdrrError):
    """A dataset directory is missing, incomplete, corrupt or from another spec."""


class DatasetWriteError(OSError):
    """Writing a shard failed (disk full, permissions): generation stopped; finished shards are kept."""


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}"


def write_json_atomic(path: Path, data) -> None:
    """Writes a manifest JSON atomically (:func:`jaxdrr.atomic.write_json`), in the manifest's format."""
    atomic.write_json(path, data, indent=1, sort_keys=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def temporary_prefix(shard_id: int) -> str:
    return f".{shard_name(shard_id)}.h5."


def remove_stale_temporaries(root: Path, shard_ids) -> int:
    """Deletes temporary files of the given shards left by a killed writer; returns how many."""
    ids = set(shard_ids)
    removed = 0
    for p in (Path(root) / SHARD_DIR).glob(".shard-*.tmp*"):
        try:
            sid = int(p.name.split(".")[1].removeprefix("shard-"))
        except (IndexError, ValueError):
            continue
        if sid in ids:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
    return removed


def write_shard(
    root: Path, shard_id: int, arrays: dict[str, np.ndarray], attrs: dict, entry: dict, compression: str
):
    """Writes one shard atomically, then its manifest entry (see the module doc).

    Raises:
      DatasetWriteError: any OSError (disk full, permissions), after removing the temporary file.
    """
    import h5py

    shard_dir = Path(root) / SHARD_DIR
    final = shard_dir / f"{shard_name(shard_id)}.h5"
    filters = {} if compression == "none" else {"compression": compression}
    try:
        # The temporary name carries host and process, so a resumed run can tell stale leftovers.
        with atomic.atomic_path(final, tag=f"{socket.gethostname()}.{os.getpid()}.") as tmp:
            with h5py.File(tmp, "w") as f:
                for name, value in arrays.items():
                    value = np.asarray(value)
                    kwargs = {}
                    if name in COMPRESSED_FIELDS and value.ndim >= 2:
                        kwargs = dict(filters, chunks=(1, *value.shape[1:]))
                    f.create_dataset(name, data=value, **kwargs)
                for k, v in attrs.items():
                    f.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
        entry = dict(entry, file=final.name, bytes=final.stat().st_size, sha256=_sha256(final))
        write_json_atomic(shard_dir / f"{shard_name(shard_id)}.json", entry)
    except OSError as e:
        raise DatasetWriteError(
            e.errno,
            f"could not write {final}: {e.strerror or e}. Generation stopped; the finished shards "
            "are kept: fix the problem (free space, permissions) and rerun the same command to resume",
        ) from e
    return entry


def completed_entries(root: Path) -> dict[int, dict]:
    """Manifest entries of the finished shards: {shard id: entry}."""
    entries = {}
    for p in sorted((Path(root) / SHARD_DIR).glob("shard-*.json")):
        try:
            entry = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # cannot happen with atomic renames, but never trust a file blindly
        if (p.parent / entry.get("file", "")).is_file():
            entries[int(entry["shard"])] = entry
    return entries


# ----------------------------------------------------------------------------------------------
# Reading


class Dataset(Sequence):
    """The samples of a dataset directory, in sample-index order (see :func:`open_dataset`).

    ``dataset[i]`` is a dict of NumPy arrays (one sample; the fields of the module doc) plus
    ``"ct"`` (the CT's name), ``"landmark_names"`` and ``"label_names"`` (and ``"tool_names"`` with
    tools). Picklable (open file
    handles are dropped), so it works as a PyTorch map-style dataset in worker processes.
    """

    def __init__(self, root: Path, entries: list[dict], info: dict):
        self.root = Path(root)
        self.entries = sorted(entries, key=lambda e: e["first_index"])
        self.info = info
        self._starts = np.cumsum([0] + [e["count"] for e in self.entries])
        self._files: dict[str, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def _file(self, entry):
        import h5py

        if self._pid != os.getpid():  # forked: never share HDF5 handles across processes
            self._files, self._pid = {}, os.getpid()
        name = entry["file"]
        if name not in self._files:
            self._files[name] = h5py.File(self.root / SHARD_DIR / name, "r")
        return self._files[name]

    def close(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(Exception):
                f.close()
        self._files = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def indices(self) -> np.ndarray:
        """Global sample indices held, in order."""
        return np.concatenate(
            [np.arange(e["first_index"], e["first_index"] + e["count"]) for e in self.entries]
        )

    def _locate(self, i: int) -> tuple[dict, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for a dataset of {n}")
        i %= n
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self.entries[s], i - int(self._starts[s])

    def fields(self) -> tuple[str, ...]:
        """Names of the per-sample arrays."""
        if not self.entries:
            return ()
        return tuple(field_names(self._file(self.entries[0])))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        entry, row = self._locate(int(i))
        f = self._file(entry)
        sample = {name: read_field(f, name, row) for name in field_names(f)}
        sample["ct"] = entry["ct"]
        sample["landmark_names"] = tuple(json.loads(f.attrs.get("landmark_names", "[]")))
        sample["label_names"] = tuple(json.loads(f.attrs.get("label_names", "[]")))
        if "tool_names" in f.attrs:
            sample["tool_names"] = tuple(json.loads(f.attrs["tool_names"]))
        return sample

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        fields=None,
        drop_remainder: bool = False,
    ) -> Iterator[dict[str, np.ndarray]]:
        """A torch-free iterator of stacked batches (dict of [B, ...] arrays).

        Args:
          batch_size: samples per batch.
          shuffle: visit samples in a permutation drawn from ``seed`` (NumPy), else in order.
          fields: names to load (default: all arrays); the string fields are left out.
          drop_remainder: drop a last, smaller batch.
        """
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng(seed).permutation(order)
        stop = len(order) - (len(order) % batch_size if drop_remainder else 0)
        for b in range(0, stop, batch_size):
            rows = [self._row(int(i), fields) for i in order[b : b + batch_size]]
            yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def _row(self, i: int, fields) -> dict[str, np.ndarray]:
        entry, row = self._locate(i)
        f = self._file(entry)
        names = fields if fields is not None else field_names(f)
        return {name: read_field(f, name, row) for name in names}

    def verify(self) -> None:
        """Checks every shard's SHA-256 against its manifest entry.

        Raises:
          DatasetError: naming the first corrupt shard.
        """
        for e in self.entries:
            path = self.root / SHARD_DIR / e["file"]
            if _sha256(path) != e["sha256"]:
                raise DatasetError(
                    f"{path} does not match its manifest checksum: the file was modified or is corrupt"
                )


def open_dataset(path, *, allow_incomplete: bool = False) -> Dataset:
    """Opens a dataset directory written by :func:`jaxdrr.datasets.generate`.

    Args:
      path: the output directory.
      allow_incomplete: read the finished shards of a dataset still being generated (or
        interrupted); by default a missing shard or a failed CT is an error.

    Returns:
      A :class:`Dataset`: a sequence of samples in sample-index order.

    Raises:
      DatasetError: not a dataset directory, or (by default) incomplete.
    """
    root = Path(path)
    spec_file = root / "spec.json"
    if not spec_file.is_file():
        raise DatasetError(
            f"{root} is not a jaxdrr dataset (no spec.json); generate one with `jaxdrr dataset`"
        )
    info = json.loads(spec_file.read_text())
    entries = completed_entries(root)
    expected = int(info["num_shards"])
    if not allow_incomplete and len(entries) != expected:
        failures = sorted(p.name for p in (root / FAILURE_DIR).glob("*.json"))
        raise DatasetError(
            f"{root}: {len(entries)} of {expected} shards are finished"
            + (f"; failed CTs: {', '.join(failures)}" if failures else "")
            + "; rerun the same `jaxdrr dataset` command to finish it, or pass allow_incomplete=True"
        )
    return Dataset(root, list(entries.values()), info)
