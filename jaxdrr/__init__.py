"""jaxdrr: realistic, differentiable X-ray simulation from CT in JAX.

Data flow: io -> volume -> materials -> ops -> render (+ scatter) -> noise -> image. Scatter
(``jaxdrr.scatter``): the Monte Carlo engine, and ``RenderConfig(scatter="net" | "mc")`` to add the
scatter ConvNet's (or the Monte Carlo's) estimate inside the render. The main entry points::

    volume = jaxdrr.load_volume("ct.nii.gz")            # or jaxdrr.phantom()
    P = jaxdrr.geometry.carm(lao=30, cran=10)
    config = jaxdrr.RenderConfig(height=256, width=256, noise=jaxdrr.NoiseConfig())
    render = jaxdrr.make_renderer(config)
    image = jax.jit(render)(jaxdrr.default_params(config), volume, P, jax.random.key(0))

Materials (``jaxdrr.materials``): ``RenderConfig(materials="thresholds" | "thresholds+metal" |
"vnet")``; ``jaxdrr.decompose(params, volume, config)`` turns a CT into a density volume once (the
fast path for many renders of one CT, and the way to use a label map).

Surgical tools (``jaxdrr.scene``, ``jaxdrr.instruments``): a :class:`Scene` is a CT plus meshes
(``read_mesh`` or parametric K-wires, screws, plates, guidewires) and further volumes, each with its
own differentiable :class:`RigidTransform`; ``make_scene_renderer(config)(params, scene, P, key)``
renders it (docs/tools.md).
"""

from jaxdrr import (
    display,
    geometry,
    instruments,
    materials,
    noise,
    ops,
    physics,
    scatter,
    scene,
    spectral,
)
from jaxdrr._version import __version__
from jaxdrr.errors import GeometryError, JaxdrrError, LoadError, MeshError, VolumeError
from jaxdrr.geometry.rigid import RigidTransform
from jaxdrr.io import format_volume_info, load_npz, load_volume, read_mesh, save_image, save_npz, volume_info
from jaxdrr.materials import MaterialConfig, decompose
from jaxdrr.mesh import TriangleMesh
from jaxdrr.noise import NoiseConfig
from jaxdrr.ops import project
from jaxdrr.phantoms import phantom
from jaxdrr.render import (
    RenderConfig,
    default_params,
    default_spectrum,
    image_from_line_integrals,
    line_integrals,
    make_renderer,
    material_densities,
    render,
    scatter_images,
)
from jaxdrr.scatter import ScatterConfig
from jaxdrr.scene import MeshObject, Scene, VolumeObject, make_scene_renderer, render_scene, scene_params
from jaxdrr.volume import Volume

__all__ = [
    "__version__",
    "Volume",
    "load_volume",
    "save_image",
    "save_npz",
    "load_npz",
    "volume_info",
    "format_volume_info",
    "phantom",
    "project",
    "RenderConfig",
    "MaterialConfig",
    "ScatterConfig",
    "NoiseConfig",
    "default_params",
    "default_spectrum",
    "make_renderer",
    "render",
    "line_integrals",
    "image_from_line_integrals",
    "scatter_images",
    "material_densities",
    "decompose",
    "Scene",
    "MeshObject",
    "VolumeObject",
    "RigidTransform",
    "TriangleMesh",
    "read_mesh",
    "scene_params",
    "make_scene_renderer",
    "render_scene",
    "geometry",
    "instruments",
    "scene",
    "ops",
    "physics",
    "materials",
    "spectral",
    "scatter",
    "noise",
    "display",
    "JaxdrrError",
    "VolumeError",
    "GeometryError",
    "LoadError",
    "MeshError",
]
