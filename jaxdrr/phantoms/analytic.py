"""Analytic phantoms: a pelvis-like CT made of primitive shapes, and exact line integrals through it.

A phantom is an ordered list of :class:`Shape` records (ellipsoids and finite elliptic cylinders,
each with a centre, semi-axes and rotation in world mm, a Hounsfield value and a paint mode). The
HU field it defines is **painted** in list order:

* start from ``background`` everywhere (air, -1000 HU);
* for each shape, at every point inside the shape's *closed* support (boundary included):
  ``mode="replace"`` sets the field to ``shape.value``; ``mode="add"`` adds ``shape.value``;
* finally clip to ``clip`` (default [-1024, 3071], the 12-bit CT range), point by point.

So later shapes replace earlier ones inside their support, and the field is piecewise constant along
any line. That makes two things exact and cheap:

* :func:`phantom_line_integral` integrates any pointwise function of the painted HU (e.g. HU + 1000,
  or an HU -> density map) along rays exactly, by sorting all entry/exit distances along the ray
  and evaluating the painted value at each segment midpoint;
* :func:`voxelize` renders the field on a voxel grid, each voxel the mean of ``supersample^3``
  regularly placed sub-voxel samples (anti-aliased edges). Only voxels that a shape boundary may
  cross are supersampled; the others are provably uniform and take their centre value.

A voxelised phantom is *not* the analytic one: partial-volume voxels on edges differ, and a
projector's integral of the voxel grid differs from the analytic integral by this discretisation
(supersampling makes the voxel values the mean over the voxel, which reduces, but does not remove,
the difference). Compare with a tolerance that scales with the voxel size.

Geometry conventions: world RAS+ millimetres (+x patient Right, +y Anterior, +z Superior); a shape's
``rotation`` R has the shape's local axes as columns, so local coordinates are
``R^T (x - center)``. Grids made here are centred at the world origin with a diagonal affine
(index axis I along +x, J along +y, K along +z), voxel centres at ``(i - (n - 1) / 2) * spacing``.
Ray helpers take ``origin`` [..., 3] and ``direction`` [..., 3] (any non-zero length: it is
normalised), and distances ``t`` are millimetres along the unit direction; chord lengths are for the
whole line unless ``t_min``/``t_max`` say otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from jaxdrr.phantoms.grid import centered_affine, centered_axes
from jaxdrr.volume import Volume

__all__ = [
    "Shape",
    "ellipsoid",
    "cylinder",
    "rotation_matrix",
    "rotation_from_axis",
    "pelvis_shapes",
    "analytic_phantom",
    "voxelize",
    "paint_points",
    "shape_ray_interval",
    "ellipsoid_ray_interval",
    "cylinder_ray_interval",
    "box_ray_interval",
    "ellipsoid_chord_length",
    "cylinder_chord_length",
    "box_chord_length",
    "phantom_line_integral",
    "uniform_box",
    "uniform_box_line_integral",
    "sphere_volume",
    "sphere_line_integral",
    "ellipsoid_volume",
    "ellipsoid_line_integral",
    "HU_AIR",
    "HU_CLIP",
]

SHAPE_KINDS = ("ellipsoid", "cylinder")
PAINT_MODES = ("replace", "add")
HU_AIR = -1000.0
HU_CLIP = (-1024.0, 3071.0)


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Shape:
    """One primitive of an analytic phantom.

    Attributes:
      kind: ``"ellipsoid"`` (``|u| <= 1``) or ``"cylinder"`` (finite elliptic cylinder along the
        local z axis: ``ux^2 + uy^2 <= 1`` and ``|uz| <= 1``), where
        ``u = (R^T (x - center)) / semi_axes`` are the scaled local coordinates.
      center: [3] world mm.
      semi_axes: [3] mm along the local axes; for a cylinder (radius_x, radius_y, half_length).
      rotation: [3, 3] rotation whose columns are the local axes in world coordinates.
      value: HU value set (``mode="replace"``) or added (``mode="add"``) inside the shape.
      mode: ``"replace"`` or ``"add"``.
      name: a label for humans.
    """

    kind: str
    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray
    value: float
    mode: str = "replace"
    name: str = ""

    def __post_init__(self):
        if self.kind not in SHAPE_KINDS:
            raise ValueError(f"Shape kind must be one of {SHAPE_KINDS}, got {self.kind!r}")
        if self.mode not in PAINT_MODES:
            raise ValueError(f"Shape mode must be one of {PAINT_MODES}, got {self.mode!r}")
        center = np.asarray(self.center, dtype=np.float64).reshape(3)
        semi_axes = np.asarray(self.semi_axes, dtype=np.float64).reshape(3)
        rotation = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        if not np.all(semi_axes > 0):
            raise ValueError(f"Shape {self.name!r}: semi-axes must be positive, got {semi_axes}")
        if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-6):
            raise ValueError(f"Shape {self.name!r}: rotation is not orthonormal")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "semi_axes", semi_axes)
        object.__setattr__(self, "rotation", rotation)
        object.__setattr__(self, "value", float(self.value))

    def scaled_local(self, points) -> np.ndarray:
        """Scaled local coordinates ``u`` [..., 3] of world points [..., 3]."""
        return ((np.asarray(points, dtype=np.float64) - self.center) @ self.rotation) / self.semi_axes

    def contains(self, points) -> np.ndarray:
        """Whether world points [..., 3] lie in the closed shape; bool [...]."""
        u = self.scaled_local(points)
        if self.kind == "ellipsoid":
            return np.sum(u * u, axis=-1) <= 1.0
        return (u[..., 0] ** 2 + u[..., 1] ** 2 <= 1.0) & (np.abs(u[..., 2]) <= 1.0)

    def half_extent(self) -> np.ndarray:
        """Half-size [3] of the world axis-aligned box that tightly encloses the shape."""
        scaled_axes = self.rotation * self.semi_axes  # column m = local axis m times its semi-axis
        if self.kind == "ellipsoid":
            return np.sqrt(np.sum(scaled_axes**2, axis=1))
        return np.sqrt(scaled_axes[:, 0] ** 2 + scaled_axes[:, 1] ** 2) + np.abs(scaled_axes[:, 2])

    def ray_interval(self, origin, direction):
        """See :func:`shape_ray_interval`."""
        return shape_ray_interval(self, origin, direction)


def ellipsoid(center, semi_axes, value: float, rotation=None, mode: str = "replace", name: str = "") -> Shape:
    """An ellipsoid Shape (``rotation`` defaults to the identity)."""
    return Shape(
        "ellipsoid", center, semi_axes, np.eye(3) if rotation is None else rotation, value, mode, name
    )


def cylinder(
    center,
    radii,
    half_length: float,
    value: float,
    rotation=None,
    axis=None,
    mode: str = "replace",
    name: str = "",
) -> Shape:
    """A finite elliptic cylinder Shape.

    Args:
      center: [3] world mm (middle of the axis).
      radii: (radius along local x, radius along local y) mm.
      half_length: half the length along the local z (cylinder) axis, mm.
      value: HU.
      rotation: local axes as columns; or give ``axis`` (world direction of the cylinder axis).
      axis: alternative to ``rotation``; the other local axes are then chosen arbitrarily (fine for
        circular cross-sections).
      mode, name: see :class:`Shape`.
    """
    if rotation is None:
        rotation = np.eye(3) if axis is None else rotation_from_axis(axis)
    return Shape("cylinder", center, (radii[0], radii[1], half_length), rotation, value, mode, name)


def rotation_matrix(axis, angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` about ``axis`` (Rodrigues); [3, 3]."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    angle = np.deg2rad(angle_deg)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def rotation_from_axis(axis, local_axis: int = 2) -> np.ndarray:
    """A rotation whose column ``local_axis`` is the unit vector along ``axis``; [3, 3]."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    helper = np.eye(3)[int(np.argmin(np.abs(a)))]
    b = np.cross(a, helper)
    b /= np.linalg.norm(b)
    c = np.cross(a, b)
    # (a, b, c) is right-handed; rotate the columns so that a lands in column local_axis.
    columns = [None, None, None]
    columns[local_axis] = a
    columns[(local_axis + 1) % 3] = b
    columns[(local_axis + 2) % 3] = c
    return np.stack(columns, axis=1)


