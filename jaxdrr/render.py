"""The renderer: ``render(params, volume, P, key) -> image``, one pure, jittable function.

A renderer is built from a static :class:`RenderConfig` by :func:`make_renderer`; everything that
may change between calls or be differentiated lives in its arguments:

* ``params``: a pytree of physics tables (:func:`default_params`): the energy grid, the emitted
  photon spectrum and the mass attenuation of each material channel, plus the V-Net weights
  (``"vnet"``) when the materials method is ``"vnet"``. Differentiable too (e.g. w.r.t. the
  spectrum).
* ``volume``: a :class:`jaxdrr.Volume` of HU (decomposed into material densities here) or of
  per-material densities (``kind="density"``, used as is; :func:`jaxdrr.decompose` makes one once
  per CT, the fast path when one CT is rendered many times, and the only one for label maps).
* ``P``: the 3x4 projection matrix (traced; ``vmap`` over it for many poses).
* ``key``: a PRNG key, used by the noise model (and by the Monte Carlo for ``scatter="mc"``).

Pipeline (each step its own module, read top to bottom in :func:`make_renderer`): materials
(:func:`jaxdrr.materials.material_densities`: HU -> density channels) -> ops.project (line
integrals per material) -> spectral (:func:`primary_moments`: the Beer-Lambert moments over the
spectrum, computed once per image) -> scatter (:mod:`jaxdrr.scatter.estimate`: the scatter ConvNet,
fed those moments, or the Monte Carlo; added to the primary signal) -> noise (quantum noise on the
total signal, crosstalk, readout) -> output conversion (:func:`image_from_moments`).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr import noise as noise_lib
from jaxdrr import spectral
from jaxdrr.errors import JaxdrrError
from jaxdrr.geometry.projection import check_detector, check_projection_matrix, is_concrete
from jaxdrr.materials import MaterialConfig, as_material_config, material_densities
from jaxdrr.materials.vnet_route import pretrained as pretrained_vnet
from jaxdrr.ops.project import BACKENDS, project
from jaxdrr.physics import spectra as spectra_lib
from jaxdrr.physics.params import physics_params
from jaxdrr.physics.spectra import default_spectrum
from jaxdrr.scatter import estimate as scatter_lib
from jaxdrr.volume import Volume

OUTPUTS = ("log", "transmission", "intensity", "photons")
DETECTORS = ("ei", "pc")
MM_PER_CM = 10.0


class Renderer(Protocol):
    def __call__(self, params: dict, volume: Volume, P: jax.Array, key: jax.Array | None) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Static rendering choices (hashable).

    Attributes:
      height: detector rows.
      width: detector columns.
      step_mm: ray sampling: ``"planes"`` (default: one sample per voxel-centre plane of each
        ray's dominant axis, Joseph's method, about 2x faster than half-voxel steps; see
        :func:`jaxdrr.ops.rays.clip_rays_to_planes`), a step in mm, or None for half the
        smallest voxel spacing.
      materials: HU -> material-density model (:class:`jaxdrr.materials.MaterialConfig`), or a
        preset name converted to one: ``"thresholds"`` (the default three channels),
        ``"thresholds+metal"``, ``"vnet"`` or ``"labels"`` (four channels with a titanium metal
        channel; see :func:`jaxdrr.materials.as_material_config`). With ``"vnet"`` the network
        runs inside every render of an HU volume (slow; decompose once with
        :func:`jaxdrr.decompose` instead); ``"labels"`` needs a density volume from
        :func:`jaxdrr.decompose`.
      detector: ``"ei"`` energy-integrating (signal = deposited energy, the flat panels of C-arms)
        or ``"pc"`` photon-counting.
      output: ``"log"`` (-ln of the transmission: physical line-integral units, not normalised),
        ``"transmission"`` (signal / unattenuated signal), ``"intensity"`` (detector signal: keV
        for "ei", photons for "pc"), or ``"photons"`` (registered photons; for "ei" the signal in
        photon equivalents of the emitted mean energy).
      noise: :class:`jaxdrr.noise.NoiseConfig` or None for the noise-free (expected) image.
      photons_per_pixel: N0, photons emitted towards each pixel; used for noise, "intensity",
        "photons" and the -log floor. Default 5e5 (the DeepDRR paper's high-dose setting).
      log_floor_photons: the transmission is floored at this many photon equivalents / N0
        before -ln, so noisy or fully attenuated pixels stay finite.
      backend: projector backend (see :func:`jaxdrr.ops.project`).
      scatter: None (primary only), ``"net"`` (the scatter ConvNet, weights in
        ``params["scatter_net"]``), ``"mc"`` (Monte Carlo inside the render: slow, noisy, not
        differentiable) or a :class:`jaxdrr.scatter.ScatterConfig` (source-detector distance,
        anti-scatter grid, Monte Carlo photons). Scatter is added to the primary signal before
        noise, so quantum noise is that of the total signal.
    """

    height: int = 512
    width: int = 512
    step_mm: float | str | None = "planes"
    materials: MaterialConfig | str = MaterialConfig()
    detector: str = "ei"
    output: str = "log"
    noise: noise_lib.NoiseConfig | None = None
    photons_per_pixel: float = 5e5
    log_floor_photons: float = 0.5
    backend: str = "auto"
    scatter: scatter_lib.ScatterConfig | str | None = None

    def __post_init__(self):
        check_detector(self.height, self.width)
        object.__setattr__(self, "scatter", scatter_lib.as_scatter_config(self.scatter))
        if not isinstance(self.materials, MaterialConfig):
            object.__setattr__(self, "materials", as_material_config(self.materials))
        if self.detector not in DETECTORS:
            raise JaxdrrError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.output not in OUTPUTS:
            raise JaxdrrError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.backend not in BACKENDS:
            raise JaxdrrError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if isinstance(self.step_mm, str):
            if self.step_mm != "planes":
                raise JaxdrrError(f"step_mm must be a number of mm, None or 'planes', got {self.step_mm!r}")
        elif self.step_mm is not None and not (np.isfinite(self.step_mm) and self.step_mm > 0):
            raise JaxdrrError(f"step_mm must be a positive number of mm, got {self.step_mm}")
        if not (np.isfinite(self.photons_per_pixel) and self.photons_per_pixel > 0):
            raise JaxdrrError(f"photons_per_pixel must be > 0, got {self.photons_per_pixel}")
        if self.noise is not None and self.noise.photons_per_pixel != self.photons_per_pixel:
            object.__setattr__(
                self, "noise", dataclasses.replace(self.noise, photons_per_pixel=self.photons_per_pixel)
            )

    def replace(self, **changes) -> RenderConfig:
        return dataclasses.replace(self, **changes)


