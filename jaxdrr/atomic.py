"""Atomic file writes: the one place every jaxdrr writer goes through.

A file is written under a unique temporary name beside its final name, flushed to disk, and moved
onto the final name with :func:`os.replace` (atomic on POSIX and Windows within one directory). A
crash, a kill or an exception therefore never leaves a half-written file under the final name: the
reader sees the old file or the new one. On failure the temporary file is removed.

* :func:`atomic_path`: a context manager yielding the temporary path, for writers that take a path
  (nibabel, tifffile, Pillow, h5py, ``np.savez``);
* :func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`write_npz`: the common cases in
  one call.

This module sits in the lowest layer (beside :mod:`jaxdrr.errors`) so that readers/writers of every
layer (``io``, ``models``, ``datasets``, ``training``, ``cli``) share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "write_npz"]


def _suffix(path: Path) -> str:
    # Keep the final suffix (".nii.gz" whole) so that writers which pick a format from the file name
    # (nibabel, Pillow, tifffile) see the same format on the temporary name.
    return "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):  # e.g. file systems without fsync support
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True, tag: str = "") -> Iterator[Path]:
    """Yields a fresh temporary path beside ``path``; on success moves it onto ``path``.

    Args:
      path: the final file name. Its directory must exist.
      fsync: flush the written file to disk before the rename (durable as well as atomic).
      tag: text put into the temporary name (``.{name}.{tag}{random}.tmp{suffix}``), e.g. the host
        and process that write it, so that a cleaner can tell whose leftovers it finds.

    Yields:
      The temporary path (already created, empty, with the umask's permissions) to write to.

    Raises:
      FileNotFoundError: the directory of ``path`` does not exist. Whatever the block raises is
      re-raised after the temporary file is removed.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {str(directory)!r}")
    # Not tempfile.mkstemp: its 0600 mode would end up on the final file. os.open with 0666 lets
    # the umask decide, as for any newly created file; O_EXCL guarantees the name is ours.
    tmp = directory / f".{path.name}.{tag}{uuid.uuid4().hex}.tmp{_suffix(path)}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Writes ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_json(path: str | os.PathLike, data, *, fsync: bool = True, **dumps_kwargs) -> Path:
    """Writes ``json.dumps(data, **dumps_kwargs)`` to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(data, **dumps_kwargs), fsync=fsync)


def write_npz(path: str | os.PathLike, *, compressed: bool = True, fsync: bool = True, **arrays) -> Path:
    """Writes arrays as a NumPy ``.npz`` atomically; returns the path written.

    As :func:`numpy.savez`, ``.npz`` is appended to a name that does not end with it.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    save = np.savez_compressed if compressed else np.savez
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
        save(f, **arrays)  # a file object: np.savez given a name would append ".npz" to the temporary one
    return path
