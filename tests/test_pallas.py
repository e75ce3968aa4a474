"""The Pallas (GPU) projector against the pure-JAX one, on the CPU.

* Interpret mode (``backend="pallas_interpret"``) runs the kernels' logic on the CPU: forward,
  volume gradient and ray-geometry cotangents equal the XLA path within 1e-5 (float32) on volumes
  with non-power-of-two shapes, anisotropic spacing, oblique affines and rays that miss, under
  jit, vmap, grad and vmap(grad). The pose gradient is checked the same way in float64 (where the
  two paths agree to ~1e-12); in float32 the *reference itself* is only good to ~1e-3 in its worst
  entries (a sum of many cancelling terms: measured against float64), so there it is compared in
  the max-norm.
* Cross-lowering for CUDA on this CPU machine: every form lowers to ``__gpu$xla.gpu.triton``
  custom calls, one per kernel, also under vmap (one launch with an extra grid axis, the volume
  not batched).
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrr import geometry as G
from jaxdrr.ops import march, pallas_project, project
from jaxdrr.ops.rays import VolumeGrid, detector_rays

TRITON_CALL = "__gpu$xla.gpu.triton"

OBLIQUE = np.array([[1.1, 0.1, 0, -8], [0, 0.9, 0.05, -6], [0.02, 0, 1.3, -8], [0, 0, 0, 1.0]])
ANISO = np.array([[0.7, 0, 0, -3], [0, 1.3, 0, -12], [0, 0, 2.1, -7], [0, 0, 0, 1.0]])


def _case(name):
    rng = np.random.default_rng({"oblique": 0, "aniso": 1, "miss": 2}[name])
    if name == "oblique":  # non-power-of-two shape, oblique affine, 2 channels
        vol = rng.random((2, 15, 13, 11), dtype=np.float32)
        affine, iso, H, W, lao, cran, pixel = OBLIQUE, (0.5, 0.2, -0.3), 9, 10, 20.0, 10.0, 2.5
    elif name == "aniso":  # anisotropic axis-aligned spacing, 3 channels
        vol = rng.random((3, 9, 20, 7), dtype=np.float32)
        affine, iso, H, W, lao, cran, pixel = ANISO, (0.0, 0.0, 0.0), 7, 12, -35.0, 25.0, 3.0
    else:  # isocentre near the edge: part of the detector misses the volume
        vol = rng.random((1, 10, 11, 12), dtype=np.float32)
        affine, iso, H, W, lao, cran, pixel = OBLIQUE, (6.0, 4.0, 2.0), 8, 8, 5.0, -15.0, 4.0
    g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=H, width=W, pixel_size_mm=pixel)
    P = G.carm(lao, cran, isocenter=iso, geometry=g)
    return jnp.asarray(vol), affine, jnp.asarray(P, jnp.float32), H, W


CASES = ["oblique", "aniso", "miss"]


def _close(actual, expected, rtol=1e-5):
    """Within rtol elementwise, with an absolute floor of rtol * max|expected| (for near-zeros)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol,
                               atol=rtol * max(float(np.abs(expected).max()), 1e-30))


