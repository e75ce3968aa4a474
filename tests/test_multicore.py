"""Sharding rays over several CPU devices gives the same images and gradients as one device.

Runs in subprocesses because the CPU device count is fixed when JAX starts.
"""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    import jaxdrr
    assert jaxdrr.use_cpu_cores(int(sys.argv[1])) == int(sys.argv[1])
    import jax, jax.numpy as jnp, numpy as np
    from jaxdrr import geometry as G
    rng = np.random.default_rng(0)
    vol = jnp.asarray(rng.random((2, 13, 11, 9), dtype=np.float32))
    A = np.diag([1.2, 1.0, 1.4, 1.0]); A[:3, 3] = -6
    g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=9, width=10, pixel_size_mm=2.5)
    Ps = jnp.stack([G.carm(a, 5.0, geometry=g) for a in (0.0, 35.0, -50.0)])
    f = lambda v, P: jaxdrr.project(v, A, P, 9, 10)
    loss = lambda v, P: jnp.sum(f(v, P) ** 2)
    out = jax.jit(jax.vmap(f, in_axes=(None, 0)))(vol, Ps)
    gv, gP = jax.grad(loss, argnums=(0, 1))(vol, Ps[1])
    gPs = jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, 0))(vol, Ps)
    print(json.dumps({"devices": len(jax.devices()), "out": np.asarray(out).tolist(),
                      "gv": np.asarray(gv).tolist(), "gP": np.asarray(gP).tolist(),
                      "gPs": np.asarray(gPs).tolist()}))
""")


def _run(n):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(n)], capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_two_cpu_devices_match_one():
    import numpy as np

    one, two = _run(1), _run(2)
    assert one["devices"] == 1 and two["devices"] == 2
    for key in ("out", "gv", "gP", "gPs"):
        np.testing.assert_allclose(np.asarray(two[key]), np.asarray(one[key]), rtol=1e-5, atol=1e-5)
