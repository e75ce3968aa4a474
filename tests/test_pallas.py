"""The Pallas (GPU) projector against the pure-JAX one, on the CPU.

* Interpret mode (``backend="pallas_interpret"``) runs the kernels' logic on the CPU: forward,
  volume gradient, ray-geometry cotangents and pose gradient on volumes with non-power-of-two
  shapes, anisotropic spacing, oblique affines and rays that miss, under jit, vmap, grad and
  vmap(grad). In float64 the two paths agree to rounding (1e-9 relative). In float32 each path is
  compared with the float64 result and must lie within the error bound that
  ``tests/float_bounds.py`` derives from the float32 arithmetic (no tuned tolerances).
* Cross-lowering for CUDA on this CPU machine: every form lowers to Triton custom calls
  (``jaxdrr._compat.TRITON_CUSTOM_CALL_TARGET``), one per kernel, also under vmap (one launch with an extra grid axis, the volume
  not batched).
"""

import functools
import re

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
from jax_checks import jaxpr_equations
from projector_cases import assert_miss_case_has_missing_rays, case, weights

from jaxdrr import geometry as G
from jaxdrr._compat import TRITON_CUSTOM_CALL_TARGET, gpu_lowering_context
from jaxdrr.ops import march, pallas_project, project
from jaxdrr.ops.rays import VolumeGrid, detector_rays

TRITON_CALL = TRITON_CUSTOM_CALL_TARGET
# projector_cases.CASES without "channels" (it exercises the native kernel's channel groups).
CASES = ["oblique", "aniso", "miss"]


def test_miss_case_has_missing_rays():
    assert_miss_case_has_missing_rays()


@pytest.mark.parametrize("name", CASES)
def test_forward_and_volume_gradient_match_xla(name):
    vol, affine, P, H, W = case(name)
    Wt = weights((H, W, vol.shape[0]))

    def loss(v, backend):
        return jnp.sum(project(v, affine, P, H, W, backend=backend) * Wt)

    for backend in ("xla", "pallas_interpret"):
        out = jax.jit(functools.partial(project, affine=affine, height=H, width=W, backend=backend))(vol, P=P)
        assert out.shape == (H, W, vol.shape[0])
        assert_projection_close(out, vol, affine, P, H, W, what=backend)
        g = jax.jit(jax.grad(loss), static_argnums=1)(vol, backend)
        assert_gradients_close(g, None, vol, affine, P, H, W, Wt, what=backend)
        if name == "miss":  # rays that miss the box are exactly zero on both paths
            ref = project(vol, affine, P, H, W, backend="xla")
            assert np.any(np.asarray(ref) == 0.0)
            np.testing.assert_array_equal(np.asarray(out) == 0.0, np.asarray(ref) == 0.0)


@pytest.mark.parametrize("name", CASES)
def test_ray_geometry_cotangents_match_xla(name):
    """The geometry kernel's g_entry, g_direction (and the derived g_step) vs march._march_bwd."""
    vol, affine, P, H, W = case(name)
    grid = VolumeGrid.create(vol.shape[1:], affine)
    rays = detector_rays(P, grid, H, W, grid.default_step())
    flat = march.pad_channels_last(vol)
    g = weights((H * W, vol.shape[0]), seed=5)

    def via(fn):
        f = lambda e, d, h: fn(flat, grid.padded_shape, rays._replace(entry=e, direction=d, step=h))
        out, vjp = jax.vjp(f, rays.entry, rays.direction, rays.step)
        return out, vjp(g)

    pallas = functools.partial(pallas_project.march_pallas, interpret=True, tile=32)
    with jax.enable_x64(True):  # float64: both paths agree to rounding
        rays64 = detector_rays(P.astype(jnp.float64), grid, H, W, grid.default_step())
        flat64, g64 = flat.astype(jnp.float64), g.astype(jnp.float64)

        def via64(fn):
            f = lambda e, d, h: fn(flat64, grid.padded_shape, rays64._replace(entry=e, direction=d, step=h))
            out, vjp = jax.vjp(f, rays64.entry, rays64.direction, rays64.step)
            return out, vjp(g64)

        ref_out64, ref64 = via64(march.march)
        out64, got64 = via64(pallas)
        for a, b in zip((out64,) + tuple(got64), (ref_out64,) + tuple(ref64)):
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12 * float(np.abs(np.asarray(b)).max())
            )
    # float32: each path within the float32 bound of the float64 march on the float64 rays.
    a = analyse(vol, affine, P, H, W)
    b_out = forward_bound(a)
    b_entry, b_direction = ray_cotangent_bound(a, g)
    for fn in (march.march, pallas):
        out, (g_entry, g_direction, _) = jax.jit(lambda: via(fn))()
        assert_within(out, ref_out64, b_out, "line integrals")
        assert_within(g_entry, ref64[0], b_entry, "g_entry")
        assert_within(g_direction, ref64[1], b_direction, "g_direction")


