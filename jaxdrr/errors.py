"""Errors raised by jaxdrr for bad input.

Every check of user input raises one of these with a message that names the problem and, where it
helps, the fix. They subclass ``ValueError`` (or ``FileNotFoundError``) so generic handlers still work.
"""

from __future__ import annotations


class JaxdrrError(ValueError):
    """Base class for invalid input to jaxdrr."""


class VolumeError(JaxdrrError):
    """A CT volume or its affine is unusable (wrong shape, non-finite values, singular affine)."""


class GeometryError(JaxdrrError):
    """A projection matrix, pose or detector description is degenerate."""


class LoadError(JaxdrrError):
    """A file exists but cannot be read as what it claims to be (corrupt NIfTI/DICOM, mixed series)."""


class MeshError(JaxdrrError):
    """A triangle mesh is unusable (empty, non-finite, bad indices, degenerate or open surface)."""
