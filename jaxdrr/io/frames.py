"""Real fluoroscopy frames: 8-bit image-intensifier video frames and their circular field of view.

:func:`read_fluoro_frame` reads one frame (TIFF, PNG, anything Pillow reads; LZW TIFFs included,
which tifffile cannot decode without the optional imagecodecs package) into a float32 image in
[0, 1] and a boolean field-of-view (FOV) mask.

What the numbers mean (checked on the Autoscoper wrist frames, ``data/autoscoper_wrist/``): the
frames are *display* images of an image intensifier, not detector counts: bright = many photons
(air next to the arm is 200-255, often saturated at 255), **bone is dark** (60-130), the outside
of the round intensifier FOV is black (0-15), and the brightness falls off towards the FOV's rim
(vignetting). ``invert=True`` returns ``1 - image`` so that bone is bright, like a DRR of line
integrals; the mapping from grey level to log-attenuation is unknown (camera gamma, automatic
gain), so compare it with a DRR through a correlation-type similarity (e.g. gradient correlation)
rather than expecting equal values.

The FOV circle is found automatically (:func:`detect_fov_circle`): threshold the black surround,
keep the largest bright component, take its boundary pixels that are not on the image border (the
circle can be cut by the image edges) and fit a circle to them by robust least squares (soft-L1
loss, so letters and markers touching the rim do not pull the fit). ``fov=(cx, cy, r)`` skips the
detection. The mask keeps pixels whose centres lie more than ``margin_px`` inside the circle: the
rim is blurred and vignetted over ~1-2 % of the radius.

Coordinates: (cx, cy) are image points (x = column, y = row, pixel centres on integers, as
everywhere in jaxdrr). ``downsample=k`` averages k x k blocks (the image is cropped to a multiple
of k first), so downsampled pixel ``x'`` covers original pixels ``k x' .. k x' + k - 1`` and its
centre is the original point ``k x' + (k - 1) / 2``, i.e. ``x' = (x + 0.5) / k - 0.5``: the P that
goes with it is ``projection_from_mayacam(calib, image_scale=1 / k)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi
import scipy.optimize

from jaxdrr.errors import LoadError

#: Fraction of the image's bright level (99.5th percentile) below which a pixel counts as the black
#: surround of the FOV. The wrist frames have surround 0-15 with a faint halo up to ~30 and an FOV
#: no darker than ~40 except at the very rim, so 0.12 x 255 = 31 separates them.
FOV_THRESHOLD_FRACTION = 0.12

#: Default mask margin, as a fraction of the FOV radius (1.5 % of 880 px = 13 px at full size).
FOV_MARGIN_FRACTION = 0.015


@dataclasses.dataclass(frozen=True)
class FluoroFrame:
    """One fluoroscopy frame ready for registration.

    Attributes:
      image: [H, W] float32 in [0, 1] (grey level / 255 for 8-bit files; ``1 - that`` if inverted).
      mask: [H, W] bool, True inside the field of view (minus the margin).
      fov: (cx, cy, r) of the FOV circle in this image's pixel coordinates.
      downsample: the block size the original image was averaged over (1 = full size).
      inverted: whether ``image`` was inverted (bone bright).
      path: the file read ("" when built from an array).
    """

    image: np.ndarray
    mask: np.ndarray
    fov: tuple[float, float, float]
    downsample: int = 1
    inverted: bool = False
    path: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)


def _fit_circle(xy: np.ndarray, f_scale: float) -> tuple[float, float, float]:
    """Robust circle fit: algebraic (Kasa) start, then geometric least squares with soft-L1 loss."""
    x, y = xy[:, 0], xy[:, 1]
    A = np.stack([x, y, np.ones_like(x)], axis=1)
    b = x**2 + y**2
    (a0, a1, a2), *_ = np.linalg.lstsq(A, b, rcond=None)
    cx, cy = a0 / 2.0, a1 / 2.0
    r = np.sqrt(max(a2 + cx**2 + cy**2, 1e-12))

    def residuals(p):
        return np.hypot(x - p[0], y - p[1]) - p[2]

    fit = scipy.optimize.least_squares(residuals, [cx, cy, r], loss="soft_l1", f_scale=f_scale)
    return float(fit.x[0]), float(fit.x[1]), float(abs(fit.x[2]))


def detect_fov_circle(image: np.ndarray, *, threshold: float | None = None) -> tuple[float, float, float]:
    """Finds the round field of view of an image-intensifier frame.

    Args:
      image: [H, W] grey image, dark outside the FOV (any numeric dtype, not inverted).
      threshold: grey level separating the surround from the FOV; default
        ``FOV_THRESHOLD_FRACTION`` x the 99.5th percentile.

    Returns:
      (cx, cy, r) in pixels (x = column, y = row).

    Raises:
      LoadError: no FOV found (an image without a dark surround, or too little of the rim visible).
    """
    a = np.asarray(image, np.float64)
    if a.ndim != 2:
        raise LoadError(f"detect_fov_circle needs a 2-D image, got shape {a.shape}")
    if threshold is None:
        threshold = FOV_THRESHOLD_FRACTION * float(np.percentile(a, 99.5))
    bright = a > threshold
    labels, n = ndi.label(bright)
    if n == 0:
        raise LoadError("no field of view found: the image has no pixel above the threshold")
    sizes = ndi.sum(bright, labels, index=np.arange(1, n + 1))
    fov = ndi.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))
    # A little opening removes thin bright spurs (halo, text) so the boundary is the rim.
    fov = ndi.binary_opening(fov, iterations=2)
    boundary = fov & ~ndi.binary_erosion(fov)
    H, W = a.shape
    rows, cols = np.nonzero(boundary)
    inner = (rows > 1) & (rows < H - 2) & (cols > 1) & (cols < W - 2)
    rows, cols = rows[inner], cols[inner]
    if rows.size < 50:
        raise LoadError(
            f"no field of view found: only {rows.size} rim pixels away from the image border "
            "(is this an image-intensifier frame with a dark surround? pass fov=(cx, cy, r))"
        )
    cx, cy, r = _fit_circle(np.stack([cols, rows], axis=1).astype(np.float64), f_scale=2.0)
    # Rim pixels of the thresholded disc sit half a pixel inside the true edge on average.
    return cx, cy, r + 0.5


def fov_mask(shape: tuple[int, int], fov: tuple[float, float, float], margin_px: float = 0.0) -> np.ndarray:
    """Boolean mask of the pixels whose centres are more than ``margin_px`` inside the circle ``fov``."""
    cx, cy, r = fov
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(cols - cx, rows - cy) < (r - margin_px)


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks (the image is cropped to a multiple of ``factor``)."""
    if factor == 1:
        return image
    H, W = image.shape
    h, w = H // factor, W // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))