# --------------------------------------------------------------------------------------------------
# Ray intersections (exact)
# --------------------------------------------------------------------------------------------------


def _unit_rays(origin, direction):
    origin = np.asarray(origin, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    norm = np.linalg.norm(direction, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("ray direction has zero length")
    origin, direction = np.broadcast_arrays(origin, direction / norm)
    return origin, direction


def ellipsoid_ray_interval(center, semi_axes, rotation, origin, direction):
    """Where rays meet a solid ellipsoid.

    Args:
      center: [3] mm; semi_axes: [3] mm; rotation: [3, 3] (local axes as columns, None = identity).
      origin: [..., 3] mm; direction: [..., 3] (normalised internally).

    Returns:
      ``(t_enter, t_exit, hit)``: distances (mm along the unit direction, may be negative) of the
      entry and exit points, and whether the line meets the ellipsoid. A tangent line hits with
      ``t_enter == t_exit``. For misses ``t_enter = t_exit = nan``.
    """
    origin, direction = _unit_rays(origin, direction)
    rotation = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    semi_axes = np.asarray(semi_axes, dtype=np.float64)
    p = ((origin - np.asarray(center, dtype=np.float64)) @ rotation) / semi_axes
    q = (direction @ rotation) / semi_axes
    a = np.sum(q * q, axis=-1)
    b = np.sum(p * q, axis=-1)
    c = np.sum(p * p, axis=-1) - 1.0
    disc = b * b - a * c
    hit = disc >= 0
    root = np.sqrt(np.where(hit, disc, 0.0))
    t_enter = np.where(hit, (-b - root) / a, np.nan)
    t_exit = np.where(hit, (-b + root) / a, np.nan)
    return t_enter, t_exit, hit


def cylinder_ray_interval(center, semi_axes, rotation, origin, direction):
    """Where rays meet a solid finite elliptic cylinder.

    Args:
      center: [3] mm; semi_axes: (radius_x, radius_y, half_length) mm; rotation: [3, 3] local axes
        as columns (the cylinder axis is local z; None = identity).
      origin: [..., 3] mm; direction: [..., 3] (normalised internally).

    Returns:
      ``(t_enter, t_exit, hit)`` as :func:`ellipsoid_ray_interval`. Rays parallel to the axis or to
      the end caps are handled exactly (no division by zero).
    """
    origin, direction = _unit_rays(origin, direction)
    rotation = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    semi_axes = np.asarray(semi_axes, dtype=np.float64)
    p = ((origin - np.asarray(center, dtype=np.float64)) @ rotation) / semi_axes
    q = (direction @ rotation) / semi_axes
    scale = np.sum(q * q, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # Lateral surface: |p_xy + t q_xy| <= 1.
        a = q[..., 0] ** 2 + q[..., 1] ** 2
        b = p[..., 0] * q[..., 0] + p[..., 1] * q[..., 1]
        c = p[..., 0] ** 2 + p[..., 1] ** 2 - 1.0
        parallel_to_axis = a <= 1e-24 * scale
        disc = b * b - a * c
        hit_side = np.where(parallel_to_axis, c <= 0, disc >= 0)
        root = np.sqrt(np.maximum(disc, 0.0))
        side_enter = np.where(parallel_to_axis, -np.inf, (-b - root) / a)
        side_exit = np.where(parallel_to_axis, np.inf, (-b + root) / a)
        # End caps: |p_z + t q_z| <= 1.
        parallel_to_caps = np.abs(q[..., 2]) <= 1e-12 * np.sqrt(scale)
        hit_slab = np.where(parallel_to_caps, np.abs(p[..., 2]) <= 1.0, True)
        z_a = (-1.0 - p[..., 2]) / q[..., 2]
        z_b = (1.0 - p[..., 2]) / q[..., 2]
        slab_enter = np.where(parallel_to_caps, -np.inf, np.minimum(z_a, z_b))
        slab_exit = np.where(parallel_to_caps, np.inf, np.maximum(z_a, z_b))
    t_enter = np.maximum(side_enter, slab_enter)
    t_exit = np.minimum(side_exit, slab_exit)
    hit = hit_side & hit_slab & (t_exit >= t_enter)
    return np.where(hit, t_enter, np.nan), np.where(hit, t_exit, np.nan), hit


def box_ray_interval(lo, hi, origin, direction):
    """Where rays meet the axis-aligned box ``[lo, hi]`` (slab method).

    Args:
      lo, hi: [3] world mm corners.
      origin: [..., 3]; direction: [..., 3] (normalised internally).

    Returns:
      ``(t_enter, t_exit, hit)`` as :func:`ellipsoid_ray_interval`.
    """
    origin, direction = _unit_rays(origin, direction)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        parallel = direction == 0
        t_a = (lo - origin) / direction
        t_b = (hi - origin) / direction
        inside_slab = (origin >= lo) & (origin <= hi)
        enter = np.where(parallel, np.where(inside_slab, -np.inf, np.inf), np.minimum(t_a, t_b))
        exit_ = np.where(parallel, np.where(inside_slab, np.inf, -np.inf), np.maximum(t_a, t_b))
    t_enter = enter.max(axis=-1)
    t_exit = exit_.min(axis=-1)
    hit = t_exit >= t_enter
    return np.where(hit, t_enter, np.nan), np.where(hit, t_exit, np.nan), hit


def shape_ray_interval(shape: Shape, origin, direction):
    """``(t_enter, t_exit, hit)`` of rays with one :class:`Shape` (see the kind-specific functions)."""
    fn = ellipsoid_ray_interval if shape.kind == "ellipsoid" else cylinder_ray_interval
    return fn(shape.center, shape.semi_axes, shape.rotation, origin, direction)


def ellipsoid_chord_length(center, semi_axes, rotation, origin, direction) -> np.ndarray:
    """Length (mm) of the intersection of lines with a solid ellipsoid; 0 for misses and tangents.

    Args:
      center: [3] mm; semi_axes: [3] mm; rotation: [3, 3] (local axes as columns) or None.
      origin: [..., 3] mm, a point on each line; direction: [..., 3] (any length).

    Returns:
      [...] chord lengths in mm.
    """
    t_enter, t_exit, hit = ellipsoid_ray_interval(center, semi_axes, rotation, origin, direction)
    return np.where(hit, t_exit - t_enter, 0.0)


def cylinder_chord_length(center, semi_axes, rotation, origin, direction) -> np.ndarray:
    """Length (mm) of the intersection of lines with a finite elliptic cylinder; 0 for misses.

    Args:
      center: [3] mm; semi_axes: (radius_x, radius_y, half_length) mm; rotation: [3, 3] with the
        cylinder axis as column 2, or None.
      origin: [..., 3] mm; direction: [..., 3] (any length).

    Returns:
      [...] chord lengths in mm.
    """
    t_enter, t_exit, hit = cylinder_ray_interval(center, semi_axes, rotation, origin, direction)
    return np.where(hit, t_exit - t_enter, 0.0)


def box_chord_length(lo, hi, origin, direction) -> np.ndarray:
    """Length (mm) of the intersection of lines with the box ``[lo, hi]``; 0 for misses."""
    t_enter, t_exit, hit = box_ray_interval(lo, hi, origin, direction)
    return np.where(hit, t_exit - t_enter, 0.0)


# --------------------------------------------------------------------------------------------------
# Painting and exact line integrals
# --------------------------------------------------------------------------------------------------


def _paint(field: np.ndarray, shape: Shape, inside: np.ndarray) -> np.ndarray:
    if shape.mode == "replace":
        return np.where(inside, shape.value, field)
    return field + np.where(inside, shape.value, 0.0)


def paint_points(
    shapes: Sequence[Shape], points, background: float = HU_AIR, clip: tuple[float, float] | None = HU_CLIP
) -> np.ndarray:
    """The painted HU field at world points (the phantom's definition, see the module docstring).

    Args:
      shapes: ordered shapes.
      points: [..., 3] world mm.
      background: value outside all shapes.
      clip: (low, high) applied after painting, or None.

    Returns:
      [...] float64 values.
    """
    points = np.asarray(points, dtype=np.float64)
    field = np.full(points.shape[:-1], float(background))
    for shape in shapes:
        field = _paint(field, shape, shape.contains(points))
    return field if clip is None else np.clip(field, *clip)


def _identity(hu):
    return hu


def _hu_plus_1000(hu):
    return hu + 1000.0


def phantom_line_integral(
    shapes: Sequence[Shape],
    origin,
    direction,
    value_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    background: float = HU_AIR,
    clip: tuple[float, float] | None = HU_CLIP,
    t_min: float = -np.inf,
    t_max: float = np.inf,
    box: tuple | None = None,
) -> np.ndarray:
    """Exact integral of ``value_fn(painted HU)`` along rays through a shape list.

    Because painting makes the field piecewise constant along a line, the integral is computed
    exactly: all entry/exit distances of all shapes are sorted, and each segment contributes its
    length times ``value_fn`` of the painted value at its midpoint (order, replace/add and clip
    exactly as in :func:`paint_points`). ``value_fn`` may be any pointwise map (HU + 1000, an
    HU -> density curve, an indicator ...).

    Args:
      shapes: ordered shapes (e.g. :func:`pelvis_shapes`).
      origin: [..., 3] mm; direction: [..., 3] (normalised: integrals are per mm of path).
      value_fn: vectorised function of the painted HU; default ``hu + 1000`` (zero in air).
      background: the value outside all shapes.
      clip: (low, high) clip of the painted HU, or None.
      t_min, t_max: integrate only for ``t_min <= t <= t_max`` (mm along the ray, e.g. ``t_min=0``
        from a source at ``origin``).
      box: optional (lo, hi) world box (e.g. ``volume.world_bounds()``): integrate only inside it,
        as a projector of a voxel volume does.

    Returns:
      [...] integrals in (value units) x mm.

    Raises:
      ValueError: the integration range is unbounded but ``value_fn(background) != 0``.
    """
    value_fn = _hu_plus_1000 if value_fn is None else value_fn
    origin, direction = _unit_rays(origin, direction)
    batch_shape = origin.shape[:-1]
    origin = origin.reshape(-1, 3)
    direction = direction.reshape(-1, 3)
    n_rays = origin.shape[0]

    lo = np.full(n_rays, float(t_min))
    hi = np.full(n_rays, float(t_max))
    if box is not None:
        box_enter, box_exit, box_hit = box_ray_interval(box[0], box[1], origin, direction)
        lo = np.where(box_hit, np.maximum(lo, box_enter), 0.0)
        hi = np.where(box_hit, np.minimum(hi, box_exit), 0.0)
    background_value = float(
        np.asarray(
            value_fn(np.asarray(background if clip is None else np.clip(background, *clip), dtype=np.float64))
        )
    )
    if background_value != 0.0 and not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(
            f"value_fn(background) = {background_value} != 0 over an unbounded ray: give t_min/t_max "
            "or box so the integral is finite"
        )

    if shapes:
        intervals = [shape_ray_interval(s, origin, direction) for s in shapes]
        enter = np.stack([e for e, _, _ in intervals], axis=1)  # [N, S]
        exit_ = np.stack([x for _, x, _ in intervals], axis=1)
        hit = np.stack([h for _, _, h in intervals], axis=1)
    else:
        enter = exit_ = np.zeros((n_rays, 0))
        hit = np.zeros((n_rays, 0), dtype=bool)
    # Unbounded ranges only matter where value_fn != 0, i.e. inside shapes: bound them there.
    if shapes:
        any_hit = hit.any(axis=1)
        first = np.where(hit, enter, np.inf).min(axis=1)
        last = np.where(hit, exit_, -np.inf).max(axis=1)
        lo = np.where(np.isfinite(lo), lo, np.where(any_hit, first, 0.0))
        hi = np.where(np.isfinite(hi), hi, np.where(any_hit, last, 0.0))
    else:
        lo = np.where(np.isfinite(lo), lo, 0.0)
        hi = np.where(np.isfinite(hi), hi, 0.0)
    hi = np.maximum(hi, lo)

    breaks = np.concatenate(
        [np.where(hit, enter, lo[:, None]), np.where(hit, exit_, lo[:, None]), lo[:, None], hi[:, None]],
        axis=1,
    )
    breaks = np.sort(np.clip(breaks, lo[:, None], hi[:, None]), axis=1)
    lengths = np.diff(breaks, axis=1)  # [N, B - 1]
    mids = 0.5 * (breaks[:, 1:] + breaks[:, :-1])

    field = np.full(mids.shape, float(background))
    for s_index, shape in enumerate(shapes):
        inside = hit[:, s_index, None] & (mids >= enter[:, s_index, None]) & (mids <= exit_[:, s_index, None])
        field = _paint(field, shape, inside)
    if clip is not None:
        field = np.clip(field, *clip)
    values = np.asarray(value_fn(field), dtype=np.float64)
    integral = np.sum(np.where(lengths > 0, values * lengths, 0.0), axis=1)
    return integral.reshape(batch_shape)


# --------------------------------------------------------------------------------------------------
# Voxelisation
# --------------------------------------------------------------------------------------------------


def _scaled_local_broadcast(shape: Shape, xs, ys, zs):
    """Scaled local coordinates on the grid xs x ys x zs as broadcastable arrays (cheap when aligned).

    float64 like :meth:`Shape.contains`, so centre samples agree with :func:`paint_points`.
    """
    transform = (shape.rotation / shape.semi_axes).T  # row m: local axis m / semi-axis m
    deltas = [
        (xs - shape.center[0]).astype(np.float64)[:, None, None],
        (ys - shape.center[1]).astype(np.float64)[None, :, None],
        (zs - shape.center[2]).astype(np.float64)[None, None, :],
    ]
    scale = np.abs(transform).max()
    coords = []
    for m in range(3):
        total = None
        for n in range(3):
            coefficient = transform[m, n]
            if abs(coefficient) <= 1e-12 * scale:  # skip zero terms so aligned shapes stay separable
                continue
            term = coefficient * deltas[n]
            total = term if total is None else total + term
        coords.append(total)
    return coords


def _classify(shape: Shape, u, half_diagonal: float):
    """Inside-at-centre and may-cross-boundary masks for voxels with centre coordinates ``u``."""
    if shape.kind == "ellipsoid":
        rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
        margin = half_diagonal / shape.semi_axes.min()
        inside = rho <= 1.0
        boundary = np.abs(rho - 1.0) <= margin
        return inside, boundary
    radial = np.sqrt(u[0] ** 2 + u[1] ** 2)
    axial = np.abs(u[2])
    radial_margin = half_diagonal / shape.semi_axes[:2].min()
    axial_margin = half_diagonal / shape.semi_axes[2]
    inside = (radial <= 1.0) & (axial <= 1.0)
    surely_inside = (radial <= 1.0 - radial_margin) & (axial <= 1.0 - axial_margin)
    surely_outside = (radial > 1.0 + radial_margin) | (axial > 1.0 + axial_margin)
    return inside, ~(surely_inside | surely_outside)


def voxelize(
    shapes: Sequence[Shape],
    shape: Sequence[int],
    spacing: Sequence[float],
    *,
    background: float = HU_AIR,
    supersample: int = 2,
    clip: tuple[float, float] | None = HU_CLIP,
    chunk_voxels: int = 131072,
) -> np.ndarray:
    """Renders painted shapes on a grid centred at the origin (see :func:`centered_affine`).

    Each voxel value is the mean of the painted field at ``supersample^3`` sub-voxel points at
    offsets ``((m + 0.5) / supersample - 0.5) * spacing`` per axis. Voxels that no shape boundary
    can cross (tested with a margin of half the voxel diagonal in each shape's scaled frame) are
    uniform, so their centre value is that mean exactly; only the others are supersampled.

    Args:
      shapes: ordered shapes.
      shape: grid shape (I, J, K).
      spacing: voxel spacing (mm) along I, J, K.
      background: value outside all shapes.
      supersample: samples per axis per voxel (1 = point sampling at voxel centres).
      clip: (low, high) clip of the painted value (applied per sample, before averaging), or None.
      chunk_voxels: boundary voxels processed at once (memory bound).

    Returns:
      float32 array of ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    supersample = int(supersample)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"grid shape must be 3 positive ints, got {shape}")
    if np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    axes = centered_axes(shape, spacing)
    field = np.full(shape, float(background), dtype=np.float32)
    needs_supersampling = np.zeros(shape, dtype=bool)
    half_diagonal = 0.5 * float(np.linalg.norm(spacing)) * 1.001  # slack for rounding
    boxes = []

    for s in shapes:
        extent = s.half_extent()
        index_ranges = []
        for axis in range(3):
            lo = (s.center[axis] - extent[axis] - axes[axis][0]) / spacing[axis] - 1
            hi = (s.center[axis] + extent[axis] - axes[axis][0]) / spacing[axis] + 1
            start, stop = max(int(np.floor(lo)), 0), min(int(np.ceil(hi)) + 1, shape[axis])
            index_ranges.append((start, stop))
        boxes.append(index_ranges)
        if any(start >= stop for start, stop in index_ranges):
            continue  # entirely outside the grid
        region = tuple(slice(start, stop) for start, stop in index_ranges)
        u = _scaled_local_broadcast(s, *(axes[a][region[a]] for a in range(3)))
        inside, boundary = _classify(s, u, half_diagonal)
        inside = np.broadcast_to(inside, field[region].shape)
        field[region] = _paint(field[region], s, inside)
        if supersample > 1:
            needs_supersampling[region] |= np.broadcast_to(boundary, field[region].shape)

    if clip is not None:
        np.clip(field, *clip, out=field)
    if supersample == 1:
        return field

    offsets_1d = (np.arange(supersample) + 0.5) / supersample - 0.5
    offsets = (
        np.stack(np.meshgrid(offsets_1d, offsets_1d, offsets_1d, indexing="ij"), axis=-1).reshape(-1, 3)
        * spacing
    )  # [s^3, 3] mm
    boundary_index = np.nonzero(needs_supersampling)
    n_boundary = boundary_index[0].size
    for begin in range(0, n_boundary, chunk_voxels):
        idx = tuple(a[begin : begin + chunk_voxels] for a in boundary_index)
        centres = np.stack([axes[a][idx[a]] for a in range(3)], axis=-1)  # [V, 3]
        samples = np.full((centres.shape[0], offsets.shape[0]), float(background))
        for s, index_ranges in zip(shapes, boxes):
            near = np.ones(centres.shape[0], dtype=bool)
            for axis, (start, stop) in enumerate(index_ranges):
                near &= (idx[axis] >= start) & (idx[axis] < stop)
            if not near.any():
                continue
            points = centres[near][:, None, :] + offsets[None, :, :]
            samples[near] = _paint(samples[near], s, s.contains(points))
        if clip is not None:
            np.clip(samples, *clip, out=samples)
        field[idx] = samples.mean(axis=1)
    return field


# --------------------------------------------------------------------------------------------------
# The pelvis phantom
# --------------------------------------------------------------------------------------------------


def _shelled(
    kind: str,
    center,
    semi_axes,
    rotation,
    cortical_hu: float,
    interior_hu: float,
    thickness: float,
    name: str,
) -> list[Shape]:
    """A bone: a cortical solid followed by a smaller interior that replaces it (leaving a shell)."""
    semi_axes = np.asarray(semi_axes, dtype=np.float64)
    return [
        Shape(kind, center, semi_axes, rotation, cortical_hu, "replace", f"{name} cortex"),
        Shape(kind, center, semi_axes - thickness, rotation, interior_hu, "replace", f"{name} interior"),
    ]


def _mirror(center, sign: float) -> np.ndarray:
    c = np.asarray(center, dtype=np.float64).copy()
    c[0] *= sign
    return c


def _mirror_rotation(rotation: np.ndarray, sign: float) -> np.ndarray:
    """The rotation of the mirror image (x -> -x) of a shape, kept a proper rotation."""
    if sign > 0:
        return rotation
    flip = np.diag([-1.0, 1.0, 1.0])
    mirrored = flip @ rotation
    # Flipping a local axis keeps the (symmetric) shape identical and restores det = +1.
    return mirrored @ flip


def pelvis_shapes(screw: bool = True, bowel_gas: bool = True) -> list[Shape]:
    """The ordered shape list of the pelvis-like phantom (world RAS+ mm, centred at the origin).

    Fits in a 380 x 300 x 240 mm field of view. Contents, in painting order: body (subcutaneous
    fat -100 HU around soft tissue 40 HU), bladder (10 HU), rectum, bowel gas (-1000 HU), sacrum,
    L5 vertebral body with intervertebral discs, a lower-density ('add') core, posterior arch and
    spinal canal, and per side: ilium (with a denser supra-acetabular 'add' region), ischium, pubic
    rami, acetabulum, femoral shaft, greater trochanter, femoral neck and head. Bones are cortical
    shells (1000-1600 HU) around trabecular interiors (200-320 HU). Without ``bowel_gas`` and
    ``screw`` the list is mirror symmetric in x.

    Args:
      screw: add a titanium iliosacral screw on the patient's right (+x), 3071 HU (the clip limit:
        real titanium exceeds the 12-bit CT range).
      bowel_gas: add the (asymmetric) bowel gas pockets.

    Returns:
      The list of :class:`Shape`.
    """
    eye = np.eye(3)
    shapes: list[Shape] = [
        cylinder((0, 0, 0), (170, 125), 112, -100, name="subcutaneous fat"),
        cylinder((0, 4, 0), (155, 108), 112, 40, name="soft tissue"),
        ellipsoid((0, 62, -45), (42, 32, 30), 10, name="bladder"),
        cylinder((0, -42, -45), (13, 11), 38, 30, name="rectum"),
        ellipsoid((0, -42, -35), (7, 6, 12), HU_AIR, name="rectal gas"),
    ]
    if bowel_gas:
        shapes += [
            ellipsoid((45, 55, 70), (26, 14, 12), HU_AIR, rotation_matrix((0, 0, 1), 20), name="bowel gas 1"),
            ellipsoid((-52, 40, 88), (18, 12, 10), HU_AIR, name="bowel gas 2"),
            ellipsoid(
                (12, 38, 100), (20, 10, 8), HU_AIR, rotation_matrix((0, 0, 1), -35), name="bowel gas 3"
            ),
            ellipsoid((-30, 72, 40), (12, 8, 8), HU_AIR, name="bowel gas 4"),
        ]

    # Sacrum: tilted so that its top (promontory) is anterior: local z = (0, sin 30, cos 30).
    sacral_tilt = rotation_matrix((1, 0, 0), -30)
    shapes += _shelled("ellipsoid", (0, -62, 25), (48, 20, 42), sacral_tilt, 1000, 210, 2.0, "sacrum")
    shapes += [cylinder((0, -72, 30), (9, 6), 32, 15, rotation=sacral_tilt, name="sacral canal")]

    # L5 vertebra with discs.
    shapes += [
        cylinder((0, -35, 61), (24, 18), 4.5, 90, name="L5-S1 disc"),
        cylinder((0, -35, 99), (24, 18), 4.5, 90, name="L4-L5 disc"),
    ]
    shapes += _shelled("cylinder", (0, -35, 80), (25, 19, 14.5), eye, 1100, 230, 2.0, "L5 body")
    shapes += [
        ellipsoid((0, -35, 80), (12, 9, 8), -60, mode="add", name="L5 low-density core"),
        ellipsoid((0, -70, 80), (32, 18, 12), 700, name="L5 posterior arch"),
        ellipsoid((0, -92, 78), (6, 16, 10), 800, name="L5 spinous process"),
        cylinder((0, -66, 80), (11, 9), 20, 15, name="spinal canal"),
    ]

    for sign, side in ((1.0, "right"), (-1.0, "left")):

        def place(center, rotation=eye):
            return _mirror(center, sign), _mirror_rotation(np.asarray(rotation, np.float64), sign)

        # Ilium: a plate whose anterior part flares laterally (local y rotated 30 deg about z).
        ilium_rotation = rotation_matrix((0, 0, 1), -30)
        c, r = place((92, -25, 35), ilium_rotation)
        shapes += _shelled("ellipsoid", c, (10, 55, 50), r, 1400, 290, 2.5, f"{side} ilium")
        # Denser bone above the acetabulum: inside the ilium interior (checked by the tests).
        dense_centre = np.array([92, -25, 35]) + ilium_rotation @ np.array([0, 12, -18])
        c, r = place(dense_centre, ilium_rotation)
        shapes += [Shape("ellipsoid", c, (4, 14, 12), r, 120, "add", f"{side} supra-acetabular")]

        c, r = place((75, -5, -85))
        shapes += _shelled("ellipsoid", c, (14, 22, 25), r, 1200, 260, 2.0, f"{side} ischium")

        symphysis, acetabulum = np.array([8, 72, -58]), np.array([95, 10, -45])
        c, r = place((symphysis + acetabulum) / 2, rotation_from_axis(acetabulum - symphysis, 0))
        shapes += _shelled(
            "ellipsoid",
            c,
            (np.linalg.norm(acetabulum - symphysis) / 2, 9, 10),
            r,
            1200,
            250,
            2.0,
            f"{side} superior pubic ramus",
        )
        ischium_low = np.array([72, -5, -98])
        inferior_start = np.array([8, 70, -76])
        c, r = place((inferior_start + ischium_low) / 2, rotation_from_axis(ischium_low - inferior_start, 0))
        shapes += _shelled(
            "ellipsoid",
            c,
            (np.linalg.norm(ischium_low - inferior_start) / 2, 8, 8),
            r,
            1200,
            250,
            2.0,
            f"{side} inferior pubic ramus",
        )

        c, r = place(acetabulum)
        shapes += [
            ellipsoid(c, (30, 30, 30), 1300, r, name=f"{side} acetabulum"),
            ellipsoid(c, (25.5, 25.5, 25.5), 60, r, name=f"{side} hip joint space"),
        ]

        c, r = place((128, 8, -95))
        shapes += _shelled("cylinder", c, (14, 14, 17), r, 1600, 20, 5.0, f"{side} femoral shaft")
        c, r = place((133, 2, -70))
        shapes += _shelled("ellipsoid", c, (16, 18, 18), r, 1000, 250, 2.0, f"{side} greater trochanter")
        neck_axis = np.array([1.0, 0.15, -1.0]) / np.linalg.norm([1.0, 0.15, -1.0])
        c, r = place(acetabulum + 28 * neck_axis, rotation_from_axis(neck_axis))
        shapes += _shelled("cylinder", c, (13, 13, 22), r, 1200, 280, 2.5, f"{side} femoral neck")
        c, r = place(acetabulum)
        shapes += _shelled("ellipsoid", c, (24, 24, 24), r, 1100, 320, 2.0, f"{side} femoral head")

    shapes += [cylinder((0, 74, -67), (4, 8), 10, 90, name="pubic symphysis")]

    if screw:
        # Iliosacral screw: from the outer right ilium medially into the sacral body.
        entry = np.array([100.0, -55.0, 30.0])
        screw_axis = np.array([-1.0, 0.0, 0.05]) / np.linalg.norm([-1.0, 0.0, 0.05])
        rotation = rotation_from_axis(screw_axis)
        shapes += [
            cylinder(entry + 30 * screw_axis, (3.25, 3.25), 30, HU_CLIP[1], rotation, name="screw shaft"),
            cylinder(entry - 2.5 * screw_axis, (6.5, 6.5), 2.5, HU_CLIP[1], rotation, name="screw head"),
        ]
    return shapes


# --------------------------------------------------------------------------------------------------
# Annotations of the analytic pelvis: bone labels and anatomical landmarks (exact, from the shapes)

# Label ids of :func:`pelvis_label_map` (0 = background). The first six follow SyntheX/DeepFluoro.
PELVIS_LABELS = {
    1: "left hemipelvis",
    2: "right hemipelvis",
    3: "vertebrae",
    4: "upper sacrum",
    5: "left femur",
    6: "right femur",
    7: "screw",
}
_LABEL_OF_SHAPE = (  # (name prefix, label id); 0 paints background (canals, joint spaces)
    ("sacral canal", 0),
    ("spinal canal", 0),
    ("sacrum ", 4),
    ("L5 body", 3),
    ("L5 posterior arch", 3),
    ("L5 spinous process", 3),
    ("screw ", 7),
)
_SIDE_PARTS = (
    ("ilium", "hemipelvis"),
    ("ischium", "hemipelvis"),
    ("superior pubic ramus", "hemipelvis"),
    ("inferior pubic ramus", "hemipelvis"),
    ("acetabulum", "hemipelvis"),
    ("hip joint space", None),
    ("femoral", "femur"),
    ("greater trochanter", "femur"),
)


def _shape_label(name: str) -> int | None:
    ids = {v: k for k, v in PELVIS_LABELS.items()}
    for prefix, label in _LABEL_OF_SHAPE:
        if name.startswith(prefix):
            return label
    for side in ("left", "right"):
        for part, group in _SIDE_PARTS:
            if name.startswith(f"{side} {part}"):
                return 0 if group is None else ids[f"{side} {group}"]
    return None


def pelvis_label_map(shape: Sequence[int], spacing, screw: bool = True) -> np.ndarray:
    """Bone label map (:data:`PELVIS_LABELS`) of the analytic pelvis on a grid centred at the origin.

    Voxel-centre (point) sampling of the same shapes as :func:`analytic_phantom`, painted in the same
    order: a voxel takes the label of the last bone shape containing it; canals and hip joint
    spaces are background; soft tissue, gas, discs and the lower-density 'add' regions do not
    change the label.

    Returns:
      uint8 [I, J, K].
    """
    labelled = []
    for s in pelvis_shapes(screw=screw, bowel_gas=False):
        label = _shape_label(s.name)
        if label is not None and s.mode == "replace":
            labelled.append(dataclasses.replace(s, value=float(label)))
    spacing = _grid_spacing(spacing)
    labels = voxelize(labelled, shape, spacing, background=0.0, supersample=1, clip=None)
    return np.rint(labels).astype(np.uint8)


def pelvis_landmarks(screw: bool = True) -> dict[str, np.ndarray]:
    """Anatomical landmarks of the analytic pelvis (world mm, RAS+), exact from its shapes.

    Per side (``-l``/``-r``): femoral head centre ``FH``, greater trochanter centre ``GT``, ischial
    tuberosity ``IT`` (the ischium's lowest point, 2 mm inside), anterior superior iliac spine
    ``ASIS`` (the ilium's antero-superior rim, 2 mm inside); midline: pubic symphysis ``PS``, the
    L5 vertebral body centre ``L5``, the sacral promontory ``S1``; with the screw its head ``SH``
    and tip ``ST``.
    """
    points: dict[str, np.ndarray] = {}
    ilium_rotation = rotation_matrix((0, 0, 1), -30)
    # The point of the ilium ellipsoid (10, 55, 50) along the local (0, 1, 1) diagonal, 2 mm inside.
    u = np.array([0.0, 1.0, 1.0]) / np.sqrt(2.0)
    t = 1.0 / np.sqrt(np.sum((u / np.array([10.0, 55.0, 50.0])) ** 2))
    asis_local = u * (t - 2.0)
    for sign, suffix in ((1.0, "r"), (-1.0, "l")):
        m = np.array([sign, 1.0, 1.0])
        points[f"FH-{suffix}"] = m * np.array([95.0, 10.0, -45.0])
        points[f"GT-{suffix}"] = m * np.array([133.0, 2.0, -70.0])
        points[f"IT-{suffix}"] = m * np.array([75.0, -5.0, -85.0 - 25.0 + 2.0])
        asis = np.array([92.0, -25.0, 35.0]) + ilium_rotation @ asis_local
        points[f"ASIS-{suffix}"] = m * asis
    points["PS"] = np.array([0.0, 74.0, -67.0])
    points["L5"] = np.array([0.0, -35.0, 80.0])
    sacral_tilt = rotation_matrix((1, 0, 0), -30)
    points["S1"] = np.array([0.0, -62.0, 25.0]) + sacral_tilt @ np.array([0.0, 0.0, 42.0 - 2.0])
    if screw:
        entry = np.array([100.0, -55.0, 30.0])
        axis = np.array([-1.0, 0.0, 0.05]) / np.linalg.norm([-1.0, 0.0, 0.05])
        points["SH"] = entry - 2.5 * axis
        points["ST"] = entry + 60.0 * axis
    return points


def analytic_phantom(
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    fov_mm: Sequence[float] = (380.0, 300.0, 240.0),
    screw: bool = True,
    supersample: int = 2,
    *,
    bowel_gas: bool = True,
    shapes: Sequence[Shape] | None = None,
) -> Volume:
    """The pelvis-like analytic phantom as a HU :class:`Volume` (``jaxdrr.phantom(kind="analytic")``).

    Args:
      shape: grid shape (I, J, K) along (x = Right, y = Anterior, z = Superior); default
        (128, 128, 96).
      spacing: voxel spacing in mm (scalar or 3); default ``fov_mm / shape``.
      fov_mm: field of view (mm) used when ``spacing`` is None.
      screw: include the titanium screw (see :func:`pelvis_shapes`).
      supersample: sub-samples per axis per edge voxel (anti-aliasing); 1 = point sampling.
      bowel_gas: include the asymmetric bowel gas pockets.
      shapes: voxelise this shape list instead of :func:`pelvis_shapes` (``screw``/``bowel_gas``
        are then ignored).

    Returns:
      A ``Volume`` (``kind="hu"``) centred at the world origin with a diagonal RAS+ affine; the
      analytic counterpart is ``pelvis_shapes(screw, bowel_gas)`` with :func:`phantom_line_integral`.
    """
    shape = tuple(int(n) for n in (shape if shape is not None else (128, 128, 96)))
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"phantom shape must be 3 positive ints, got {shape}")
    if spacing is None:
        spacing = np.asarray(fov_mm, dtype=np.float64) / np.asarray(shape, dtype=np.float64)
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if shapes is None:
        shapes = pelvis_shapes(screw=screw, bowel_gas=bowel_gas)
    data = voxelize(shapes, shape, spacing, background=HU_AIR, supersample=supersample)
    return Volume.create(data, centered_affine(shape, spacing), kind="hu")


# --------------------------------------------------------------------------------------------------
# Simple test volumes with exact integrals
# --------------------------------------------------------------------------------------------------


def _grid_spacing(spacing) -> np.ndarray:
    return np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()


def uniform_box(shape: Sequence[int], spacing, value: float = 1.0) -> Volume:
    """A volume with every voxel equal to ``value``, centred at the origin.

    Its exact line integral is ``value * box_chord_length(*volume.world_bounds(), o, d)``
    (:func:`uniform_box_line_integral`); a projector should match it up to float rounding.

    Args:
      shape: (I, J, K); spacing: mm (scalar or 3); value: the voxel value.

    Returns:
      A ``Volume`` (``kind="hu"``; the values are whatever you integrate).
    """
    spacing = _grid_spacing(spacing)
    data = np.full(tuple(int(n) for n in shape), float(value), dtype=np.float32)
    return Volume.create(data, centered_affine(shape, spacing), kind="hu")


def uniform_box_line_integral(volume: Volume, value: float, origin, direction) -> np.ndarray:
    """Exact integral of :func:`uniform_box` along lines: value x chord through the voxel box."""
    lo, hi = volume.world_bounds()
    return float(value) * box_chord_length(lo, hi, origin, direction)


def ellipsoid_volume(
    shape: Sequence[int],
    spacing,
    semi_axes,
    *,
    center=(0.0, 0.0, 0.0),
    rotation=None,
    value: float = 1.0,
    background: float = 0.0,
    supersample: int = 4,
) -> Volume:
    """A voxelised solid ellipsoid (mean of ``supersample^3`` samples per edge voxel).

    The exact integral of the *analytic* ellipsoid with background 0 is
    :func:`ellipsoid_line_integral` (``value * ellipsoid_chord_length``). The voxelised one differs
    by discretisation at the surface; supersampling makes edge voxels hold their covered fraction,
    which reduces the difference to roughly (voxel size)^2 / radius effects, but does not remove it.

    Args:
      shape: (I, J, K); spacing: mm; semi_axes: [3] mm; center: [3] mm; rotation: [3, 3] or None;
      value: inside; background: outside; supersample: per axis (1 = centre sampling).

    Returns:
      A ``Volume`` centred at the origin (values not clipped).
    """
    s = ellipsoid(center, semi_axes, value, rotation=rotation)
    data = voxelize(
        [s], shape, _grid_spacing(spacing), background=background, supersample=supersample, clip=None
    )
    return Volume.create(data, centered_affine(shape, _grid_spacing(spacing)), kind="hu")


def ellipsoid_line_integral(
    origin, direction, semi_axes, *, center=(0.0, 0.0, 0.0), rotation=None, value: float = 1.0
) -> np.ndarray:
    """Exact ``value x chord length`` of the analytic ellipsoid (background 0) along lines."""
    return float(value) * ellipsoid_chord_length(center, semi_axes, rotation, origin, direction)


def sphere_volume(
    shape: Sequence[int],
    spacing,
    radius: float,
    *,
    center=(0.0, 0.0, 0.0),
    value: float = 1.0,
    background: float = 0.0,
    supersample: int = 4,
) -> Volume:
    """A voxelised solid sphere; see :func:`ellipsoid_volume` for the discretisation caveat."""
    return ellipsoid_volume(
        shape,
        spacing,
        (radius, radius, radius),
        center=center,
        value=value,
        background=background,
        supersample=supersample,
    )


def sphere_line_integral(
    origin, direction, radius: float, *, center=(0.0, 0.0, 0.0), value: float = 1.0
) -> np.ndarray:
    """Exact ``value x chord length`` of the analytic sphere (background 0) along lines."""
    return ellipsoid_line_integral(origin, direction, (radius, radius, radius), center=center, value=value)