@pytest.mark.parametrize("name", ["oblique", "miss"])
def test_pose_gradient_matches_xla(name):
    vol, affine, P, H, W = case(name)
    Wt = jnp.asarray(conditioned_cotangent(vol, affine, P, H, W))

    def grads(dtype):
        def loss(v, P, backend):
            return jnp.sum(project(v, affine, P, H, W, backend=backend) * Wt.astype(dtype))

        args = (vol.astype(dtype), P.astype(dtype))
        return [np.asarray(jax.grad(loss, argnums=(0, 1))(*args, b)[1]) for b in ("xla", "pallas_interpret")]

    with jax.enable_x64(True):
        ref64, got64 = grads(jnp.float64)
    # Same math: in float64 the two paths agree to rounding.
    np.testing.assert_allclose(got64, ref64, rtol=1e-9, atol=1e-12 * np.abs(ref64).max())
    # float32: each path within the bound derived from the float32 arithmetic (float_bounds).
    for grad32, backend in zip(grads(jnp.float32), ("xla", "pallas_interpret")):
        assert_gradients_close(None, grad32, vol, affine, P, H, W, Wt, what=backend)


def test_vmap_jit_grad_and_vmap_grad_match_xla():
    vol, affine, P, H, W = case("oblique")
    Ps = jnp.stack(
        [
            P,
            G.carm(
                -30.0,
                5.0,
                isocenter=(0.0, 1.0, 0.0),
                geometry=G.CArmGeometry(sdd_mm=300, sid_mm=150, height=H, width=W, pixel_size_mm=2.5),
            ).astype(jnp.float32),
            P.at[0, 3].add(7.0),
        ]
    )
    # One cotangent per pose, zero on that pose's ill-conditioned rays (see float_bounds).
    Wts = jnp.stack(
        [jnp.asarray(conditioned_cotangent(vol, affine, Pi, H, W, seed=i)) for i, Pi in enumerate(Ps)]
    )

    def loss(v, P, Wt, backend):
        return jnp.sum(project(v, affine, P, H, W, backend=backend) * Wt)

    for backend in ("xla", "pallas_interpret"):
        out = jax.jit(jax.vmap(lambda P: project(vol, affine, P, H, W, backend=backend)))(Ps)
        vg = jax.jit(
            jax.vmap(jax.grad(functools.partial(loss, backend=backend), argnums=(0, 1)), in_axes=(None, 0, 0))
        )
        gv, gp = vg(vol, Ps, Wts)
        assert gv.shape == (3,) + vol.shape and gp.shape == (3, 3, 4)
        for i in range(len(Ps)):
            assert_projection_close(out[i], vol, affine, Ps[i], H, W, what=f"{backend} pose {i}")
            assert_gradients_close(gv[i], gp[i], vol, affine, Ps[i], H, W, Wts[i], what=f"{backend} pose {i}")


def test_interpret_scatter_form_counts_duplicates():
    """jax issue 24117: interpret-mode atomic_add drops duplicate indices within one vector.

    The interpret form of the volume kernel's scatter must count all eight adds to index 0.
    """
    from jax.experimental import pallas as pl

    def kernel(idx_ref, val_ref, o_in, o_ref):
        del o_in
        pallas_project._scatter_add(o_ref, idx_ref[...], val_ref[...], jnp.arange(16) < 12, interpret=True)

    idx = jnp.array([0] * 8 + [3, 3, 5, 7] + [0, 1, 2, 4], jnp.int32)
    val = jnp.ones(16, jnp.float32)
    out = pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((8,), jnp.float32), input_output_aliases={2: 0}, interpret=True
    )(idx, val, jnp.zeros(8))
    np.testing.assert_array_equal(np.asarray(out), [8, 0, 0, 2, 0, 1, 0, 1])


