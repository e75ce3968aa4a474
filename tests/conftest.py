import os
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


@pytest.fixture
def x64():
    """float64 inside one test (exactness checks against float64 references); restored after."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
