import os
import shutil
import tempfile

import pytest

# Tests run on the CPU; keep XLA from grabbing all cores' worth of threads per xdist worker.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI's persistent compilation cache stays off in tests (main() runs in the test processes too):
# tests/test_compile_cache.py switches it on for its own subprocesses, in temporary directories.
os.environ.setdefault("JAXDRR_NO_COMPILE_CACHE", "1")

# The CLI stores its step timings (jaxdrr/cli/timings.py) under $XDG_CACHE_HOME: keep tests out of the
# user's cache (subprocesses inherit this too).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="jaxdrr-test-cache-")

# One persistent compilation cache for the test processes of a session, so that a program several test
# files compile (the same renderer, phantom, windowing...) is compiled once. The xdist workers and a
# nested pytest (tests/test_native_project.py) find the directory through this variable; JAX is given
# it through jax.config, not its environment variable, so child processes (CLI, notebook kernels)
# compile as a user's would. Entries go through jaxdrr's AtomicFileCache (a whole entry or none, even
# with two workers writing the same one). Cached executables are the ones JAX compiled: results are
# identical. The directory is removed at the end of the session.
SESSION_CACHE_ENV = "JAXDRR_TEST_SESSION_COMPILE_CACHE"
_SESSION_CACHE_MADE_HERE = SESSION_CACHE_ENV not in os.environ  # not in xdist workers or a nested pytest
if _SESSION_CACHE_MADE_HERE:
    os.environ[SESSION_CACHE_ENV] = tempfile.mkdtemp(prefix="jaxdrr-test-jit-cache-")


def _use_session_compile_cache() -> None:
    import jax

    from jaxdrr import _compile_cache as cc
    from jaxdrr._compat import use_compilation_cache_storage

    use_compilation_cache_storage(cc.AtomicFileCache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", cc.MIN_COMPILE_TIME_SECS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", cc.MIN_ENTRY_SIZE_BYTES)
    jax.config.update("jax_compilation_cache_dir", os.environ[SESSION_CACHE_ENV])


_use_session_compile_cache()


def pytest_sessionfinish(session):
    if _SESSION_CACHE_MADE_HERE:  # the outermost pytest process only: the others share its directory
        shutil.rmtree(os.environ[SESSION_CACHE_ENV], ignore_errors=True)


@pytest.fixture
def x64():
    """float64 inside one test (exactness checks against float64 references); restored after."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
