"""Summaries of a volume: :func:`volume_info` (a dict) and :func:`format_volume_info` (its text).

``jaxdrr info`` prints :func:`format_volume_info`; both work for HU and density volumes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxdrr.volume import Volume

__all__ = ["volume_info", "format_volume_info"]


def volume_info(volume: Volume) -> dict[str, Any]:
    """Summary of a volume for display and sanity checks.

    Args:
      volume: a Volume (HU or density).

    Returns:
      A dict with ``shape`` (I, J, K), ``spacing_mm``, ``kind``, ``channels``, ``min``, ``max``,
      ``mean`` (of the voxel values: HU for ``kind="hu"``), ``world_min_mm`` / ``world_max_mm``
      (the world box of the voxel boundaries), ``center_mm``, ``orientation`` (nibabel axis codes
      of the affine, e.g. ``("R", "A", "S")``: the direction each index axis points to) and
      ``affine`` (4x4 nested lists).
    """
    import nibabel as nib

    data = np.asarray(volume.data)
    lo, hi = volume.world_bounds()
    return {
        "shape": tuple(int(n) for n in volume.shape),
        "spacing_mm": tuple(float(s) for s in volume.spacing),
        "kind": volume.kind,
        "channels": tuple(volume.channel_names),
        "min": float(data.min()),
        "max": float(data.max()),
        "mean": float(data.mean(dtype=np.float64)),
        "world_min_mm": tuple(float(v) for v in lo),
        "world_max_mm": tuple(float(v) for v in hi),
        "center_mm": tuple(float(v) for v in volume.center),
        "orientation": tuple(nib.aff2axcodes(volume.affine)),
        "affine": volume.affine.tolist(),
    }


def format_volume_info(volume_or_info: Volume | dict, name: str | None = None) -> str:
    """Human-readable multi-line summary (used by ``jaxdrr info``).

    Args:
      volume_or_info: a Volume or the dict returned by :func:`volume_info`.
      name: optional title (e.g. the file name).

    Returns:
      The text, without a trailing newline.
    """
    info = volume_info(volume_or_info) if isinstance(volume_or_info, Volume) else volume_or_info
    unit = "HU" if info["kind"] == "hu" else "g/cm^3"

    def vec(v, fmt="{:.2f}"):
        return "(" + ", ".join(fmt.format(x) for x in v) + ")"

    extent = [b - a for a, b in zip(info["world_min_mm"], info["world_max_mm"])]
    lines = [] if name is None else [str(name)]
    lines += [
        f"  kind:        {info['kind']}"
        + (f" channels {list(info['channels'])}" if info["channels"] else ""),
        f"  shape:       {vec(info['shape'], '{:d}')} voxels",
        f"  spacing:     {vec(info['spacing_mm'], '{:.4g}')} mm",
        f"  orientation: {''.join(info['orientation'])} (index axes point to, RAS+ world)",
        f"  world box:   {vec(info['world_min_mm'])} .. {vec(info['world_max_mm'])} mm",
        f"  extent:      {vec(extent, '{:.1f}')} mm, centre {vec(info['center_mm'])} mm",
        f"  values:      min {info['min']:.4g}, max {info['max']:.4g}, mean {info['mean']:.4g} {unit}",
    ]
    return "\n".join(lines)
