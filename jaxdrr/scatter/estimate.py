"""Scatter inside the renderer: a learned estimate (the scatter ConvNet) or the Monte Carlo.

Scatter is smooth, so it is estimated on a low-resolution copy of the detector (about
:data:`NET_GRID` pixels on the long side) and interpolated back. Both estimators return scatter in
**flat-field (transmission) units**, the renderer's: ``s_ei`` is the scattered energy per pixel
divided by the open-field energy signal ``N0 * E_mean`` and ``s_pc`` the scattered photons divided
by ``N0``; ``s / T_primary`` is the scatter-to-primary ratio. With an anti-scatter grid, primary and
scatter are both flat-field corrected (divided by the grid's open-beam primary transmission), as on
a calibrated C-arm.

This module is the one place for the quantities the network sees, used by the renderer, by the
training-data generator (:mod:`jaxdrr.training.scatter_data`) and by the trainer:

* :func:`low_res_shape`, :func:`low_res_projection`, :func:`block_average`: the low-resolution
  detector and the area average onto it (so the network input at render time is computed exactly as
  in training, where the Monte Carlo tallies whole low-resolution pixels);
* :func:`conditioning`: the scalars scatter depends on besides the image (spectrum, distances,
  pixel size, grid), in physical units;
* :func:`net_scatter` and :func:`mc_scatter`: the two estimators, full detector resolution.

The network's input transmissions are made from the spectral moments of the primary
(:func:`jaxdrr.spectral.detector_moments`); the renderer computes those once per image and hands them
to :func:`net_scatter` (``moments=``), which computes them itself only when none are given.

The trained range (spectra 60-120 kVp, source-detector 900-1300 mm, low-resolution pixels of
6-14 mm, object centre at 50-85 % of the SDD) is :data:`TRAINED_RANGE`; :func:`check_range`
warns outside it.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr import spectral
from jaxdrr.errors import JaxdrrError
from jaxdrr.geometry.projection import is_concrete
from jaxdrr.scatter.monte_carlo import GridConfig, MonteCarloConfig, monte_carlo
from jaxdrr.volume import Volume

NET_GRID = 32
METHODS = ("net", "mc")
# Conditioning scalars, in this order, with the range the shipped network was trained on.
CONDITIONING = ("kvp", "mean_energy_keV", "sdd_mm", "object_fraction", "pixel_mm", "grid")
TRAINED_RANGE = {
    "kvp": (59.0, 120.0),
    "mean_energy_keV": (38.0, 68.0),
    "sdd_mm": (900.0, 1300.0),
    "object_fraction": (0.45, 0.9),
    "pixel_mm": (6.0, 14.0),
}


@dataclasses.dataclass(frozen=True)
class ScatterConfig:
    """How the renderer adds scatter (static, hashable).

    Attributes:
      method: ``"net"`` (the scatter ConvNet, weights in ``params["scatter_net"]``) or ``"mc"``
        (the Monte Carlo engine inside the render: slow, noisy, not differentiable; for checks).
      sdd_mm: source-to-detector distance (mm). The projection matrix fixes only the pixel
        directions; scatter depends on where the panel is. Default: :class:`CArmGeometry`'s 1020.
      grid: a focused anti-scatter grid in front of the panel (15:1, 80 lines/cm, lead in
        aluminium: :class:`jaxdrr.scatter.GridConfig` ()), the grid the network was trained with.
      mc_photons: histories per image for ``"mc"``.
      grid_side: pixels of the low-resolution detector's long side.
      warn_outside_range: warn (eagerly, for concrete inputs) when a render is outside the network's
        trained range (:data:`TRAINED_RANGE`).
    """

    method: str = "net"
    sdd_mm: float = 1020.0
    grid: bool = False
    mc_photons: int = 10_000_000
    grid_side: int = NET_GRID
    warn_outside_range: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise JaxdrrError(f"scatter method must be one of {METHODS} or None, got {self.method!r}")
        if not (np.isfinite(self.sdd_mm) and self.sdd_mm > 0):
            raise JaxdrrError(f"scatter sdd_mm must be > 0 mm, got {self.sdd_mm}")
        if int(self.mc_photons) != self.mc_photons or self.mc_photons < 1:
            raise JaxdrrError(f"mc_photons must be a positive integer, got {self.mc_photons}")
        if int(self.grid_side) < 4:
            raise JaxdrrError(f"grid_side must be >= 4 pixels, got {self.grid_side}")


def as_scatter_config(scatter) -> ScatterConfig | None:
    """None, ``"none"``, ``"net"``, ``"mc"`` or a :class:`ScatterConfig` -> ScatterConfig or None."""
    if scatter is None or isinstance(scatter, ScatterConfig):
        return scatter
    if isinstance(scatter, str):
        if scatter == "none":
            return None
        return ScatterConfig(method=scatter)
    raise JaxdrrError(f"scatter must be None, 'none', 'net', 'mc' or a ScatterConfig, got {scatter!r}")


def low_res_shape(height: int, width: int, side: int = NET_GRID) -> tuple[int, int]:
    """The low-resolution detector: the long side ``side`` pixels (or the detector, if smaller)."""
    factor = max(1.0, max(height, width) / side)
    return max(1, int(round(height / factor))), max(1, int(round(width / factor)))


def low_res_projection(P, height: int, width: int, low_height: int, low_width: int) -> jax.Array:
    """P of the same detector re-sampled to ``low_height x low_width`` larger pixels.

    A low-resolution pixel covers exactly the full-resolution pixels it averages:
    ``x' = (x + 0.5) * low_width / width - 0.5`` (and likewise for rows).
    """
    P = jnp.asarray(P)
    sx, sy = low_width / width, low_height / height
    S = jnp.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]], P.dtype)
    return S @ P


def block_average(image, low_height: int, low_width: int) -> jax.Array:
    """Area average of ``image`` [H, W, ...] onto [low_height, low_width, ...].

    Exact block means when the sizes divide; otherwise an antialiased linear resize (a triangle
    filter as wide as two low-resolution pixels), which is close for smooth quantities.
    """
    image = jnp.asarray(image)
    H, W = image.shape[:2]
    rest = image.shape[2:]
    if H % low_height == 0 and W % low_width == 0:
        blocks = image.reshape(low_height, H // low_height, low_width, W // low_width, *rest)
        return blocks.mean(axis=(1, 3))
    return jax.image.resize(image, (low_height, low_width, *rest), method="linear", antialias=True)


def upsample(image, height: int, width: int) -> jax.Array:
    """Bilinear interpolation of a low-resolution [h, w, ...] image to [height, width, ...]."""
    image = jnp.asarray(image)
    return jax.image.resize(image, (height, width, *image.shape[2:]), method="linear")


def spectrum_scalars(params) -> tuple[jax.Array, jax.Array]:
    """(kVp, mean energy in keV) of the emitted spectrum in ``params``.

    kVp is the highest energy bin with a positive weight (not differentiated); the mean energy is
    differentiable w.r.t. the spectrum.
    """
    energies, weights = params["energies"], params["spectrum"]
    kvp = jax.lax.stop_gradient(jnp.max(jnp.where(weights > 0, energies, 0.0)))
    mean = jnp.sum(weights * energies) / jnp.sum(weights)
    return kvp, mean


def detector_geometry(P_low, volume_center_mm, sdd_mm) -> tuple[jax.Array, jax.Array]:
    """(pixel pitch of the low-resolution detector in mm, object fraction) from P.

    With ``M = P[:, :3]`` scaled so that its third row has unit norm, the focal length in pixels is
    the norm of the second row's component orthogonal to the third (``K R`` with zero skew). The
    pitch at the panel is ``sdd / f``. The object fraction is the depth of the volume centre along
    the principal axis over the SDD (the magnification's inverse; the air gap is ``(1 - it) sdd``).
    """
    P_low = jnp.asarray(P_low)
    scale = jnp.linalg.norm(P_low[2, :3])
    M, p4 = P_low[:, :3] / scale, P_low[:, 3] / scale
    axis = M[2]
    row = M[1] - jnp.dot(M[1], axis) * axis
    f = jnp.linalg.norm(row)
    depth = jnp.dot(axis, jnp.asarray(volume_center_mm, P_low.dtype)) + p4[2]
    return sdd_mm / f, depth / sdd_mm


def conditioning(params, P_low, volume_center_mm, config: ScatterConfig) -> jax.Array:
    """The conditioning scalars :data:`CONDITIONING` in physical units, [6].

    The source-detector distance is ``params["sdd_mm"]`` when present (a per-call, possibly traced
    value: e.g. drawn per image by :mod:`jaxdrr.datasets`), else ``config.sdd_mm``.
    """
    kvp, mean = spectrum_scalars(params)
    sdd_mm = params.get("sdd_mm", config.sdd_mm)
    pitch, fraction = detector_geometry(P_low, volume_center_mm, sdd_mm)
    dtype = jnp.result_type(float)
    return jnp.stack(
        [
            kvp.astype(dtype),
            mean.astype(dtype),
            jnp.asarray(sdd_mm, dtype),
            fraction.astype(dtype),
            pitch.astype(dtype),
            jnp.asarray(float(config.grid), dtype),
        ]
    )


def check_range(cond, *, stacklevel: int = 3) -> list[str]:
    """Warns (and returns the messages) for conditioning values outside :data:`TRAINED_RANGE`.

    Only concrete values are checked (a traced call cannot warn); call it eagerly, e.g. once
    before a jitted batch. A pixel pitch outside the range means the detector, not the object,
    is unlike training; a negative object fraction means the volume is behind the source (an error).
    """
    if not is_concrete(cond):
        return []
    values = dict(zip(CONDITIONING, np.asarray(cond, np.float64).tolist(), strict=True))
    if not values["object_fraction"] > 0:
        raise JaxdrrError("the volume centre is behind the source: scatter cannot be estimated")
    messages = []
    for name, (lo, hi) in TRAINED_RANGE.items():
        v = values[name]
        if not (lo <= v <= hi):
            messages.append(
                f"{name} = {v:.4g} is outside the scatter network's trained range [{lo:g}, {hi:g}]"
            )
    for m in messages:
        warnings.warn(m + "; the scatter estimate may be inaccurate", stacklevel=stacklevel)
    return messages


def _warn_range_callback(cond) -> None:
    for row in np.asarray(cond, np.float64).reshape(-1, len(CONDITIONING)):
        try:
            check_range(row, stacklevel=4)
        except JaxdrrError as exc:
            warnings.warn(str(exc), stacklevel=2)


def transmissions(params, L, moments: spectral.DetectorMoments | None = None) -> tuple[jax.Array, jax.Array]:
    """Primary transmissions (EI, PC) [...] of line integrals [..., M] (g/cm^2) for ``params``.

    Args:
      params: ``{"energies", "spectrum", "mu_rho"}``.
      L: line integrals [..., M] (g/cm^2).
      moments: the spectral moments of ``L`` for ``params`` if already computed
        (:func:`jaxdrr.spectral.detector_moments`); None computes them here.
    """
    w = params["spectrum"]
    m = moments
    if m is None:
        m = spectral.detector_moments(L, params["mu_rho"], params["energies"], w)
    e_mean = jnp.sum(w * params["energies"])
    return m.m1 / e_mean, m.m0 / jnp.sum(w)


def network_inputs(
    params, L, height: int, width: int, P, volume_center_mm, config: ScatterConfig, moments=None
):
    """Low-resolution images [h, w, 3] (T_ei, T_pc, mass thickness g/cm^2) and conditioning [6].

    ``moments``: the spectral moments of ``L`` if already computed (see :func:`transmissions`).
    """
    h, w = low_res_shape(height, width, config.grid_side)
    t_ei, t_pc = transmissions(params, L, moments)
    images = jnp.concatenate([jnp.stack([t_ei, t_pc], -1), jnp.sum(L, -1, keepdims=True)], -1)
    low = block_average(images, h, w)
    P_low = low_res_projection(P, height, width, h, w)
    return low, conditioning(params, P_low, volume_center_mm, config)


def net_scatter(params, L, P, volume_center_mm, config: ScatterConfig, height: int, width: int, moments=None):
    """Scatter (s_ei, s_pc) [H, W] from the network ``params["scatter_net"]`` (see module doc).

    ``moments``: the spectral moments of ``L`` if already computed (see :func:`transmissions`).
    """
    from jaxdrr.models import scatter_net

    if "scatter_net" not in params:
        raise JaxdrrError(
            "scatter='net' needs the network weights in params['scatter_net']: build params with "
            "jaxdrr.default_params(config) for a config with scatter"
        )
    low, cond = network_inputs(params, L, height, width, P, volume_center_mm, config, moments)
    if config.warn_outside_range:
        if is_concrete(cond):
            check_range(cond)
        else:  # under jit / vmap / grad: warn from the host when the values arrive
            jax.debug.callback(_warn_range_callback, cond)
    s_low = scatter_net.apply(params["scatter_net"], low, cond)  # [h, w, 2]
    s = upsample(s_low, height, width)
    return s[..., 0], s[..., 1]


def mc_scatter(params, densities, volume, P, key, config: ScatterConfig, materials, height: int, width: int):
    """Scatter (s_ei, s_pc) [H, W] from a Monte Carlo run on the low-resolution detector.

    Not differentiable (the result is wrapped in ``stop_gradient``); ``config.mc_photons``
    histories; noisy (relative noise about ``1/sqrt(scattered photons per low-res pixel)``).
    """
    h, w = low_res_shape(height, width, config.grid_side)
    P_low = low_res_projection(P, height, width, h, w)
    dens = Volume.create(
        jax.lax.stop_gradient(densities),
        volume.affine,
        kind="density",
        channel_names=materials.names,
        check=False,
    )
    mc_config = MonteCarloConfig(
        sdd_mm=config.sdd_mm,
        materials=materials,
        photons_per_pixel=1.0,
        grid=GridConfig() if config.grid else None,
    )
    out = monte_carlo(
        dens,
        jax.lax.stop_gradient(P_low),
        h,
        w,
        photons=int(config.mc_photons),
        key=key,
        params=params,
        config=mc_config,
    )
    e_mean = jnp.sum(params["spectrum"] * params["energies"]) / jnp.sum(params["spectrum"])
    s = jnp.stack([out["scatter_ei"] / e_mean, out["scatter_pc"]], -1)
    s = upsample(jax.lax.stop_gradient(s), height, width)
    return s[..., 0], s[..., 1]
