"""The native CPU projector (C++ XLA custom call) against the pure-JAX one.

The XLA path (``backend="xla"``) is the oracle. In float64 both paths agree to rounding; in float32
each is compared with the float64 result within the error bound that ``tests/float_bounds.py``
derives from the float32 arithmetic (no tuned tolerances), on the volumes of ``test_pallas.py``:
non-power-of-two shapes, anisotropic and oblique affines, rays that miss, several channels (more
than one channel group of the kernel too), planes mode. Also: jit, vmap over poses as one custom
call (no loop), vmap(grad), nested vmap, deterministic volume gradients (bit-identical between
calls and between thread counts), dispatch.

The library is built by ``pip install`` (setup.py). When it is missing these tests FAIL with the
reason, unless ``JAXDRR_ALLOW_NO_NATIVE=1`` is set (then they are skipped).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from float_bounds import (
    analyse,
    assert_gradients_close,
    assert_projection_close,
    assert_within,
    conditioned_cotangent,
    forward_bound,
    ray_cotangent_bound,
)
from jax_checks import jaxpr_equations, pose_central_differences
from projector_cases import CASES, assert_miss_case_has_missing_rays, case, weights

from jaxdrr import geometry as G
from jaxdrr.ops import march, native_project, project, project_backend
from jaxdrr.ops.project import resolve_backend
from jaxdrr.ops.rays import VolumeGrid, detector_rays

NATIVE = "native"
TARGETS = (native_project.TARGET_FORWARD, native_project.TARGET_GEOMETRY, native_project.TARGET_VOLUME)
PAD = native_project.TARGET_PAD


@pytest.fixture(autouse=True, scope="module")
def _require_native():
    if not native_project.available():
        reason = native_project.unavailable_reason()
        if os.environ.get("JAXDRR_ALLOW_NO_NATIVE", "") == "1":
            pytest.skip(f"JAXDRR_ALLOW_NO_NATIVE=1: {reason}")
        pytest.fail(
            f"{reason}. Build it with `pip install -e .` (a C++17 compiler is needed), or set "
            "JAXDRR_ALLOW_NO_NATIVE=1 to skip these tests.",
            pytrace=False,
        )


def test_miss_case_has_missing_rays():
    assert_miss_case_has_missing_rays()


@pytest.mark.parametrize("step_mm", [None, "planes"])
@pytest.mark.parametrize("name", CASES)
def test_forward_and_volume_gradient_match_xla(name, step_mm):
    vol, affine, P, H, W = case(name)
    Wt = weights((H, W, vol.shape[0]))

    def loss(v, backend):
        return jnp.sum(project(v, affine, P, H, W, step_mm=step_mm, backend=backend) * Wt)

    for backend in ("xla", NATIVE):
        fn = functools.partial(project, affine=affine, height=H, width=W, step_mm=step_mm, backend=backend)
        out = jax.jit(fn)(vol, P=P)
        assert out.shape == (H, W, vol.shape[0])
        assert_projection_close(out, vol, affine, P, H, W, step_mm=step_mm, what=backend)
        g = jax.jit(jax.grad(loss), static_argnums=1)(vol, backend)
        assert_gradients_close(g, None, vol, affine, P, H, W, Wt, step_mm=step_mm, what=backend)
    if name == "miss":  # rays that miss the box are exactly zero on both paths
        ref = project(vol, affine, P, H, W, step_mm=step_mm, backend="xla")
        assert np.any(np.asarray(ref) == 0.0)
        np.testing.assert_array_equal(np.asarray(out) == 0.0, np.asarray(ref) == 0.0)


@pytest.mark.parametrize("step_mm", [None, "planes"])
@pytest.mark.parametrize("name", CASES)
def test_ray_geometry_cotangents_match_xla(name, step_mm):
    """The geometry kernel's g_entry, g_direction (and the derived g_step) vs march._march_bwd."""
    vol, affine, P, H, W = case(name)
    grid = VolumeGrid.create(vol.shape[1:], affine)
    step = grid.default_step() if step_mm is None else step_mm
    planes = step_mm == "planes"
    g = weights((H * W, vol.shape[0]), seed=5)
    native = functools.partial(native_project.march_native, planes=planes, width=W)
    xla = functools.partial(march.march, planes=planes)

    def via(fn, rays, flat, g):
        f = lambda v, e, d, h: fn(v, grid.padded_shape, rays._replace(entry=e, direction=d, step=h))
        out, vjp = jax.vjp(f, flat, rays.entry, rays.direction, rays.step)
        return out, vjp(g)

    with jax.enable_x64(True):  # float64: both paths agree to rounding
        rays64 = detector_rays(P.astype(jnp.float64), grid, H, W, step)
        flat64 = march.pad_channels_last(vol.astype(jnp.float64))
        g64 = g.astype(jnp.float64)
        ref_out64, ref64 = via(xla, rays64, flat64, g64)
        out64, got64 = via(native, rays64, flat64, g64)
        for a, b in zip((out64,) + tuple(got64), (ref_out64,) + tuple(ref64)):
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12 * float(np.abs(np.asarray(b)).max())
            )
    # float32: each path within the float32 bound of the float64 march on the float64 rays.
    rays = detector_rays(P, grid, H, W, step)
    flat = march.pad_channels_last(vol)
    a = analyse(vol, affine, P, H, W, step_mm)
    b_out = forward_bound(a)
    b_entry, b_direction = ray_cotangent_bound(a, g)
    for fn in (xla, native):
        out, (_, g_entry, g_direction, _) = jax.jit(lambda: via(fn, rays, flat, g))()
        assert_within(out, ref_out64, b_out, "line integrals")
        assert_within(g_entry, ref64[1], b_entry, "g_entry")
        assert_within(g_direction, ref64[2], b_direction, "g_direction")


