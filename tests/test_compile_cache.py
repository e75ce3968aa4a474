"""The CLI's persistent compilation cache (jaxdrr._compile_cache): storage, switches, directory safety,
and two ``jaxdrr render`` processes of which the second loads what the first compiled."""

import os
import pathlib
import stat
import subprocess
import sys

import numpy as np
import pytest

from jaxdrr import _compile_cache as cc

TINY = ["--phantom", "analytic", "--phantom-size", "32", "28", "24", "--height", "24", "--width", "24"]
TINY += ["--pixel-size", "16"]


def cli_env(cache_home: pathlib.Path, **extra) -> dict:
    """The test environment with the cache switched on (conftest switches it off) under ``cache_home``."""
    env = {k: v for k, v in os.environ.items() if k not in (cc.DISABLE_ENV, "JAX_COMPILATION_CACHE_DIR")}
    env.update(XDG_CACHE_HOME=str(cache_home), **extra)
    return env


def render(tmp_path: pathlib.Path, name: str, env: dict, *options: str) -> pathlib.Path:
    out = tmp_path / f"{name}.png"
    cmd = [sys.executable, "-m", "jaxdrr", "render", *TINY, *options, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Error reading persistent compilation cache" not in proc.stderr, proc.stderr
    return out


def entries(directory: pathlib.Path) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in directory.iterdir()} if directory.exists() else {}


def test_second_render_loads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "cache" / "jaxdrr" / "jax"
    env = cli_env(tmp_path / "cache")
    first = render(tmp_path, "first", env)
    written = entries(cache)
    assert written and all(name.endswith(cc.ENTRY_SUFFIX) for name in written), sorted(written)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    # Backdate every entry: the second process refreshes the time of each entry it reads
    # (AtomicFileCache.get), and what it compiles again it writes as a new file (a new inode).
    for name in written:
        os.utime(cache / name, (1e9, 1e9))
    second = render(tmp_path, "second", env)
    read = entries(cache)
    assert sorted(read) == sorted(written), "the second process compiled a program the first did not store"
    assert all(read[n].st_ino == written[n].st_ino for n in written), (
        "an entry was compiled and written again"
    )
    assert all(read[n].st_mtime > 1e9 for n in written), "an entry was not read"
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_no_compile_cache_option_writes_nothing(tmp_path):
    render(tmp_path, "option", cli_env(tmp_path / "cache"), "--no-compile-cache")
    assert not (tmp_path / "cache").exists()


def test_no_compile_cache_option_before_or_after_the_command(monkeypatch):
    from jaxdrr.cli.main import build_parser, configure_compile_cache

    parser = build_parser()
    for argv in (["--no-compile-cache", "info", "x.nii"], ["info", "x.nii", "--no-compile-cache"]):
        args = parser.parse_args(argv)
        assert args.no_compile_cache is True
        monkeypatch.delenv(cc.DISABLE_ENV, raising=False)
        configure_compile_cache(args)  # nothing enabled; the switch passed on to child processes
        assert cc.disabled_by_environment()
    assert parser.parse_args(["info", "x.nii"]).no_compile_cache is False


# A tiny JAX program run with the cache in ``argv[1]``; prints JAX's warnings about cache entries.
JIT_SCRIPT = """
import sys, warnings
import jax, jax.numpy as jnp
from jaxdrr._compile_cache import enable_compile_cache
assert enable_compile_cache(sys.argv[1], environ={}).enabled
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jax.jit(lambda x: jnp.sin(x) * 3.0 + x.sum())(jnp.arange(64.0)).block_until_ready()
print([str(w.message) for w in caught if "persistent compilation cache" in str(w.message)])
"""


