"""Low-level kernels: ray set-up, trilinear sampling and the line-integral projector."""

from jaxdrr.ops.project import BACKENDS, project
from jaxdrr.ops.rays import Rays, VolumeGrid, detector_rays

__all__ = ["project", "BACKENDS", "Rays", "VolumeGrid", "detector_rays"]
