"""Poses for 2D/3D registration: a rigid motion applied to a reference camera.

A registration problem fixes the intrinsics ``K`` and a reference camera ``[R0 | t0]`` (the
initial guess, e.g. the C-arm's nominal reading) and optimises a rigid motion of the CT **expressed
in the reference camera's frame, about a rotation centre** ``c`` (default: the volume centre).
With ``x_cam = R0 x + t0`` the camera coordinates of a world point ``x`` and ``c_cam = R0 c + t0``,
a :class:`Pose` ``(R_d, t_d)`` moves the CT to

    x_cam' = R_d (x_cam - c_cam) + c_cam + t_d,

so the posed camera is ``P = K [R_d R0 | R_d (t0 - c_cam) + c_cam + t_d]``. The zero pose is the
reference camera. Camera axes (see :mod:`jaxdrr.geometry.carm`): x along the detector columns
(before the display mirror carried by ``K``), y along the rows, z the viewing direction, so
``t_d = (x, y, z)`` separates in-plane shifts (x, y: well observed) from depth (z: weakly
observed through magnification only). Working in this frame keeps the optimiser's (diagonal)
preconditioning aligned with what the image can and cannot see.

Scaling (conditioning)
----------------------
Translations are in mm. Rotation parameters are stored multiplied by a characteristic radius
``radius_mm`` (default 100 mm, roughly the half-extent of a pelvis/abdomen CT), so a change of one
unit in a rotation parameter moves a point at ``radius_mm`` from the centre by about 1 mm, just as one
unit of translation does. Mathematically the gradient w.r.t. rotation and translation then has
comparable magnitude and a learning rate in "mm" applies to both. Concretely, with
``r = radius_mm``:

* ``"so3"`` (axis-angle): ``u = r * rotvec`` (rotvec in radians), ``R_d = so3_exp(u / r)``.
* ``"6d"``: ``u = r * (rotation_to_6d(R_d) - e)`` with ``e = (1,0,0, 0,1,0)`` the identity's 6D
  form, ``R_d = rotation_from_6d(e + u / r)`` (Zhou et al. 2019).
* ``"quaternion"``: ``u = 2 r (q - (1,0,0,0))``, ``R_d = rotation_from_quaternion((1,0,0,0) + u / (2 r))``
  (a quaternion's vector part is ``sin(angle / 2)`` times the axis, hence the 2).

All three are zero at the identity. Rotation formulas live in :mod:`jaxdrr.geometry.rotations` and
projection formulas in :mod:`jaxdrr.geometry.projection`; this module only composes them.

C-arm parameters
----------------
:func:`carm_parameters` converts a camera to the C-arm description of :mod:`jaxdrr.geometry.carm`
(``R_carm = Rz(lao) Rx(cran)`` applied to the AP frame). A general rotation has a third degree of
freedom that a C-arm lacks: the roll about the central ray. Writing the camera's rotation from the
AP frame as ``Rz(lao) Rx(cran) Ry(roll)`` (``Ry`` is the rotation about the AP viewing axis) gives
``lao``, ``cran`` and ``roll`` in degrees; ``roll`` is 0 for every camera :func:`jaxdrr.geometry.carm`
makes. The isocentre is the point on the central ray at ``sid_mm`` from the source (default: the
depth of the rotation centre, i.e. the foot of the perpendicular from the centre to the ray).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import GeometryError
from jaxdrr.geometry.carm import AP_CAMERA_AXES, CArmGeometry, carm_extrinsics
from jaxdrr.geometry.projection import (
    check_detector,
    check_projection_matrix,
    decompose_projection,
    projection_matrix,
)
from jaxdrr.geometry.rotations import (
    rotation_from_6d,
    rotation_from_quaternion,
    rotation_to_6d,
    rotation_to_quaternion,
    rotation_x,
    rotation_y,
    rotation_z,
    so3_exp,
    so3_log,
)

PARAMETERIZATIONS = ("so3", "6d", "quaternion")
ROTATION_DIMS = {"so3": 3, "6d": 6, "quaternion": 4}
DEFAULT_RADIUS_MM = 100.0
_ID6 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_IDQ = (1.0, 0.0, 0.0, 0.0)

__all__ = [
    "PARAMETERIZATIONS",
    "DEFAULT_RADIUS_MM",
    "Pose",
    "Camera",
    "rotation_matrix",
    "pose_extrinsics",
    "pose_to_projection",
    "pose_from_extrinsics",
    "pose_from_projection",
    "pose_from_rotation",
    "carm_parameters",
    "camera_from_carm",
    "random_pose",
    "convert",
]


def _check_param(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise GeometryError(
            f"unknown rotation parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}"
        )
    return parameterization


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Pose:
    """A rigid motion of the CT in the reference camera frame (see the module docstring).

    Attributes:
      rotation: scaled rotation parameters [..., 3 | 6 | 4] (zero = identity).
      translation: [..., 3] mm in camera axes (x columns, y rows, z depth).
      parameterization: ``"so3"``, ``"6d"`` or ``"quaternion"`` (static).
      radius_mm: characteristic radius scaling the rotation parameters (static).

    The leaves may carry leading batch axes (several starts); functions that take a single pose
    should then be ``jax.vmap``-ed.
    """

    rotation: jax.Array
    translation: jax.Array
    parameterization: str = "so3"
    radius_mm: float = DEFAULT_RADIUS_MM

    def tree_flatten(self):
        return (self.rotation, self.translation), (self.parameterization, self.radius_mm)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], children[1], *aux)

    @classmethod
    def identity(
        cls,
        parameterization: str = "so3",
        radius_mm: float = DEFAULT_RADIUS_MM,
        batch_shape: tuple[int, ...] = (),
    ) -> Pose:
        """The zero motion (the reference camera itself)."""
        _check_param(parameterization)
        if not (np.isfinite(radius_mm) and radius_mm > 0):
            raise GeometryError(f"radius_mm must be a positive number of mm, got {radius_mm}")
        dtype = jnp.result_type(float)
        return cls(
            jnp.zeros(batch_shape + (ROTATION_DIMS[parameterization],), dtype),
            jnp.zeros(batch_shape + (3,), dtype),
            parameterization,
            float(radius_mm),
        )

    @property
    def matrix(self) -> jax.Array:
        """The rotation R_d [3, 3] (single pose)."""
        return rotation_matrix(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameterization": self.parameterization,
            "radius_mm": self.radius_mm,
            "rotation": np.asarray(self.rotation).tolist(),
            "translation_mm": np.asarray(self.translation).tolist(),
        }


def rotation_matrix(pose: Pose) -> jax.Array:
    """R_d of a single pose from its scaled parameters."""
    _check_param(pose.parameterization)
    r = pose.radius_mm
    u = jnp.asarray(pose.rotation)
    if u.shape != (ROTATION_DIMS[pose.parameterization],):
        raise GeometryError(
            f"a single {pose.parameterization!r} pose needs rotation shape "
            f"({ROTATION_DIMS[pose.parameterization]},), got {u.shape}; vmap batches"
        )
    if pose.parameterization == "so3":
        return so3_exp(u / r)
    if pose.parameterization == "6d":
        return rotation_from_6d(jnp.asarray(_ID6, u.dtype) + u / r)
    return rotation_from_quaternion(jnp.asarray(_IDQ, u.dtype) + u / (2.0 * r))


def pose_from_rotation(
    R_d, translation, parameterization: str = "so3", radius_mm: float = DEFAULT_RADIUS_MM
) -> Pose:
    """A Pose from a rotation matrix R_d and a translation t_d (camera frame, mm)."""
    _check_param(parameterization)
    R_d = jnp.asarray(R_d)
    if parameterization == "so3":
        u = radius_mm * so3_log(R_d)
    elif parameterization == "6d":
        u = radius_mm * (rotation_to_6d(R_d) - jnp.asarray(_ID6, R_d.dtype))
    else:
        u = 2.0 * radius_mm * (rotation_to_quaternion(R_d) - jnp.asarray(_IDQ, R_d.dtype))
    return Pose(u, jnp.asarray(translation, u.dtype), parameterization, float(radius_mm))


def convert(pose: Pose, parameterization: str, radius_mm: float | None = None) -> Pose:
    """The same motion in another parameterization / scaling (single pose)."""
    return pose_from_rotation(
        rotation_matrix(pose),
        pose.translation,
        parameterization,
        pose.radius_mm if radius_mm is None else radius_mm,
    )


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Camera:
    """The fixed part of a registration problem: intrinsics, reference extrinsics, rotation centre.

    Attributes:
      K: [3, 3] intrinsics (may carry the C-arm's column mirror, K[0, 0] < 0).
      R0: [3, 3] reference world-to-camera rotation.
      t0: [3] reference translation (mm).
      center: [3] world rotation centre (mm), default the volume centre.
      height, width: detector size (static).
    """

    K: jax.Array
    R0: jax.Array
    t0: jax.Array
    center: jax.Array
    height: int
    width: int

    def tree_flatten(self):
        return (self.K, self.R0, self.t0, self.center), (self.height, self.width)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @classmethod
    def create(cls, K, R0, t0, height: int, width: int, center=(0.0, 0.0, 0.0)) -> Camera:
        """Validated constructor (concrete inputs)."""
        height, width = check_detector(height, width)
        K = np.asarray(K, np.float64)
        R0 = np.asarray(R0, np.float64)
        t0 = np.asarray(t0, np.float64).reshape(-1)
        center = np.asarray(center, np.float64).reshape(-1)
        if K.shape != (3, 3) or R0.shape != (3, 3) or t0.shape != (3,) or center.shape != (3,):
            raise GeometryError(
                f"camera needs K [3,3], R0 [3,3], t0 [3], center [3]; got "
                f"{K.shape}, {R0.shape}, {t0.shape}, {center.shape}"
            )
        for name, a in (("K", K), ("R0", R0), ("t0", t0), ("center", center)):
            if not np.all(np.isfinite(a)):
                raise GeometryError(f"camera {name} contains non-finite values")
        if not np.allclose(R0 @ R0.T, np.eye(3), atol=1e-5) or np.linalg.det(R0) <= 0:
            raise GeometryError("camera R0 is not a rotation matrix (orthonormal, det +1)")
        if abs(K[2, 2]) < 1e-12 or abs(np.linalg.det(K)) < 1e-12:
            raise GeometryError("camera K is singular")
        K = K / K[2, 2]
        check_intrinsics(K, height, width)
        dtype = jnp.result_type(float)
        return cls(
            jnp.asarray(K, dtype),
            jnp.asarray(R0, dtype),
            jnp.asarray(t0, dtype),
            jnp.asarray(center, dtype),
            height,
            width,
        )

    @classmethod
    def from_projection(cls, P, height: int, width: int, center=(0.0, 0.0, 0.0)) -> Camera:
        """Reference camera from a 3x4 P (decomposed into K [R | t])."""
        P = check_projection_matrix(P)
        K, R, t = decompose_projection(P)
        return cls.create(K, R, t, height, width, center)

    @property
    def P(self) -> jax.Array:
        """The reference projection matrix."""
        return projection_matrix(self.K, self.R0, self.t0)

    def with_extrinsics(self, R0, t0) -> Camera:
        return dataclasses.replace(self, R0=jnp.asarray(R0, self.R0.dtype), t0=jnp.asarray(t0, self.t0.dtype))


def check_intrinsics(K, height: int, width: int) -> None:
    """Raises GeometryError when K cannot belong to a ``height x width`` image: its principal point
    lies outside the image (the usual symptom of intrinsics written for another detector size)."""
    K = np.asarray(K, np.float64)
    cx, cy = K[0, 2] / K[2, 2], K[1, 2] / K[2, 2]
    if not (-0.5 <= cx <= width - 0.5 and -0.5 <= cy <= height - 0.5):
        raise GeometryError(
            f"intrinsics do not match the image size: principal point (x={cx:.1f}, y={cy:.1f}) lies "
            f"outside the {height}x{width} image. Were K/P made for another detector size? Rescale "
            "them with jaxdrr.geometry.rescale_detector or pass the matching image."
        )


def camera_from_carm(
    lao, cran, geometry: CArmGeometry | None = None, isocenter=(0.0, 0.0, 0.0), center=None
) -> Camera:
    """Reference camera of a C-arm view (:func:`jaxdrr.geometry.carm`); rotation centre defaults to
    the isocentre."""
    g = geometry or CArmGeometry()
    R, t = carm_extrinsics(lao, cran, jnp.asarray(isocenter, jnp.result_type(float)), g.sid_mm)
    return Camera.create(
        np.asarray(g.intrinsics),
        np.asarray(R),
        np.asarray(t),
        g.height,
        g.width,
        isocenter if center is None else center,
    )


def pose_extrinsics(pose: Pose, camera: Camera) -> tuple[jax.Array, jax.Array]:
    """World-to-camera (R, t) of a single posed camera: ``R = R_d R0``,
    ``t = R_d (t0 - c_cam) + c_cam + t_d`` with ``c_cam = R0 c + t0``."""
    R_d = rotation_matrix(pose)
    c_cam = camera.R0 @ camera.center + camera.t0
    R = R_d @ camera.R0
    t = R_d @ (camera.t0 - c_cam) + c_cam + jnp.asarray(pose.translation)
    return R, t


def pose_to_projection(pose: Pose, camera: Camera) -> jax.Array:
    """P [3, 4] of a single pose (differentiable; vmap for batches)."""
    R, t = pose_extrinsics(pose, camera)
    return projection_matrix(camera.K, R, t)


def pose_from_extrinsics(
    R, t, camera: Camera, parameterization: str = "so3", radius_mm: float = DEFAULT_RADIUS_MM
) -> Pose:
    """The Pose that maps ``camera``'s reference to world-to-camera (R, t) (inverse of
    :func:`pose_extrinsics`)."""
    R = jnp.asarray(R)
    t = jnp.asarray(t)
    R_d = R @ camera.R0.T
    c_cam = camera.R0 @ camera.center + camera.t0
    t_d = t - (R_d @ (camera.t0 - c_cam) + c_cam)
    return pose_from_rotation(R_d, t_d, parameterization, radius_mm)


def pose_from_projection(
    P,
    camera: Camera,
    parameterization: str = "so3",
    radius_mm: float = DEFAULT_RADIUS_MM,
    k_rtol: float = 1e-3,
) -> Pose:
    """The Pose of a concrete P relative to ``camera`` (NumPy decomposition, not traced).

    Raises:
      GeometryError: P's intrinsics differ from the camera's (relative tolerance ``k_rtol``).
    """
    P = check_projection_matrix(P)
    K, R, t = decompose_projection(P)
    K0 = np.asarray(camera.K, np.float64)
    if not np.allclose(K, K0, rtol=k_rtol, atol=k_rtol * np.abs(K0).max()):
        raise GeometryError(
            "P's intrinsics differ from the registration camera's:\n"
            f"K(P) = {np.round(K, 4).tolist()}\nK    = {np.round(K0, 4).tolist()}"
        )
    return pose_from_extrinsics(R, t, camera, parameterization, radius_mm)


def carm_parameters(R, t, center=None, sid_mm: float | None = None) -> dict[str, Any]:
    """C-arm description of world-to-camera extrinsics (concrete; see the module docstring).

    Args:
      R, t: world-to-camera rotation [3, 3] and translation [3] (e.g. from :func:`pose_extrinsics`
        or :func:`jaxdrr.geometry.decompose_projection`).
      center: a world point whose depth defines the isocentre when ``sid_mm`` is None
        (default the world origin).
      sid_mm: source-to-isocentre distance; default the depth of ``center``.

    Returns:
      dict with ``lao``, ``cran``, ``roll`` (degrees), ``isocenter`` [3], ``sid_mm``, ``source`` [3].
    """
    R = np.asarray(R, np.float64)
    t = np.asarray(t, np.float64)
    A = np.asarray(AP_CAMERA_AXES)
    M = R.T @ A.T  # = Rz(lao) Rx(cran) Ry(roll)
    cran = np.arcsin(np.clip(M[2, 1], -1.0, 1.0))
    roll = np.arctan2(-M[2, 0], M[2, 2])
    lao = np.arctan2(-M[0, 1], M[1, 1])
    source = -R.T @ t
    view = R[2]
    if sid_mm is None:
        c = np.zeros(3) if center is None else np.asarray(center, np.float64)
        sid_mm = float(view @ (c - source))
    isocenter = source + sid_mm * view
    return {
        "lao": float(np.rad2deg(lao)),
        "cran": float(np.rad2deg(cran)),
        "roll": float(np.rad2deg(roll)),
        "isocenter": isocenter.tolist(),
        "sid_mm": float(sid_mm),
        "source": source.tolist(),
    }


def carm_rotation_with_roll(lao_deg, cran_deg, roll_deg) -> jax.Array:
    """``Rz(lao) Rx(cran) Ry(roll)`` (degrees): the inverse of :func:`carm_parameters`' angles."""
    return (
        rotation_z(jnp.deg2rad(lao_deg))
        @ rotation_x(jnp.deg2rad(cran_deg))
        @ rotation_y(jnp.deg2rad(roll_deg))
    )


def random_pose(
    key,
    max_rotation_deg: float,
    max_translation_mm: float,
    parameterization: str = "so3",
    radius_mm: float = DEFAULT_RADIUS_MM,
    batch_shape: tuple[int, ...] = (),
) -> Pose:
    """Random perturbations: rotation about a uniformly random axis by an angle uniform in
    [0, max_rotation_deg], translation in a uniformly random direction with length uniform in
    [0, max_translation_mm] (camera frame)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    dtype = jnp.result_type(float)
    axis = jax.random.normal(k1, batch_shape + (3,), dtype)
    axis = axis / jnp.linalg.norm(axis, axis=-1, keepdims=True)
    angle = jnp.deg2rad(max_rotation_deg) * jax.random.uniform(k2, batch_shape + (1,), dtype)
    direction = jax.random.normal(k3, batch_shape + (3,), dtype)
    direction = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
    length = max_translation_mm * jax.random.uniform(k4, batch_shape + (1,), dtype)
    so3 = Pose(radius_mm * axis * angle, direction * length, "so3", float(radius_mm))
    if parameterization == "so3":
        return so3
    fn = lambda p: convert(p, parameterization)  # noqa: E731
    for _ in batch_shape:
        fn = jax.vmap(fn)
    return fn(so3)
