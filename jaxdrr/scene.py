"""Scenes: a CT plus posed objects (surgical tools as meshes, further volumes), rendered spectrally.

The abstraction
---------------
A :class:`Scene` is an optional CT (:class:`jaxdrr.Volume`, world coordinates) and a tuple of
*objects*, each with its own differentiable rigid pose (:class:`jaxdrr.geometry.RigidTransform`,
object -> world):

* :class:`MeshObject`: a closed triangle mesh (:class:`jaxdrr.mesh.TriangleMesh`, mm) of one
  attenuation-table material at one density (g/cm^3), e.g. a K-wire or a screw. Its attenuation
  enters as one extra material channel: ``density x chord length`` (g/cm^2) per pixel
  (:func:`jaxdrr.ops.mesh_project.mesh_path_lengths`). A *displacing* mesh (the default, DeepDRR's
  subtractive meshes) replaces the tissue it occupies: the integral of every volume's density
  channels over the in-mesh part of each ray
  (:func:`jaxdrr.ops.mesh_project.mesh_inside_integrals`) is subtracted from that volume's line
  integrals. ``displaces=False`` lays the object on top (an object outside every volume is the same
  either way).
* :class:`VolumeObject`: a further volume (HU or densities, same material model as the CT) with a
  pose, e.g. a bone rendered from its own CT crop. Rendering it posed by ``T`` in camera ``P`` is
  rendering the unposed volume in ``P @ T`` (:func:`jaxdrr.geometry.rigid.object_projection`); its
  material line integrals add to the CT's. Displacing meshes displace volume objects too.

Every pose, density and volume is a pytree leaf: ``jit``, ``vmap`` (stack the poses of an object
and map over them with :meth:`Scene.pose_in_axes`) and ``grad`` (w.r.t. poses, densities, ``P``)
see through a scene. Names, materials and the mesh's depth bound are static.

Pipeline (:func:`make_scene_renderer`): per-material line integrals of the CT and volume objects
(:func:`jaxdrr.render.line_integrals`) minus the displaced tissue, plus one channel per distinct
object material -> :func:`jaxdrr.render.primary_moments` with the CT's and the objects' mass
attenuation concatenated -> scatter (network only) -> noise and output
(:func:`jaxdrr.render.image_from_moments`): the same spectral pipeline as a CT render, so a scene
with a CT and no objects renders exactly like :func:`jaxdrr.render.make_renderer`.

Units: mm for geometry, g/cm^3 for densities, g/cm^2 for line integrals (mm / ``MM_PER_CM``).
See docs/tools.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import JaxdrrError
from jaxdrr.geometry.projection import check_projection_matrix, is_concrete, project_points
from jaxdrr.geometry.rigid import RigidTransform, object_projection
from jaxdrr.materials import material_densities
from jaxdrr.mesh import TriangleMesh
from jaxdrr.ops.mesh_project import mesh_inside_integrals, mesh_path_lengths
from jaxdrr.physics.attenuation import available_materials, mass_attenuation
from jaxdrr.physics.compositions import UnknownMaterialError
from jaxdrr.physics.compositions import density as table_density
from jaxdrr.physics.spectra import Spectrum
from jaxdrr.render import (
    MM_PER_CM,
    RenderConfig,
    default_params,
    image_from_moments,
    line_integrals,
    primary_moments,
    scatter_images,
)
from jaxdrr.scatter import estimate as scatter_lib
from jaxdrr.volume import Volume

__all__ = [
    "MeshObject",
    "VolumeObject",
    "Scene",
    "scene_params",
    "scene_materials",
    "scene_line_integrals",
    "make_scene_renderer",
    "render_scene",
    "object_path_lengths",
    "project_landmarks",
    "with_object_materials",
    "SceneError",
]

OBJECT_MU_RHO = "object_mu_rho"


class SceneError(JaxdrrError):
    """A scene, one of its objects or the params it is rendered with are unusable."""


def _check_material(material: str) -> str:
    if not isinstance(material, str) or material not in available_materials():
        raise UnknownMaterialError(
            f"unknown object material {material!r}; valid names: {', '.join(available_materials())}"
        )
    return material


def _check_density(density, what: str):
    density = jnp.asarray(density, jnp.result_type(float)) if is_concrete(density) else density
    if jnp.ndim(density) != 0:
        raise SceneError(f"{what}: density must be a scalar (g/cm^3), got shape {jnp.shape(density)}")
    if is_concrete(density):
        value = float(density)
        if not (np.isfinite(value) and value >= 0):
            raise SceneError(f"{what}: density must be a finite number >= 0 g/cm^3, got {value:g}")
    return density


def _check_pose(pose, what: str) -> RigidTransform:
    if pose is None:
        return RigidTransform.identity()
    if not isinstance(pose, RigidTransform):
        raise SceneError(
            f"{what}: pose must be a jaxdrr.geometry.RigidTransform, got {type(pose).__name__}; "
            "build one with RigidTransform.create(rotation, translation)"
        )
    for leaf in (pose.rotation, pose.translation):
        if is_concrete(leaf) and not np.all(np.isfinite(np.asarray(leaf))):
            raise SceneError(f"{what}: pose has non-finite values")
    return pose


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MeshObject:
    """A closed mesh of one material at one density, posed in the world.

    Build with :meth:`create` or :meth:`from_instrument` (they check the input).

    Attributes:
      mesh: the triangle mesh in the object's own coordinates (mm).
      pose: object -> world :class:`RigidTransform`.
      density: mass density (g/cm^3), a scalar leaf (differentiable).
      material: attenuation-table name (static), e.g. ``"titanium"``.
      name: unique name in a scene (static).
      displaces: replace the tissue the object occupies (static; default True).
      depth_range_mm: static bound on the mesh's extent along any ray (twice its bounding radius).
      landmarks: static ``((name, (x, y, z)), ...)`` points in object coordinates (mm), e.g. a
        tool's tip; :meth:`landmark_points` gives them as a dict.
    """

    mesh: TriangleMesh
    pose: RigidTransform
    density: jax.Array
    material: str = dataclasses.field(metadata=dict(static=True), default="titanium")
    name: str = dataclasses.field(metadata=dict(static=True), default="tool")
    displaces: bool = dataclasses.field(metadata=dict(static=True), default=True)
    depth_range_mm: float = dataclasses.field(metadata=dict(static=True), default=0.0)
    landmarks: tuple = dataclasses.field(metadata=dict(static=True), default=())

    @classmethod
    def create(
        cls,
        mesh: TriangleMesh,
        material: str,
        density=None,
        pose: RigidTransform | None = None,
        name: str | None = None,
        displaces: bool = True,
        landmarks: Mapping[str, Any] | None = None,
    ) -> MeshObject:
        """A checked mesh object.

        Args:
          mesh: a concrete :class:`jaxdrr.mesh.TriangleMesh` (its bounding radius sets the static
            depth bound of the displacement integral).
          material: attenuation-table name (:func:`jaxdrr.physics.available_materials`).
          density: g/cm^3; None: the material's nominal density (:func:`jaxdrr.physics.density`).
          pose: object -> world; None: identity.
          name: unique name in a scene; None: the mesh's name, else the material.
          displaces: replace the tissue the object occupies (True) or lie on top of it (False).
          landmarks: optional ``{name: [3]}`` points in object coordinates (mm).

        Raises:
          UnknownMaterialError: the material has no attenuation table.
          SceneError: negative or non-finite density, a pose that is not a RigidTransform, a mesh
            without the TriangleMesh interface.
        """
        material = _check_material(material)
        name = name or getattr(mesh, "name", None) or material
        what = f"mesh object {name!r}"
        if not all(hasattr(mesh, a) for a in ("vertices", "faces", "triangles", "bounding_radius")):
            raise SceneError(f"{what}: expected a jaxdrr.mesh.TriangleMesh, got {type(mesh).__name__}")
        if density is None:
            density = table_density(material)
        density = _check_density(density, what)
        pose = _check_pose(pose, what)
        radius = float(mesh.bounding_radius)
        if not (np.isfinite(radius) and radius > 0):
            raise SceneError(f"{what}: the mesh has no extent (bounding radius {radius:g} mm)")
        points = ()
        if landmarks:
            points = tuple(
                (str(k), tuple(float(x) for x in np.asarray(v, np.float64).reshape(3)))
                for k, v in landmarks.items()
            )
        return cls(mesh, pose, density, material, str(name), bool(displaces), 2.0 * radius, points)

    @classmethod
    def from_instrument(
        cls,
        instrument,
        pose: RigidTransform | None = None,
        *,
        material: str | None = None,
        density=None,
        name: str | None = None,
        displaces: bool = True,
    ) -> MeshObject:
        """A mesh object of a parametric instrument (:mod:`jaxdrr.instruments`).

        Duck-typed: anything with ``.mesh``, ``.material``, ``.density`` (and optionally ``.name``,
        ``.landmarks``). ``material``/``density``/``name`` override the instrument's; a new
        material without a density takes that material's nominal density.
        """
        if not hasattr(instrument, "mesh"):
            raise SceneError(f"expected an instrument with a .mesh, got {type(instrument).__name__}")
        if density is None and material is None:
            density = getattr(instrument, "density", None)
        material = material or getattr(instrument, "material", None) or "titanium"
        return cls.create(
            instrument.mesh,
            material,
            density=density,
            pose=pose,
            name=name or getattr(instrument, "name", None),
            displaces=displaces,
            landmarks=getattr(instrument, "landmarks", None),
        )

    def replace(self, **changes) -> MeshObject:
        return dataclasses.replace(self, **changes)

    def landmark_points(self) -> dict[str, np.ndarray]:
        """The landmarks ``{name: [3]}`` in object coordinates (mm)."""
        return {k: np.asarray(v, np.float64) for k, v in self.landmarks}

    def triangles(self) -> jax.Array:
        """World positions of the triangles [F, 3, 3] (mm) at the current pose."""
        return self.mesh.triangles(self.pose)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VolumeObject:
    """A further volume (HU or densities) with its own pose, e.g. a bone from its own CT crop.

    Attributes:
      volume: the :class:`jaxdrr.Volume` in its own coordinates (its affine maps voxels there).
      pose: object -> world :class:`RigidTransform`.
      name: unique name in a scene (static).
    """

    volume: Volume
    pose: RigidTransform
    name: str = dataclasses.field(metadata=dict(static=True), default="volume")

    @classmethod
    def create(cls, volume: Volume, pose: RigidTransform | None = None, name: str = "volume") -> VolumeObject:
        """A checked volume object (``pose`` None: identity)."""
        if not isinstance(volume, Volume):
            raise SceneError(f"volume object {name!r}: expected a jaxdrr.Volume, got {type(volume).__name__}")
        return cls(volume, _check_pose(pose, f"volume object {name!r}"), str(name))

    def replace(self, **changes) -> VolumeObject:
        return dataclasses.replace(self, **changes)


SceneObject = MeshObject | VolumeObject


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Scene:
    """A CT (or none) and posed objects. Build with :meth:`create`.

    Attributes:
      ct: the CT in world coordinates, or None (a scene of objects only).
      objects: the :class:`MeshObject` and :class:`VolumeObject` s, names unique.
    """

    ct: Volume | None
    objects: tuple

    @classmethod
    def create(cls, ct: Volume | None = None, objects: Sequence[SceneObject] = ()) -> Scene:
        """A checked scene.

        Raises:
          SceneError: a CT that is not a Volume, an object of another type, duplicate names, or a
            scene with nothing in it.
        """
        if ct is not None and not isinstance(ct, Volume):
            raise SceneError(f"the scene's CT must be a jaxdrr.Volume or None, got {type(ct).__name__}")
        objects = tuple(objects)
        for obj in objects:
            if not isinstance(obj, (MeshObject, VolumeObject)):
                raise SceneError(
                    f"scene objects must be MeshObject or VolumeObject, got {type(obj).__name__}"
                )
        names = [obj.name for obj in objects]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SceneError(
                f"duplicate object name(s) {', '.join(map(repr, duplicates))}; give each object a unique name="
            )
        if ct is None and not objects:
            raise SceneError("the scene is empty: give a CT, objects or both")
        return cls(ct, objects)

    def replace(self, **changes) -> Scene:
        """The scene with fields replaced (e.g. ``ct=`` a decomposed CT); names are re-checked."""
        new = dataclasses.replace(self, **changes)
        return Scene.create(new.ct, new.objects)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(obj.name for obj in self.objects)

    @property
    def mesh_objects(self) -> tuple[MeshObject, ...]:
        return tuple(o for o in self.objects if isinstance(o, MeshObject))

    @property
    def volume_objects(self) -> tuple[VolumeObject, ...]:
        return tuple(o for o in self.objects if isinstance(o, VolumeObject))

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise SceneError(f"no object named {name!r} in the scene; objects: {list(self.names)}") from None

    def object(self, name: str) -> SceneObject:
        """The object called ``name``."""
        return self.objects[self._index(name)]

    def with_pose(self, name: str, pose: RigidTransform) -> Scene:
        """The same scene with object ``name`` at ``pose`` (pure; ``pose`` may be traced or batched)."""
        i = self._index(name)
        obj = self.objects[i].replace(pose=pose)
        return dataclasses.replace(self, objects=self.objects[:i] + (obj,) + self.objects[i + 1 :])

    def with_poses(self, poses: Mapping[str, RigidTransform]) -> Scene:
        """:meth:`with_pose` for several objects ``{name: pose}``."""
        scene = self
        for name, pose in poses.items():
            scene = scene.with_pose(name, pose)
        return scene

    replace_pose = with_pose

    def with_object(self, obj: SceneObject) -> Scene:
        """The scene with ``obj`` added, or replacing the object of the same name."""
        if obj.name in self.names:
            i = self._index(obj.name)
            return dataclasses.replace(self, objects=self.objects[:i] + (obj,) + self.objects[i + 1 :])
        return Scene.create(self.ct, self.objects + (obj,))

    def pose_in_axes(self, *names: str, axis: int = 0) -> Scene:
        """``in_axes`` for ``jax.vmap`` over the stacked poses of the named objects (all if none).

        Example: ``jax.vmap(render, in_axes=(None, scene.pose_in_axes("kwire"), None, None))``
        with ``scene.with_pose("kwire", RigidTransform.create(rotations [N, 3], translations [N, 3]))``.
        """
        for name in names:
            self._index(name)
        chosen = set(names or self.names)
        axes = jax.tree.map(lambda _: None, self)
        objects = []
        for obj, ax in zip(self.objects, axes.objects, strict=True):
            if obj.name in chosen:
                ax = ax.replace(pose=RigidTransform(axis, axis, obj.pose.pivot))
            objects.append(ax)
        return dataclasses.replace(axes, objects=tuple(objects))


# --------------------------------------------------------------------------------------------------
# Params
# --------------------------------------------------------------------------------------------------


def scene_materials(scene: Scene) -> tuple[str, ...]:
    """The distinct mesh-object materials in order of first appearance: the object channels."""
    return tuple(dict.fromkeys(obj.material for obj in scene.mesh_objects))


def scene_params(
    config: RenderConfig | None = None, scene: Scene | None = None, spectrum: Spectrum | None = None
) -> dict:
    """:func:`jaxdrr.render.default_params` plus ``"object_mu_rho"``: ``{material: [E] cm^2/g}``.

    One entry per distinct mesh-object material of ``scene``, on the params' energy grid (the same
    table and interpolation as the CT channels: :func:`jaxdrr.physics.mass_attenuation`). Params
    built for one scene serve every scene with the same object materials (or a subset).
    """
    params = default_params(config, spectrum)
    materials = scene_materials(scene) if scene is not None else ()
    return with_object_materials(params, materials)


def with_object_materials(params: dict, materials: Sequence[str]) -> dict:
    """``params`` with ``"object_mu_rho"`` entries for ``materials`` added (a new dict)."""
    for m in materials:
        _check_material(m)
    energies = np.asarray(params["energies"], np.float64)
    table = mass_attenuation(list(materials), energies) if materials else np.zeros((0, energies.size))
    dtype = params["mu_rho"].dtype
    entries = dict(params.get(OBJECT_MU_RHO, {}))
    entries.update({m: jnp.asarray(row, dtype) for m, row in zip(materials, table, strict=True)})
    return {**params, OBJECT_MU_RHO: entries}


def _object_mu_rho(params, materials: Sequence[str]) -> jax.Array:
    table = params.get(OBJECT_MU_RHO, {})
    missing = [m for m in materials if m not in table]
    if missing:
        raise SceneError(
            f"params have no attenuation for object material(s) {missing}; build them with "
            "jaxdrr.scene.scene_params(config, scene)"
        )
    return jnp.stack([jnp.asarray(table[m]) for m in materials])


# --------------------------------------------------------------------------------------------------
# Line integrals
# --------------------------------------------------------------------------------------------------


def _sources(scene: Scene):
    """(volume, pose or None) of every volume in the scene: the CT, then the volume objects."""
    out = [] if scene.ct is None else [(scene.ct, None)]
    return out + [(obj.volume, obj.pose) for obj in scene.volume_objects]


# Most samples per ray of the displaced-tissue integral (mesh_inside_integrals' max_samples). An
# object whose bounding sphere spans at most this many render steps (a screw: 41 at 0.8 mm) is
# sampled over each ray's chord of that sphere at the render's step; a longer one (a K-wire) with
# this many samples from each ray's first to its last hit, a few mm for most rays, stretched only
# on the rare long chord (a wire seen nearly end-on). Exact for tissue linear along the ray (a
# uniform CT); elsewhere the displaced tissue is a correction of a few percent of a metal tool's
# attenuation, so a stretched step there costs little.
DISPLACEMENT_SAMPLES = 48


def _displacement_step_mm(config, volume: Volume) -> float:
    """Sampling step of the in-mesh tissue integral: the render's step, or half a voxel."""
    if isinstance(config.step_mm, (int, float)):
        return float(config.step_mm)
    return 0.5 * float(np.min(volume.spacing))


