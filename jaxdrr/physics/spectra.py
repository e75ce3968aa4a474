"""X-ray tube spectra: photon-number spectra on an energy grid, normalised to sum 1.

A :class:`Spectrum` is the photon fraction per energy bin (``photon_fractions`` [E], summing to 1)
at bin centres ``energies_keV`` [E], with a name and a provenance string: a "kVp + mm Al" label
does not define a spectrum (SpekPy and IPEM-78 differ at the same nominal settings), so every
spectrum carries where it came from.

Sources: :func:`ipem78` (IPEM Report 78 tungsten spectra shipped as data), :func:`spekpy_spectrum`
(SpekPy, optional dependency ``jaxdrr[spectra]``) and :func:`from_arrays` (bring your own);
:func:`default_spectrum` is the renderer's and the Monte Carlo's default.
:func:`rebin` moves a spectrum onto another bin grid conserving photon number; :func:`mean_energy`
and :func:`first_hvl_mm_al` are the usual beam-quality numbers.

A Spectrum is a JAX pytree (leaves: the two arrays), so it can be passed through ``jax.jit``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxdrr.errors import JaxdrrError
from jaxdrr.physics.attenuation import load_table
from jaxdrr.physics.shipped import DATA_DIR

IPEM78_FILES = {
    60: "ipem78_W60kVp_Al3.5mm.csv",
    90: "ipem78_W90kVp_Al4.0mm.csv",
    120: "ipem78_W120kVp_Al4.3mm.csv",
}
ALUMINIUM_DENSITY_G_CM3 = 2.699
# SpekPy's own lower limit for a tungsten anode; the upper limit is where the attenuation tables end.
SPEKPY_MIN_KVP = 10.0


class SpectrumError(JaxdrrError):
    """A spectrum's arrays or settings are invalid."""


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Spectrum:
    """A photon-number spectrum.

    Attributes:
      energies_keV: bin-centre energies, strictly increasing [E] (keV).
      photon_fractions: fraction of photons in each bin [E], non-negative, summing to 1.
      name: short label, e.g. ``"IPEM-78 W 120 kVp 4.3 mm Al"``.
      provenance: where the numbers came from.
    """

    energies_keV: np.ndarray
    photon_fractions: np.ndarray
    name: str = "spectrum"
    provenance: str = ""

    @property
    def energies(self):
        """Alias of :attr:`energies_keV`."""
        return self.energies_keV

    @property
    def weights(self):
        """Alias of :attr:`photon_fractions` (the ``w`` of the Beer-Lambert sums)."""
        return self.photon_fractions

    @property
    def num_bins(self) -> int:
        return int(np.shape(self.energies_keV)[0])

    def tree_flatten(self):
        return (self.energies_keV, self.photon_fractions), (self.name, self.provenance)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], children[1], *aux)

    def __repr__(self) -> str:
        e = np.asarray(self.energies_keV)
        return (
            f"Spectrum({self.name!r}, {e.size} bins {e.min():g}..{e.max():g} keV, "
            f"mean {mean_energy(self):.2f} keV)"
        )


def from_arrays(
    energies, fluence, name: str = "user spectrum", provenance: str = "user-supplied arrays"
) -> Spectrum:
    """Builds a validated, normalised Spectrum from bin energies and photon fluence.

    Args:
      energies: bin-centre energies (keV), 1-D, finite, positive, strictly increasing.
      fluence: photons per bin (any scale), 1-D, same length, finite, non-negative, positive sum.
        (Pass photons per *bin*: a fluence per keV on a non-uniform grid must first be multiplied
        by the bin widths.)
      name: label.
      provenance: where the numbers came from.

    Returns:
      A Spectrum with ``photon_fractions = fluence / sum(fluence)`` (float64).

    Raises:
      SpectrumError: for any violation above.
    """
    e = np.asarray(energies, dtype=np.float64)
    f = np.asarray(fluence, dtype=np.float64)
    if e.ndim != 1 or f.ndim != 1:
        raise SpectrumError(f"energies and fluence must be 1-D, got shapes {e.shape} and {f.shape}")
    if e.shape != f.shape:
        raise SpectrumError(f"energies and fluence differ in length: {e.size} vs {f.size}")
    if e.size == 0:
        raise SpectrumError("a spectrum needs at least one energy bin")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(f))):
        raise SpectrumError("energies and fluence must be finite (no NaN/Inf)")
    if np.any(e <= 0):
        raise SpectrumError(f"energies must be positive keV, got min {e.min():g}")
    if np.any(np.diff(e) <= 0):
        raise SpectrumError("energies must be strictly increasing")
    if np.any(f < 0):
        raise SpectrumError(f"fluence must be non-negative, got min {f.min():g}")
    total = f.sum()
    if not total > 0:
        raise SpectrumError("fluence sums to zero: no photons")
    w = f / total
    e.setflags(write=False)
    w.setflags(write=False)
    return Spectrum(e, w, name=name, provenance=provenance)