def default_params(
    config: RenderConfig | None = None, spectrum: spectra_lib.Spectrum | None = None
) -> dict[str, jax.Array]:
    """Physics tables as a pytree: ``{"energies", "spectrum", "mu_rho"}`` (+ network weights).

    The tables are :func:`jaxdrr.physics.params.physics_params` of the configuration's materials and
    the spectrum (zero bins dropped); the network weights the configuration needs are added on top.

    Args:
      config: supplies the material channels (default :class:`RenderConfig` ()).
      spectrum: emitted spectrum; default :func:`jaxdrr.default_spectrum` (). Use
        :func:`jaxdrr.physics.spekpy_spectrum` or :func:`jaxdrr.physics.from_arrays` for others.

    Returns:
      energies [E] keV, spectrum [E] photon fractions (sum 1), mu_rho [M, E] cm^2/g (float32);
      with ``config.materials.method == "vnet"`` also ``"vnet"``: the shipped network weights
      (:func:`jaxdrr.models.vnet.load_pretrained`), a pytree that can be replaced or differentiated;
      with ``config.scatter`` method ``"net"`` also ``"scatter_net"``: the shipped scatter network
      (:func:`jaxdrr.models.scatter_net.load_pretrained`).
    """
    config = config or RenderConfig()
    spectrum = spectrum or default_spectrum()
    params = physics_params(config.materials.table_names, spectrum.energies_keV, spectrum.photon_fractions)
    if config.materials.method == "vnet":
        params["vnet"] = pretrained_vnet()[1]
    if config.scatter is not None and config.scatter.method == "net":
        from jaxdrr.models import scatter_net

        params["scatter_net"] = scatter_net.load_pretrained()[1]
    return params


def _project(config: RenderConfig, densities, volume: Volume, P) -> jax.Array:
    L = project(
        densities,
        volume.affine,
        P,
        config.height,
        config.width,
        step_mm=config.step_mm,
        backend=config.backend,
    )
    return L / MM_PER_CM


def line_integrals(config: RenderConfig, volume: Volume, P, params=None, densities=None) -> jax.Array:
    """Per-material line integrals [H, W, M] in g/cm^2 (``params``: see :func:`material_densities`).

    ``densities``: the volume's :func:`material_densities`, if the caller already has them (a scene
    reuses them for the tissue its tools displace); computed here otherwise.
    """
    if densities is None:
        densities = material_densities(volume, config.materials, params)
    return _project(config, densities, volume, P)


def primary_moments(params, L) -> spectral.DetectorMoments:
    """The spectral step: Beer-Lambert moments (m0, m1, m2) [H, W] of the primary beam.

    Args:
      params: ``{"energies", "spectrum", "mu_rho"}`` (:func:`default_params`).
      L: per-material line integrals [H, W, M] (g/cm^2).

    Returns:
      :func:`jaxdrr.spectral.detector_moments` of ``L`` for the params' spectrum (not normalised by
      the spectrum's sum): the input of the scatter network and of :func:`image_from_moments`.
    """
    energies, weights, mu_rho = params["energies"], params["spectrum"], params["mu_rho"]
    if mu_rho.shape[0] != L.shape[-1]:
        raise JaxdrrError(f"params['mu_rho'] has {mu_rho.shape[0]} materials, line integrals {L.shape[-1]}")
    return spectral.detector_moments(L, mu_rho, energies, weights)


