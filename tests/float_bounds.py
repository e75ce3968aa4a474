"""Float32 error bounds for projector results, derived from float64 quantities (no tuned tolerances).

Two float32 evaluations of the same projection (vmap vs a loop, jit vs eager, Pallas vs XLA) may
round differently: XLA fuses, reorders sums and contracts multiply-adds differently per CPU and per
version. Each test therefore compares every float32 result with a float64 evaluation of the same
algorithm and asserts a bound computed here from first principles:

* **Positions.** A float32 sample position differs from the float64 one by at most
  ``delta`` index units: the ray set-up (source and directions from 3x3 solves, an affine map,
  box clipping) and ``entry + s * direction`` are a few roundings of quantities as large as the
  source's index coordinates, the solves amplified by the Skeel condition number of ``P[:, :3]``.
* **Field values.** Near a sample the trilinear field's slope (per index unit) is at most the
  range of the voxels around it (its cell and the cells a position error can reach), so a moved
  sample changes by at most that range times ``delta`` (times 3 axes), and its rounding is
  ``gamma(16)`` times their largest value.
* **Field gradients** jump across voxel faces. A sample within ``delta`` of a face (on a
  non-plane axis) may be evaluated on either side; its gradient term may then differ by up to
  twice the local range per axis. Samples farther away move it by at most twice that times
  ``delta``.
* **Sample counts.** ``num_steps = ceil(chord / step)`` (or the plane count) can differ by one
  when the float64 value is within ``delta`` of an integer; such rays are flagged and bounded as
  if every sample could move (uniform steps) or one sample could appear (planes).
* **Ill-conditioned rays.** A discrete march is discontinuous where a sample sits on a face or
  the count is about to change; :func:`well_conditioned_rays` finds them, and gradient tests give
  them zero cotangent, so their bound is not dominated by jumps that a correct kernel may show.
* **Sums** of ``n`` terms have error at most ``gamma(n) * sum|terms|`` (Higham, Accuracy and
  Stability of Numerical Algorithms, 2nd ed., eq. 4.4), whatever the summation order.

``gamma(n) = n u / (1 - n u)`` with the float32 unit roundoff ``u = 2**-24``. The bounds are
worst cases; they are far below any real bug (a wrong index, sign, step or missing term changes
results by O(1) relative), which the planted-bug runs in the closing note of issue 7 confirm.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.ops.rays import VolumeGrid, detector_rays, resolve_step

U32 = 2.0**-24  # float32 unit roundoff
SETUP_ROUNDINGS = 8  # roundings after the solves: index transform, clip (t), e + t d, e + s d
SAMPLE_ROUNDINGS = 16  # roundings inside one trilinear sample (fractions, 7 lerps)


def gamma(n) -> np.ndarray:
    n = np.asarray(n, dtype=np.float64)
    return n * U32 / (1.0 - n * U32)


@dataclasses.dataclass
class MarchAnalysis:
    """Float64 facts about every sample of a projection (R rays, up to K samples each)."""

    positions: np.ndarray  # [R, K, 3] padded index coordinates
    valid: np.ndarray  # [R, K]
    step: np.ndarray  # [R] mm
    num_steps: np.ndarray  # [R]
    delta: np.ndarray  # [R] position error bound (index units)
    near_face: np.ndarray  # [R, K] within delta of a voxel face on a non-plane axis
    ambiguous: np.ndarray  # [R] the float32 sample count may differ by one
    planes: bool
    lip: np.ndarray  # [C] largest neighbour difference per index unit
    vmax: np.ndarray  # [C]
    local_slope: np.ndarray  # [R, K, C] voxel range around each sample: bounds the slope there
    local_abs: np.ndarray  # [R, K, C] largest |voxel| around each sample
    padded_shape: tuple[int, int, int]
    jac: np.ndarray | None  # [R, K, 3, 12] d position / d P (index units per unit of P), or None


def _skeel_condition(M):
    return float(np.max(np.abs(np.linalg.inv(M)) @ np.abs(M) @ np.ones(3)))


def analyse(volume, affine, P, height, width, step_mm=None, with_jacobian=False) -> MarchAnalysis:
    """Float64 analysis of ``project(volume, affine, P, height, width, step_mm=step_mm)``."""
    vol = np.asarray(volume, dtype=np.float64)
    P64 = np.asarray(P, dtype=np.float64)
    grid = VolumeGrid.create(vol.shape[1:], affine)
    step = resolve_step(grid, step_mm)
    planes = isinstance(step, str)
    with jax.enable_x64(True):
        rays = detector_rays(jnp.asarray(P64), grid, height, width, step)
        kmax = max(int(jnp.max(rays.num_steps)), 1)
        k = np.arange(kmax)

        def positions_of(Pm):
            r = detector_rays(Pm, grid, height, width, step)
            s = (jnp.asarray(k, jnp.float64)[None, :] + 0.5) * r.step[:, None]
            return r.entry[:, None, :] + s[..., None] * r.direction[:, None, :]

        pos = np.asarray(positions_of(jnp.asarray(P64)))
        jac = None
        if with_jacobian:
            jac = np.asarray(jax.jacfwd(positions_of)(jnp.asarray(P64))).reshape(pos.shape + (12,))
        src = np.asarray(grid.world_to_padded_index(), np.float64)
        M = P64[:, :3]
        source = -np.linalg.solve(M, P64[:, 3])
        source_index = src[:3, :3] @ source + src[:3, 3]
    n = np.asarray(rays.num_steps)
    h = np.asarray(rays.step)
    d = np.asarray(rays.direction)
    valid = k[None, :] < n[:, None]
    far = np.max(np.abs(pos), axis=(1, 2))
    # Source and directions come from 3x3 solves (Higham Thm 9.4: gamma(9) times the Skeel
    # condition), then an affine map and the box clip (a few roundings each); the entry point
    # o + t d inherits the errors of o, t and d: three times the largest.
    delta = (
        3.0 * (gamma(9) * _skeel_condition(M) + gamma(SETUP_ROUNDINGS)) * (np.max(np.abs(source_index)) + far)
    )
    delta = delta + gamma(4) * np.max(np.abs(d), axis=-1) * h * (n + 1)  # e + s d, s = (k + 1/2) h
    dist = np.abs(pos - np.round(pos))  # distance to the nearest integer plane, per axis
    if planes:
        axis = np.argmax(np.abs(d), axis=-1)
        dist[np.arange(len(axis)), :, axis] = np.inf  # the sample sits on its plane by construction
    near_face = np.any(dist <= delta[:, None, None], axis=-1) & valid
    chord = h * n
    if planes:  # a plane one step beyond either end sample lies within delta of the support box
        ambiguous = _near_chord_end(pos, n, d, h, delta, grid)
    else:
        ratio = chord / float(step)
        ambiguous = np.abs(ratio - np.round(ratio)) <= delta * 4.0 / float(step) + gamma(4) * ratio
    # Neighbour differences of the zero-padded volume bound the field's slope per index unit.
    padded = np.pad(vol, ((0, 0), (1, 1), (1, 1), (1, 1)))
    lip = np.zeros(vol.shape[0])
    for ax in (1, 2, 3):
        lip = np.maximum(lip, np.abs(np.diff(padded, axis=ax)).max(axis=(1, 2, 3)))
    # Around a sample (its cell and the neighbouring cells a float32 position error can reach:
    # voxels floor(p) - 1 .. floor(p) + 2), the field's slope per index unit is at most the range
    # of those voxels, and its magnitude at most their largest |value|.
    block = np.lib.stride_tricks.sliding_window_view(
        np.pad(padded, ((0, 0), (1, 2), (1, 2), (1, 2))), (4, 4, 4), axis=(1, 2, 3)
    )
    hi_, lo_ = block.max(axis=(-3, -2, -1)), block.min(axis=(-3, -2, -1))  # [C, I+2, J+2, K+2]
    base = np.clip(np.floor(pos), 0, np.asarray(grid.padded_shape) - 1).astype(int)  # [R, K, 3]
    local_hi = np.moveaxis(hi_[:, base[..., 0], base[..., 1], base[..., 2]], 0, -1) * valid[..., None]
    local_lo = np.moveaxis(lo_[:, base[..., 0], base[..., 1], base[..., 2]], 0, -1) * valid[..., None]
    return MarchAnalysis(
        pos,
        valid,
        h,
        n,
        delta,
        near_face,
        ambiguous,
        planes,
        lip,
        np.abs(vol).max(axis=(1, 2, 3)),
        local_hi - local_lo,
        np.maximum(np.abs(local_hi), np.abs(local_lo)),
        grid.padded_shape,
        jac,
    )


def _near_chord_end(pos, n, d, h, delta, grid):
    """Planes mode: True where the plane just beyond either end sample is a voxel plane (1..n_a)
    whose crossing lies within delta of the support box on another axis: it may be counted."""
    upper = np.asarray(grid.padded_shape, np.float64) - 1.0
    axis = np.argmax(np.abs(d), axis=-1)
    out = np.zeros(len(n), bool)
    for r in np.nonzero(n > 0)[0]:
        a = axis[r]
        others = [i for i in range(3) if i != a]
        for extra in (pos[r, 0] - h[r] * d[r], pos[r, n[r] - 1] + h[r] * d[r]):
            if not 1.0 - 1e-9 <= extra[a] <= upper[a] - 1.0 + 1e-9:
                continue  # planes 0 and n_a + 1 bound the support: never sampled
            margin = min(np.min(extra[others]), np.min(upper[others] - extra[others]))
            out[r] |= abs(margin) <= delta[r] * 4.0
    return out


def well_conditioned_rays(a: MarchAnalysis) -> np.ndarray:
    """[R] True where no sample is within delta of a face and the sample count is certain."""
    return ~(np.any(a.near_face, axis=1) | a.ambiguous)


def forward_bound(a: MarchAnalysis) -> np.ndarray:
    """[R, C] bound on |float32 line integral - float64 line integral| (channel units x mm)."""
    n = a.num_steps.astype(np.float64)
    per_sample = 3.0 * a.local_slope * a.delta[:, None, None] + gamma(SAMPLE_ROUNDINGS) * a.local_abs
    bound = a.step[:, None] * (per_sample.sum(1) + gamma(n + 2)[:, None] * a.local_abs.sum(1))
    # A sample count off by one: uniform steps move every sample by up to a step (1.8 index units
    # at most), planes add or drop one end sample.
    extra = np.where(a.planes, 1.0, n)[:, None] * a.step[:, None] * a.vmax[None, :]
    return bound + np.where(a.ambiguous[:, None], extra, 0.0)


def volume_gradient_bound(a: MarchAnalysis, cotangent) -> np.ndarray:
    """[C, I, J, K] bound on the float32 error of VJP(cotangent [R, C]) w.r.t. the volume."""
    g = np.abs(np.asarray(cotangent, np.float64)).reshape(len(a.step), -1)  # [R, C]
    C = g.shape[1]
    n_terms = float(np.sum(a.num_steps)) * 8
    per = (3.0 * a.delta + gamma(SAMPLE_ROUNDINGS)) * a.step  # corner-weight error per sample
    full = np.where(a.ambiguous, 2.0, 1.0) * a.step  # ambiguous rays: whole weights may move
    out = np.zeros((C,) + tuple(a.padded_shape))
    I2, J2, K2 = a.padded_shape
    r_idx, k_idx = np.nonzero(a.valid)
    p = a.positions[r_idx, k_idx]
    # The voxels a sample may touch: its cell's corners, and the next cell's where the float32
    # position may cross a face (within delta).
    dl = a.delta[r_idx][:, None]
    top = np.asarray(a.padded_shape) - 1
    lo = np.clip(np.floor(p - dl), 0, top).astype(int)
    hi = np.clip(np.floor(p + dl) + 1, 0, top).astype(int)
    w = (per + gamma(n_terms) * a.step)[r_idx]
    w = np.where(a.ambiguous[r_idx], full[r_idx], w)
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            for dk in (0, 1, 2):
                off = np.array([di, dj, dk])
                idx = lo + off
                ok = np.all(idx <= hi, axis=1)
                for c in range(C):
                    np.add.at(out[c], tuple(idx[ok].T), (w * g[r_idx, c])[ok])
    return out[:, 1:-1, 1:-1, 1:-1]


def pose_gradient_bound(a: MarchAnalysis, cotangent) -> np.ndarray:
    """[3, 4] bound on the float32 error of VJP(cotangent [R, C]) w.r.t. P."""
    assert a.jac is not None, "analyse(..., with_jacobian=True) is needed for pose gradients"
    g = np.abs(np.asarray(cotangent, np.float64)).reshape(len(a.step), -1)  # [R, C]
    J = np.abs(a.jac).sum(axis=2)  # [R, K, 12]: |d x / d P_j| summed over the 3 axes
    # Per sample and channel: the slope error (jump at a face, or slope change by moving delta),
    # plus rounding of the chain product and of the sums, relative to the largest slope term.
    jump = np.where(a.near_face | a.ambiguous[:, None], 2.0, 2.0 * a.delta[:, None])  # [R, K]
    n_terms = float(np.sum(a.num_steps)) * 12 + 64
    per = (jump[..., None] + gamma(n_terms + SETUP_ROUNDINGS)) * a.local_slope  # [R, K, C]
    per = per * a.valid[..., None] * a.step[:, None, None]
    weighted = np.einsum("rkc,rc->rk", per, g)  # [R, K]
    return np.einsum("rk,rkj->j", weighted, J).reshape(3, 4)


def ray_cotangent_bound(a: MarchAnalysis, cotangent) -> tuple[np.ndarray, np.ndarray]:
    """([R, 3], [R, 3]) bounds on the float32 error of the march's VJP w.r.t. entry and direction."""
    g = np.abs(np.asarray(cotangent, np.float64)).reshape(len(a.step), -1)
    jump = np.where(a.near_face | a.ambiguous[:, None], 2.0, 2.0 * a.delta[:, None])
    n_terms = a.num_steps.astype(np.float64)[:, None] + 16
    per = (jump[..., None] + gamma(n_terms + SAMPLE_ROUNDINGS)[:, None]) * a.local_slope
    per = np.einsum("rkc,rc->rk", per * a.valid[..., None] * a.step[:, None, None], g)  # [R, K]
    s = (np.arange(per.shape[1])[None, :] + 0.5) * a.step[:, None]  # distance of sample k (mm)
    entry = np.sum(per, axis=1)
    direction = np.sum(per * s, axis=1)
    return np.repeat(entry[:, None], 3, 1), np.repeat(direction[:, None], 3, 1)