def ipem78(kvp: int) -> Spectrum:
    """An IPEM Report 78 tungsten-anode spectrum shipped with jaxdrr (0.5 keV bins).

    Args:
      kvp: 60 (3.5 mm Al), 90 (4.0 mm Al) or 120 (4.3 mm Al total filtration); 12 deg anode.

    Returns:
      The Spectrum, with the CSV header lines as provenance.
    """
    try:
        kvp_key = int(kvp)
        filename = IPEM78_FILES[kvp_key] if kvp_key == kvp else None
    except (TypeError, ValueError, KeyError):
        filename = None
    if filename is None:
        raise SpectrumError(
            f"IPEM-78 spectra are shipped for kVp in {sorted(IPEM78_FILES)}, got {kvp!r}; "
            "use spekpy_spectrum() or from_arrays() for other settings"
        )
    path = DATA_DIR / filename
    lines = path.read_text().splitlines()
    header = [ln.lstrip("# ").rstrip() for ln in lines if ln.startswith("#")]
    data = _read_csv(lines)
    filtration = filename.split("_Al")[1].removesuffix("mm.csv")
    return from_arrays(
        data[:, 0],
        data[:, 1],
        name=f"IPEM-78 W {kvp_key} kVp {filtration} mm Al",
        provenance=" ".join(header),
    )


def _read_csv(lines: list[str]) -> np.ndarray:
    rows = [ln.split(",") for ln in lines if ln and not ln.startswith("#")]
    return np.array([[float(a), float(b)] for a, b in rows[1:]], dtype=np.float64)  # rows[0]: header


def spekpy_kvp_range() -> tuple[float, float]:
    """(lowest, highest) tube voltage in kV of a :func:`spekpy_spectrum` that jaxdrr can render.

    The top photon energy equals the kVp, so the attenuation tables' last energy (150 keV) caps it;
    the bottom is SpekPy's own limit for a tungsten anode.
    """
    return SPEKPY_MIN_KVP, float(load_table().energy_range_keV[1])


def check_spekpy_kvp(kvp) -> float:
    """Returns ``kvp`` as a float; a SpectrumError naming the supported range when it lies outside it."""
    low, high = spekpy_kvp_range()
    value = float(kvp)
    if not (np.isfinite(value) and low <= value <= high):
        raise SpectrumError(
            f"kVp {kvp:g} is outside the {low:g}-{high:g} kV that SpekPy spectra support here (the "
            f"attenuation tables end at {high:g} keV); the shipped IPEM-78 spectra are 60, 90 and 120 kVp"
        )
    return value


