"""Shared problem generator of the registration benchmark (used by run.py and diffdrr_compare.py).

Protocol (deterministic given the seed):

* CT: the built-in pelvis phantom (``jaxdrr.phantom``), default 64 x 64 x 48 voxels
  (5.9 x 4.7 x 5.0 mm) over 380 x 300 x 240 mm.
* C-arm: SDD 1020 mm, SID 700 mm, detector ``--size`` pixels square covering 204.8 mm
  (pixel 1.6 mm at 128), isocentre at the volume centre.
* Ground-truth poses: LAO/RAO uniform in [-60, 60] deg, CRAN/CAUD uniform in [-30, 30] deg.
* Targets: rendered with full physics and a *different* model than registration uses: 90 kVp
  IPEM-78 spectrum (registration model: 120 kVp), energy-integrating detector, quantum + readout
  noise with crosstalk at 5e5 photons/pixel (``NoiseConfig()``), ``-log`` output.
* Initial poses: the ground truth moved (about the volume centre, in camera axes) by a rotation about
  a random axis with angle uniform in [0, 10] deg and a translation in a random direction with
  length uniform in [0, 20] mm. The registration starts from that camera (no other information).
* Errors: mTRE over a 5 x 5 x 5 grid (10 % margin) of the volume box restricted to points inside the
  body (HU > -500); success = mTRE < 1 mm. Per-bin results by initial rotation angle
  ([0, 5), [5, 10] deg) and translation ([0, 10), [10, 20] mm).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

import jaxdrr
from jaxdrr import registration as reg

SDD_MM = 1020.0
SID_MM = 700.0
DETECTOR_MM = 204.8


@dataclasses.dataclass
class Problem:
    index: int
    lao: float
    cran: float
    rot_deg: float
    trans_mm: float
    P_true: np.ndarray
    P_init: np.ndarray
    target: np.ndarray
    height: int
    width: int
    rot_axis: np.ndarray  # perturbation axis (camera frame)
    trans_dir: np.ndarray  # perturbation translation direction (camera frame)


def geometry(size: int) -> jaxdrr.geometry.CArmGeometry:
    return jaxdrr.geometry.CArmGeometry(SDD_MM, SID_MM, size, size, DETECTOR_MM / size)


def make_volume(shape=(64, 64, 48)) -> jaxdrr.Volume:
    return jaxdrr.phantom(shape=tuple(shape))


def target_config(size: int) -> tuple[jaxdrr.RenderConfig, dict]:
    cfg = jaxdrr.RenderConfig(size, size, noise=jaxdrr.NoiseConfig(), photons_per_pixel=5e5)
    return cfg, jaxdrr.default_params(cfg, jaxdrr.default_spectrum(90))


def make_problems(
    volume, n: int, size: int = 128, seed: int = 0, max_rot_deg: float = 10.0, max_trans_mm: float = 20.0
) -> list[Problem]:
    rng = np.random.default_rng(seed)
    g = geometry(size)
    cfg, params = target_config(size)
    render = jax.jit(jaxdrr.make_renderer(cfg))
    center = np.asarray(volume.center)
    problems = []
    for i in range(n):
        lao = float(rng.uniform(-60, 60))
        cran = float(rng.uniform(-30, 30))
        cam = reg.camera_from_carm(lao, cran, g, isocenter=center, center=center)
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        rot = float(rng.uniform(0, max_rot_deg))
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        trans = float(rng.uniform(0, max_trans_mm))
        pert = reg.Pose(
            np.float32(reg.pose.DEFAULT_RADIUS_MM * np.deg2rad(rot)) * axis.astype(np.float32),
            (trans * direction).astype(np.float32),
        )
        P_init = np.asarray(reg.pose_to_projection(pert, cam), np.float64)
        P_true = np.asarray(cam.P, np.float64)
        target = np.asarray(render(params, volume, P_true, jax.random.key(10_000 + i)))
        problems.append(
            Problem(i, lao, cran, rot, trans, P_true, P_init, target, size, size, axis, direction)
        )
    return problems


def error_points(volume) -> np.ndarray:
    return reg.grid_points(volume, n=5, margin=0.1, hu_threshold=-500.0)


def bin_name(p: Problem) -> str:
    r = "rot 0-5" if p.rot_deg < 5 else "rot 5-10"
    t = "trans 0-10" if p.trans_mm < 10 else "trans 10-20"
    return f"{r} deg, {t} mm"