def assert_within(actual, reference64, bound, what=""):
    """|actual - reference64| <= bound elementwise, with a message showing the worst entry."""
    err = np.abs(np.asarray(actual, np.float64) - np.asarray(reference64, np.float64))
    bound = np.broadcast_to(np.asarray(bound, np.float64), err.shape)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"({int(np.sum(err > bound))} of {err.size} entries over)"
    )
    return float(np.max(err / np.maximum(bound, 1e-300)))


# ------------------------------------------------------------------------------------------------
# The checks the projector tests use: a float32 result against the float64 evaluation of the same
# projection (``backend="xla"``, which float64 makes exact to ~1e-15 relative).


def _project64(volume, affine, P, height, width, step_mm):
    from jaxdrr.ops import project

    with jax.enable_x64(True):
        v = jnp.asarray(np.asarray(volume, np.float64))
        return np.asarray(
            project(
                v,
                affine,
                jnp.asarray(np.asarray(P, np.float64)),
                height,
                width,
                step_mm=step_mm,
                backend="xla",
            )
        )


def _grads64(volume, affine, P, height, width, step_mm, cotangent):
    from jaxdrr.ops import project

    with jax.enable_x64(True):
        v = jnp.asarray(np.asarray(volume, np.float64))
        Pm = jnp.asarray(np.asarray(P, np.float64))
        g = jnp.asarray(np.asarray(cotangent, np.float64))
        loss = lambda v, Pm: jnp.sum(
            project(v, affine, Pm, height, width, step_mm=step_mm, backend="xla") * g
        )
        gv, gp = jax.grad(loss, argnums=(0, 1))(v, Pm)
        return np.asarray(gv), np.asarray(gp)