def spekpy_spectrum(
    kvp: float, filtration_mm_al: float, anode_angle_deg: float = 12.0, bin_keV: float = 1.0
) -> Spectrum:
    """A tungsten-anode spectrum from SpekPy (optional dependency).

    Bins are ``bin_keV`` wide and centred on integer multiples of ``bin_keV`` (SpekPy ``shift=0.5``),
    the convention of the PHYSICS.md reference values. Bins below 1 keV (empty after any realistic
    filtration) are dropped, since the attenuation tables start at 1 keV.

    Args:
      kvp: tube potential (kV).
      filtration_mm_al: total aluminium filtration (mm).
      anode_angle_deg: anode take-off angle (degrees).
      bin_keV: energy bin width (keV).

    Returns:
      The Spectrum.

    Raises:
      SpectrumError: ``kvp`` outside :func:`spekpy_kvp_range`, negative filtration.
      ImportError: SpekPy is not installed (``pip install jaxdrr[spectra]``).
    """
    check_spekpy_kvp(kvp)
    if not (np.isfinite(filtration_mm_al) and filtration_mm_al >= 0 and bin_keV > 0):
        raise SpectrumError(f"need filtration >= 0 mm Al and bin_keV > 0; got {filtration_mm_al}, {bin_keV}")
    try:
        import spekpy
    except ImportError as exc:
        raise ImportError(
            "spekpy_spectrum() needs SpekPy: pip install jaxdrr[spectra] (or pip install spekpy)"
        ) from exc
    spek = spekpy.Spek(kvp=kvp, th=anode_angle_deg, dk=bin_keV, shift=0.5)
    if filtration_mm_al > 0:
        spek.filter("Al", filtration_mm_al)
    energies, fluence_per_keV = spek.get_spectrum()
    photons = np.asarray(fluence_per_keV, np.float64) * bin_keV  # per keV -> per bin
    keep = np.asarray(energies) >= 1.0
    version = getattr(spekpy, "__version__", None)
    if version is None:
        try:
            import importlib.metadata as md

            version = md.version("spekpy")
        except Exception:  # pragma: no cover - version is informational only
            version = "unknown"
    return from_arrays(
        np.asarray(energies)[keep],
        photons[keep],
        name=f"SpekPy W {kvp:g} kVp {filtration_mm_al:g} mm Al",
        provenance=(
            f"SpekPy {version}: Spek(kvp={kvp}, th={anode_angle_deg}, dk={bin_keV}, shift=0.5)"
            f".filter('Al', {filtration_mm_al}); default physics model"
        ),
    )


