"""Deterministic first-order (single) scatter of a slab, in NumPy from xraylib's differential cross sections.

Independent of jaxdrr's Monte Carlo (shares only the spectrum data and the material's mass
fractions): a point source at the origin looks along +z; a homogeneous slab fills z0 <= z <= z1 (mm),
laterally wider than the beam; the beam is collimated to a square field of half-width ``half_field``
on the detector plane z = sdd. For a detector point D, the first-order scatter per unit detector
area from an isotropic source of one photon per steradian at energy E is

    S_D(E) = int_V  e^{-mu(E) L_in} / |r|^2  *  rho dsigma/dOmega(E, theta)
                    *  e^{-mu(E') L_out} * cos(beta) / |D - r|^2  dV

with theta the angle between the source ray and r -> D, beta the angle of r -> D to the detector
normal, L_in / L_out the paths in the slab before / after the scatter, E' the Compton energy
(Compton) or E (Rayleigh). The unattenuated primary per unit area is P_D = cos(theta_D) / |D|^2.
Flat-field-normalised images, as the MC reports them, per N0:

    energy-integrating:   sum_E w(E) int E' (...)  /  (P_D sum_E w(E) E)   * sum_E w(E) E / ... = see below
    photon-counting:      sum_E w(E) S_D(E) / P_D

(the energy-integrating image is ``sum_E w E' S_D / P_D``, the renderer's keV units per N0).
The volume integral uses Gauss-Legendre rules over depth and, in each depth plane, over the field's
square cross-section in polar coordinates centred where the ray to D crosses the plane: Rayleigh
scattering is peaked within a few degrees of that ray, so the radius is mapped as rho = rho_max u^2
(dense near the centre), and the azimuth is split at the square's corners so each sector is smooth.
"""

from __future__ import annotations

import numpy as np
import xraylib
import xraylib_np

ELECTRON_KEV = 510.99895


def _elements(mass_fractions):
    zs = np.array([xraylib.SymbolToAtomicNumber(s) for s in mass_fractions])
    ws = np.array(list(mass_fractions.values()), float)
    return zs, ws / ws.sum()


def _mu_total_cm2_g(zs, ws, energies):
    return ws @ xraylib_np.CS_Total(zs, np.asarray(energies, float))


def _dcs(fn, zs, ws, energies, theta):
    """Mixture differential cross section (cm^2/g/sr) [E, T] at energies [E] and angles [T]."""
    theta = np.clip(theta, 1e-4, np.pi)  # xraylib refuses momentum transfer < 1e-3 1/A
    return np.einsum("z,zet->et", ws, fn(zs, np.asarray(energies, float), theta))


def _plane_points(centre, h, gr, wr, gp, wp):
    """Quadrature points [Q, 2] and area weights [Q] over the square [-h, h]^2, polar about centre."""
    c = np.asarray(centre, float)
    corners = np.array([[h, h], [-h, h], [-h, -h], [h, -h]]) - c
    ang = np.arctan2(corners[:, 1], corners[:, 0])
    ang = np.unwrap(np.concatenate([ang, ang[:1]]))
    pts, wts = [], []
    for a0, a1 in zip(ang[:-1], ang[1:], strict=True):
        phi = 0.5 * (a1 - a0) * gp + 0.5 * (a1 + a0)
        w_phi = 0.5 * abs(a1 - a0) * wp
        cp, sp = np.cos(phi), np.sin(phi)
        # Distance from the centre to the square's boundary along each azimuth.
        with np.errstate(divide="ignore"):
            tx = np.where(cp > 0, (h - c[0]) / cp, np.where(cp < 0, (-h - c[0]) / cp, np.inf))
            ty = np.where(sp > 0, (h - c[1]) / sp, np.where(sp < 0, (-h - c[1]) / sp, np.inf))
        rho_max = np.minimum(tx, ty)
        u = 0.5 * gr + 0.5
        rho = rho_max[:, None] * u[None, :] ** 2
        w_rho = rho_max[:, None] * 2 * u[None, :] * 0.5 * wr[None, :]
        pts.append(np.stack([c[0] + rho * cp[:, None], c[1] + rho * sp[:, None]], -1).reshape(-1, 2))
        wts.append((w_phi[:, None] * w_rho * rho).ravel())
    return np.concatenate(pts), np.concatenate(wts)