def _inverse_apply(pose: RigidTransform, points) -> jax.Array:
    """Object coordinates of world points: the inverse of ``pose.apply``."""
    T = pose.matrix()
    points = jnp.asarray(points, T.dtype)
    return (points - T[:3, 3]) @ T[:3, :3]


def _check_scene(scene) -> None:
    if not isinstance(scene, Scene):
        raise SceneError(
            f"expected a jaxdrr.scene.Scene, got {type(scene).__name__}; build one with Scene.create(ct, objects)"
        )


def scene_line_integrals(config: RenderConfig, params, scene: Scene, P) -> tuple[jax.Array, jax.Array]:
    """Per-material line integrals of a scene and the mass attenuation of each channel.

    Channels: the M material channels of ``config.materials`` (CT plus volume objects, each
    volume's tissue inside displacing meshes removed), then one per distinct mesh-object material
    (:func:`scene_materials`): ``density x path length``.

    Args:
      config: the render configuration (detector size, step, material model, backend).
      params: :func:`scene_params` of the scene (``"mu_rho"`` and ``"object_mu_rho"``).
      scene: the scene.
      P: [3, 4] projection matrix (world mm -> pixels).

    Returns:
      L [H, W, M + K] (g/cm^2) and mu_rho [M + K, E] (cm^2/g).
    """
    _check_scene(scene)
    materials = scene_materials(scene)
    object_mu_rho = _object_mu_rho(params, materials) if materials else None  # checked before the work
    H, W = config.height, config.width
    M = len(config.materials.names)
    P = jnp.asarray(P)
    dtype = jnp.result_type(float)
    tissue = jnp.zeros((H, W, M), dtype)
    meshes = scene.mesh_objects
    world_triangles = [obj.triangles() for obj in meshes]
    for volume, pose in _sources(scene):
        P_v = P if pose is None else object_projection(P, pose)
        densities = material_densities(volume, config.materials, params)
        tissue = tissue + line_integrals(config, volume, P_v, densities=densities)
        for obj, tris in zip(meshes, world_triangles, strict=True):
            if not obj.displaces:
                continue
            local = tris if pose is None else _inverse_apply(pose, tris)
            inside = mesh_inside_integrals(
                densities,
                volume.affine,
                local,
                P_v,
                H,
                W,
                step_mm=_displacement_step_mm(config, volume),
                depth_range_mm=obj.depth_range_mm,
                max_samples=DISPLACEMENT_SAMPLES,
            )
            tissue = tissue - inside / MM_PER_CM
    if not materials:
        return tissue, params["mu_rho"]
    channels = []
    for material in materials:
        thickness = jnp.zeros((H, W), dtype)
        for obj, tris in zip(meshes, world_triangles, strict=True):
            if obj.material == material:
                path = mesh_path_lengths(tris, P, H, W)
                thickness = thickness + obj.density * path / MM_PER_CM
        channels.append(thickness)
    L = jnp.concatenate([tissue, jnp.stack(channels, -1).astype(tissue.dtype)], -1)
    mu_rho = jnp.concatenate([params["mu_rho"], object_mu_rho.astype(params["mu_rho"].dtype)])
    return L, mu_rho