def assert_projection_close(result32, volume, affine, P, height, width, step_mm=None, what="projection"):
    """A float32 ``project`` result [H, W, C] is within the float32 bound of the float64 one."""
    a = analyse(volume, affine, P, height, width, step_mm)
    ref = _project64(volume, affine, P, height, width, step_mm)
    return assert_within(result32, ref, forward_bound(a).reshape(ref.shape), what)


def conditioned_cotangent(volume, affine, P, height, width, step_mm=None, seed=3):
    """A random [H, W, C] cotangent, zero on the rays that :func:`well_conditioned_rays` rejects."""
    vol = np.asarray(volume)
    a = analyse(volume, affine, P, height, width, step_mm)
    keep = well_conditioned_rays(a).reshape(height, width, 1)
    assert keep.sum() >= 8, f"only {keep.sum()} well-conditioned rays: too few for a meaningful check"
    g = np.random.default_rng(seed).normal(size=(height, width, vol.shape[0]))
    return (g * keep).astype(np.float32)


def assert_gradients_close(
    grad_volume32, grad_pose32, volume, affine, P, height, width, cotangent, step_mm=None, what="gradient"
):
    """Float32 VJPs of ``sum(project(...) * cotangent)`` w.r.t. the volume and P (either may be
    None) are within their float32 bounds of the float64 ones."""
    a = analyse(volume, affine, P, height, width, step_mm, with_jacobian=grad_pose32 is not None)
    gv64, gp64 = _grads64(volume, affine, P, height, width, step_mm, cotangent)
    g = np.asarray(cotangent).reshape(-1, np.shape(volume)[0])
    ratios = []
    if grad_volume32 is not None:
        ratios.append(assert_within(grad_volume32, gv64, volume_gradient_bound(a, g), what + " (volume)"))
    if grad_pose32 is not None:
        bound = pose_gradient_bound(a, g)
        assert bound.max() < 0.5 * np.abs(gp64).max(), "bound too loose to test anything"
        ratios.append(assert_within(grad_pose32, gp64, bound, what + " (pose)"))
    return max(ratios)