@pytest.mark.parametrize("step_mm", [None, "planes"])
@pytest.mark.parametrize("name", ["oblique", "miss", "channels"])
def test_pose_gradient_matches_xla(name, step_mm):
    vol, affine, P, H, W = case(name)
    Wt = jnp.asarray(conditioned_cotangent(vol, affine, P, H, W, step_mm=step_mm))

    def grads(dtype):
        def loss(v, P, backend):
            return jnp.sum(project(v, affine, P, H, W, step_mm=step_mm, backend=backend) * Wt.astype(dtype))

        args = (vol.astype(dtype), P.astype(dtype))
        return [np.asarray(jax.grad(loss, argnums=(0, 1))(*args, b)[1]) for b in ("xla", NATIVE)]

    with jax.enable_x64(True):
        ref64, got64 = grads(jnp.float64)
    np.testing.assert_allclose(got64, ref64, rtol=1e-9, atol=1e-12 * np.abs(ref64).max())
    for grad32, backend in zip(grads(jnp.float32), ("xla", NATIVE)):
        assert_gradients_close(None, grad32, vol, affine, P, H, W, Wt, step_mm=step_mm, what=backend)


def test_pose_gradient_matches_float64_finite_differences():
    with jax.enable_x64(True):
        vol, affine, P, H, W = case("oblique")
        vol, P = vol.astype(jnp.float64), P.astype(jnp.float64)
        Wt = weights((H, W, vol.shape[0]), seed=1, dtype=jnp.float64)
        f = lambda P: jnp.sum(project(vol, affine, P, H, W, step_mm=0.1, backend=NATIVE) * Wt)
        grad = np.asarray(jax.grad(f)(P))
        fd = pose_central_differences(f, P)
        np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-6 * np.abs(fd).max())


def _poses(P, H, W):
    g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=H, width=W, pixel_size_mm=2.5)
    return jnp.stack(
        [
            P,
            G.carm(-30.0, 5.0, isocenter=(0.0, 1.0, 0.0), geometry=g).astype(jnp.float32),
            P.at[0, 3].add(7.0),
        ]
    )


@pytest.mark.parametrize("step_mm", [None, "planes"])
def test_vmap_jit_grad_and_vmap_grad_match_xla(step_mm):
    vol, affine, P, H, W = case("oblique")
    Ps = _poses(P, H, W)
    Wts = jnp.stack(
        [
            jnp.asarray(conditioned_cotangent(vol, affine, Pi, H, W, step_mm=step_mm, seed=i))
            for i, Pi in enumerate(Ps)
        ]
    )

    def loss(v, P, Wt):
        return jnp.sum(project(v, affine, P, H, W, step_mm=step_mm, backend=NATIVE) * Wt)

    out = jax.jit(jax.vmap(lambda P: project(vol, affine, P, H, W, step_mm=step_mm, backend=NATIVE)))(Ps)
    gv, gp = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0, 0)))(vol, Ps, Wts)
    assert gv.shape == (3,) + vol.shape and gp.shape == (3, 3, 4)
    for i in range(len(Ps)):
        assert_projection_close(out[i], vol, affine, Ps[i], H, W, step_mm=step_mm, what=f"pose {i}")
        assert_gradients_close(
            gv[i], gp[i], vol, affine, Ps[i], H, W, Wts[i], step_mm=step_mm, what=f"pose {i}"
        )