def test_a_truncated_entry_is_replaced_not_kept(tmp_path):
    # What a writer killed mid-write leaves under JAX's own storage: a truncated entry, which JAX
    # then fails to read (a warning) and, with its own storage, never replaces.
    cache = tmp_path / "cache"
    env = cli_env(tmp_path)

    def run() -> str:
        cmd = [sys.executable, "-c", JIT_SCRIPT, str(cache)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert run().strip() == "[]"
    whole = {p.name: p.read_bytes() for p in cache.iterdir()}
    assert whole
    for name, data in whole.items():
        (cache / name).write_bytes(data[: len(data) // 3])
    assert "Error reading persistent compilation cache entry" in run()  # the damage is seen ...
    # ... and repaired: the same entries, rewritten whole (a recompiled executable need not serialise to
    # the same bytes, so compare readability, not content), and the next run reads them without error.
    assert sorted(p.name for p in cache.iterdir()) == sorted(whole)
    assert all((cache / n).stat().st_size > len(d) // 3 for n, d in whole.items())
    assert run().strip() == "[]"


# -- storage ---------------------------------------------------------------------------------------


def test_storage_round_trip_and_miss(tmp_path):
    store = cc.AtomicFileCache(tmp_path)
    assert store.get("k1") is None
    store.put("k1", b"abc")
    assert store.get("k1") == b"abc"
    assert (tmp_path / f"k1{cc.ENTRY_SUFFIX}").read_bytes() == b"abc"  # JAX's own file name
    with pytest.raises(ValueError):
        store.get("")


def test_storage_replaces_a_damaged_entry(tmp_path):
    # JAX puts after it compiled, i.e. when the entry was missing or failed to load (truncated by a
    # kill of a non-atomic writer): the new entry must replace it, not be skipped because it exists.
    store = cc.AtomicFileCache(tmp_path)
    (tmp_path / f"k{cc.ENTRY_SUFFIX}").write_bytes(b"trunc")
    store.put("k", b"the whole entry")
    assert store.get("k") == b"the whole entry"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"k{cc.ENTRY_SUFFIX}"]


def test_storage_write_interrupted_leaves_old_entry_and_no_partial_file(tmp_path, monkeypatch):
    store = cc.AtomicFileCache(tmp_path)
    store.put("k", b"old")

    def killed_halfway(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt  # what a kill leaves: half a file, no rename

    monkeypatch.setattr(pathlib.Path, "write_bytes", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        store.put("k", b"new entry, twice as long as half")
    monkeypatch.undo()
    assert store.get("k") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"k{cc.ENTRY_SUFFIX}"]


def test_storage_concurrent_writers_and_readers_see_whole_entries(tmp_path):
    # Processes compiling the same program all put its key; readers must see a whole entry or none.
    import threading

    store = cc.AtomicFileCache(tmp_path)
    values = [bytes([i]) * (50_000 + 1_000 * i) for i in range(4)]  # different lengths and bytes
    seen, stop = [], threading.Event()

    def write(value):
        for _ in range(50):
            store.put("same", value)

    def read():
        while not stop.is_set():
            seen.append(store.get("same"))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(v,)) for v in values]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert seen and all(v is None or v in values for v in seen)
    assert store.get("same") in values
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"same{cc.ENTRY_SUFFIX}"]  # no temporary left


def test_storage_write_errors_only_lose_the_entry(tmp_path):
    (tmp_path / "file").write_text("")
    store = cc.AtomicFileCache(tmp_path / "file" / "cache")  # a directory that cannot exist: OSError inside
    store.put("k", b"x")
    assert store.get("k") is None


# -- switches, directory -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "off"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("", False)]
)
def test_environment_switch(value, off):
    assert cc.disabled_by_environment({cc.DISABLE_ENV: value}) is off
    assert cc.disabled_by_environment({}) is False


def test_disabled_by_environment_changes_nothing(tmp_path):
    status = cc.enable_compile_cache(tmp_path / "c", environ={cc.DISABLE_ENV: "1"})
    assert not status.enabled and status.problem is None and cc.DISABLE_ENV in status.reason
    assert not (tmp_path / "c").exists()


def test_default_directory_follows_xdg(tmp_path):
    assert cc.default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "jaxdrr" / "jax"
    home = pathlib.Path.home() / ".cache" / "jaxdrr" / "jax"
    assert cc.default_cache_dir({}) == home
    assert cc.default_cache_dir({"XDG_CACHE_HOME": "relative/dir"}) == home  # XDG: ignore relative paths


@pytest.fixture
def no_jax_cache_dir():
    """JAX without a cache directory of its own (a user running the tests may have set
    JAX_COMPILATION_CACHE_DIR): enable_compile_cache then chooses and checks its own directory."""
    import jax

    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", previous)


def test_unusable_directories_turn_the_cache_off(tmp_path, no_jax_cache_dir):
    a_file = tmp_path / "file"
    a_file.write_text("")
    status = cc.enable_compile_cache(a_file / "jax", environ={})
    assert not status.enabled and "cannot create" in status.problem
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # not masked by the umask
    status = cc.enable_compile_cache(shared, environ={})
    assert not status.enabled and "writable by other users" in status.problem


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown needs root")
def test_a_directory_of_another_user_is_refused(tmp_path, no_jax_cache_dir):
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 4242, -1)
    status = cc.enable_compile_cache(other, environ={})
    assert not status.enabled and "another user" in status.problem


def test_prune_deletes_least_recently_used_and_stale_temporaries(tmp_path):
    for i in range(4):  # entry i last used at time 1000 + i
        path = tmp_path / f"e{i}{cc.ENTRY_SUFFIX}"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
    stale, fresh = tmp_path / ".e9-cache.dead.tmp", tmp_path / ".e8-cache.live.tmp"
    for path, when in ((stale, 1000.0), (fresh, 1e6)):
        path.write_bytes(b"")
        os.utime(path, (when, when))
    now = 1e6 + 1
    # 400 bytes against a bound of 300: delete the oldest down to 0.75 * 300 = 225 bytes (two left).
    assert cc.prune(tmp_path, max_bytes=300, now=now) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, "e2-cache", "e3-cache"])
    assert cc.prune(tmp_path, max_bytes=300, now=now) == 0  # within the bound: nothing to do