def slab_single_scatter(
    detector_xy_mm,
    *,
    z0_mm,
    z1_mm,
    sdd_mm,
    half_field_mm,
    mass_fractions,
    density_g_cm3,
    energies,
    weights,
    n_z=16,
    n_r=24,
    n_phi=12,
):
    """First-order scatter images (per N0) at detector points.

    Args:
      detector_xy_mm: [K, 2] points on the detector plane z = sdd (mm).
      z0_mm, z1_mm: slab faces (distance from the source along the axis).
      sdd_mm: source-to-detector distance.
      half_field_mm: half-width of the square field at the detector plane.
      mass_fractions: element -> mass fraction of the slab material.
      density_g_cm3: slab density.
      energies, weights: discrete spectrum (keV, photon fractions).
      n_z, n_r, n_phi: Gauss-Legendre orders in depth, radius and azimuth (per square sector).

    Returns:
      dict of [K] arrays: ``compton_ei``, ``rayleigh_ei`` (keV per N0, as the renderer's
      ``intensity``/N0), ``compton_pc``, ``rayleigh_pc`` (photons per N0), and ``primary_ei``,
      ``primary_pc`` (unscattered, per N0).
    """
    zs, ws = _elements(mass_fractions)
    energies = np.asarray(energies, float)
    weights = np.asarray(weights, float) / np.sum(weights)
    D = (
        np.concatenate([np.asarray(detector_xy_mm, float), np.full((len(detector_xy_mm), 1), sdd_mm)], 1)
        / 10.0
    )
    z0, z1, sdd, hf = z0_mm / 10.0, z1_mm / 10.0, sdd_mm / 10.0, half_field_mm / 10.0
    # Attenuation (1/cm) on a fine log grid for E' lookups (log-log interpolation).
    grid = np.exp(np.linspace(np.log(1.0), np.log(150.0), 4000))
    log_mu_grid = np.log(_mu_total_cm2_g(zs, ws, grid) * density_g_cm3)

    def mu_at(e):
        return np.exp(np.interp(np.log(e), np.log(grid), log_mu_grid))

    gz, wz = np.polynomial.legendre.leggauss(n_z)
    gr, wr = np.polynomial.legendre.leggauss(n_r)
    gp, wp = np.polynomial.legendre.leggauss(n_phi)
    res = {k: np.zeros(len(D)) for k in ("compton_ei", "rayleigh_ei", "compton_pc", "rayleigh_pc")}
    mu_e = mu_at(energies)
    for zi, zw in zip(0.5 * (z1 - z0) * gz + 0.5 * (z1 + z0), 0.5 * (z1 - z0) * wz, strict=True):
        h = hf * zi / sdd  # half-width of the field at this depth
        for k, d in enumerate(D):
            r, w_q = _plane_points(d[:2] * zi / sdd, h, gr, wr, gp, wp)
            w_q = w_q * zw
            r = np.concatenate([r, np.full((len(r), 1), zi)], 1)
            rs = np.linalg.norm(r, axis=-1)
            l_in = (zi - z0) * rs / zi
            v = d[None, :] - r
            dist = np.linalg.norm(v, axis=-1)
            cos_beta = v[:, 2] / dist
            l_out = (z1 - zi) / cos_beta
            cos_theta = np.sum(r * v, -1) / (rs * dist)
            theta = np.arccos(np.clip(cos_theta, -1, 1))
            geom = w_q * cos_beta / (dist**2 * rs**2) * density_g_cm3
            att_in = np.exp(-mu_e[:, None] * l_in[None, :])  # [E, Q]
            e_c = energies[:, None] / (1.0 + energies[:, None] / ELECTRON_KEV * (1.0 - cos_theta[None, :]))
            comp = (
                geom
                * att_in
                * _dcs(xraylib_np.DCS_Compt, zs, ws, energies, theta)
                * np.exp(-mu_at(e_c) * l_out)
            )
            rayl = (
                geom
                * att_in
                * _dcs(xraylib_np.DCS_Rayl, zs, ws, energies, theta)
                * np.exp(-mu_e[:, None] * l_out[None, :])
            )
            res["compton_pc"][k] += weights @ comp.sum(-1)
            res["compton_ei"][k] += weights @ np.sum(comp * e_c, -1)
            res["rayleigh_pc"][k] += weights @ rayl.sum(-1)
            res["rayleigh_ei"][k] += (weights * energies) @ rayl.sum(-1)
    p_d = D[:, 2] / np.linalg.norm(D, axis=-1) ** 3  # cos / R^2
    out = {k: v / p_d for k, v in res.items()}
    # Primary through the slab along the ray to D.
    path = (z1 - z0) * np.linalg.norm(D, axis=-1) / D[:, 2]
    t = np.exp(-mu_e[None, :] * path[:, None])
    out["primary_pc"] = t @ weights
    out["primary_ei"] = t @ (weights * energies)
    return out