def test_vmap_over_volumes_and_nested_vmap_match_xla():
    """Batched volumes (the kernel's broadcasting of batch axes) and a vmap inside a vmap."""
    with jax.enable_x64(True):
        vol, affine, P, H, W = case("oblique")
        vol, P = vol.astype(jnp.float64), P.astype(jnp.float64)
        vols = jnp.stack([vol, 2.0 * vol[:, ::-1]])
        Ps = _poses(P, H, W).astype(jnp.float64)

        def proj(backend):
            f = lambda v, P: project(v, affine, P, H, W, backend=backend)
            over_volumes = jax.vmap(f, in_axes=(0, None))(vols, P)
            nested = jax.vmap(jax.vmap(f, in_axes=(None, 0)), in_axes=(0, None))(vols, Ps)
            both = jax.vmap(f)(vols, Ps[:2])
            return over_volumes, nested, both

        for got, ref in zip(proj(NATIVE), proj("xla")):
            assert got.shape == ref.shape
            np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-12, atol=1e-12)


def _ffi_targets(fn, *args):
    """Targets of the ffi_calls (with their operand shapes) in the jaxpr of jit(fn) (forward and
    backward), and whether any loop appears."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    eqns = list(jaxpr_equations(jaxpr.jaxpr))
    calls = [
        (e.params["target_name"], [v.aval.shape for v in e.invars])
        for e in eqns
        if e.primitive.name == "ffi_call"
    ]
    loops = [e.primitive.name for e in eqns if e.primitive.name in ("while", "scan")]
    return calls, loops


def test_vmap_is_one_call_per_kernel_with_the_volume_unbatched():
    vol, affine, P, H, W = case("oblique")
    Ps = jnp.stack([P, P, P, P])
    n_flat = int(np.prod([n + 2 for n in vol.shape[1:]]))
    proj = lambda v, P: project(v, affine, P, H, W, backend=NATIVE)
    loss = lambda v, P: jnp.sum(jnp.exp(-proj(v, P)))

    def kernels(calls):
        return sorted(c[0] for c in calls if c[0] != PAD)

    calls, loops = _ffi_targets(jax.vmap(proj, in_axes=(None, 0)), vol, Ps)
    assert [c[0] for c in calls] == [PAD, native_project.TARGET_FORWARD] and not loops, (calls, loops)
    assert calls[0][1][0] == vol.shape  # the volume is padded once, for all poses
    flat_shape, entry_shape = calls[1][1][0], calls[1][1][1]
    assert flat_shape == (1, n_flat, vol.shape[0]), flat_shape  # one volume for all poses
    assert entry_shape == (4, H * W, 3), entry_shape

    calls, loops = _ffi_targets(jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, 0)), vol, Ps)
    assert kernels(calls) == sorted([native_project.TARGET_FORWARD, native_project.TARGET_GEOMETRY])
    assert not loops, loops
    calls, loops = _ffi_targets(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0)), vol, Ps)
    assert kernels(calls) == sorted(TARGETS) and not loops, (calls, loops)
    # pad, and the transpose of the pad for the batch of volume gradients: one call each
    assert [c[1][0] for c in calls if c[0] == PAD] == [vol.shape, (4, n_flat, vol.shape[0])], calls
    # The volume kernel runs only when the volume is differentiated.
    calls, _ = _ffi_targets(jax.grad(loss, argnums=0), vol, P)
    assert kernels(calls) == sorted([native_project.TARGET_FORWARD, native_project.TARGET_VOLUME])


def _set_threads(n):
    if n is None:
        os.environ.pop("JAXDRR_CPU_THREADS", None)
    else:
        os.environ["JAXDRR_CPU_THREADS"] = str(n)


@pytest.mark.parametrize("step_mm", [None, "planes"])
def test_results_are_deterministic_and_independent_of_threads(step_mm):
    """Volume gradient: bit-identical between calls and between 1 and 3 threads (each voxel is
    owned by one slab, contributions added in ray order); forward and pose gradient too (each ray
    by one thread)."""
    vol, affine, P, H, W = case("aniso")
    Wt = weights((H, W, vol.shape[0]), seed=7)
    loss = lambda v, P: jnp.sum(project(v, affine, P, H, W, step_mm=step_mm, backend=NATIVE) * Wt)
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    saved = os.environ.get("JAXDRR_CPU_THREADS")
    try:
        results = []
        for threads in (None, None, 1, 3):
            _set_threads(threads)
            value, (gv, gp) = fn(vol, P)
            results.append([np.asarray(x) for x in (value, gv, gp)])
    finally:
        _set_threads(saved)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    assert np.abs(results[0][1]).max() > 0


def test_native_pad_equals_march_pad_and_its_transpose():
    rng = np.random.default_rng(0)
    for C, dtype in ((1, np.float32), (3, np.float64), (6, np.float32)):
        with jax.enable_x64(dtype == np.float64):
            v = jnp.asarray(rng.random((C, 5, 4, 7)).astype(dtype))
            ref, got = march.pad_channels_last(v), native_project.pad_channels_last(v)
            assert got.shape == ref.shape and got.dtype == ref.dtype
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
            g = jnp.asarray(rng.random(ref.shape).astype(dtype))
            g_ref = jax.vjp(march.pad_channels_last, v)[1](g)[0]
            g_got = jax.vjp(native_project.pad_channels_last, v)[1](g)[0]
            np.testing.assert_array_equal(np.asarray(g_got), np.asarray(g_ref))
            vs = jnp.stack([v, 2 * v, 3 * v])
            np.testing.assert_array_equal(
                np.asarray(jax.vmap(native_project.pad_channels_last)(vs)),
                np.asarray(jax.vmap(march.pad_channels_last)(vs)),
            )
            f = lambda v: jnp.sum(native_project.pad_channels_last(v) ** 2)
            np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(f))(vs)), 2 * np.asarray(vs))


def test_rays_without_detector_layout():
    """march_native on rays with width=0 (tiles of consecutive rays) and a width that does not
    divide the ray count (the same): the layout changes only the tiling, not the result."""
    vol, affine, P, H, W = case("channels")
    grid = VolumeGrid.create(vol.shape[1:], affine)
    rays = detector_rays(P, grid, H, W, grid.default_step())
    flat = march.pad_channels_last(vol)
    ref = np.asarray(native_project.march_native(flat, grid.padded_shape, rays, width=W))
    for width in (0, 7, 1):
        got = native_project.march_native(flat, grid.padded_shape, rays, width=width)
        np.testing.assert_array_equal(np.asarray(got), ref)
    sub = jax.tree_util.tree_map(lambda x: x[:37], rays)  # fewer rays than a tile
    got = native_project.march_native(flat, grid.padded_shape, sub, width=0)
    np.testing.assert_array_equal(np.asarray(got), ref[:37])


def test_dispatch():
    assert jax.default_backend() == "cpu"
    name, why = project_backend()
    assert name == "native" and "native" in why, (name, why)
    assert resolve_backend("auto") == "native"
    assert resolve_backend("auto", jnp.float64) == "native"
    assert resolve_backend("auto", jnp.bfloat16) == "xla"
    assert resolve_backend("native", jnp.float16) == "xla"  # unsupported dtype: the XLA path
    assert resolve_backend("xla") == "xla"
    assert project_backend(jnp.bfloat16)[0] == "xla"
    info = native_project.info()
    assert info["available"] and info["threads"] >= 1 and info["ffi_api"].startswith("0.")


_VARIANT_PROBE = """
import sys
import jax.numpy as jnp
sys.path.insert(0, {tests!r})
from float_bounds import assert_gradients_close, assert_projection_close, conditioned_cotangent
from projector_cases import case
from jaxdrr.ops import project
for name, step in {cases!r}:
    vol, affine, P, H, W = case(name)
    # Non-negative weights: a signed random cotangent over 6 channels can cancel the pose gradient
    # below its own float32 bound, leaving nothing to test.
    Wt = jnp.abs(jnp.asarray(conditioned_cotangent(vol, affine, P, H, W, step_mm=step, seed=11)))
    proj = lambda v, P: project(v, affine, P, H, W, step_mm=step, backend="native")
    loss = lambda v, P: jnp.sum(proj(v, P) * Wt)
    what = f"{{name}} {{step}}"
    assert_projection_close(proj(vol, P), vol, affine, P, H, W, step_mm=step, what=what)
    gv, gp = jax.grad(loss, argnums=(0, 1))(vol, P)
    assert_gradients_close(gv, gp, vol, affine, P, H, W, Wt, step_mm=step, what=what)