def scatter_images(
    config: RenderConfig, params, L, P, volume: Volume, densities=None, key=None, moments=None
):
    """Scatter (s_ei, s_pc) [H, W] in transmission units for ``config.scatter`` (None: zeros).

    ``densities`` (the material channels) and ``key`` are needed by the Monte Carlo only;
    ``moments`` (:func:`primary_moments` of ``L``, if already computed) by the network only.
    """
    sc = config.scatter
    if sc is None:
        zero = jnp.zeros(L.shape[:-1], L.dtype)
        return zero, zero
    if sc.method == "net":
        return scatter_lib.net_scatter(
            params, L, P, volume.center, sc, config.height, config.width, moments=moments
        )
    if key is None:
        raise JaxdrrError("scatter='mc' needs a PRNG key (the Monte Carlo is random)")
    if densities is None:
        densities = material_densities(volume, config.materials, params)
    return scatter_lib.mc_scatter(
        params, densities, volume, P, key, sc, config.materials, config.height, config.width
    )


def image_from_moments(
    config: RenderConfig, params, moments: spectral.DetectorMoments, key, scatter=None, photons_per_pixel=None
) -> jax.Array:
    """Scatter, noise and output conversion from the primary's spectral moments (:func:`primary_moments`).

    Args:
      scatter: optional (s_ei, s_pc) [H, W] in transmission units (:func:`scatter_images`), added to
        the expected signal before noise. Its second energy moment is taken as that of photons all
        at the scatter's mean energy ``E_mean s_ei / s_pc`` (the Swank factor of the scatter is not
        modelled).
      photons_per_pixel: optional N0 overriding ``config.photons_per_pixel``; may be traced (e.g.
        drawn per image inside ``vmap``, as :mod:`jaxdrr.datasets` does).
    """
    energies, weights = params["energies"], params["spectrum"]
    e_mean0 = jnp.sum(weights * energies) / jnp.sum(weights)
    n0 = config.photons_per_pixel if photons_per_pixel is None else photons_per_pixel
    m0, m1, m2 = (mk / jnp.sum(weights) for mk in (moments.m0, moments.m1, moments.m2))
    if scatter is not None:
        s_ei, s_pc = scatter
        energy = s_ei * e_mean0
        m0 = m0 + s_pc
        m1 = m1 + energy
        m2 = m2 + energy * energy / jnp.maximum(s_pc, jnp.finfo(m0.dtype).tiny)
    signal = noise_lib.noisy_signal(
        key,
        m0,
        m1,
        m2,
        config.noise,
        config.detector,
        e_mean0=e_mean0,
        photons_per_pixel=n0,
    )
    per_photon = e_mean0 if config.detector == "ei" else 1.0
    if config.output == "intensity":
        return signal
    if config.output == "photons":
        return signal / per_photon
    transmission = signal / (n0 * per_photon)
    if config.output == "transmission":
        return transmission
    floor = config.log_floor_photons / n0
    return -jnp.log(jnp.maximum(transmission, floor))


def image_from_line_integrals(
    config: RenderConfig, params, L, key, scatter=None, photons_per_pixel=None
) -> jax.Array:
    """Spectral image formation, scatter, noise and output conversion from line integrals [H, W, M].

    :func:`image_from_moments` of :func:`primary_moments` (see there for ``scatter`` and
    ``photons_per_pixel``).
    """
    return image_from_moments(config, params, primary_moments(params, L), key, scatter, photons_per_pixel)


def make_renderer(config: RenderConfig | None = None) -> Renderer:
    """Builds ``render(params, volume, P, key) -> [height, width] image`` for a configuration.

    The returned function is pure: jit it, vmap it over P and keys (``in_axes=(None, None, 0, 0)``)
    and differentiate it w.r.t. P, the volume data or the params. With ``config.noise`` None the
    key is unused (pass None; ``scatter="mc"`` needs one) and the image is the expected,
    noise-free one.
    """
    config = config or RenderConfig()

    def render(params, volume: Volume, P, key=None) -> jax.Array:
        densities = material_densities(volume, config.materials, params)
        L = _project(config, densities, volume, P)
        moments = primary_moments(params, L)  # once: the image and the scatter network share them
        scatter = None
        if config.scatter is not None:
            # The Monte Carlo draws from its own stream, so the noise realisation does not change.
            mc_key = None if key is None else jax.random.fold_in(key, 0x5CA7)
            scatter = scatter_images(config, params, L, P, volume, densities, mc_key, moments)
        return image_from_moments(config, params, moments, key, scatter)

    render.config = config
    return render


def render(
    volume: Volume, P, *, config: RenderConfig | None = None, params=None, key=None, jit: bool = True
) -> jax.Array:
    """Convenience one-shot render with default params (see :func:`make_renderer` for the pure form).

    A concrete ``P`` [3, 4] is checked first (a GeometryError for Inf/NaN or a degenerate matrix);
    under ``jit`` it has no value, and the pure renderer cannot check it.
    """
    config = config or RenderConfig()
    if is_concrete(P) and np.shape(P) == (3, 4):
        check_projection_matrix(P)
    params = params if params is not None else default_params(config)
    fn = make_renderer(config)
    if jit:
        fn = jax.jit(fn)
    return fn(params, volume, P, key)