def read_fluoro_frame(
    path: str | os.PathLike,
    *,
    downsample: int = 1,
    invert: bool = False,
    fov: tuple[float, float, float] | None = None,
    margin: float | None = None,
) -> FluoroFrame:
    """Reads a fluoroscopy frame, its FOV circle and mask.

    Args:
      path: an 8- or 16-bit grey TIFF/PNG (colour files are converted to grey).
      downsample: integer block size for averaging (see the module docstring for the coordinates).
      invert: return ``1 - image`` so that bone is bright (bone is dark in the files).
      fov: (cx, cy, r) of the FOV circle in **original** (full-size) pixels; default detected.
      margin: mask margin in original pixels; default ``FOV_MARGIN_FRACTION`` x r.

    Returns:
      A :class:`FluoroFrame` whose image, mask and ``fov`` are at the downsampled size.

    Raises:
      FileNotFoundError: no such file.
      LoadError: unreadable file, a bad ``downsample``, or no FOV found.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fluoroscopy frame not found: {path}")
    if isinstance(downsample, bool) or not isinstance(downsample, (int, np.integer)) or downsample < 1:
        raise LoadError(f"downsample must be a positive integer, got {downsample!r}")
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                full_scale = 65535.0
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float64)
                full_scale = 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise LoadError(f"cannot read {path} as an image: {err}") from None
    if fov is None:
        fov = detect_fov_circle(arr)
    cx, cy, r = (float(v) for v in fov)
    if not (np.isfinite([cx, cy, r]).all() and r > 0):
        raise LoadError(f"fov must be (cx, cy, r) with r > 0, got {fov!r}")
    margin_px = FOV_MARGIN_FRACTION * r if margin is None else float(margin)

    k = int(downsample)
    image = downsample_image(arr / full_scale, k)
    fov_k = ((cx + 0.5) / k - 0.5, (cy + 0.5) / k - 0.5, r / k)
    mask = fov_mask(image.shape, fov_k, margin_px / k)
    if invert:
        image = 1.0 - image
    return FluoroFrame(
        image=image.astype(np.float32), mask=mask, fov=fov_k, downsample=k, inverted=bool(invert), path=path
    )


__all__: Sequence[str] = (
    "FluoroFrame",
    "FOV_THRESHOLD_FRACTION",
    "FOV_MARGIN_FRACTION",
    "read_fluoro_frame",
    "detect_fov_circle",
    "fov_mask",
    "downsample_image",
)
