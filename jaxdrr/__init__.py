"""jaxdrr: realistic, differentiable X-ray simulation from CT in JAX."""

from jaxdrr import geometry, ops
from jaxdrr.errors import GeometryError, JaxdrrError, LoadError, VolumeError
from jaxdrr.ops import project
from jaxdrr.volume import Volume

__version__ = "0.1.0"