def _weights(shape, seed=3, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def test_miss_case_has_missing_rays():
    vol, affine, P, H, W = _case("miss")
    grid = VolumeGrid.create(vol.shape[1:], affine)
    n = np.asarray(detector_rays(P, grid, H, W, grid.default_step()).num_steps)
    assert (n == 0).sum() >= 5 and (n > 0).sum() >= 5, n


@pytest.mark.parametrize("name", CASES)
def test_forward_and_volume_gradient_match_xla(name):
    vol, affine, P, H, W = _case(name)
    Wt = _weights((H, W, vol.shape[0]))

    def loss(v, backend):
        return jnp.sum(project(v, affine, P, H, W, backend=backend) * Wt)

    ref = jax.jit(functools.partial(project, affine=affine, height=H, width=W,
                                    backend="xla"))(vol, P=P)
    out = jax.jit(functools.partial(project, affine=affine, height=H, width=W,
                                    backend="pallas_interpret"))(vol, P=P)
    assert out.shape == (H, W, vol.shape[0])
    _close(out, ref)
    if name == "miss":
        assert np.any(np.asarray(ref) == 0.0)
        np.testing.assert_array_equal(np.asarray(out) == 0.0, np.asarray(ref) == 0.0)
    g_ref = jax.jit(jax.grad(loss), static_argnums=1)(vol, "xla")
    g_out = jax.jit(jax.grad(loss), static_argnums=1)(vol, "pallas_interpret")
    assert float(jnp.abs(g_ref).max()) > 0
    _close(g_out, g_ref)


@pytest.mark.parametrize("name", CASES)
def test_ray_geometry_cotangents_match_xla(name):
    """The geometry kernel's g_entry, g_direction (and the derived g_step) vs march._march_bwd."""
    vol, affine, P, H, W = _case(name)
    grid = VolumeGrid.create(vol.shape[1:], affine)
    rays = detector_rays(P, grid, H, W, grid.default_step())
    flat = march.pad_channels_last(vol)
    g = _weights((H * W, vol.shape[0]), seed=5)

    def via(fn):
        f = lambda e, d, h: fn(flat, grid.padded_shape, rays._replace(entry=e, direction=d, step=h))
        out, vjp = jax.vjp(f, rays.entry, rays.direction, rays.step)
        return out, vjp(g)

    ref_out, ref = jax.jit(lambda: via(march.march))()
    pallas = functools.partial(pallas_project.march_pallas, interpret=True, tile=32)
    out, got = jax.jit(lambda: via(pallas))()
    _close(out, ref_out)
    for a, b in zip(got, ref):
        _close(a, b)


@pytest.mark.parametrize("name", ["oblique", "miss"])
def test_pose_gradient_matches_xla(name):
    vol, affine, P, H, W = _case(name)
    Wt = _weights((H, W, vol.shape[0]))

    def grads(dtype):
        def loss(v, P, backend):
            return jnp.sum(project(v, affine, P, H, W, backend=backend) * Wt.astype(dtype))
        args = (vol.astype(dtype), P.astype(dtype))
        return [np.asarray(jax.grad(loss, argnums=(0, 1))(*args, b)[1])
                for b in ("xla", "pallas_interpret")]

    with jax.enable_x64(True):
        ref64, got64 = grads(jnp.float64)
    # Same math: in float64 the two paths agree to rounding.
    np.testing.assert_allclose(got64, ref64, rtol=1e-9, atol=1e-12 * np.abs(ref64).max())
    # float32: the per-ray cotangents agree to 1e-5 (test above); the chain rule to P (shared,
    # in XLA) sums many cancelling terms, so there the float32 reference is itself only good to
    # ~1e-3 relative in its worst entries and ~5e-5 of the max-norm: compare in the max-norm.
    ref, got = grads(jnp.float32)
    scale = np.abs(ref64).max()
    assert np.abs(ref - ref64).max() <= 1e-4 * scale  # the reference's own float32 error
    assert np.abs(got - ref).max() <= 1e-4 * scale, (got, ref)


def test_vmap_jit_grad_and_vmap_grad_match_xla():
    vol, affine, P, H, W = _case("oblique")
    Ps = jnp.stack([P, G.carm(-30.0, 5.0, isocenter=(0.0, 1.0, 0.0), geometry=G.CArmGeometry(
        sdd_mm=300, sid_mm=150, height=H, width=W, pixel_size_mm=2.5)).astype(jnp.float32),
        P.at[0, 3].add(7.0)])
    Wt = _weights((H, W, vol.shape[0]))

    def loss(v, P, backend):
        return jnp.sum(project(v, affine, P, H, W, backend=backend) * Wt)

    proj = lambda backend: jax.jit(jax.vmap(
        lambda P: project(vol, affine, P, H, W, backend=backend)))
    _close(proj("pallas_interpret")(Ps), proj("xla")(Ps))

    vg = lambda backend: jax.jit(jax.vmap(jax.grad(functools.partial(loss, backend=backend),
                                                   argnums=(0, 1)), in_axes=(None, 0)))
    gv_ref, gp_ref = vg("xla")(vol, Ps)
    gv, gp = vg("pallas_interpret")(vol, Ps)
    assert gv.shape == (3,) + vol.shape and gp.shape == (3, 3, 4)
    _close(gv, gv_ref)
    for a, b in zip(np.asarray(gp), np.asarray(gp_ref)):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()  # float32 max-norm, see above


def test_interpret_scatter_form_counts_duplicates():
    """jax issue 24117: interpret-mode atomic_add drops duplicate indices within one vector.

    The interpret form of the volume kernel's scatter must count all eight adds to index 0.
    """
    from jax.experimental import pallas as pl

    def kernel(idx_ref, val_ref, o_in, o_ref):
        del o_in
        pallas_project._scatter_add(o_ref, idx_ref[...], val_ref[...],
                                    jnp.arange(16) < 12, interpret=True)

    idx = jnp.array([0] * 8 + [3, 3, 5, 7] + [0, 1, 2, 4], jnp.int32)
    val = jnp.ones(16, jnp.float32)
    out = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((8,), jnp.float32),
                         input_output_aliases={2: 0}, interpret=True)(idx, val, jnp.zeros(8))
    np.testing.assert_array_equal(np.asarray(out), [8, 0, 0, 2, 0, 1, 0, 1])