def object_path_lengths(config: RenderConfig, scene: Scene, P) -> dict[str, jax.Array]:
    """``{name: [H, W] mm}``: each mesh object's chord length per pixel (its mask is ``> 0``)."""
    _check_scene(scene)
    return {
        obj.name: mesh_path_lengths(obj.triangles(), jnp.asarray(P), config.height, config.width)
        for obj in scene.mesh_objects
    }


def project_landmarks(P, pose: RigidTransform | None, landmarks: Mapping[str, Any]) -> dict:
    """``{name: (uv [2] pixels (x=col, y=row), depth)}`` of object-space landmarks posed by ``pose``.

    ``landmarks``: ``{name: [3]}`` in object coordinates (mm), e.g. a tool's tip; ``pose`` None:
    identity (world points). Depth is :func:`jaxdrr.geometry.project_points`'s (positive in front
    of the source).
    """
    out = {}
    for name, point in landmarks.items():
        point = jnp.asarray(point, jnp.result_type(float))
        world = point if pose is None else pose.apply(point)
        out[name] = project_points(P, world)
    return out


def _scene_center(scene: Scene) -> jax.Array:
    """A world point inside the scene (the scatter network's object distance): the CT's centre,
    else the first volume object's, else the first mesh object's origin."""
    if scene.ct is not None:
        return jnp.asarray(scene.ct.center, jnp.result_type(float))
    for obj in scene.objects:
        local = obj.volume.center if isinstance(obj, VolumeObject) else np.zeros(3)
        return obj.pose.apply(jnp.asarray(local, jnp.result_type(float)))
    raise SceneError("the scene is empty")