def bin_edges(centres) -> np.ndarray:
    """Bin edges [E + 1] of bins with the given centres: midpoints, end bins mirrored."""
    c = np.asarray(centres, np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def default_grid(spectrum: Spectrum, bin_keV: float = 1.0) -> np.ndarray:
    """Bin centres at integer multiples of ``bin_keV`` covering the spectrum's bins."""
    edges = bin_edges(spectrum.energies_keV)
    lo = np.floor(edges[0] / bin_keV + 0.5)
    hi = np.ceil(edges[-1] / bin_keV - 0.5)
    return np.arange(lo, hi + 1) * bin_keV


def rebin(spectrum: Spectrum, energies=None) -> Spectrum:
    """Moves a spectrum onto new bins, conserving photon number.

    Photons are taken as uniformly spread within each source bin and shared among target bins in
    proportion to the overlap; the mean energy is conserved up to that within-bin assumption
    (exactly, when source bins split symmetrically, e.g. 0.5 keV -> 1 keV bins).

    Args:
      spectrum: the spectrum to rebin.
      energies: target bin centres (keV), strictly increasing; edges are the midpoints. Default:
        1 keV bins centred on integer keV covering the spectrum.

    Returns:
      The rebinned Spectrum.

    Raises:
      SpectrumError: the target bins do not cover all of the spectrum's photons.
    """
    target = default_grid(spectrum) if energies is None else np.asarray(energies, np.float64)
    if target.ndim != 1 or target.size < 1 or np.any(np.diff(target) <= 0):
        raise SpectrumError("target energies must be a non-empty, strictly increasing 1-D array")
    src_edges = bin_edges(spectrum.energies_keV)
    dst_edges = bin_edges(target)
    lo = np.maximum(src_edges[:-1, None], dst_edges[None, :-1])
    hi = np.minimum(src_edges[1:, None], dst_edges[None, 1:])
    share = np.clip(hi - lo, 0.0, None) / np.diff(src_edges)[:, None]  # [E_src, E_dst]
    photons = np.asarray(spectrum.photon_fractions, np.float64) @ share
    lost = 1.0 - photons.sum()
    if lost > 1e-9:
        raise SpectrumError(
            f"target bins [{dst_edges[0]:g}, {dst_edges[-1]:g}] keV miss {lost:.3g} "
            f"of the photons (spectrum spans [{src_edges[0]:g}, {src_edges[-1]:g}] keV)"
        )
    return from_arrays(
        target,
        photons,
        name=spectrum.name,
        provenance=spectrum.provenance + " | rebinned (photon-conserving)",
    )


def default_spectrum(kvp: int = 120) -> Spectrum:
    """The default emitted spectrum: IPEM-78 tungsten (the DeepDRR paper used 120 kVp, 4.3 mm Al),
    rebinned to 1 keV bins centred on integer keV (re-exported as ``jaxdrr.default_spectrum``)."""
    return rebin(ipem78(kvp))


def mean_energy(spectrum: Spectrum) -> float:
    """Photon-number-weighted mean energy sum(w E) (keV)."""
    w = np.asarray(spectrum.photon_fractions, np.float64)
    return float(np.sum(w * np.asarray(spectrum.energies_keV, np.float64)) / np.sum(w))


def filter_spectrum(
    spectrum: Spectrum, material: str, thickness_mm: float, density_g_cm3: float | None = None
) -> Spectrum:
    """Adds a filter: ``w(E) exp(-mu(E) t)``, renormalised.

    Args:
      spectrum: input spectrum.
      material: attenuation-table material name, e.g. ``"aluminium"``.
      thickness_mm: filter thickness (mm).
      density_g_cm3: filter density; defaults to the material's nominal density.

    Returns:
      The filtered Spectrum.
    """
    from jaxdrr.physics.attenuation import linear_attenuation

    mu_per_cm = linear_attenuation(
        [material], spectrum.energies_keV, None if density_g_cm3 is None else [density_g_cm3]
    )[0]
    f = np.asarray(spectrum.photon_fractions) * np.exp(-mu_per_cm * thickness_mm / 10.0)
    return from_arrays(
        spectrum.energies_keV,
        f,
        name=f"{spectrum.name} + {thickness_mm:g} mm {material}",
        provenance=spectrum.provenance + f" | filtered by {thickness_mm:g} mm {material}",
    )


HVL_WEIGHTINGS = ("air_kerma", "energy_fluence", "fluence")


def first_hvl_mm_al(spectrum: Spectrum, weighting: str = "air_kerma") -> float:
    """First half-value layer in mm of aluminium (density 2.699 g/cm^3).

    The HVL is the Al thickness x that halves the detector quantity
    ``Q(x) = sum_E w(E) g(E) exp(-(mu/rho)_Al(E) rho_Al x)``, with g(E) set by ``weighting``:
    ``"air_kerma"`` (the standard definition: g = E (mu_en/rho)_air(E), NIST air mu_en/rho),
    ``"energy_fluence"`` (g = E) or ``"fluence"`` (g = 1, photon counting).

    Args:
      spectrum: the beam.
      weighting: one of ``HVL_WEIGHTINGS``.

    Returns:
      HVL in mm Al.
    """
    from jaxdrr.physics.attenuation import air_mass_energy_absorption, mass_attenuation

    e = np.asarray(spectrum.energies_keV, np.float64)
    w = np.asarray(spectrum.photon_fractions, np.float64)
    if weighting == "air_kerma":
        g = e * air_mass_energy_absorption(e)
    elif weighting == "energy_fluence":
        g = e
    elif weighting == "fluence":
        g = np.ones_like(e)
    else:
        raise SpectrumError(f"weighting must be one of {HVL_WEIGHTINGS}, got {weighting!r}")
    mu_per_mm = mass_attenuation(["aluminium"], e)[0] * ALUMINIUM_DENSITY_G_CM3 / 10.0
    q = w * g

    def log_ratio(x):  # log(Q(x)/Q(0)) + log 2, monotonically decreasing in x
        return np.log(np.sum(q * np.exp(-mu_per_mm * x)) / np.sum(q)) + np.log(2.0)

    lo, hi = 0.0, 1.0
    while log_ratio(hi) > 0:
        hi *= 2.0
        if hi > 1e4:
            raise SpectrumError("HVL above 10 m of aluminium: spectrum has no attenuable photons?")
    for _ in range(100):  # bisection to float64 resolution; Q is smooth and monotone
        mid = 0.5 * (lo + hi)
        if log_ratio(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
