"""Writing rendered images: PNG (8/16-bit), TIFF (8/16-bit or float32) and NPY, chosen by extension.

:func:`save_image` windows and quantises an image as the format needs, refuses non-finite values, and
writes atomically through :func:`jaxdrr.atomic.atomic_path` (a crash never leaves a half-written file
under the final name).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxdrr.atomic import atomic_path

__all__ = ["save_image", "check_finite", "IMAGE_FORMATS"]

# Extension -> (default bit depth, supported bit depths) of :func:`save_image`.
IMAGE_FORMATS = {
    ".png": (16, (8, 16)),
    ".tif": ("float", (8, 16, "float")),
    ".tiff": ("float", (8, 16, "float")),
    ".npy": ("float", (8, 16, "float")),
}


def check_finite(image: np.ndarray, what: str) -> None:
    """Raises ValueError naming ``what``, the count and the first index when ``image`` has NaN/Inf."""
    bad = ~np.isfinite(image)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{what} has {int(bad.sum())} non-finite value(s) (NaN/Inf), first at "
            f"index {first}; refusing to write it"
        )


def _window_to_unit(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Maps ``window = (low, high)`` (or the image min..max) linearly to [0, 1], clipping."""
    if window is None:
        low, high = float(image.min()), float(image.max())
    else:
        low, high = (float(v) for v in window)
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise ValueError(f"window must be (low, high) with finite low < high, got {window}")
    if high <= low:  # constant image: write all zeros rather than dividing by zero
        return np.zeros_like(image, dtype=np.float64)
    return np.clip((image.astype(np.float64) - low) / (high - low), 0.0, 1.0)


def _quantise(unit: np.ndarray, bit_depth: int) -> np.ndarray:
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    top = np.iinfo(dtype).max
    return np.round(unit * top).astype(dtype)


def save_image(
    path: str | os.PathLike,
    image,
    *,
    bit_depth: int | str | None = None,
    window: tuple[float, float] | None = None,
) -> Path:
    """Writes a 2-D image, choosing the format from the file extension (atomic write).

    Integer outputs (8/16 bit) store ``round(u * (2^bits - 1))`` with ``u`` in [0, 1]:
    ``u = clip((image - low) / (high - low), 0, 1)`` for ``window=(low, high)``; without a window
    the image's own min..max is used (a constant image becomes all zeros). Pass ``window=(0, 1)``
    for an image that is already windowed to [0, 1] (e.g. from :mod:`jaxdrr.display`).
    ``bit_depth="float"`` stores float32: the raw values, or the windowed [0, 1] values when a
    window is given.

    Args:
      path: ``.png`` (bit depth 8 or 16, default 16), ``.tif``/``.tiff`` (8, 16 or "float",
        default "float") or ``.npy`` (default "float"; 8/16 store the quantised integers).
      image: array [H, W] (row = image y), finite.
      bit_depth: 8, 16 or "float"; None picks the format's default.
      window: optional ``(low, high)`` display window, see above.

    Returns:
      The written path.

    Raises:
      ValueError: unknown extension, unsupported bit depth for the format, not 2-D, non-finite.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(
            f"cannot tell the image format of {str(path)!r}: use .png, .tif/.tiff or "
            ".npy (and save_npz for the render bundle)"
        )
    default, allowed = IMAGE_FORMATS[suffix]
    bit_depth = default if bit_depth is None else bit_depth
    if bit_depth not in allowed:
        raise ValueError(
            f"bit_depth {bit_depth!r} is not supported for {suffix} files; choose one of {allowed}"
        )
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"save_image expects a 2-D image [H, W], got shape {image.shape}")
    check_finite(image, f"image for {str(path)!r}")

    if bit_depth == "float":
        out = image if window is None else _window_to_unit(image, window)
        out = out.astype(np.float32)
    else:
        out = _quantise(_window_to_unit(image, window), int(bit_depth))

    with atomic_path(path) as tmp:
        if suffix == ".png":
            from PIL import Image

            Image.fromarray(out).save(tmp, format="PNG")
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, out)
        else:
            with open(tmp, "wb") as f:
                np.save(f, out, allow_pickle=False)
    return path
