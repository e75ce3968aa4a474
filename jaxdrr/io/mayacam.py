"""MayaCam 2.0 camera calibrations (XMALab / Autoscoper) as jaxdrr projection matrices.

A MayaCam 2.0 file is plain text with four blocks, each a header line and its values:

.. code-block:: text

    image size
    1760,1760            <- width,height (XMALab writes and reads "w,h"; Autoscoper uses the first
                            number as the image width. Autoscoper's documentation says "height,width":
                            the two agree only for square images)
    camera matrix
    fx,0,cx
    0,fy,cy
    0,0,1
    rotation
    r00,r01,r02          <- R, world -> camera, rows as written
    r10,r11,r12
    r20,r21,r22
    translation
    tx
    ty
    tz

optionally followed by an ``undistortion`` block (8 comma-separated coefficients, OpenCV order
k1,k2,p1,p2,k3,k4,k5,k6); the frames that come with a calibration are usually already undistorted
("UND") and the coefficients are kept but not applied.

**Convention (verified on the Autoscoper wrist sample; see docs/geometry.md).** The numbers are
OpenCV's pinhole model as XMALab computes it: a world point ``X`` (mm, the calibration object's
frame) maps to camera coordinates ``R X + t`` and to the image point ``K (R X + t)``, with ``x`` =
column and ``y`` = row (downwards) and pixel centres on integers. That is exactly jaxdrr's
``P = K [R | t]`` (:func:`jaxdrr.geometry.projection.projection_matrix`), so no axis flips are
needed. The X-ray source is at ``-R^T t``. (Autoscoper's own documentation writes
``camera_position = rotation * -translation``; its loader reads the rotation block transposed, so
in terms of the file's ``R`` that is the same point, ``-R^T t``.) The check: bead markers detected
in both views of frame 0002 lie within 0.5 px (median) of the epipolar lines of this convention,
and 130 px away for the transposed reading.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from jaxdrr.errors import LoadError
from jaxdrr.geometry.projection import rescale_detector

#: A rotation block is accepted when ``|R^T R - I|`` and ``|det R - 1|`` are below this: the files
#: store 12 significant digits, so a genuine rotation is orthonormal to ~1e-10; 1e-4 leaves room for
#: hand-edited files with 6 digits while rejecting a scaled or mirrored matrix.
ROTATION_TOL = 1e-4

_BLOCKS = ("image size", "camera matrix", "rotation", "translation")
_OPTIONAL_BLOCKS = ("undistortion",)


@dataclasses.dataclass(frozen=True)
class MayaCamCalibration:
    """One calibrated X-ray camera (source + image intensifier) read from a MayaCam 2.0 file.

    Attributes:
      K: [3, 3] intrinsics in pixels (fx, fy, cx, cy; K[2] = (0, 0, 1)).
      R: [3, 3] world -> camera rotation (det +1).
      t: [3] world -> camera translation, mm.
      width: image columns the calibration refers to.
      height: image rows.
      distortion: the 8 undistortion coefficients when the file has them, else ``None``
        (not applied: use undistorted frames).
      path: the file it was read from ("" when built by hand).
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int
    distortion: tuple[float, ...] | None = None
    path: str = ""

    @property
    def source_position(self) -> np.ndarray:
        """World position (mm) of the X-ray source (the camera centre), ``-R^T t``."""
        return -self.R.T @ self.t

    @property
    def principal_axis(self) -> np.ndarray:
        """Unit world direction from the source along the camera's optical (z) axis."""
        return self.R[2].copy()


def _numbers(text: str, count: int, path: str, line_no: int, what: str) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts if p != ""]
    except ValueError:
        raise LoadError(
            f"{path}: line {line_no}: cannot read {count} number(s) of '{what}' from {text!r}"
        ) from None
    if len(values) != count:
        raise LoadError(
            f"{path}: line {line_no}: expected {count} number(s) for '{what}', got {len(values)}: {text!r}"
        )
    if not all(np.isfinite(values)):
        raise LoadError(f"{path}: line {line_no}: non-finite value in '{what}': {text!r}")
    return values


