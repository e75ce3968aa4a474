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

from jaxdrr._compat import is_tracer
from jaxdrr.errors import GeometryError
from jaxdrr.geometry.projection import check_detector, intrinsic_matrix, projection_matrix
from jaxdrr.geometry.rotations import rotation_x, rotation_z

# Columns: camera axes (x = image columns before the display mirror, y = image rows, z = viewing
# direction) expressed in the AP world frame.
AP_CAMERA_AXES = np.stack([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], axis=1)


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

    def __post_init__(self):
        check_carm_geometry(self.sdd_mm, self.sid_mm, self.height, self.width, self.pixel_size_mm)

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


def check_carm_geometry(sdd_mm, sid_mm, height, width, pixel_size_mm) -> None:
    """Raises a GeometryError naming the first impossible C-arm setting (values under a JAX
    transformation are not checked: they have no value yet).

    A C-arm needs a positive, finite pixel pitch and source-detector distance, and the isocentre
    between source and detector (``0 < sid < sdd``); otherwise the projection matrix holds Inf/NaN
    (pitch or SDD 0) or the object lies behind the detector.
    """
    check_detector(height, width)
    values = {"sdd_mm": sdd_mm, "sid_mm": sid_mm, "pixel_size_mm": pixel_size_mm}
    if any(is_tracer(v) for v in values.values()):
        return
    for name, value in values.items():
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise GeometryError(f"C-arm {name} must be finite, got {value!r}")
        if not np.all(arr > 0):
            raise GeometryError(f"C-arm {name} must be positive, got {value!r}")
    if not np.all(np.asarray(sid_mm, np.float64) < np.asarray(sdd_mm, np.float64)):
        raise GeometryError(
            f"C-arm source-isocentre distance {sid_mm!r} mm must be less than the source-detector "
            f"distance {sdd_mm!r} mm (the isocentre lies between source and detector)"
        )


def carm_rotation(lao_deg, cran_deg) -> jax.Array:
    """The C-arm's rotation ``Rz(lao) @ Rx(cran)`` (angles in degrees) from its AP position."""
    return rotation_z(jnp.deg2rad(lao_deg)) @ rotation_x(jnp.deg2rad(cran_deg))


def carm_extrinsics(lao_deg, cran_deg, isocenter, sid_mm) -> tuple[jax.Array, jax.Array]:
    """World-to-camera rotation R [3, 3] and translation t [3] of the C-arm camera."""
    axes = carm_rotation(lao_deg, cran_deg) @ jnp.asarray(AP_CAMERA_AXES, dtype=jnp.result_type(float))
    R = axes.T  # rows: camera x, y, z axes in world coordinates
    source = jnp.asarray(isocenter) - sid_mm * axes[:, 2]
    return R, -R @ source


def carm_source(lao_deg, cran_deg, isocenter=(0.0, 0.0, 0.0), sid_mm: float = 700.0) -> jax.Array:
    """World position of the source."""
    axes = carm_rotation(lao_deg, cran_deg)
    return jnp.asarray(isocenter) - sid_mm * axes @ jnp.array([0.0, 1.0, 0.0])


def carm(lao=0.0, cran=0.0, isocenter=(0.0, 0.0, 0.0), geometry: CArmGeometry | None = None) -> jax.Array:
    """Projection matrix of a C-arm view, or a batch of them for arrays of angles or isocentres.

    ``lao``, ``cran`` and the leading axes of ``isocenter`` broadcast against each other (NumPy
    rules), and each element gives one view: ``carm(lao=jnp.array([-30., 0., 30.]), cran=10)`` is
    three P, ``carm(lao=a[:, None], cran=c[None, :])`` a grid of views.

    Args:
      lao: LAO angle(s) in degrees (negative = RAO): a number or an array.
      cran: CRAN angle(s) in degrees (negative = CAUD): a number or an array.
      isocenter: world point (mm) the C-arm rotates about, [3] or [..., 3]; it projects to the
        detector centre.
      geometry: distances and detector; default :class:`CArmGeometry` ().

    Returns:
      P, [..., 3, 4], where ``...`` is the broadcast shape of the angles and isocentres ([3, 4]
      for one view); differentiable w.r.t. the angles and the isocentre, and usable under ``jit``
      and ``vmap``.
    """
    g = geometry or CArmGeometry()
    K = g.intrinsics

    def one_view(lao_deg, cran_deg, iso):
        R, t = carm_extrinsics(lao_deg, cran_deg, iso, g.sid_mm)
        return projection_matrix(K, R, t)

    return jnp.vectorize(one_view, signature="(),(),(3)->(3,4)")(lao, cran, isocenter)
