"""Per-image random draws: the pose and the physics of sample ``i``, from ``fold_in(key(seed), i)``.

:func:`sample_key` and :func:`draw` are the only sources of randomness in a dataset, so sample
``i`` is the same whatever process renders it, in whichever batch, after however many restarts.
Everything is ``jnp`` and works under ``jit`` and ``vmap`` (one draw per index).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdrr.datasets.spec import DatasetSpec
from jaxdrr.geometry.carm import carm_extrinsics
from jaxdrr.geometry.projection import intrinsic_matrix, projection_matrix

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
}


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
