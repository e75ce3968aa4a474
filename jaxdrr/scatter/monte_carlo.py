"""Monte Carlo X-ray transport through a voxel CT: primary, scatter and dose images.

:func:`monte_carlo` takes the renderer's inputs (a :class:`jaxdrr.Volume`, a 3x4 ``P``, a detector
size) and simulates ``photons`` histories from a point source at P's centre:

* **Source**: isotropic inside the pyramid through the detector's four corners (a collimated point
  source), energies drawn from the discrete spectrum of ``params`` (the renderer's
  :func:`jaxdrr.default_params`: the same bins, so the primary matches the renderer exactly; by
  default :func:`jaxdrr.physics.default_spectrum` built by :func:`jaxdrr.physics.params.physics_params`).
* **Geometry**: nearest-voxel homogeneous voxels of per-material densities (the renderer's material
  channels decomposed by :func:`jaxdrr.materials.material_densities`, or any materials named);
  vacuum outside the volume box. The detector is the plane
  perpendicular to P's principal axis at ``config.sdd_mm`` from the source; P maps it to pixels.
* **Physics** (:mod:`jaxdrr.scatter.transport`): Woodcock tracking, photoelectric absorption,
  Compton (Klein-Nishina x S(x)/Z) and Rayleigh (Thomson x F^2) scattering from xraylib tables
  (:mod:`jaxdrr.scatter.interactions`), local deposition of electron energy.
* **Tallies**: images of primary, single-Compton, single-Rayleigh and multiple scatter for an
  energy-integrating (keV) and a photon-counting readout; optional energy-dependent detector
  absorption (:class:`DetectorAbsorption`) and a focused anti-scatter grid (:class:`GridConfig`);
  the energy deposited per voxel.

**Units.** Like a flat-field-corrected detector, each pixel's tally is divided by its expected tally
with nothing in the beam (which cancels the source's inverse-square and obliquity fall-off, and the
detector's and grid's primary response) and multiplied by ``N0 = photons_per_pixel`` times the
unattenuated signal per photon. So the expected MC primary equals
``render(..., output="intensity")`` with the same spectrum and detector type, and ``scatter /
primary`` is the scatter-to-primary ratio. ``deposited_energy_keV`` is the energy (keV) deposited by
the ``photons`` simulated histories (divide by ``photons`` for keV per history).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import GeometryError, JaxdrrError, VolumeError
from jaxdrr.geometry.projection import check_detector, check_projection_matrix, is_concrete, source_position
from jaxdrr.materials import MaterialConfig, as_material_config, material_densities
from jaxdrr.physics.compositions import Composition
from jaxdrr.physics.compositions import density as nominal_density
from jaxdrr.physics.params import physics_params
from jaxdrr.physics.spectra import default_spectrum
from jaxdrr.scatter import forced_detection as fd_lib
from jaxdrr.scatter import interactions as xs_lib
from jaxdrr.scatter import majorants, transport
from jaxdrr.scatter.forced_detection import ForcedDetection
from jaxdrr.volume import Volume

IMAGE_NAMES = ("primary", "single_compton", "single_rayleigh", "multiple")
READOUTS = ("ei", "pc")
TRACKING = ("global", "local")
CSI = xs_lib.CSI
LEAD = xs_lib.LEAD
ALUMINIUM = "aluminium"


@dataclasses.dataclass(frozen=True)
class DetectorAbsorption:
    """Energy-dependent detector absorption: a scintillator slab of given thickness.

    The absorbed fraction of a photon of energy E crossing the slab at angle theta to its normal is
    ``1 - exp(-mu(E) t / cos theta)`` with mu the total attenuation; the energy-integrating readout
    scores ``E`` times it (absorbed photons deposit all their energy: no K-escape modelled).

    Attributes:
      material: a material name or :class:`jaxdrr.physics.Composition` (default CsI).
      thickness_mm: slab thickness.
      density_g_cm3: density; default the composition's nominal density.
    """

    material: Any = CSI
    thickness_mm: float = 0.6
    density_g_cm3: float | None = None

    def __post_init__(self):
        if not (np.isfinite(self.thickness_mm) and self.thickness_mm > 0):
            raise JaxdrrError(f"detector thickness must be > 0 mm, got {self.thickness_mm}")


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """A linear anti-scatter grid focused on the source (Day & Dance 1983 style), in front of the panel.

    Septa run along the image's row direction (image y), so they absorb according to the photon's
    angle in the plane of image x and the panel normal. See :func:`jaxdrr.scatter.transport._grid_weight`.

    Attributes:
      ratio: grid ratio h / D (septum height over interspace width).
      lines_per_cm: septa per cm (period C = 10 / lines_per_cm mm).
      septum_mm: septum thickness d.
      septum_material, interspace_material: names or Compositions (default lead and aluminium).
    """

    ratio: float = 15.0
    lines_per_cm: float = 80.0
    septum_mm: float = 0.036
    septum_material: Any = LEAD
    interspace_material: Any = ALUMINIUM

    def __post_init__(self):
        period = 10.0 / self.lines_per_cm
        if not (self.ratio > 0 and self.lines_per_cm > 0 and 0 < self.septum_mm < period):
            raise JaxdrrError(
                f"invalid grid: ratio {self.ratio}, {self.lines_per_cm} lines/cm, "
                f"septum {self.septum_mm} mm (period {period:.4g} mm)"
            )

    @property
    def period_mm(self) -> float:
        return 10.0 / self.lines_per_cm

    @property
    def height_mm(self) -> float:
        return self.ratio * (self.period_mm - self.septum_mm)


@dataclasses.dataclass(frozen=True)
class MonteCarloConfig:
    """Static Monte Carlo settings (hashable).

    Attributes:
      sdd_mm: source-to-detector distance along P's principal axis (the detector plane; P alone
        fixes only the pixel directions). Default 1020 mm, :class:`jaxdrr.geometry.CArmGeometry`'s.
      materials: HU -> material decomposition of HU volumes (as the renderer; a MaterialConfig or
        a preset name). HU volumes are decomposed voxel by voxel, so only the threshold route
        works on them; decompose other methods first with :func:`jaxdrr.decompose`.
      detector: main readout of the result's images: ``"ei"`` (energy-integrating, keV) or
        ``"pc"`` (photon-counting); both are always returned with ``_ei`` / ``_pc`` suffixes.
      photons_per_pixel: N0, the flat-field scale (as ``RenderConfig.photons_per_pixel``).
      cutoff_keV: photons below this energy deposit their energy locally.
      lanes: photon lanes transported in parallel (memory ~ 200 bytes per lane).
      absorption: :class:`DetectorAbsorption` or None for an ideal detector (every photon crossing
        the plane counts fully).
      grid: :class:`GridConfig` or None.
      majorant_margin: the Woodcock majorant is this factor above the largest voxel attenuation
        found (see :func:`woodcock_majorant`); violations are counted in the result.
      max_iterations: safety cap on transport iterations (photons still alive are reported as
        ``"truncated"``).
      tracking: ``"global"`` (Woodcock tracking with one majorant per energy: the reference) or
        ``"local"`` (delta tracking across a grid of per-block majorants,
        :mod:`jaxdrr.scatter.majorants`: dense voxels slow down only the rays that pass near them).
      majorant_block: block edge (voxels) of the local majorant grid.
      dda_steps: blocks a lane may cross per transport iteration with local majorants.
      forced_detection: :class:`ForcedDetection` to score the scatter images by forced detection
        (:mod:`jaxdrr.scatter.forced_detection`), or None for the analog estimator (the reference).
        The primary image stays analog either way.
    """

    sdd_mm: float = 1020.0
    materials: MaterialConfig = MaterialConfig()
    detector: str = "ei"
    photons_per_pixel: float = 5e5
    cutoff_keV: float = 1.0
    lanes: int = 1 << 16
    absorption: DetectorAbsorption | None = None
    grid: GridConfig | None = None
    majorant_margin: float = 1.02
    max_iterations: int = 1 << 30
    tracking: str = "global"
    majorant_block: int = 4
    dda_steps: int = 16
    forced_detection: ForcedDetection | None = None

    def __post_init__(self):
        if not isinstance(self.materials, MaterialConfig):
            object.__setattr__(self, "materials", as_material_config(self.materials))
        if not (np.isfinite(self.sdd_mm) and self.sdd_mm > 0):
            raise GeometryError(f"sdd_mm must be > 0, got {self.sdd_mm}")
        if self.detector not in READOUTS:
            raise JaxdrrError(f"detector must be one of {READOUTS}, got {self.detector!r}")
        if not (np.isfinite(self.photons_per_pixel) and self.photons_per_pixel > 0):
            raise JaxdrrError(f"photons_per_pixel must be > 0, got {self.photons_per_pixel}")
        if not (xs_lib.E_MIN_KEV <= self.cutoff_keV < xs_lib.E_MAX_KEV):
            raise JaxdrrError(
                f"cutoff_keV must be in [{xs_lib.E_MIN_KEV}, {xs_lib.E_MAX_KEV}), got {self.cutoff_keV}"
            )
        if int(self.lanes) < 1:
            raise JaxdrrError(f"lanes must be >= 1, got {self.lanes}")
        if not self.majorant_margin >= 1.0:
            raise JaxdrrError(f"majorant_margin must be >= 1, got {self.majorant_margin}")
        if self.tracking not in TRACKING:
            raise JaxdrrError(f"tracking must be one of {TRACKING}, got {self.tracking!r}")
        if int(self.majorant_block) < 1 or int(self.dda_steps) < 1:
            raise JaxdrrError(
                f"majorant_block and dda_steps must be >= 1, got {self.majorant_block}, {self.dda_steps}"
            )
        if self.forced_detection is not None and not isinstance(self.forced_detection, ForcedDetection):
            raise JaxdrrError(
                f"forced_detection must be a ForcedDetection or None, got {type(self.forced_detection).__name__}"
            )


def _material_list(volume: Volume, config: MonteCarloConfig, materials) -> list:
    if materials is not None:
        mats = [materials] if isinstance(materials, (str, Composition)) else list(materials)
    elif volume.kind == "hu":
        mats = list(config.materials.table_names)
    elif volume.channel_names and tuple(volume.channel_names) != tuple(config.materials.names):
        mats = list(volume.channel_names)
    else:
        mats = list(config.materials.table_names)
    return mats


def _densities(volume: Volume, config: MonteCarloConfig, num_materials: int):
    if not isinstance(volume, Volume):
        raise VolumeError(f"expected a jaxdrr.Volume, got {type(volume).__name__}")
    if volume.kind == "hu":
        if config.materials.method != "thresholds":
            raise VolumeError(
                f"Monte Carlo decomposes HU volumes voxel by voxel (the threshold route); for materials "
                f"method {config.materials.method!r} pass jaxdrr.decompose(params, volume, config.materials)"
            )
        if num_materials != len(config.materials.names):
            raise VolumeError(
                f"{num_materials} materials given for the {len(config.materials.names)} "
                "channels of the HU decomposition"
            )
        # HU volumes stay HU: the transport decomposes each looked-up voxel on the fly (one gather
        # instead of M, and M times less memory); the decomposition is non-negative by construction.
        material_densities(volume.replace(data=volume.data[:1, :1, :1]), config.materials)
        return volume.data
    else:
        dens = volume.data
        if dens.shape[0] != num_materials:
            raise VolumeError(
                f"density volume has {dens.shape[0]} channels but {num_materials} materials were given"
            )
    if is_concrete(dens):
        d = np.asarray(dens)
        if np.any(d < 0):
            idx = tuple(int(i) for i in np.argwhere(d < 0)[0])
            raise VolumeError(
                f"negative density {float(d[idx]):.4g} g/cm^3 at [channel, i, j, k] = {idx}: "
                "densities must be >= 0"
            )
    return dens


def woodcock_majorant(densities, mu_total, margin: float):
    """Majorant attenuation [E] (1/mm) for Woodcock tracking.

    The exact majorant is ``max_v sum_m rho_m(v) mu_m(E)`` at every grid energy; evaluating that for
    all voxels at 2048 energies is too costly, so candidate voxels are the maximisers at 16
    log-spaced energies and of each channel, the majorant is the maximum over the candidates at every
    energy, times ``margin``. Lanes that land where the attenuation exceeds it are counted
    (``"majorant_violations"``); tests require zero.

    Args:
      densities: [M, V] g/cm^3.
      mu_total: [M, E] 1/mm per g/cm^3.
      margin: factor >= 1.
    """
    sub = mu_total[:, :: max(1, mu_total.shape[1] // 16)]  # [M, S]

    def best(mu_col):
        return jnp.argmax(mu_col @ densities)

    idx = jax.lax.map(best, sub.T)
    per_channel = jnp.argmax(densities, axis=1)
    cand = densities[:, jnp.concatenate([idx, per_channel])]  # [M, C]
    return jnp.max(cand.T @ mu_total, axis=0) * margin


def hu_majorant(hu, materials: MaterialConfig, mu_total, margin: float, samples: int = 4096):
    """Woodcock majorant [E] (1/mm) of an HU volume: a bound over the whole HU range of the volume.

    The densities are a function of HU alone, so ``max over [min HU, max HU] of
    sum_m rho_m(HU) mu_m(E)`` bounds every voxel; it is evaluated at ``samples`` HU values plus the
    extremes, times ``margin`` for the curvature between samples.
    """
    lo, hi = jnp.min(hu), jnp.max(hu)
    grid = jnp.concatenate([jnp.linspace(lo, hi, samples), jnp.stack([lo, hi])])
    dens = materials.density_channels(grid)  # [M, S]
    return jnp.max(dens.T @ mu_total, axis=0) * margin


def _pixel_cos3(M_inv, normal, height, width, sub: int = 4):
    """Mean of cos^3 (obliquity of the source ray on the detector) over each pixel [H, W]."""
    offs = (jnp.arange(sub, dtype=M_inv.dtype) + 0.5) / sub - 0.5
    rows = jnp.arange(height, dtype=M_inv.dtype)[:, None] + offs[None, :]
    cols = jnp.arange(width, dtype=M_inv.dtype)[:, None] + offs[None, :]
    y = rows.reshape(-1)
    x = cols.reshape(-1)
    yy, xx = jnp.meshgrid(y, x, indexing="ij")
    pts = jnp.stack([xx, yy, jnp.ones_like(xx)], -1)
    d = pts @ M_inv.T
    cos = (d @ normal) / jnp.linalg.norm(d, axis=-1)
    return (cos**3).reshape(height, sub, width, sub).mean(axis=(1, 3))


def _mu_table(material, density_g_cm3: float | None) -> tuple[np.ndarray, float]:
    tab = xs_lib.tables_for([material])
    if density_g_cm3 is None:
        density_g_cm3 = (
            material.density_g_cm3 if isinstance(material, Composition) else nominal_density(material)
        )
    return tab.mu_total[0] * density_g_cm3 * 0.1, density_g_cm3  # 1/mm on the energy grid


def check_geometry(volume: Volume, P, config: MonteCarloConfig) -> None:
    """Check that the volume lies between the source and the detector plane.

    Args:
      volume: the volume to transport through (its box corners are checked).
      P: concrete 3x4 projection matrix; the source is its centre.
      config: the Monte Carlo settings (``config.sdd_mm`` places the detector plane).

    Raises:
      GeometryError: bad P, the volume reaching the detector plane, or lying far behind the source.
    """
    P_np = check_projection_matrix(P)
    s = -np.linalg.solve(P_np[:, :3], P_np[:, 3])
    m3 = P_np[2, :3]
    n = m3 / np.linalg.norm(m3)
    lo_i = [-0.5] * 3
    hi_i = [k - 0.5 for k in volume.shape]
    corners = np.array(np.meshgrid(*zip(lo_i, hi_i, strict=True), indexing="ij")).reshape(3, -1).T
    world = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    depth = (world - s) @ n
    if np.max(depth) >= config.sdd_mm:
        raise GeometryError(
            f"the volume reaches {np.max(depth):.1f} mm from the source along the beam axis, at or beyond "
            f"the detector plane (sdd_mm={config.sdd_mm}): move the detector or the volume"
        )
    if np.min(depth) < -1e6:
        raise GeometryError("volume is far behind the source")


def prepare(
    volume: Volume,
    P,
    height: int,
    width: int,
    *,
    params=None,
    config: MonteCarloConfig | None = None,
    materials=None,
):
    """Everything :func:`transport.run` needs, and the flat-field normalisation.

    Returns:
      (tables, geo, densities [V, M], opts, norm): ``norm`` [2, H, W] multiplies the raw (EI, PC)
      tallies of one history into renderer units: ``image = tally / photons * norm``.
    """
    config = config or MonteCarloConfig()
    height, width = check_detector(height, width)
    mats = _material_list(volume, config, materials)
    tables_np = xs_lib.tables_for(mats)
    dens = _densities(volume, config, len(mats))
    if is_concrete(P):
        check_geometry(volume, P, config)
    if params is None:  # the renderer's default spectrum on its bins (jaxdrr.default_params())
        spectrum = default_spectrum()
        params = physics_params(
            config.materials.table_names, spectrum.energies_keV, spectrum.photon_fractions
        )
    energies, weights = params["energies"], params["spectrum"]
    if is_concrete(energies):
        xs_lib.check_energies(np.asarray(energies))
    dtype = jnp.float32
    energies = jnp.asarray(energies, dtype)
    weights = jnp.asarray(weights, dtype)
    if is_concrete(weights):
        w = np.asarray(weights)
        if w.ndim != 1 or w.shape != np.shape(energies) or np.any(w < 0) or not np.sum(w) > 0:
            raise JaxdrrError(
                "params['spectrum'] must be non-negative weights, one per energy, with a positive sum"
            )
    spectrum = weights / jnp.sum(weights)

    P = jnp.asarray(P, dtype)
    M = P[:, :3]
    M_inv = jnp.linalg.inv(M)
    normal = M[2] / jnp.linalg.norm(M[2])
    e_x = M_inv[:, 0] / jnp.linalg.norm(M_inv[:, 0])
    affine = volume.affine
    inv = np.linalg.inv(affine)
    tables = transport.device_tables(tables_np, dtype)
    mu_total = jnp.asarray(tables_np.mu_total * 0.1, dtype)  # [M, G] 1/mm per g/cm^3
    if volume.kind == "hu":
        hu = jnp.asarray(dens, dtype).reshape(-1)
        majorant = hu_majorant(hu, config.materials, mu_total, config.majorant_margin)
        dens_vm = hu[:, None]  # [V, 1]: decomposed per lane in the transport
    else:
        dens_mv = jnp.asarray(dens, dtype).reshape(len(mats), -1)
        majorant = woodcock_majorant(dens_mv, mu_total, config.majorant_margin)
        dens_vm = dens_mv.T  # [V, M]: one row gather per lane
    cos3 = _pixel_cos3(M_inv, normal, height, width)
    geo = {
        "source": source_position(P),
        "M_inv": M_inv,
        "normal": normal,
        "e_x": e_x,
        "sdd": jnp.asarray(config.sdd_mm, dtype),
        "P": P,
        "inv_a": jnp.asarray(inv[:3, :3], dtype),
        "inv_t": jnp.asarray(inv[:3, 3], dtype),
        "energies": energies,
        "spectrum_cdf": jnp.cumsum(spectrum),
        "majorant": majorant,
        "mean_cos3": jnp.mean(cos3),
    }
    # Flat field: expected tally per history and pixel with nothing in the beam,
    # (cos3_p / mean cos3) / (H W) * sum_E s(E) E^k response_p(E), k = 1 (EI) or 0 (PC).
    grid_e = jnp.asarray(xs_lib.energy_grid(), dtype)
    response = jnp.ones((height, width, energies.shape[0]), dtype)
    opts = {
        "height": height,
        "width": width,
        "shape": tuple(volume.shape),
        "lanes": int(config.lanes),
        "cutoff_keV": float(config.cutoff_keV),
        "max_iterations": int(config.max_iterations),
        "detector_mu": config.absorption is not None,
        "grid": config.grid is not None,
    }
    pix_cos = _pixel_cos3(M_inv, normal, height, width, sub=1) ** (1.0 / 3.0)
    if config.absorption is not None:
        mu_d, _ = _mu_table(config.absorption.material, config.absorption.density_g_cm3)
        geo["detector_mu"] = jnp.asarray(mu_d[:, None], dtype)
        geo["detector_thickness_mm"] = jnp.asarray(config.absorption.thickness_mm, dtype)
        mu_e = jnp.interp(energies, grid_e, jnp.asarray(mu_d, dtype))
        response = response * -jnp.expm1(-mu_e * config.absorption.thickness_mm / pix_cos[..., None])
    if config.grid is not None:
        g = config.grid
        mu_s, _ = _mu_table(g.septum_material, None)
        mu_i, _ = _mu_table(g.interspace_material, None)
        geo["grid_mu"] = jnp.asarray(np.stack([mu_s, mu_i], -1), dtype)
        geo["grid"] = {
            "height_mm": jnp.asarray(g.height_mm, dtype),
            "period_mm": jnp.asarray(g.period_mm, dtype),
            "septum_mm": jnp.asarray(g.septum_mm, dtype),
        }
        path = g.height_mm / pix_cos[..., None]
        ms = jnp.interp(energies, grid_e, jnp.asarray(mu_s, dtype))
        mi = jnp.interp(energies, grid_e, jnp.asarray(mu_i, dtype))
        frac = g.septum_mm / g.period_mm
        response = response * (frac * jnp.exp(-ms * path) + (1 - frac) * jnp.exp(-mi * path))
    area = cos3 / geo["mean_cos3"] / (height * width)
    e_mean = jnp.sum(spectrum * energies)
    expected_ei = area * jnp.sum(spectrum * energies * response, axis=-1)
    expected_pc = area * jnp.sum(spectrum * response, axis=-1)
    n0 = config.photons_per_pixel
    norm = jnp.stack([n0 * e_mean / expected_ei, n0 / expected_pc])
    if volume.kind == "hu":
        opts["decompose"] = config.materials.density_channels
    _variance_reduction(tables, geo, dens_vm, opts, volume, config)
    return tables, geo, dens_vm, opts, norm


def _variance_reduction(tables, geo, dens_vm, opts, volume: Volume, config: MonteCarloConfig) -> None:
    """Adds the local-majorant grid and the forced-detection arrays to ``geo`` / ``opts`` (in place)."""
    decompose = opts.get("decompose")
    stats = {}

    def block_stats(block: int):
        if block not in stats:
            stats[block] = _block_statistics(dens_vm, tuple(volume.shape), block, decompose)
        return stats[block]

    if config.tracking == "local":
        block = int(config.majorant_block)
        geo["block_max"] = block_stats(block)[0]
        opts.update(tracking="local", block=block, dda_steps=int(config.dda_steps))
    fdc = config.forced_detection
    if fdc is not None:
        geo["fd"], fd_opts = fd_lib.prepare(
            tables,
            geo,
            dens_vm,
            shape=tuple(volume.shape),
            spacing_mm=np.asarray(volume.spacing),
            affine=volume.affine,
            height=opts["height"],
            width=opts["width"],
            config=fdc,
            decompose=decompose,
            coarse=block_stats(int(fdc.cell_voxels))[1],
        )
        opts.update(fd_opts, forced_detection=True, event_scorer=fd_lib.score_events)


@functools.partial(jax.jit, static_argnames=("shape", "block", "decompose"))
def _block_statistics(dens_vm, shape, block, decompose):
    return majorants.block_statistics(dens_vm, shape, block, decompose)


@functools.partial(jax.jit, static_argnames=("photons", "opts_items"))
def _run(tables, geo, densities, key, *, photons: int, opts_items: tuple):
    # Jitted with the volume as an argument, so an eager call neither re-traces per call nor bakes
    # the CT into the program as a constant (which XLA would try to fold).
    return transport.run(tables, geo, densities, key, photons=photons, opts=dict(opts_items))


def _check_photons(photons) -> int:
    try:
        n = int(photons)
    except (TypeError, ValueError):
        raise JaxdrrError(f"photons must be a positive integer (static), got {photons!r}") from None
    if n != photons or n < 1:
        raise JaxdrrError(f"photons must be a positive integer number of histories, got {photons!r}")
    if n >= 2**31 - 2**20:
        raise JaxdrrError(
            f"at most ~2.1e9 histories per call, got {n}; sum several calls with different keys"
        )
    return n


def monte_carlo(
    volume: Volume,
    P,
    height: int,
    width: int,
    *,
    photons: int,
    key,
    params=None,
    config: MonteCarloConfig | None = None,
    materials: Sequence | None = None,
) -> dict:
    """Monte Carlo simulation of one projection: primary, scatter images and deposited energy.

    Args:
      volume: HU (decomposed as the renderer does) or per-material densities (g/cm^3).
      P: 3x4 projection matrix; the source is its centre.
      height, width: detector size in pixels.
      photons: number of emitted histories (static Python int).
      key: PRNG key. Same key -> same result.
      params: ``{"energies", "spectrum"}`` as :func:`jaxdrr.default_params` (default: its IPEM-78
        120 kVp spectrum on 1 keV bins).
      config: :class:`MonteCarloConfig`.
      materials: one material per channel: names of :data:`jaxdrr.physics.COMPOSITIONS` or
        :class:`jaxdrr.physics.Composition` objects (computed with xraylib). Default: the
        renderer's channel materials (air, soft_tissue, cortical_bone).

    Returns:
      dict of arrays: ``"primary"``, ``"scatter"`` (all orders), ``"single_compton"``,
      ``"single_rayleigh"``, ``"multiple"`` [H, W] in renderer ``"intensity"`` units of the main
      readout (keV for ``"ei"``, photons for ``"pc"``), the same with ``_ei`` and ``_pc``
      suffixes, ``"deposited_energy_keV"`` [I, J, K] (sum over histories), ``"deposited_total_keV"``,
      ``"photons"``, and diagnostics ``"majorant_violations"``, ``"truncated"``, ``"iterations"``.

    Raises:
      VolumeError: not a Volume, negative densities, channel/material mismatch.
      UnknownMaterialError: a material name is not known.
      EnergyRangeError: spectrum energies outside 1-150 keV.
      GeometryError: bad P, detector size, or a volume reaching the detector plane.
      JaxdrrError: photons < 1 and other bad settings.
    """
    config = config or MonteCarloConfig()
    n = _check_photons(photons)
    tables, geo, dens, opts, norm = prepare(
        volume, P, height, width, params=params, config=config, materials=materials
    )
    lanes = min(opts["lanes"], n)
    seg = transport.segment_steps(int(np.prod(volume.shape)), height * width, lanes)
    opts = dict(opts, lanes=lanes, segment_steps=seg)
    raw = _run(tables, geo, dens, key, photons=n, opts_items=tuple(sorted(opts.items())))
    shape = (height, width)
    out: dict[str, Any] = {}
    for r, readout in enumerate(READOUTS):
        imgs = raw["images"][r].reshape(len(IMAGE_NAMES), *shape) * (norm[r] / n)
        for c, name in enumerate(IMAGE_NAMES):
            out[f"{name}_{readout}"] = imgs[c]
        out[f"scatter_{readout}"] = imgs[1] + imgs[2] + imgs[3]
    for name in (*IMAGE_NAMES, "scatter"):
        out[name] = out[f"{name}_{config.detector}"]
    out["deposited_energy_keV"] = raw["deposited"].reshape(volume.shape)
    out["deposited_total_keV"] = jnp.sum(raw["deposited"])
    out["photons"] = jnp.asarray(n, jnp.int32)
    for k in ("majorant_violations", "truncated", "iterations", "missed_detector"):
        out[k] = raw[k]
    out["scatter_events"] = raw["scatter_events"]
    return out