def test_vmap_is_one_pallas_call_with_a_batch_grid_axis():
    vol, affine, P, H, W = _case("oblique")
    Ps = jnp.stack([P, P, P, P])
    jaxpr = jax.make_jaxpr(jax.vmap(
        lambda P: project(vol, affine, P, H, W, backend="pallas")))(Ps)
    text = str(jaxpr)
    calls = [e for e in _all_eqns(jaxpr.jaxpr) if e.primitive.name == "pallas_call"]
    assert len(calls) == 1, text
    assert not any(e.primitive.name in ("while", "scan") for e in _all_eqns(jaxpr.jaxpr)
                   if e is not calls[0]), "vmap must not become a loop over poses"
    gm = calls[0].params["grid_mapping"]
    assert gm.grid[0] == 4 and len(gm.grid) == 2
    vol_in = calls[0].invars[-1].aval  # the flat volume: not batched
    assert vol_in.shape == (int(np.prod([n + 2 for n in vol.shape[1:]])) * vol.shape[0],)


def _all_eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        if e.primitive.name == "pallas_call":
            continue  # do not descend into the kernel body
        for p in e.params.values():
            for inner in (p if isinstance(p, (tuple, list)) else (p,)):
                inner = getattr(inner, "jaxpr", inner)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _all_eqns(inner)


# --------------------------------------------------------------------------------------------
# Cross-lowering for CUDA on the CPU


