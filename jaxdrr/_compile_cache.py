"""JAX's persistent compilation cache for the ``jaxdrr`` command line.

Every ``jaxdrr`` command is a new process, and without this cache each one compiles its renderer
again (8-11 s for one 512 x 512 view on a 2-core CPU). :func:`enable_compile_cache` points JAX's
persistent compilation cache at a per-user directory, so the second identical command loads the
compiled executables from disk instead.

* **Only the CLI turns it on** (``jaxdrr.cli.main``). Importing :mod:`jaxdrr` never does: a user's
  own program decides about its own process (``jax.config.update("jax_compilation_cache_dir", ...)``).
* **Off switches**: the environment variable ``JAXDRR_NO_COMPILE_CACHE=1`` or the CLI option
  ``--no-compile-cache``. A cache directory the user has already given JAX
  (``JAX_COMPILATION_CACHE_DIR``) is left alone.
* **Where**: ``$XDG_CACHE_HOME/jaxdrr/jax``, else ``~/.cache/jaxdrr/jax``. The directory is created
  with mode 0700 and used only when it belongs to this user and no one else can write to it: JAX
  runs what it loads from there, so a cache others can write to would let them run code as you. A
  directory that cannot be created or used turns the cache off (the CLI says so in one line); it
  never fails the command.
* **Safe against concurrent processes and kills**: JAX's own file cache (jax 0.10.2 to 0.12.x,
  ``jax._src.lru_cache.LRUCache.put``) writes an entry straight to its final name, and skips the
  write when that name exists. A process killed during the write leaves a truncated entry that every
  later process fails to read (a warning, and a recompilation, on every call), and two processes
  writing the same entry can interleave. :class:`AtomicFileCache` stores the same files
  (``<key>-cache``, readable by JAX's own cache) through :mod:`jaxdrr.atomic`: written under a
  temporary name and renamed, so a reader sees a whole entry or none; an entry that failed to read
  (JAX then recompiles and stores again) is replaced, so a damaged entry repairs itself.
  :func:`jaxdrr._compat.use_compilation_cache_storage` installs it.
* **Bounded**: entries are touched when read; when the directory exceeds :data:`MAX_CACHE_BYTES`,
  the least recently used entries are deleted at the next start, down to
  :data:`PRUNE_TO_FRACTION` of the bound. Deleting the directory at any time is safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import jax

from jaxdrr import atomic
from jaxdrr._compat import use_compilation_cache_storage

__all__ = [
    "DISABLE_ENV",
    "AtomicFileCache",
    "CompileCacheStatus",
    "default_cache_dir",
    "disabled_by_environment",
    "enable_compile_cache",
]

logger = logging.getLogger(__name__)

DISABLE_ENV = "JAXDRR_NO_COMPILE_CACHE"

# Every compiled program is stored (JAX's default keeps only those that took >= 1 s to compile). JAX
# looks every program up in the cache anyway; this only decides what it writes. A CLI call compiles
# its renderer plus some tens of small programs (phantom, HU -> density, windowing, statistics) of
# 10 ms to 1 s each, together seconds; their entries are a few kB each (37 entries, 0.3 MB for
# `jaxdrr render`), and reading one back is a small file read and decompression. Compare with
# benchmarks/bench_compile_cache.py --min-compile-time 1.0 (JAX's default) or 0.05.
MIN_COMPILE_TIME_SECS = 0.0

# No size threshold either (-1 also stops JAX from overriding it per file system): small entries
# are the cheapest to read back.
MIN_ENTRY_SIZE_BYTES = -1

# The bound on the directory. An entry is 10 kB to a few MB; one jax/jaxlib version's worth of CLI
# calls is some tens of MB, so the bound is reached only across many versions and configurations.
MAX_CACHE_BYTES = 2 * 1024**3
PRUNE_TO_FRACTION = 0.75

# JAX's file names: "<key>-cache" holds an entry (jax._src.lru_cache._CACHE_SUFFIX, 0.10.2 to 0.12.x).
ENTRY_SUFFIX = "-cache"

# Temporary files of writers killed between creating and renaming them (jaxdrr.atomic names them
# ".<name>.<random>.tmp"); removed at start once this old, when no live writer can still own them.
STALE_TEMPORARY_SECS = 3600.0

_TRUE = ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class CompileCacheStatus:
    """What :func:`enable_compile_cache` did.

    Attributes:
      directory: the cache directory in use, or None when the cache is off.
      reason: why it is off, or where its directory came from, in words.
      problem: set when the cache is off because its directory is unusable (worth telling the
        user, in one line); None otherwise.
    """

    directory: Path | None
    reason: str
    problem: str | None = None

    @property
    def enabled(self) -> bool:
        """True when compiled programs are read from and written to ``directory``."""
        return self.directory is not None


class AtomicFileCache:
    """JAX's persistent-cache storage (``get``/``put`` of bytes by key) with atomic writes.

    The files are those of JAX's own ``LRUCache``: ``<directory>/<key>-cache``. Reads of a missing
    or unreadable entry are misses; writes go through :func:`jaxdrr.atomic.write_bytes`, so a
    kill leaves a whole entry or none, and concurrent writers of one key each rename a whole entry
    into place (the last one stays; they are equivalent).

    Args:
      directory: the directory (created, mode 0700, if missing).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._path = self.directory  # read by jax's compilation_cache.reset_cache()
        with contextlib.suppress(OSError):  # as JAX's own storage does; a failure shows as misses
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def entry_path(self, key: str) -> Path:
        """The file of ``key``."""
        if not key:
            raise ValueError("key cannot be empty")
        return self.directory / f"{key}{ENTRY_SUFFIX}"

    def get(self, key: str) -> bytes | None:
        """The entry of ``key``, or None when there is none (or it cannot be read)."""
        path = self.entry_path(key)
        try:
            value = path.read_bytes()
        except OSError:
            return None
        with contextlib.suppress(OSError):  # the access time for pruning; read-only caches still work
            os.utime(path)
        return value

    def put(self, key: str, value: bytes) -> None:
        """Stores ``value`` under ``key``, replacing what is there.

        JAX calls ``put`` only after it compiled, i.e. when the entry was missing or could not be
        read back (a damaged entry is repaired by replacing it). A failed write (disk full, read-only
        directory) only loses the entry: the cache is an optimisation.
        """
        try:
            atomic.write_bytes(self.entry_path(key), value, fsync=False)
        except OSError as e:
            logger.debug("not writing compilation cache entry %s: %s", key, e)


