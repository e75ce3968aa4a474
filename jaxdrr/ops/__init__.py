"""Low-level kernels: ray set-up, trilinear sampling, the line-integral projector and mesh paths."""

from jaxdrr.ops.mesh_project import mesh_inside_integrals, mesh_path_lengths
from jaxdrr.ops.project import BACKENDS, project, project_backend
from jaxdrr.ops.rays import Rays, VolumeGrid, detector_rays

__all__ = [
    "project",
    "project_backend",
    "BACKENDS",
    "Rays",
    "VolumeGrid",
    "detector_rays",
    "mesh_path_lengths",
    "mesh_inside_integrals",
]
