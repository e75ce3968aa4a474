"""Low-level kernels: ray set-up, trilinear sampling and the line-integral projector."""

from jaxdrr.ops.project import BACKENDS, project, project_backend
from jaxdrr.ops.rays import Rays, VolumeGrid, detector_rays

__all__ = ["project", "project_backend", "BACKENDS", "Rays", "VolumeGrid", "detector_rays"]
