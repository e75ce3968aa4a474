"""Surgical tools of a dataset: build each ``[[tools]]`` entry once, as a scene object with keypoints.

:func:`build_tools` turns the spec's :class:`jaxdrr.datasets.spec.ToolSpec` s into
:class:`jaxdrr.scene.MeshObject` s (from :mod:`jaxdrr.instruments` builders or a mesh file) and the
static numbers the sampler needs (:class:`ToolGeometry`: keypoints, axis, tip, bounding sphere).
The objects are the same in every image; only their poses change (drawn per image by
:func:`jaxdrr.datasets.sampling.draw_tools`), so the batch render keeps static shapes under
``vmap``. Every failure (bad instrument parameter values, an unreadable mesh) raises a
:class:`jaxdrr.datasets.SpecError` naming the tool, before any rendering starts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxdrr.datasets.spec import DatasetSpec, SpecError, ToolSpec, instrument_function
from jaxdrr.errors import JaxdrrError


@dataclasses.dataclass(frozen=True)
class ToolGeometry:
    """What the sampler and the annotations need to know of a tool (tool frame, mm).

    Attributes:
      name: the tool's name (its scene object and COCO category).
      kind: the spec's kind.
      material: attenuation-table material it is rendered with.
      keypoint_names: names of its keypoints (the instrument's or the mesh's landmarks).
      keypoints: ``((x, y, z), ...)`` their positions in the tool frame.
      tip: the ``tip`` keypoint (or the origin when there is none).
      axis: unit vector ``base -> tip`` (or +z when there are no such keypoints).
      centroid: vertex centroid of the mesh.
      radius: bounding radius about the centroid (any chord is at most twice this).
    """

    name: str
    kind: str
    material: str
    keypoint_names: tuple[str, ...]
    keypoints: tuple[tuple[float, float, float], ...]
    tip: tuple[float, float, float]
    axis: tuple[float, float, float]
    centroid: tuple[float, float, float]
    radius: float

    def keypoint_array(self) -> np.ndarray:
        """[K, 3] keypoints (tool frame, mm); [0, 3] for a tool without keypoints."""
        return np.asarray(self.keypoints, np.float64).reshape(-1, 3)


def _mesh_tool(spec: DatasetSpec, tool: ToolSpec, where: str):
    try:
        from jaxdrr.io.mesh import read_mesh
    except ImportError as e:  # jaxdrr.io.mesh arrives with the mesh reader
        raise SpecError(f"{where}.path: reading mesh files needs jaxdrr.io.mesh.read_mesh ({e})") from e
    path = spec.resolve(tool.path)
    if not path.is_file():
        raise SpecError(f"{where}.path: mesh file {path} does not exist")
    mesh = read_mesh(path, scale=tool.scale)
    return mesh, dict(tool.landmarks), tool.material, tool.density


def build_tools(spec: DatasetSpec) -> tuple[tuple, tuple[ToolGeometry, ...]]:
    """The spec's tools as scene objects (identity pose) and their :class:`ToolGeometry`.

    Returns:
      (objects, geometry): a tuple of :class:`jaxdrr.scene.MeshObject` and one ToolGeometry per
      tool, in spec order; both empty for a spec without tools.

    Raises:
      SpecError: an instrument refuses its parameters, a mesh cannot be read, or a material is
        unknown (the message names ``tools[i]``).
    """
    from jaxdrr.scene import MeshObject

    objects, geometry = [], []
    for i, tool in enumerate(spec.tools):
        where = f"tools[{i}]"
        try:
            if tool.kind == "mesh":
                mesh, landmarks, material, density = _mesh_tool(spec, tool, where)
                obj = MeshObject.create(
                    mesh,
                    material,
                    density=density,
                    name=tool.name,
                    displaces=tool.displaces,
                    landmarks=landmarks,
                )
            else:
                params = {k: (np.asarray(v) if isinstance(v, tuple) else v) for k, v in tool.params}
                kwargs = {}
                if tool.material is not None:
                    kwargs["material"] = tool.material
                if tool.density is not None:
                    kwargs["density"] = tool.density
                instrument = instrument_function(tool.kind)(**params, **kwargs)
                obj = MeshObject.from_instrument(
                    instrument,
                    material=instrument.material,
                    density=instrument.density,
                    name=tool.name,
                    displaces=tool.displaces,
                )
        except SpecError:
            raise
        except (JaxdrrError, ValueError, TypeError, OSError) as e:
            raise SpecError(f"{where} ({tool.kind} {tool.name!r}): {type(e).__name__}: {e}") from e
        points = obj.landmark_points()
        names = tuple(points)
        vertices = np.asarray(obj.mesh.vertices, np.float64)
        centroid = vertices.mean(axis=0)
        tip = points.get("tip", np.zeros(3))
        if "tip" in points and "base" in points:
            chord = points["tip"] - points["base"]
            axis = chord / np.linalg.norm(chord)
        else:
            axis = np.array([0.0, 0.0, 1.0])
        geometry.append(
            ToolGeometry(
                name=tool.name,
                kind=tool.kind,
                material=obj.material,
                keypoint_names=names,
                keypoints=tuple(tuple(float(x) for x in points[n]) for n in names),
                tip=tuple(float(x) for x in tip),
                axis=tuple(float(x) for x in axis),
                centroid=tuple(float(x) for x in centroid),
                radius=float(np.max(np.linalg.norm(vertices - centroid, axis=1))),
            )
        )
        objects.append(obj)
    return tuple(objects), tuple(geometry)


def ct_bounds(volume) -> np.ndarray:
    """[2, 3] world bounding box (low, high corners) of a volume's voxel centres (mm): the frame of
    ``frame = "ct"`` (its centre) and of ``*_fraction`` entry regions (its size)."""
    shape = np.asarray(volume.shape, np.float64)
    corners = np.stack(np.meshgrid(*[[0.0, n - 1.0] for n in shape], indexing="ij"), -1).reshape(-1, 3)
    affine = np.asarray(volume.affine, np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return np.stack([world.min(axis=0), world.max(axis=0)])


def tool_materials(geometry) -> tuple[str, ...]:
    """The distinct tool materials in order of first appearance (the scene's object channels)."""
    return tuple(dict.fromkeys(g.material for g in geometry))
