"""Using every CPU core: expose the cores to JAX as devices so the projector shards rays over them.

XLA runs each gather-heavy ray-marching loop on one thread, so on a CPU a single projection uses
one core. With ``n`` CPU devices, :func:`jaxdrr.ops.project` splits its ray chunks over them with
``shard_map`` (the volume is replicated; results are identical). JAX only reads the device count
when it initialises its backends, so call :func:`use_cpu_cores` before the first JAX computation
(the ``jaxdrr`` command line and the benchmarks do). GPUs are unaffected.
"""

from __future__ import annotations

import os
import re
import warnings


def _backends_initialised() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover
        return True
    return bool(getattr(xla_bridge, "_backends", {}))


def use_cpu_cores(n: int | None = None, *, warn: bool = True) -> int:
    """Asks JAX for ``n`` CPU devices (default: the cores this process may use).

    Args:
      n: number of CPU devices; ``None`` = ``len(os.sched_getaffinity(0))``.
      warn: warn when JAX has already started with a different device count.

    Returns:
      The number of CPU devices JAX will have (unchanged, with a warning, if JAX already started).
    """
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, int(n))
    if _backends_initialised():
        import jax
        current = len(jax.devices("cpu"))
        if current != n and warn:
            warnings.warn(f"JAX is already initialised with {current} CPU device(s); call "
                          "jaxdrr.use_cpu_cores() before the first JAX computation", stacklevel=2)
        return current
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return n