print("@@ok")
"""


@pytest.mark.parametrize(
    ("env", "cases"),
    [
        # The portable build compiles every kernel: one single- and one multi-channel case, both steps.
        ({"JAXDRR_CPU_NO_AVX2": "1"}, (("aniso", None), ("channels", "planes"))),
        # The gather form exists only for 2-4 channels.
        ({"JAXDRR_CPU_GATHER_CHANNELS": "1"}, (("channels", None), ("channels", "planes"))),
        ({"JAXDRR_CPU_WIDE_INDEX": "1"}, (("aniso", "planes"), ("channels", None))),
    ],
    ids=["portable", "gather-channels", "wide-index"],
)
def test_kernel_variants_match_float64(env, cases):
    """The kernel variants a process picks once at start-up: the portable build (no AVX2), the
    gather form of the 2-4 channel kernels and the 64-bit index kernels of huge volumes (forced
    here on small ones). Each, in a subprocess, within the float32 bounds of the float64 result,
    on the cases that reach its code (every case costs float64 references in a fresh process)."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import jax\n" + _VARIANT_PROBE.format(tests=str(Path(__file__).resolve().parent), cases=cases)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "@@ok" in done.stdout


_FALLBACK_PROBE = """
import warnings
import jax.numpy as jnp
import numpy as np
from jaxdrr.ops import project, project_backend
vol = jnp.ones((1, 6, 5, 4))
affine = np.diag([2.0, 2.0, 2.0, 1.0])
P = np.array([[1000.0, 0, 4, -3000], [0, 1000.0, 4, -2000], [0, 0, 1, 500.0]])  # centre -> pixel (4, 4)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = project(vol, affine, P, 8, 8)
    project(vol, affine, P, 8, 8)
assert bool(jnp.isfinite(out).all()) and float(out.max()) > 0
name, why = project_backend()
print("@@", name, "|", len([w for w in caught if "pure-JAX" in str(w.message)]), "|", why)
"""


