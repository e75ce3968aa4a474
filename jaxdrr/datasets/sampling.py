"""Per-image random draws: the pose and the physics of sample ``i``, from ``fold_in(key(seed), i)``.

:func:`sample_key` and :func:`draw` are the only sources of randomness in a dataset, so sample
``i`` is the same whatever process renders it, in whichever batch, after however many restarts.
Everything is ``jnp`` and works under ``jit`` and ``vmap`` (one draw per index).
:func:`draw_tools` draws the poses of the spec's ``[[tools]]`` (entry point, direction in a cone,
depth, spin, presence) from a stream of their own, so tools change none of the other draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdrr.datasets.spec import DatasetSpec
from jaxdrr.geometry.carm import carm_extrinsics
from jaxdrr.geometry.projection import intrinsic_matrix, projection_matrix
from jaxdrr.geometry.rigid import RigidTransform
from jaxdrr.geometry.rotations import so3_exp, so3_log

# Independent streams per drawn quantity (fold_in of the sample key): adding a new draw later
# does not change the existing ones.
_STREAMS = {
    "lao": 1,
    "cran": 2,
    "jitter": 3,
    "sdd": 4,
    "sid": 5,
    "pixel": 6,
    "kvp": 7,
    "photons": 8,
    "scatter": 9,
    "density": 10,
    "noise": 11,
    "tools": 12,
}
_TOOL_STREAMS = {"present": 0, "entry": 1, "direction": 2, "depth": 3, "spin": 4}


def sample_key(seed: int, index) -> jax.Array:
    """The key of sample ``index`` (an int or traced int): ``fold_in(key(seed), index)``."""
    return jax.random.fold_in(jax.random.key(seed), index)


def _uniform(key, lo: float, hi: float, shape=()) -> jax.Array:
    dtype = jnp.result_type(float)
    if lo == hi:
        return jnp.full(shape, lo, dtype)
    return jax.random.uniform(key, shape, dtype, lo, hi)


def _log_uniform(key, lo: float, hi: float) -> jax.Array:
    dtype = jnp.result_type(float)
    if lo == hi:
        return jnp.asarray(lo, dtype)
    return jnp.exp(jax.random.uniform(key, (), dtype, jnp.log(lo), jnp.log(hi)))


def draw(spec: DatasetSpec, key, isocenter_mm, channel_names: tuple[str, ...]) -> dict[str, jax.Array]:
    """All random choices of one image.

    Args:
      spec: the dataset spec (static).
      key: the sample's key (:func:`sample_key`).
      isocenter_mm: [3] the isocentre before jitter (the CT centre or the spec's point).
      channel_names: material channels (order of ``density_scale``).

    Returns:
      ``lao_deg``, ``cran_deg``, ``isocenter_mm`` [3], ``sdd_mm``, ``sid_mm``, ``pixel_mm``,
      ``kvp_index`` (into ``spec.physics.kvp``), ``kvp``, ``photons_per_pixel``, ``scatter``
      (bool), ``density_scale`` [M] and ``noise_key``.
    """
    k = {name: jax.random.fold_in(key, stream) for name, stream in _STREAMS.items()}
    pose, phys, det = spec.pose, spec.physics, spec.detector
    jitter = jnp.asarray(pose.isocenter_jitter_mm, jnp.result_type(float))
    kvps = jnp.asarray(phys.kvp, jnp.result_type(float))
    kvp_index = jax.random.randint(k["kvp"], (), 0, len(phys.kvp))
    if phys.scatter_probability >= 1.0:
        scatter = jnp.asarray(True)
    else:
        scatter = jax.random.uniform(k["scatter"], ()) < phys.scatter_probability
    ranges = dict(phys.density_scale)
    dscale = [
        _uniform(jax.random.fold_in(k["density"], m), *ranges.get(name, (1.0, 1.0)))
        for m, name in enumerate(channel_names)
    ]
    return {
        "lao_deg": _uniform(k["lao"], *pose.lao_deg),
        "cran_deg": _uniform(k["cran"], *pose.cran_deg),
        "isocenter_mm": jnp.asarray(isocenter_mm, jnp.result_type(float))
        + jax.random.uniform(k["jitter"], (3,), jnp.result_type(float), -1.0, 1.0) * jitter,
        "sdd_mm": _uniform(k["sdd"], *pose.sdd_mm),
        "sid_mm": _uniform(k["sid"], *pose.sid_mm),
        "pixel_mm": _uniform(k["pixel"], *det.pixel_mm),
        "kvp_index": kvp_index,
        "kvp": kvps[kvp_index],
        "photons_per_pixel": _log_uniform(k["photons"], *phys.photons_per_pixel),
        "scatter": scatter,
        "density_scale": jnp.stack(dscale),
        "noise_key": k["noise"],
    }


def camera(spec: DatasetSpec, d: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``K``, ``R``, ``t`` and ``P = K [R | t]`` of a draw (the C-arm of :mod:`jaxdrr.geometry.carm`)."""
    R, t = carm_extrinsics(d["lao_deg"], d["cran_deg"], d["isocenter_mm"], d["sid_mm"])
    K = intrinsic_matrix(
        d["sdd_mm"], d["pixel_mm"], spec.detector.height, spec.detector.width, flip_columns=True
    )
    return {"K": K, "R": R, "t": t, "P": projection_matrix(K, R, t)}


# ----------------------------------------------------------------------------------------------
# Tools


def tool_pivot(tool, geometry) -> tuple[float, float, float]:
    """The static pivot of a tool's pose: its tip for a random placement (so the drawn tip position
    is exact whatever the rotation's rounding), the tool frame's origin for a fixed pose."""
    return geometry.tip if tool.placement is not None else (0.0, 0.0, 0.0)


def _unit(v):
    return v / jnp.linalg.norm(v)


def _perpendicular(d):
    """A unit vector perpendicular to the unit vector ``d`` (stable: crosses the least-aligned axis)."""
    dtype = d.dtype
    helper = jnp.where(jnp.abs(d[0]) < 0.9, jnp.asarray([1.0, 0, 0], dtype), jnp.asarray([0, 1.0, 0], dtype))
    return _unit(helper - jnp.dot(helper, d) * d)


def _frame(axis, u):
    """Columns (u, axis x u, axis): an orthonormal frame whose third vector is ``axis``."""
    return jnp.stack([u, jnp.cross(axis, u), axis], axis=1)


def _cone_direction(key, mean, cone_deg: float):
    """A unit vector uniform in solid angle within ``cone_deg`` of the unit vector ``mean``."""
    dtype = mean.dtype
    k_cos, k_phi = jax.random.split(key)
    cos_max = jnp.cos(jnp.deg2rad(jnp.asarray(cone_deg, dtype)))
    cos_a = 1.0 - jax.random.uniform(k_cos, (), dtype) * (1.0 - cos_max)
    sin_a = jnp.sqrt(jnp.maximum(1.0 - cos_a * cos_a, 0.0))
    phi = jax.random.uniform(k_phi, (), dtype, 0.0, 2.0 * jnp.pi)
    e1 = _perpendicular(mean)
    e2 = jnp.cross(mean, e1)
    return cos_a * mean + sin_a * (jnp.cos(phi) * e1 + jnp.sin(phi) * e2)


def _entry_point(key, placement, origin, lo, hi):
    dtype = lo.dtype
    extent = hi - lo
    center = jnp.asarray(placement.entry_center, dtype)
    center = lo + center * extent if placement.entry_center_units == "fraction" else origin + center
    size = jnp.asarray(placement.entry_size, dtype)
    if placement.entry_size_units == "fraction":
        size = size * extent
    if placement.entry_shape == "box":
        return center + jax.random.uniform(key, (3,), dtype, -1.0, 1.0) * size
    k_dir, k_r = jax.random.split(key)
    direction = _unit(jax.random.normal(k_dir, (3,), dtype))
    radius = size[0] * jax.random.uniform(k_r, (), dtype) ** (1.0 / 3.0)  # uniform in the ball
    return center + radius * direction


def draw_tools(spec: DatasetSpec, geometry, key, ct_bounds_mm) -> dict[str, jax.Array]:
    """The tool poses of one image (every tool of ``spec.tools``; stream ``"tools"`` of the key).

    Args:
      spec: the dataset spec (static).
      geometry: one :class:`jaxdrr.datasets.tools.ToolGeometry` per tool (static).
      key: the sample's key (:func:`sample_key`).
      ct_bounds_mm: [2, 3] the CT's world bounding box (low and high corners): its centre is the
        origin of ``frame = "ct"``, its size the unit of ``*_fraction`` entries.

    Returns:
      Stacked over tools [T, ...]: ``present`` (bool), ``rotation`` (rotation vectors, radians, about
      :func:`tool_pivot`), ``translation_mm``, ``entry_mm`` (the drawn entry point; the tip for a fixed
      pose), ``direction`` (unit axis in world axes), ``depth_mm`` and ``spin_deg`` (0 for a fixed pose).
    """
    dtype = jnp.result_type(float)
    bounds = jnp.asarray(ct_bounds_mm, dtype)
    lo, hi = bounds[0], bounds[1]
    k_tools = jax.random.fold_in(key, _STREAMS["tools"])
    rows = []
    for i, (tool, geo) in enumerate(zip(spec.tools, geometry, strict=True)):
        k = {name: jax.random.fold_in(jax.random.fold_in(k_tools, i), s) for name, s in _TOOL_STREAMS.items()}
        origin = 0.5 * (lo + hi) if tool.frame == "ct" else jnp.zeros(3, dtype)
        if tool.probability >= 1.0:
            present = jnp.asarray(True)
        else:
            present = jax.random.uniform(k["present"], (), dtype) < tool.probability
        tip_local = jnp.asarray(geo.tip, dtype)
        axis_local = jnp.asarray(geo.axis, dtype)
        if tool.placement is None:
            rotation = jnp.deg2rad(jnp.asarray(tool.pose.rotation_deg, dtype))
            translation = origin + jnp.asarray(tool.pose.translation_mm, dtype)
            R = so3_exp(rotation)
            entry = R @ tip_local + translation
            direction = R @ axis_local
            depth = spin = jnp.zeros((), dtype)
        else:
            pl = tool.placement
            entry = _entry_point(k["entry"], pl, origin, lo, hi)
            direction = _cone_direction(k["direction"], jnp.asarray(pl.direction, dtype), pl.cone_deg)
            depth = _uniform(k["depth"], *pl.depth_mm)
            spin = _uniform(k["spin"], *pl.spin_deg)
            u0 = _perpendicular(direction)
            s = jnp.deg2rad(spin)
            u = jnp.cos(s) * u0 + jnp.sin(s) * jnp.cross(direction, u0)
            local = _frame(axis_local, _perpendicular(axis_local))
            R = _frame(direction, u) @ local.T  # tool axis -> direction, then the spin about it
            rotation = so3_log(R)
            # Pivot at the tip: x_world = R (x - tip) + tip + translation, so the tip lands exactly.
            translation = entry + depth * direction - tip_local
        rows.append(
            {
                "present": present,
                "rotation": rotation,
                "translation_mm": translation,
                "entry_mm": entry,
                "direction": direction,
                "depth_mm": depth,
                "spin_deg": spin,
            }
        )
    return {name: jnp.stack([r[name] for r in rows]) for name in rows[0]}


def tool_pose(spec: DatasetSpec, geometry, draws: dict, i: int) -> RigidTransform:
    """The drawn pose of tool ``i`` (object -> world) from :func:`draw_tools`' output."""
    pivot = tool_pivot(spec.tools[i], geometry[i])
    return RigidTransform(draws["rotation"][i], draws["translation_mm"][i], pivot)
