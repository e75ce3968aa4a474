"""The volumes and poses every hand-written projector kernel is tested on (Pallas, native CPU).

Shared by ``test_pallas.py`` and ``test_native_project.py`` so both kernels face the same cases:
non-power-of-two shapes, anisotropic and oblique affines, rays that miss the volume, and a case
with more channels than one channel group of the native kernel on a detector wider than one tile.
"""

import jax.numpy as jnp
import numpy as np

from jaxdrr import geometry as G
from jaxdrr.ops.rays import VolumeGrid, detector_rays

OBLIQUE = np.array([[1.1, 0.1, 0, -8], [0, 0.9, 0.05, -6], [0.02, 0, 1.3, -8], [0, 0, 0, 1.0]])
ANISO = np.array([[0.7, 0, 0, -3], [0, 1.3, 0, -12], [0, 0, 2.1, -7], [0, 0, 0, 1.0]])

CASES = ("oblique", "aniso", "miss", "channels")
_SEEDS = {name: seed for seed, name in enumerate(CASES)}


def case(name):
    """(volume [C, I, J, K] float32, affine, P float32, height, width) of a named case."""
    rng = np.random.default_rng(_SEEDS[name])
    if name == "oblique":  # non-power-of-two shape, oblique affine, 2 channels
        vol = rng.random((2, 15, 13, 11), dtype=np.float32)
        affine, iso, H, W, lao, cran, pixel = OBLIQUE, (0.5, 0.2, -0.3), 9, 10, 20.0, 10.0, 2.5
    elif name == "aniso":  # anisotropic axis-aligned spacing, 3 channels
        vol = rng.random((3, 9, 20, 7), dtype=np.float32)
        affine, iso, H, W, lao, cran, pixel = ANISO, (0.0, 0.0, 0.0), 7, 12, -35.0, 25.0, 3.0
    elif name == "miss":  # isocentre near the edge: part of the detector misses the volume
        vol = rng.random((1, 10, 11, 12), dtype=np.float32)
        affine, iso, H, W, lao, cran, pixel = OBLIQUE, (6.0, 4.0, 2.0), 8, 8, 5.0, -15.0, 4.0
    else:  # 6 channels (two native kernel passes: 4 + 2), a detector wider than one 16 x 16 tile
        vol = rng.random((6, 12, 10, 9), dtype=np.float32)
        affine, iso, H, W, lao, cran, pixel = OBLIQUE, (0.5, -1.0, 0.0), 5, 23, 60.0, -10.0, 1.5
    g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=H, width=W, pixel_size_mm=pixel)
    P = G.carm(lao, cran, isocenter=iso, geometry=g)
    return jnp.asarray(vol), affine, jnp.asarray(P, jnp.float32), H, W


def weights(shape, seed=3, dtype=jnp.float32):
    """Fixed normal weights: a loss sum(out * weights) or a cotangent."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def assert_miss_case_has_missing_rays():
    vol, affine, P, H, W = case("miss")
    grid = VolumeGrid.create(vol.shape[1:], affine)
    n = np.asarray(detector_rays(P, grid, H, W, grid.default_step()).num_steps)
    assert (n == 0).sum() >= 5 and (n > 0).sum() >= 5, n