def parse_mayacam(text: str, path: str = "<string>") -> MayaCamCalibration:
    """Parses the text of a MayaCam 2.0 file (see the module docstring).

    Raises:
      LoadError: a missing or repeated block, a wrong count of numbers, a non-number, a camera matrix
        that is not ``[[fx,0,cx],[0,fy,cy],[0,0,1]]`` with fx, fy > 0, a rotation that is not a
        proper rotation, or a non-positive image size. The message names the line.
    """
    lines = text.splitlines()
    # (header line number, values line numbers) per block; line numbers are 1-based.
    rows_per_block = {"image size": 1, "camera matrix": 3, "rotation": 3, "translation": 3, "undistortion": 1}
    found: dict[str, list[tuple[int, str]]] = {}
    i = 0
    while i < len(lines):
        key = lines[i].strip().lower()
        if key == "":
            i += 1
            continue
        if key not in rows_per_block:
            raise LoadError(
                f"{path}: line {i + 1}: expected a block header ({', '.join(_BLOCKS + _OPTIONAL_BLOCKS)}), "
                f"got {lines[i].strip()!r}; is this a MayaCam 2.0 file?"
            )
        if key in found:
            raise LoadError(f"{path}: line {i + 1}: block '{key}' appears twice")
        n = rows_per_block[key]
        body = []
        for j in range(i + 1, i + 1 + n):
            if j >= len(lines) or lines[j].strip() == "":
                raise LoadError(
                    f"{path}: line {j + 1}: block '{key}' needs {n} line(s) of values; it ends early"
                )
            body.append((j + 1, lines[j].strip()))
        found[key] = body
        i += 1 + n
    missing = [b for b in _BLOCKS if b not in found]
    if missing:
        raise LoadError(f"{path}: missing block(s) {missing}; a MayaCam 2.0 file has {list(_BLOCKS)}")

    ((size_line, size_text),) = found["image size"]
    width, height = _numbers(size_text, 2, path, size_line, "image size")
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise LoadError(
            f"{path}: line {size_line}: image size must be two positive integers, got {size_text!r}"
        )

    K = np.array([_numbers(s, 3, path, n, "camera matrix") for n, s in found["camera matrix"]])
    k_line = found["camera matrix"][0][0]
    if not (K[0, 1] == 0 and K[1, 0] == 0 and K[2, 0] == 0 and K[2, 1] == 0 and K[2, 2] == 1):
        raise LoadError(
            f"{path}: lines {k_line}-{k_line + 2}: camera matrix must be [[fx,0,cx],[0,fy,cy],[0,0,1]] "
            f"(no skew), got {K.tolist()}"
        )
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise LoadError(
            f"{path}: line {k_line}: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}"
        )

    R = np.array([_numbers(s, 3, path, n, "rotation") for n, s in found["rotation"]])
    r_line = found["rotation"][0][0]
    ortho = np.abs(R.T @ R - np.eye(3)).max()
    det = np.linalg.det(R)
    if ortho > ROTATION_TOL or abs(det - 1.0) > ROTATION_TOL:
        raise LoadError(
            f"{path}: lines {r_line}-{r_line + 2}: 'rotation' is not a proper rotation "
            f"(max |R^T R - I| = {ortho:.3g}, det = {det:.6g})"
        )
    t = np.array([_numbers(s, 1, path, n, "translation")[0] for n, s in found["translation"]])

    distortion = None
    if "undistortion" in found:
        ((d_line, d_text),) = found["undistortion"]
        distortion = tuple(_numbers(d_text, 8, path, d_line, "undistortion"))
    return MayaCamCalibration(
        K=K, R=R, t=t, width=int(width), height=int(height), distortion=distortion, path=path
    )


def read_mayacam(path: str | os.PathLike) -> MayaCamCalibration:
    """Reads a MayaCam 2.0 calibration file (XMALab export, Autoscoper input).

    Args:
      path: the ``.txt`` file.

    Returns:
      A :class:`MayaCamCalibration`.

    Raises:
      FileNotFoundError: no such file.
      LoadError: a malformed file (the message names the line; see :func:`parse_mayacam`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MayaCam calibration not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return parse_mayacam(text, path)


def projection_from_mayacam(calib: MayaCamCalibration, *, image_scale: float = 1.0) -> np.ndarray:
    """The jaxdrr projection matrix ``P = K [R | t]`` of a calibration, optionally for a resampled image.

    Args:
      calib: a :class:`MayaCamCalibration`.
      image_scale: new pixels per original pixel along each axis (0.25 = an image downsampled 4x
        by averaging 4x4 blocks, as :func:`jaxdrr.io.frames.read_fluoro_frame` does with
        ``downsample=4``). Pixel centres stay on integers: an original image point ``x`` becomes
        ``(x + 0.5) * image_scale - 0.5`` (:func:`jaxdrr.geometry.rescale_detector`), i.e.
        ``fx, fy`` scale by ``image_scale`` and ``c -> (c + 0.5) * image_scale - 0.5``.

    Returns:
      [3, 4] float64 NumPy P mapping world mm to image points (x = column, y = row).
    """
    if not (np.isfinite(image_scale) and image_scale > 0):
        raise LoadError(f"image_scale must be a positive number, got {image_scale!r}")
    # Same as jaxdrr.geometry.projection_matrix, kept in float64: P's last column is ~fx * |t| ~ 5e6
    # and float32 would round it by ~0.3 (1e-3 px at the wrist).
    P = np.asarray(calib.K, np.float64) @ np.concatenate([calib.R, np.asarray(calib.t)[:, None]], axis=1)
    if image_scale != 1.0:
        # The 3x3 resampling matrix of rescale_detector, applied in float64.
        S = np.asarray(rescale_detector(np.eye(3, 4), 1.0 / image_scale), np.float64)[:, :3]
        P = S @ P
    return P


def scaled_image_size(calib: MayaCamCalibration, image_scale: float = 1.0) -> tuple[int, int]:
    """(height, width) of the calibration's image resampled by ``image_scale`` (floor, as block averaging crops)."""
    return int(np.floor(calib.height * image_scale + 1e-9)), int(np.floor(calib.width * image_scale + 1e-9))


def triangulate(Ps: Sequence[np.ndarray], points_xy: Sequence[np.ndarray]) -> np.ndarray:
    """Least-squares (linear, DLT) triangulation of one world point seen in several views.

    Args:
      Ps: the views' [3, 4] projection matrices.
      points_xy: the point's image coordinates (x = column, y = row) in each view.

    Returns:
      [3] world point (mm), float64.
    """
    rows = []
    for P, xy in zip(Ps, points_xy, strict=True):
        P = np.asarray(P, np.float64)
        P = P / np.linalg.norm(P[2, :3])
        x, y = float(xy[0]), float(xy[1])
        rows.append(x * P[2] - P[0])
        rows.append(y * P[2] - P[1])
    _, _, vt = np.linalg.svd(np.asarray(rows))
    X = vt[-1]
    return X[:3] / X[3]


__all__: Sequence[str] = (
    "MayaCamCalibration",
    "ROTATION_TOL",
    "parse_mayacam",
    "read_mayacam",
    "projection_from_mayacam",
    "scaled_image_size",
    "triangulate",
)