def disabled_by_environment(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``JAXDRR_NO_COMPILE_CACHE`` is set to 1/true/yes/on (any case)."""
    environ = os.environ if environ is None else environ
    return environ.get(DISABLE_ENV, "").strip().lower() in _TRUE


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/jaxdrr/jax``, or ``~/.cache/jaxdrr/jax`` where that is unset or relative.

    The XDG base-directory specification says to ignore a relative ``XDG_CACHE_HOME``.
    """
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "jaxdrr" / "jax"


def _private_directory(directory: Path) -> str | None:
    """Creates ``directory`` (mode 0700) if needed; None if it is usable, else why it is not."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(directory)
    except OSError as e:
        return f"cannot create {str(directory)!r}: {e.strerror or e}"
    if not directory.is_dir():
        return f"{str(directory)!r} is not a directory"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{str(directory)!r} belongs to another user"
    if hasattr(os, "getuid") and st.st_mode & 0o022:
        return f"{str(directory)!r} is writable by other users (chmod go-w to use it)"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{str(directory)!r} is not writable"
    return None


def prune(directory: Path, max_bytes: int = MAX_CACHE_BYTES, *, now: float | None = None) -> int:
    """Deletes least recently used entries beyond ``max_bytes``, and stale temporary files.

    Entries are deleted oldest first (by modification time, which :meth:`AtomicFileCache.get`
    refreshes) until the rest fits into ``PRUNE_TO_FRACTION * max_bytes``. Another process may
    prune or read at the same time: a file deleted under a reader that has opened it stays
    readable to it, one deleted before is a miss.

    Returns:
      The number of files deleted.
    """
    now = time.time() if now is None else now
    entries, total, deleted = [], 0, 0
    with contextlib.suppress(OSError), os.scandir(directory) as it:
        for item in it:
            with contextlib.suppress(OSError):
                st = item.stat(follow_symlinks=False)
                if item.name.startswith(".") and ".tmp" in item.name:
                    if now - st.st_mtime > STALE_TEMPORARY_SECS:
                        os.unlink(item.path)
                        deleted += 1
                elif item.name.endswith(ENTRY_SUFFIX) and item.is_file(follow_symlinks=False):
                    entries.append((st.st_mtime, st.st_size, item.path))
                    total += st.st_size
    if total <= max_bytes:
        return deleted
    for _, size, path in sorted(entries):
        if total <= PRUNE_TO_FRACTION * max_bytes:
            break
        with contextlib.suppress(OSError):
            os.unlink(path)
            deleted += 1
        total -= size
    return deleted


def enable_compile_cache(
    directory: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None
) -> CompileCacheStatus:
    """Turns on JAX's persistent compilation cache for this process (call before compiling).

    Args:
      directory: the cache directory; default :func:`default_cache_dir`.
      environ: the environment to read the switches from; default ``os.environ``.

    Returns:
      What was done. The cache stays off (and the process works as without it) when
      ``JAXDRR_NO_COMPILE_CACHE`` is set or the directory is unusable (``problem`` says why). When
      JAX was already given a cache directory, that one is used as JAX set it up.
    """
    if disabled_by_environment(environ):
        return CompileCacheStatus(None, f"off: {DISABLE_ENV} is set")
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return CompileCacheStatus(Path(configured), "JAX's own setting (jax_compilation_cache_dir)")
    path = Path(directory) if directory is not None else default_cache_dir(environ)
    problem = _private_directory(path)
    if problem is not None:
        return CompileCacheStatus(None, f"off: {problem}", problem)
    prune(path)
    use_compilation_cache_storage(AtomicFileCache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", MIN_ENTRY_SIZE_BYTES)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return CompileCacheStatus(path, "default" if directory is None else "given")