@pytest.mark.parametrize("env", ["missing", "disabled"])
def test_auto_falls_back_to_xla_with_one_notice(env, tmp_path):
    """Without a loadable library "auto" renders with the XLA path and warns once per process;
    with JAXDRR_NO_NATIVE=1 (a deliberate choice) it says nothing."""
    import subprocess
    import sys

    extra = (
        {"JAXDRR_NATIVE_LIBRARY": str(tmp_path / "absent.so")}
        if env == "missing"
        else {"JAXDRR_NO_NATIVE": "1"}
    )
    done = subprocess.run(
        [sys.executable, "-c", _FALLBACK_PROBE],
        capture_output=True,
        text=True,
        env={**os.environ, **extra},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("@@"))
    name, warned, why = (part.strip() for part in line[2:].split("|"))
    assert name == "xla", line
    if env == "missing":
        assert warned == "1" and "could not be loaded" in why, line
    else:
        assert warned == "0" and "JAXDRR_NO_NATIVE" in why, line


def test_projector_tests_pass_on_the_xla_path():
    """test_project.py runs on whatever "auto" picks (the native kernel here); run it once more in a
    fresh process with JAXDRR_NO_NATIVE=1 so every projector test also passes on the XLA path.

    Left out there: the input-error tests (they stop before any backend is chosen) and the
    vmap/jit-equals-loop test (the slowest, ~25 s: the XLA path's vmap is compared with the native
    kernel's in test_vmap_over_volumes_and_nested_vmap_match_xla, and the native kernel's with the
    loop in test_project.py itself)."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    skip = "not vmap_equals_loop and not bad_input and not bad_step"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            skip,
            str(tests / "test_project.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tests.parent,
        env={**os.environ, "JAXDRR_NO_NATIVE": "1"},
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