def test_vmap_is_one_pallas_call_with_a_batch_grid_axis():
    vol, affine, P, H, W = case("oblique")
    Ps = jnp.stack([P, P, P, P])
    jaxpr = jax.make_jaxpr(jax.vmap(lambda P: project(vol, affine, P, H, W, backend="pallas")))(Ps)
    text = str(jaxpr)
    eqns = list(jaxpr_equations(jaxpr.jaxpr, opaque=("pallas_call",)))
    calls = [e for e in eqns if e.primitive.name == "pallas_call"]
    assert len(calls) == 1, text
    assert not any(e.primitive.name in ("while", "scan") for e in eqns if e is not calls[0]), (
        "vmap must not become a loop over poses"
    )
    gm = calls[0].params["grid_mapping"]
    assert gm.grid[0] == 4 and len(gm.grid) == 2
    vol_in = calls[0].invars[-1].aval  # the flat volume: not batched
    assert vol_in.shape == (int(np.prod([n + 2 for n in vol.shape[1:]])) * vol.shape[0],)


# --------------------------------------------------------------------------------------------
# Cross-lowering for CUDA on the CPU


def _lower_cuda(fn, *args):
    with gpu_lowering_context():  # jax 0.12 needs an abstract GPU to lower Triton without one
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
    vol, affine, P, H, W = case("oblique")
    proj = lambda v, P: project(v, affine, P, H, W, backend="pallas")
    loss = lambda v, P: jnp.sum(jnp.exp(-proj(v, P)))
    Ps = jnp.stack([P, P, P])
    return vol, P, Ps, proj, loss


FWD, GEO, VOL = "jaxdrr_project_fwd", "jaxdrr_project_bwd_geometry", "jaxdrr_project_bwd_volume"


@pytest.mark.parametrize(
    "form, expected",
    [
        ("forward", [FWD]),
        ("grad_P", [FWD, GEO]),
        ("grad_volume", [FWD, VOL]),
        ("grad_both", [FWD, VOL, GEO]),
        ("vmap_forward", [FWD]),
        ("vmap_grad_P", [FWD, GEO]),
        ("vmap_grad_both", [FWD, VOL, GEO]),
    ],
)
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
        fwd = next(line for line in text.splitlines() if f'name = "{FWD}"' in line)
        assert f"tensor<{n_flat}xf32>" in fwd and f"tensor<3x{n_flat}xf32>" not in fwd


def test_dispatch():
    assert project.__module__ == "jaxdrr.ops.project"
    from jaxdrr.ops.project import resolve_backend

    # On CPU "auto" is the native kernel when built, else XLA (tests/test_native_project.py).
    assert resolve_backend("auto") in (("pallas",) if jax.default_backend() == "gpu" else ("native", "xla"))
    with pytest.raises(ValueError):
        pallas_project.march_pallas(
            jnp.zeros((27, 1)),
            (3, 3, 3),
            detector_rays(jnp.eye(3, 4), VolumeGrid.create((1, 1, 1), np.eye(4)), 1, 1, 0.5),
            interpret=True,
            tile=100,
        )


def test_plane_sampling_matches_xla():
    """step_mm="planes" rays (shared set-up) give the same integrals and gradients on both paths."""
    rng = np.random.default_rng(5)
    vol = jnp.asarray(rng.random((2, 15, 13, 11), dtype=np.float32))
    A = np.array([[1.1, 0.1, 0, -8], [0, 0.9, 0.05, -6], [0.02, 0, 1.3, -8], [0, 0, 0, 1.0]])
    g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=6, width=7, pixel_size_mm=2.0)
    P = G.carm(20.0, 10.0, geometry=g)

    Wt = jnp.asarray(conditioned_cotangent(vol, A, P, 6, 7, step_mm="planes"))

    def f(v, P, backend):
        return jnp.sum(project(v, A, P, 6, 7, step_mm="planes", backend=backend) * Wt)

    for backend in ("xla", "pallas_interpret"):
        out = project(vol, A, P, 6, 7, step_mm="planes", backend=backend)
        assert_projection_close(out, vol, A, P, 6, 7, step_mm="planes", what=backend)
        gv, gP = jax.grad(f, argnums=(0, 1))(vol, P, backend)
        assert_gradients_close(gv, gP, vol, A, P, 6, 7, Wt, step_mm="planes", what=backend)