def _check_mc(scene: Scene) -> None:
    if scene.objects or scene.ct is None:
        raise SceneError(
            "scatter='mc' renders the CT alone: the Monte Carlo does not transport through scene "
            "objects; use scatter='net' (which sees the objects) or None"
        )


def _scatter(config, params, L, P, scene: Scene, key, moments):
    sc = config.scatter
    if sc.method == "mc":
        _check_mc(scene)
        return scatter_images(config, params, L, P, scene.ct, None, key, moments)
    return scatter_lib.net_scatter(
        params, L, P, _scene_center(scene), sc, config.height, config.width, moments=moments
    )


def make_scene_renderer(config: RenderConfig | None = None):
    """Builds ``render(params, scene, P, key) -> [height, width] image`` (the scene form of
    :func:`jaxdrr.render.make_renderer`).

    Pure: jit it, vmap it over ``P`` and keys, or over object poses
    (``in_axes=(None, scene.pose_in_axes(...), None, None)``), and differentiate it w.r.t. poses,
    densities, volumes, ``P`` and params. ``params``: :func:`scene_params`. ``scatter="mc"`` is
    refused for scenes with objects (the Monte Carlo does not see them); ``scatter="net"`` sees
    them through the combined moments and mass thickness.
    """
    config = config or RenderConfig()

    def render(params, scene: Scene, P, key=None) -> jax.Array:
        _check_scene(scene)
        if config.scatter is not None and config.scatter.method == "mc":
            _check_mc(scene)
        L, mu_rho = scene_line_integrals(config, params, scene, P)
        combined = {**params, "mu_rho": mu_rho}
        moments = primary_moments(combined, L)
        scatter = None
        if config.scatter is not None:
            mc_key = None if key is None else jax.random.fold_in(key, 0x5CA7)  # as render.make_renderer
            scatter = _scatter(config, combined, L, P, scene, mc_key, moments)
        return image_from_moments(config, combined, moments, key, scatter)

    render.config = config
    return render


def render_scene(
    scene: Scene,
    P,
    *,
    config: RenderConfig | None = None,
    params=None,
    key=None,
    jit: bool = True,
) -> jax.Array:
    """One-shot render of a scene with :func:`scene_params` (see :func:`make_scene_renderer`).

    A concrete ``P`` is checked first (a GeometryError for Inf/NaN or a degenerate matrix).
    """
    config = config or RenderConfig()
    _check_scene(scene)
    if is_concrete(P) and np.shape(P) == (3, 4):
        check_projection_matrix(P)
    params = params if params is not None else scene_params(config, scene)
    fn = make_scene_renderer(config)
    if jit:
        fn = jax.jit(fn)
    return fn(params, scene, P, key)
