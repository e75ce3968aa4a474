"""The :class:`Instrument` record: a closed mesh, named landmarks and a default material.

An instrument lives in its own frame (mm). For the straight ones (K-wire, screw, plate) the long
axis is +z, the base (the end a surgeon holds or the screw head) is at the origin and the tip at
``(0, 0, length)``; a guidewire or catheter lives in the frame of the control points it was built
from. A scene poses it with a :class:`jaxdrr.geometry.rigid.RigidTransform`;
:meth:`Instrument.posed_landmarks` gives the landmarks in world coordinates under that pose.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

import numpy as np

from jaxdrr.instruments.primitives import InstrumentError, check_positive
from jaxdrr.mesh import TriangleMesh
from jaxdrr.physics.compositions import composition


@dataclasses.dataclass(frozen=True, eq=False)
class Instrument:
    """A surgical instrument or implant: geometry, landmarks and what it is made of.

    Attributes:
      name: e.g. ``"kwire"``, ``"screw"``.
      mesh: closed, outward-oriented :class:`jaxdrr.mesh.TriangleMesh` (mm, instrument frame).
      landmarks: name -> point [3] (mm, instrument frame, float64, read-only), e.g. ``"tip"``.
      material: default attenuation-table material (:data:`jaxdrr.physics.COMPOSITIONS`).
      density: default density (g/cm^3), the material's nominal one unless overridden.
    """

    name: str
    mesh: TriangleMesh
    landmarks: Mapping[str, np.ndarray]
    material: str
    density: float

    def axis(self, pose=None) -> np.ndarray:
        """Unit vector from the ``base`` to the ``tip`` landmark (the long axis; for a curved guidewire
        the chord), in the instrument frame or, with a ``RigidTransform`` ``pose``, in world axes."""
        ends = self.posed_landmarks(pose) if pose is not None else self.landmarks
        chord = np.asarray(ends["tip"], np.float64) - np.asarray(ends["base"], np.float64)
        return chord / np.linalg.norm(chord)

    def posed_landmarks(self, pose) -> dict[str, np.ndarray]:
        """Landmarks in world coordinates (mm) under a :class:`jaxdrr.geometry.rigid.RigidTransform`."""
        names = list(self.landmarks)
        points = np.asarray(pose.apply(np.stack([self.landmarks[n] for n in names])))
        return dict(zip(names, points, strict=True))


def make_instrument(name, vertices, faces, landmarks, material: str, density) -> Instrument:
    """Checks and packs an instrument (used by every builder of this package).

    Args:
      name: instrument name (also the mesh's name in error messages).
      vertices, faces: the closed surface (NumPy), validated by :meth:`TriangleMesh.create`.
      landmarks: name -> [3] point (mm).
      material: attenuation-table material name.
      density: g/cm^3, or None for the material's nominal density.

    Raises:
      UnknownMaterialError: the material is not in the table.
      InstrumentError: a non-positive density.
    """
    nominal = composition(material).density_g_cm3
    density = nominal if density is None else density
    check_positive(density_g_cm3=density)
    frozen = {}
    for key, point in landmarks.items():
        point = np.array(point, np.float64)
        if point.shape != (3,):
            raise InstrumentError(f"landmark {key!r} must be a 3-D point, got shape {point.shape}")
        point.flags.writeable = False
        frozen[key] = point
    mesh = TriangleMesh.create(vertices, faces, name=name)
    return Instrument(name, mesh, types.MappingProxyType(frozen), material, float(density))