def _lower_cuda(fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def _kernels(text):
    """Names of the Triton custom calls in a lowered module, in order."""
    names = []
    for line in text.splitlines():
        if f"custom_call @{TRITON_CALL}" in line:
            m = re.search(r'name = "(\w+)"', line)
            names.append(m.group(1) if m else "?")
    return names


@pytest.fixture(scope="module")
def cuda_problem():
    vol, affine, P, H, W = _case("oblique")
    proj = lambda v, P: project(v, affine, P, H, W, backend="pallas")
    loss = lambda v, P: jnp.sum(jnp.exp(-proj(v, P)))
    Ps = jnp.stack([P, P, P])
    return vol, P, Ps, proj, loss


FWD, GEO, VOL = "jaxdrr_project_fwd", "jaxdrr_project_bwd_geometry", "jaxdrr_project_bwd_volume"


@pytest.mark.parametrize("form, expected", [
    ("forward", [FWD]),
    ("grad_P", [FWD, GEO]),
    ("grad_volume", [FWD, VOL]),
    ("grad_both", [FWD, VOL, GEO]),
    ("vmap_forward", [FWD]),
    ("vmap_grad_P", [FWD, GEO]),
    ("vmap_grad_both", [FWD, VOL, GEO]),
])
def test_cross_lowers_to_one_triton_call_per_kernel(cuda_problem, form, expected):
    vol, P, Ps, proj, loss = cuda_problem
    fns = {
        "forward": (proj, (vol, P)),
        "grad_P": (jax.grad(loss, 1), (vol, P)),
        "grad_volume": (jax.grad(loss, 0), (vol, P)),
        "grad_both": (jax.grad(loss, (0, 1)), (vol, P)),
        "vmap_forward": (jax.vmap(proj, (None, 0)), (vol, Ps)),
        "vmap_grad_P": (jax.vmap(jax.grad(loss, 1), (None, 0)), (vol, Ps)),
        "vmap_grad_both": (jax.vmap(jax.grad(loss, (0, 1)), (None, 0)), (vol, Ps)),
    }
    fn, args = fns[form]
    text = _lower_cuda(fn, *args)
    assert sorted(_kernels(text)) == sorted(expected), _kernels(text)
    if form.startswith("vmap"):
        # One launch per kernel with the batch as a grid axis; the volume operand is unbatched.
        for line in text.splitlines():
            if f"custom_call @{TRITON_CALL}" in line:
                assert "grid_y = 3" in line, line[:300]
        n_flat = int(np.prod([n + 2 for n in vol.shape[1:]])) * vol.shape[0]
        fwd = next(l for l in text.splitlines() if f'name = "{FWD}"' in l)
        assert f"tensor<{n_flat}xf32>" in fwd and f"tensor<3x{n_flat}xf32>" not in fwd


def test_dispatch():
    assert project.__module__ == "jaxdrr.ops.project"
    from jaxdrr.ops.project import resolve_backend
    assert resolve_backend("auto") == ("pallas" if jax.default_backend() == "gpu" else "xla")
    with pytest.raises(ValueError):
        pallas_project.march_pallas(jnp.zeros((27, 1)), (3, 3, 3), detector_rays(
            jnp.eye(3, 4), VolumeGrid.create((1, 1, 1), np.eye(4)), 1, 1, 0.5),
            interpret=True, tile=100)


def test_plane_sampling_matches_xla():
    """step_mm="planes" rays (shared set-up) give the same integrals and gradients on both paths."""
    rng = np.random.default_rng(5)
    vol = jnp.asarray(rng.random((2, 15, 13, 11), dtype=np.float32))
    A = np.array([[1.1, 0.1, 0, -8], [0, 0.9, 0.05, -6], [0.02, 0, 1.3, -8], [0, 0, 0, 1.0]])
    g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=6, width=7, pixel_size_mm=2.0)
    P = G.carm(20.0, 10.0, geometry=g)

    def f(v, P, backend):
        return jnp.sum(project(v, A, P, 6, 7, step_mm="planes", backend=backend) ** 2)

    xla = project(vol, A, P, 6, 7, step_mm="planes", backend="xla")
    pal = project(vol, A, P, 6, 7, step_mm="planes", backend="pallas_interpret")
    np.testing.assert_allclose(np.asarray(pal), np.asarray(xla), rtol=1e-5, atol=1e-5 * float(jnp.abs(xla).max()))
    gv_x, gP_x = jax.grad(f, argnums=(0, 1))(vol, P, "xla")
    gv_p, gP_p = jax.grad(f, argnums=(0, 1))(vol, P, "pallas_interpret")
    np.testing.assert_allclose(np.asarray(gv_p), np.asarray(gv_x), rtol=1e-5, atol=1e-5 * float(jnp.abs(gv_x).max()))
    assert float(jnp.abs(gP_p - gP_x).max()) <= 1e-4 * float(jnp.abs(gP_x).max())
