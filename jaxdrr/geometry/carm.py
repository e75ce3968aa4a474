"""A C-arm: projection matrices from LAO/RAO and CRAN/CAUD angles about an isocentre.

World frame RAS+ (mm): +x patient Right, +y Anterior, +z Superior, patient supine.

* At LAO = CRAN = 0 (AP view) the source is posterior and the detector anterior; the central ray
  runs along +y (posterior -> anterior).
* **LAO** (positive ``lao`` in degrees) swings the detector towards the patient's **left** (-x) and
  the source towards the patient's **right** (+x); RAO is negative ``lao``.
* **CRAN** (positive ``cran``) tilts the detector towards the head (+z) and the source towards the
  feet; CAUD is negative ``cran``.
* Images follow the radiological display convention: in AP the patient's right is on the image's
  left, the head at the top (row 0).

The camera rotation is ``R_carm = Rz(lao) @ Rx(cran)`` applied to the AP frame, so the detector
direction is ``(-sin(lao) cos(cran), cos(lao) cos(cran), sin(cran))``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.geometry.projection import intrinsic_matrix, projection_matrix
from jaxdrr.geometry.rotations import rotation_x, rotation_z

# Columns: camera axes (x = image columns before the display mirror, y = image rows, z = viewing
# direction) expressed in the AP world frame.
_AP_CAMERA_AXES = np.stack([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], axis=1)


@dataclasses.dataclass(frozen=True)
class CArmGeometry:
    """Static description of a C-arm's distances and detector.

    Attributes:
      sdd_mm: source-to-detector distance.
      sid_mm: source-to-isocentre distance.
      height: detector rows.
      width: detector columns.
      pixel_size_mm: pixel pitch (square pixels).
    """

    sdd_mm: float = 1020.0
    sid_mm: float = 700.0
    height: int = 512
    width: int = 512
    pixel_size_mm: float = 0.8

    @classmethod
    def deepdrr(cls) -> CArmGeometry:
        """DeepDRR's defaults: SDD 1020 mm, source-isocentre 530 mm, 1536^2 pixels of 0.194 mm."""
        return cls(sdd_mm=1020.0, sid_mm=530.0, height=1536, width=1536, pixel_size_mm=0.194)

    @classmethod
    def paper(cls) -> CArmGeometry:
        """The DeepDRR paper's images: 615 x 479 pixels of 0.616 mm (DeepDRR's distances)."""
        return cls(sdd_mm=1020.0, sid_mm=530.0, height=479, width=615, pixel_size_mm=0.616)

    def scaled(self, factor: float) -> CArmGeometry:
        """The same detector with ``factor`` times fewer pixels per side (pitch scaled up)."""
        return dataclasses.replace(
            self,
            height=max(1, int(round(self.height / factor))),
            width=max(1, int(round(self.width / factor))),
            pixel_size_mm=self.pixel_size_mm * factor,
        )

    @property
    def intrinsics(self) -> jax.Array:
        """K of this detector in the radiological display convention."""
        return intrinsic_matrix(self.sdd_mm, self.pixel_size_mm, self.height, self.width, flip_columns=True)


def carm_rotation(lao_deg, cran_deg) -> jax.Array:
    """The C-arm's rotation ``Rz(lao) @ Rx(cran)`` (angles in degrees) from its AP position."""
    return rotation_z(jnp.deg2rad(lao_deg)) @ rotation_x(jnp.deg2rad(cran_deg))


def carm_extrinsics(lao_deg, cran_deg, isocenter, sid_mm) -> tuple[jax.Array, jax.Array]:
    """World-to-camera rotation R [3, 3] and translation t [3] of the C-arm camera."""
    axes = carm_rotation(lao_deg, cran_deg) @ jnp.asarray(_AP_CAMERA_AXES, dtype=jnp.result_type(float))
    R = axes.T  # rows: camera x, y, z axes in world coordinates
    source = jnp.asarray(isocenter) - sid_mm * axes[:, 2]
    return R, -R @ source


def carm_source(lao_deg, cran_deg, isocenter=(0.0, 0.0, 0.0), sid_mm: float = 700.0) -> jax.Array:
    """World position of the source."""
    axes = carm_rotation(lao_deg, cran_deg)
    return jnp.asarray(isocenter) - sid_mm * axes @ jnp.array([0.0, 1.0, 0.0])


def carm(lao=0.0, cran=0.0, isocenter=(0.0, 0.0, 0.0), geometry: CArmGeometry | None = None) -> jax.Array:
    """Projection matrix of a C-arm view.

    Args:
      lao: LAO angle in degrees (negative = RAO).
      cran: CRAN angle in degrees (negative = CAUD).
      isocenter: world point (mm) the C-arm rotates about; it projects to the detector centre.
      geometry: distances and detector; default :class:`CArmGeometry` ().

    Returns:
      P, [3, 4]; differentiable w.r.t. the angles and the isocentre.
    """
    g = geometry or CArmGeometry()
    R, t = carm_extrinsics(lao, cran, isocenter, g.sid_mm)
    return projection_matrix(g.intrinsics, R, t)
