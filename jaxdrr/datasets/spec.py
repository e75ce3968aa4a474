"""The dataset spec: what to render, how to randomise it, what to annotate and how to store it.

A spec is a TOML (or YAML, with PyYAML installed) file parsed into the frozen dataclass
:class:`DatasetSpec`. Every field is validated when the spec is loaded, and every error names the
offending key (``pose.lao_deg: ...``), so a typo fails before any rendering starts. Ranges are
written as a number (fixed) or ``[low, high]`` (drawn uniformly per image; photons per pixel
log-uniformly).

The spec fixes the dataset exactly: sample ``i`` depends only on the spec and ``i`` (its random
draws come from ``fold_in(key(seed), i)``), never on the process count or restart history.
:func:`spec_digest` hashes the normalised spec; a resumed run refuses an output directory made
with a different one.

Example (``jaxdrr dataset init`` writes a runnable one)::

    name = "pelvis-landmarks"
    seed = 0
    images_per_ct = 64

    [[ct]]
    phantom = "analytic"        # or path = "ct/case01.nii.gz", landmarks = "...csv", labels = "..."

    [detector]
    height = 128
    width = 128
    pixel_mm = [2.0, 2.6]

    [pose]
    lao_deg = [-60, 60]
    cran_deg = [-45, 45]
    isocenter_jitter_mm = 20
    sdd_mm = [950, 1200]
    sid_mm = [600, 750]

    [physics]
    kvp = [60, 90, 120]
    photons_per_pixel = [3e3, 1e5]
    scatter_probability = 0.5
    noise = true

    [annotations]
    masks = true
    heatmaps = true

    [output]
    shard_size = 16
    batch_size = 8
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxdrr.errors import JaxdrrError

PHANTOMS = ("analytic", "pelvis", "chest", "abdomen", "limb", "synthetic")
SPECTRA = ("ipem78", "spekpy")
OUTPUTS = ("log", "transmission")
IMAGE_DTYPES = ("float32", "float16")
COMPRESSIONS = ("gzip", "lzf", "none")
TOOL_KINDS = ("kwire", "screw", "plate", "guidewire", "catheter", "mesh")
TOOL_FRAMES = ("ct", "world")


class SpecError(JaxdrrError):
    """A dataset spec is invalid: the message names the key and the fix."""


Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class CTEntry:
    """One CT of the dataset.

    Attributes:
      name: unique name (default: the file stem, or ``<phantom>-<seed>``).
      path: NIfTI file or DICOM directory (relative paths are relative to the spec file).
      phantom: a built-in phantom instead of a file: ``"analytic"`` (the painted pelvis, with
        built-in landmarks and a bone label map), ``"synthetic"`` (a random procedural CT with a
        tissue label map; ``seed`` chooses it), or a detailed demo region ``"pelvis"``,
        ``"chest"``, ``"abdomen"``, ``"limb"``.
      seed: the phantom's seed (``"synthetic"`` and demo regions).
      shape: phantom grid (voxels); default: the phantom's own.
      region: ``"synthetic"`` only: body region (None: random).
      landmarks: ``"builtin"`` (analytic phantom), or a CSV (``name,x,y,z`` in world mm) or JSON
        (``{"name": [x, y, z]}``) file; None: no landmarks.
      labels: ``"builtin"`` (analytic and synthetic phantoms) or a label-map file on the CT's
        grid (integer voxels; 0 = background); None: no projected masks.
      label_names: ``{label id: name}`` of a label-map file. When given, only these labels are
        projected (each costs one CT-sized float32 channel on the device: select the structures
        you need from a large segmentation); when empty, every label present, named ``label<id>``.
    """

    name: str
    path: str | None = None
    phantom: str | None = None
    seed: int = 0
    shape: tuple[int, int, int] | None = None
    region: str | None = None
    landmarks: str | None = None
    labels: str | None = None
    label_names: tuple[tuple[int, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """A flat panel: ``height`` x ``width`` pixels (fixed) of ``pixel_mm`` pitch (range)."""

    height: int = 256
    width: int = 256
    pixel_mm: Range = (1.2, 1.2)


@dataclasses.dataclass(frozen=True)
class PoseSpec:
    """C-arm pose distribution (angles as in :func:`jaxdrr.geometry.carm`).

    Attributes:
      lao_deg: LAO (+) / RAO (-) range, degrees.
      cran_deg: CRAN (+) / CAUD (-) range, degrees.
      isocenter_mm: ``"center"`` (the CT's centre) or a world point (mm) the C-arm rotates about.
      isocenter_jitter_mm: half-width of the uniform jitter of the isocentre per axis (3 numbers
        or one).
      sdd_mm: source-detector distance range.
      sid_mm: source-isocentre distance range (must stay below the smallest SDD).
    """

    lao_deg: Range = (-60.0, 60.0)
    cran_deg: Range = (-45.0, 45.0)
    isocenter_mm: str | tuple[float, float, float] = "center"
    isocenter_jitter_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sdd_mm: Range = (1020.0, 1020.0)
    sid_mm: Range = (700.0, 700.0)


@dataclasses.dataclass(frozen=True)
class PhysicsSpec:
    """Physics per image.

    Attributes:
      kvp: tube voltages; each image draws one uniformly.
      spectrum: ``"ipem78"`` (shipped; kVp 60, 90, 120) or ``"spekpy"`` (any kVp; needs the
        ``spectra`` extra, computed once at start).
      filtration_mm_al: total filtration for ``"spekpy"`` spectra.
      photons_per_pixel: N0 range, drawn log-uniformly (the dose).
      scatter_probability: probability that an image gets the scatter ConvNet's scatter (0: never,
        and the network is not run).
      noise: quantum + electronic noise (:class:`jaxdrr.NoiseConfig` defaults).
      materials: material model of the CT decomposition (``"thresholds"``, ``"thresholds+metal"``,
        ``"vnet"``), run once per CT.
      density_scale: per material channel, a range multiplying its line integrals per image
        (e.g. ``{bone = [0.9, 1.1]}``: bone mineral density variation).
      detector: ``"ei"`` (energy integrating) or ``"pc"`` (photon counting).
      output: stored image: ``"log"`` (-ln transmission) or ``"transmission"``.
    """

    kvp: tuple[int, ...] = (120,)
    spectrum: str = "ipem78"
    filtration_mm_al: float = 4.0
    photons_per_pixel: Range = (5e5, 5e5)
    scatter_probability: float = 0.0
    noise: bool = True
    materials: str = "thresholds"
    density_scale: tuple[tuple[str, Range], ...] = ()
    detector: str = "ei"
    output: str = "log"


@dataclasses.dataclass(frozen=True)
class AnnotationSpec:
    """What is stored beside each image.

    Attributes:
      landmarks: 2D landmark positions and visibility flags (CTs that have landmarks).
      heatmaps: Gaussian landmark heatmaps (peak 1, zero for invisible landmarks), float16.
      heatmap_sigma_px: their standard deviation in pixels.
      masks: projected label masks (uint8 [labels, H, W]): path length through the label >
        ``mask_threshold_mm``.
      mask_threshold_mm: path-length threshold of a mask pixel.
      path_lengths: also store the per-label path length (mm, float16).
      line_integrals: store the per-material line integrals (g/cm^2, float16 [H, W, M]) so image
        formation can be redone later without re-projecting.
      tool_path_length: store each tool's path length image (mm, float16 [T, H, W]; needs
        ``[[tools]]``). Tool masks and keypoints are always stored when the spec has tools.
    """

    landmarks: bool = True
    heatmaps: bool = False
    heatmap_sigma_px: float = 2.0
    masks: bool = True
    mask_threshold_mm: float = 0.0
    path_lengths: bool = False
    line_integrals: bool = False
    tool_path_length: bool = False


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """Storage.

    Attributes:
      shard_size: images per shard file (a shard never spans two CTs).
      batch_size: poses per vmapped render call (memory vs. speed; the stored values do not depend
        on it beyond float rounding, and are bit-identical for the same batch size).
      image_dtype: ``"float32"`` or ``"float16"``.
      compression: HDF5 filter of the images and masks: ``"gzip"``, ``"lzf"`` or ``"none"``.
      coco: also write ``coco.json`` (COCO keypoints + RLE masks) at the end.
    """

    shard_size: int = 64
    batch_size: int = 8
    image_dtype: str = "float32"
    compression: str = "lzf"
    coco: bool = True


@dataclasses.dataclass(frozen=True)
class ToolPose:
    """A fixed tool pose: ``x_world = R(rotation_deg) x_tool + origin + translation_mm``.

    ``rotation_deg`` is a rotation vector (axis x angle) in degrees, about the tool frame's origin
    (the instrument's base, :mod:`jaxdrr.instruments`); ``origin`` is the CT's centre
    (``frame = "ct"``) or the world origin (``frame = "world"``).
    """

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class ToolPlacement:
    """A random tool pose per image: an entry point, a direction in a cone, a depth and a spin.

    The tool's axis (its ``base`` -> ``tip`` landmarks) is aligned with a direction ``d`` drawn
    uniformly (in solid angle) within ``cone_deg`` of ``direction``; the axis passes through the
    *entry point* ``E`` (the point where the tool enters the patient), drawn uniformly in a box or
    ball; the tip sits at ``E + depth d`` (``depth_mm`` drawn uniformly: how far the tool was
    advanced); the tool turns by ``spin_deg`` about its axis (from an arbitrary reference).

    Attributes:
      entry_shape: ``"box"`` or ``"sphere"``.
      entry_center: the region's centre: mm in the tool's frame (``entry_center_units = "mm"``;
        relative to the CT's centre for ``frame = "ct"``), or fractions of the CT's world bounding box
        (``"fraction"``: 0 = low corner, 1 = high corner per world axis).
      entry_center_units: ``"mm"`` or ``"fraction"``.
      entry_size: box half sizes per world axis, or the ball's radius (three equal numbers).
      entry_size_units: ``"mm"`` or ``"fraction"`` (of the CT's bounding-box size per axis).
      direction: unit mean direction (world axes, RAS+).
      cone_deg: half-angle of the direction cone (0: always ``direction``; 180: any direction).
      depth_mm: range of the tip's advance from the entry point along ``d`` (negative: short of it).
      spin_deg: range of the rotation about the axis.
    """

    entry_shape: str = "box"
    entry_center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    entry_center_units: str = "mm"
    entry_size: tuple[float, float, float] = (0.0, 0.0, 0.0)
    entry_size_units: str = "mm"
    direction: tuple[float, float, float] = (0.0, 0.0, 1.0)
    cone_deg: float = 0.0
    depth_mm: Range = (0.0, 0.0)
    spin_deg: Range = (0.0, 360.0)


@dataclasses.dataclass(frozen=True)
class ToolSpec:
    """One surgical tool placed in every image (or with ``probability``).

    Attributes:
      name: unique name (default the kind, numbered when a kind repeats): the COCO category.
      kind: ``"kwire"``, ``"screw"``, ``"plate"``, ``"guidewire"``, ``"catheter"``
        (:mod:`jaxdrr.instruments`) or ``"mesh"`` (a mesh file).
      params: ``((name, value), ...)`` keyword arguments of the instrument function (e.g.
        ``diameter_mm``); lists become tuples.
      path: ``"mesh"`` only: the mesh file (relative to the spec file).
      scale: ``"mesh"`` only: factor to millimetres (e.g. 1000 for a file in metres).
      landmarks: ``"mesh"`` only: ``((name, (x, y, z)), ...)`` in the mesh's frame (mm, after
        ``scale``); random placement needs ``tip`` and ``base``.
      material: attenuation-table material (None: the instrument's default; required for meshes).
      density: g/cm^3 (None: the material's nominal density or the instrument's).
      displaces: the tool replaces the tissue it occupies (True) or lies on top of it.
      frame: ``"ct"`` (mm offsets from the CT's centre, world axes) or ``"world"`` (world mm).
      probability: probability that the tool is in an image (absent tools are moved out of the
        field of view; the scene's objects are the same in every image).
      pose: a fixed pose (:class:`ToolPose`), or None.
      placement: a random placement (:class:`ToolPlacement`), or None (exactly one of the two).
    """

    name: str
    kind: str
    params: tuple[tuple[str, Any], ...] = ()
    path: str | None = None
    scale: float = 1.0
    landmarks: tuple[tuple[str, tuple[float, float, float]], ...] = ()
    material: str | None = None
    density: float | None = None
    displaces: bool = True
    frame: str = "ct"
    probability: float = 1.0
    pose: ToolPose | None = None
    placement: ToolPlacement | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A whole dataset: ``images_per_ct`` images of each CT in ``cts``."""

    cts: tuple[CTEntry, ...]
    name: str = "dataset"
    seed: int = 0
    images_per_ct: int = 64
    detector: DetectorSpec = DetectorSpec()
    pose: PoseSpec = PoseSpec()
    physics: PhysicsSpec = PhysicsSpec()
    annotations: AnnotationSpec = AnnotationSpec()
    output: OutputSpec = OutputSpec()
    tools: tuple[ToolSpec, ...] = ()
    base_dir: str = dataclasses.field(default=".", compare=False)

    @property
    def num_samples(self) -> int:
        return len(self.cts) * self.images_per_ct

    def to_dict(self) -> dict:
        """The normalised spec as plain JSON types (without ``base_dir``)."""
        d = dataclasses.asdict(self)
        d.pop("base_dir")
        if not self.tools:
            # A spec without tools has the digest it had before tools existed (old datasets resume).
            d.pop("tools")
            d["annotations"].pop("tool_path_length")
        return d

    def resolve(self, path: str) -> Path:
        """A path of the spec, relative to the spec file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def spec_digest(spec: DatasetSpec) -> str:
    """SHA-256 of the normalised spec (what a resumed run must match)."""
    text = json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Parsing and validation


def _fail(where: str, message: str):
    raise SpecError(f"{where}: {message}")


def _check_keys(table: Mapping, allowed, where: str) -> None:
    if not isinstance(table, Mapping):
        _fail(where, f"expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _number(value, where: str, *, positive=False, nonneg=False, integer=False, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(where, f"expected a number, got {value!r}")
    if integer and (not float(value).is_integer()):
        _fail(where, f"expected an integer, got {value!r}")
    if not math.isfinite(value):
        _fail(where, f"must be finite, got {value!r}")
    if positive and value <= 0:
        _fail(where, f"must be > 0, got {value!r}")
    if nonneg and value < 0:
        _fail(where, f"must be >= 0, got {value!r}")
    if lo is not None and value < lo:
        _fail(where, f"must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        _fail(where, f"must be <= {hi}, got {value!r}")
    return int(value) if integer else float(value)


def _range(value, where: str, **kw) -> Range:
    """A number (fixed) or [low, high]."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            _fail(where, f"expected a number or [low, high], got {list(value)!r}")
        lo, hi = (_number(v, where, **kw) for v in value)
        if lo > hi:
            _fail(where, f"low {lo} > high {hi}")
        return (lo, hi)
    v = _number(value, where, **kw)
    return (v, v)


def _choice(value, options, where: str) -> str:
    if value not in options:
        _fail(where, f"expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, f"expected true or false, got {value!r}")
    return value


def _string(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        _fail(where, f"expected a non-empty string, got {value!r}")
    return value


def _parse_cts(items, where: str = "ct") -> tuple[CTEntry, ...]:
    if not isinstance(items, list) or not items:
        _fail(where, "give at least one CT: [[ct]] with path = ... or phantom = ...")
    allowed = {
        "name",
        "path",
        "phantom",
        "seed",
        "count",
        "shape",
        "region",
        "landmarks",
        "labels",
        "label_names",
    }
    cts: list[CTEntry] = []
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        _check_keys(item, allowed, w)
        path, phantom = item.get("path"), item.get("phantom")
        if (path is None) == (phantom is None):
            _fail(w, "give exactly one of path = '...' (NIfTI/DICOM) or phantom = '...'")
        if path is not None:
            path = _string(path, f"{w}.path")
            for key in ("seed", "count", "shape", "region"):
                if key in item:
                    _fail(f"{w}.{key}", "only for built-in phantoms")
        else:
            phantom = _choice(phantom, PHANTOMS, f"{w}.phantom")
        seed = _number(item.get("seed", 0), f"{w}.seed", integer=True, nonneg=True)
        count = _number(item.get("count", 1), f"{w}.count", integer=True, positive=True)
        shape = item.get("shape")
        if shape is not None:
            if not isinstance(shape, list) or len(shape) != 3:
                _fail(f"{w}.shape", f"expected 3 voxel counts, got {shape!r}")
            shape = tuple(_number(s, f"{w}.shape", integer=True, lo=8) for s in shape)
        region = item.get("region")
        if region is not None:
            if phantom != "synthetic":
                _fail(f"{w}.region", "only for phantom = 'synthetic'")
            from jaxdrr.phantoms.synthetic import REGIONS

            region = _choice(region, REGIONS, f"{w}.region")
        landmarks = item.get("landmarks")
        if landmarks is not None:
            landmarks = _string(landmarks, f"{w}.landmarks")
            if landmarks == "builtin" and phantom != "analytic":
                _fail(f"{w}.landmarks", "'builtin' landmarks exist for phantom = 'analytic' only")
        labels = item.get("labels")
        if labels is not None:
            labels = _string(labels, f"{w}.labels")
            if labels == "builtin" and phantom not in ("analytic", "synthetic"):
                _fail(f"{w}.labels", "'builtin' labels exist for phantoms 'analytic' and 'synthetic' only")
        names = item.get("label_names", {})
        if not isinstance(names, Mapping):
            _fail(f"{w}.label_names", "expected a table {label id = name}")
        label_names = []
        for k, v in names.items():
            try:
                lid = int(k)
            except ValueError:
                _fail(f"{w}.label_names", f"label ids must be integers, got {k!r}")
            if lid <= 0:
                _fail(f"{w}.label_names", f"label ids must be > 0 (0 is background), got {lid}")
            label_names.append((lid, _string(v, f"{w}.label_names.{k}")))
        if label_names and (labels is None or labels == "builtin"):
            _fail(f"{w}.label_names", "only with labels = '<label-map file>'")
        base_name = item.get("name")
        for j in range(count):
            if base_name is not None:
                name = _string(base_name, f"{w}.name") + (f"-{j}" if count > 1 else "")
            elif path is not None:
                name = Path(path).name.removesuffix(".gz").removesuffix(".nii")
            else:
                name = f"{phantom}-{seed + j}"
            cts.append(
                CTEntry(
                    name=name,
                    path=path,
                    phantom=phantom,
                    seed=seed + j,
                    shape=shape,
                    region=region,
                    landmarks=landmarks,
                    labels=labels,
                    label_names=tuple(sorted(label_names)),
                )
            )
    names_seen: dict[str, int] = {}
    for i, ct in enumerate(cts):
        if ct.name in names_seen:
            _fail(
                where,
                f"CT name {ct.name!r} is used twice (entries {names_seen[ct.name]} and {i}); set name = ...",
            )
        names_seen[ct.name] = i
    return tuple(cts)


def _parse_detector(t) -> DetectorSpec:
    _check_keys(t, {"height", "width", "pixel_mm"}, "detector")
    d = DetectorSpec()
    return DetectorSpec(
        height=_number(t.get("height", d.height), "detector.height", integer=True, lo=8, hi=8192),
        width=_number(t.get("width", d.width), "detector.width", integer=True, lo=8, hi=8192),
        pixel_mm=_range(t.get("pixel_mm", list(d.pixel_mm)), "detector.pixel_mm", positive=True),
    )


def _parse_pose(t) -> PoseSpec:
    keys = {"lao_deg", "cran_deg", "isocenter_mm", "isocenter_jitter_mm", "sdd_mm", "sid_mm"}
    _check_keys(t, keys, "pose")
    d = PoseSpec()
    iso = t.get("isocenter_mm", "center")
    if iso != "center":
        if not isinstance(iso, list) or len(iso) != 3:
            _fail("pose.isocenter_mm", f"expected 'center' or [x, y, z] in world mm, got {iso!r}")
        iso = tuple(_number(v, "pose.isocenter_mm") for v in iso)
    jitter = t.get("isocenter_jitter_mm", 0.0)
    if isinstance(jitter, list):
        if len(jitter) != 3:
            _fail("pose.isocenter_jitter_mm", f"expected one number or 3, got {jitter!r}")
        jitter = tuple(_number(v, "pose.isocenter_jitter_mm", nonneg=True) for v in jitter)
    else:
        jitter = (_number(jitter, "pose.isocenter_jitter_mm", nonneg=True),) * 3
    pose = PoseSpec(
        lao_deg=_range(t.get("lao_deg", list(d.lao_deg)), "pose.lao_deg", lo=-180, hi=180),
        cran_deg=_range(t.get("cran_deg", list(d.cran_deg)), "pose.cran_deg", lo=-89, hi=89),
        isocenter_mm=iso,
        isocenter_jitter_mm=jitter,
        sdd_mm=_range(t.get("sdd_mm", list(d.sdd_mm)), "pose.sdd_mm", positive=True),
        sid_mm=_range(t.get("sid_mm", list(d.sid_mm)), "pose.sid_mm", positive=True),
    )
    if pose.sid_mm[1] >= pose.sdd_mm[0]:
        _fail(
            "pose.sid_mm",
            f"the source-isocentre distance (up to {pose.sid_mm[1]:g} mm) must stay below the "
            f"source-detector distance (from {pose.sdd_mm[0]:g} mm), or the detector cuts the patient",
        )
    return pose


def _parse_physics(t) -> PhysicsSpec:
    keys = {
        "kvp",
        "spectrum",
        "filtration_mm_al",
        "photons_per_pixel",
        "scatter_probability",
        "noise",
        "materials",
        "density_scale",
        "detector",
        "output",
    }
    _check_keys(t, keys, "physics")
    d = PhysicsSpec()
    kvp = t.get("kvp", list(d.kvp))
    kvp = kvp if isinstance(kvp, list) else [kvp]
    if not kvp:
        _fail("physics.kvp", "give at least one kVp")
    kvp = tuple(_number(v, "physics.kvp", integer=True, lo=20, hi=150) for v in kvp)
    spectrum = _choice(t.get("spectrum", d.spectrum), SPECTRA, "physics.spectrum")
    if spectrum == "ipem78":
        from jaxdrr.physics.spectra import IPEM78_FILES

        bad = [v for v in kvp if v not in IPEM78_FILES]
        if bad:
            _fail(
                "physics.kvp",
                f"IPEM-78 spectra are shipped for kVp {sorted(IPEM78_FILES)}, not {bad}; "
                "set spectrum = 'spekpy' (pip install 'jaxdrr[spectra]') for other voltages",
            )
    materials = _choice(
        t.get("materials", d.materials), ("thresholds", "thresholds+metal", "vnet"), "physics.materials"
    )
    from jaxdrr.materials import as_material_config

    channel_names = as_material_config(materials).names
    scales = t.get("density_scale", {})
    _check_keys(scales, channel_names, "physics.density_scale")
    density_scale = tuple(
        (name, _range(scales[name], f"physics.density_scale.{name}", positive=True))
        for name in channel_names
        if name in scales
    )
    return PhysicsSpec(
        kvp=kvp,
        spectrum=spectrum,
        filtration_mm_al=_number(
            t.get("filtration_mm_al", d.filtration_mm_al), "physics.filtration_mm_al", nonneg=True
        ),
        photons_per_pixel=_range(
            t.get("photons_per_pixel", list(d.photons_per_pixel)), "physics.photons_per_pixel", lo=1.0
        ),
        scatter_probability=_number(
            t.get("scatter_probability", d.scatter_probability), "physics.scatter_probability", lo=0, hi=1
        ),
        noise=_bool(t.get("noise", d.noise), "physics.noise"),
        materials=materials,
        density_scale=density_scale,
        detector=_choice(t.get("detector", d.detector), ("ei", "pc"), "physics.detector"),
        output=_choice(t.get("output", d.output), OUTPUTS, "physics.output"),
    )


def _parse_annotations(t) -> AnnotationSpec:
    d = AnnotationSpec()
    _check_keys(t, {f.name for f in dataclasses.fields(AnnotationSpec)}, "annotations")
    return AnnotationSpec(
        landmarks=_bool(t.get("landmarks", d.landmarks), "annotations.landmarks"),
        heatmaps=_bool(t.get("heatmaps", d.heatmaps), "annotations.heatmaps"),
        heatmap_sigma_px=_number(
            t.get("heatmap_sigma_px", d.heatmap_sigma_px), "annotations.heatmap_sigma_px", positive=True
        ),
        masks=_bool(t.get("masks", d.masks), "annotations.masks"),
        mask_threshold_mm=_number(
            t.get("mask_threshold_mm", d.mask_threshold_mm), "annotations.mask_threshold_mm", nonneg=True
        ),
        path_lengths=_bool(t.get("path_lengths", d.path_lengths), "annotations.path_lengths"),
        line_integrals=_bool(t.get("line_integrals", d.line_integrals), "annotations.line_integrals"),
        tool_path_length=_bool(t.get("tool_path_length", d.tool_path_length), "annotations.tool_path_length"),
    )


def _parse_output(t) -> OutputSpec:
    d = OutputSpec()
    _check_keys(t, {f.name for f in dataclasses.fields(OutputSpec)}, "output")
    return OutputSpec(
        shard_size=_number(
            t.get("shard_size", d.shard_size), "output.shard_size", integer=True, positive=True
        ),
        batch_size=_number(
            t.get("batch_size", d.batch_size), "output.batch_size", integer=True, positive=True
        ),
        image_dtype=_choice(t.get("image_dtype", d.image_dtype), IMAGE_DTYPES, "output.image_dtype"),
        compression=_choice(t.get("compression", d.compression), COMPRESSIONS, "output.compression"),
        coco=_bool(t.get("coco", d.coco), "output.coco"),
    )


def instrument_function(kind: str):
    """The :mod:`jaxdrr.instruments` builder of a tool kind (None for ``"mesh"``)."""
    if kind == "mesh":
        return None
    from jaxdrr import instruments

    return getattr(instruments, kind)


def _plain_value(value, where: str):
    """A TOML/YAML parameter value as a hashable plain value (lists -> tuples), checked finite."""
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value  # integers stay integers (segment and hole counts)
    if isinstance(value, float):
        return _number(value, where)
    if isinstance(value, (list, tuple)):
        return tuple(_plain_value(v, where) for v in value)
    _fail(where, f"expected a number, string, boolean or list, got {value!r}")


def _vector(value, where: str, **kw) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        _fail(where, f"expected 3 numbers [x, y, z], got {value!r}")
    return tuple(_number(v, where, **kw) for v in value)


def _parse_instrument_params(kind: str, table, where: str) -> tuple[tuple[str, Any], ...]:
    import inspect

    if not isinstance(table, Mapping):
        _fail(where, f"expected a table of {kind} parameters, got {table!r}")
    fn = instrument_function(kind)
    signature = inspect.signature(fn).parameters
    own = {"material", "density"}  # tool-level keys, not parameters
    allowed = sorted(set(signature) - own)
    for key in table:
        if key in own:
            _fail(f"{where}.{key}", f"set the tool's {key} = ... beside params, not inside it")
        if key not in signature:
            _fail(f"{where}.{key}", f"unknown {kind} parameter; allowed: {', '.join(allowed)}")
    missing = [
        k
        for k, p in signature.items()
        if p.default is inspect.Parameter.empty and k not in table and k not in own
    ]
    if missing:
        _fail(where, f"the {kind} needs parameter(s) {', '.join(missing)}")
    return tuple((k, _plain_value(table[k], f"{where}.{k}")) for k in sorted(table))


def _parse_tool_pose(t, where: str) -> ToolPose:
    _check_keys(t, {"rotation_deg", "translation_mm"}, where)
    return ToolPose(
        rotation_deg=_vector(t.get("rotation_deg", [0, 0, 0]), f"{where}.rotation_deg"),
        translation_mm=_vector(t.get("translation_mm", [0, 0, 0]), f"{where}.translation_mm"),
    )


def _parse_placement(item, where: str) -> ToolPlacement:
    entry, direction = item.get("entry"), item.get("direction")
    if entry is None or direction is None:
        _fail(
            where, "random placement needs both entry = {...} and direction = {...} (or a fixed pose = {...})"
        )
    w = f"{where}.entry"
    _check_keys(entry, {"center_mm", "center_fraction", "half_size_mm", "half_size_fraction", "radius_mm"}, w)
    if ("center_mm" in entry) == ("center_fraction" in entry):
        _fail(w, "give exactly one of center_mm = [x, y, z] or center_fraction = [fx, fy, fz]")
    if "center_mm" in entry:
        center, center_units = _vector(entry["center_mm"], f"{w}.center_mm"), "mm"
    else:
        center, center_units = _vector(entry["center_fraction"], f"{w}.center_fraction"), "fraction"
    sizes = [k for k in ("half_size_mm", "half_size_fraction", "radius_mm") if k in entry]
    if len(sizes) > 1:
        _fail(
            w,
            f"give at most one of half_size_mm, half_size_fraction (box) or radius_mm (sphere), got {sizes}",
        )
    shape, size, size_units = "box", (0.0, 0.0, 0.0), "mm"
    if sizes == ["radius_mm"]:
        r = _number(entry["radius_mm"], f"{w}.radius_mm", nonneg=True)
        shape, size = "sphere", (r, r, r)
    elif sizes:
        value = entry[sizes[0]]
        value = value if isinstance(value, list) else [value] * 3
        size = _vector(value, f"{w}.{sizes[0]}", nonneg=True)
        size_units = "fraction" if sizes[0] == "half_size_fraction" else "mm"
    w = f"{where}.direction"
    _check_keys(direction, {"mean", "cone_deg"}, w)
    if "mean" not in direction:
        _fail(f"{w}.mean", "give the mean direction [x, y, z] (world axes)")
    mean = _vector(direction["mean"], f"{w}.mean")
    norm = math.sqrt(sum(v * v for v in mean))
    if norm == 0:
        _fail(f"{w}.mean", "the direction must not be zero")
    cone = _number(direction.get("cone_deg", 0.0), f"{w}.cone_deg", lo=0.0, hi=180.0)
    return ToolPlacement(
        entry_shape=shape,
        entry_center=center,
        entry_center_units=center_units,
        entry_size=size,
        entry_size_units=size_units,
        direction=tuple(v / norm for v in mean),
        cone_deg=cone,
        depth_mm=_range(item.get("depth_mm", 0.0), f"{where}.depth_mm"),
        spin_deg=_range(item.get("spin_deg", [0.0, 360.0]), f"{where}.spin_deg"),
    )


def _parse_tools(items, where: str = "tools") -> tuple[ToolSpec, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        _fail(where, "expected an array of tables [[tools]]")
    from jaxdrr.physics.attenuation import available_materials

    allowed = {
        "name",
        "kind",
        "params",
        "path",
        "scale",
        "landmarks",
        "material",
        "density",
        "displaces",
        "frame",
        "probability",
        "pose",
        "entry",
        "direction",
        "depth_mm",
        "spin_deg",
    }
    tools: list[ToolSpec] = []
    kinds = [item.get("kind") if isinstance(item, Mapping) else None for item in items]
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        _check_keys(item, allowed, w)
        if "kind" not in item:
            _fail(f"{w}.kind", f"give the tool kind, one of {', '.join(map(repr, TOOL_KINDS))}")
        kind = _choice(item["kind"], TOOL_KINDS, f"{w}.kind")
        path, scale, landmarks, params = None, 1.0, (), ()
        if kind == "mesh":
            if "path" not in item:
                _fail(f"{w}.path", "a mesh tool needs path = '<mesh file>' (STL, OBJ, PLY, ...)")
            path = _string(item["path"], f"{w}.path")
            scale = _number(item.get("scale", 1.0), f"{w}.scale", positive=True)
            if "params" in item:
                _fail(f"{w}.params", "a mesh tool has no instrument parameters (use path, scale, landmarks)")
            if "material" not in item:
                _fail(f"{w}.material", "a mesh tool needs material = '<attenuation-table name>'")
            marks = item.get("landmarks", {})
            if not isinstance(marks, Mapping):
                _fail(f"{w}.landmarks", "expected a table {name = [x, y, z]} (mesh frame, mm)")
            landmarks = tuple((str(k), _vector(v, f"{w}.landmarks.{k}")) for k, v in sorted(marks.items()))
        else:
            for key in ("path", "scale", "landmarks"):
                if key in item:
                    _fail(f"{w}.{key}", "only for kind = 'mesh'")
            params = _parse_instrument_params(kind, item.get("params", {}), f"{w}.params")
        material = item.get("material")
        if material is not None and material not in available_materials():
            _fail(
                f"{w}.material", f"unknown material {material!r}; valid: {', '.join(available_materials())}"
            )
        density = item.get("density")
        if density is not None:
            density = _number(density, f"{w}.density", positive=True)
        if kinds.count(kind) > 1:
            default_name = f"{kind}-{kinds[:i].count(kind)}"
        else:
            default_name = kind
        name = _string(item.get("name", default_name), f"{w}.name")
        random_keys = [k for k in ("entry", "direction", "depth_mm", "spin_deg") if k in item]
        pose = placement = None
        if "pose" in item:
            if random_keys:
                _fail(w, f"give a fixed pose or a random placement, not both (found pose and {random_keys})")
            pose = _parse_tool_pose(item["pose"], f"{w}.pose")
        elif random_keys:
            placement = _parse_placement(item, w)
            if kind == "mesh" and not {"tip", "base"} <= {k for k, _ in landmarks}:
                _fail(f"{w}.landmarks", "random placement of a mesh needs its tip and base landmarks")
        else:
            _fail(w, "place the tool: pose = {rotation_deg, translation_mm}, or entry + direction + depth_mm")
        tools.append(
            ToolSpec(
                name=name,
                kind=kind,
                params=params,
                path=path,
                scale=scale,
                landmarks=landmarks,
                material=material,
                density=density,
                displaces=_bool(item.get("displaces", True), f"{w}.displaces"),
                frame=_choice(item.get("frame", "ct"), TOOL_FRAMES, f"{w}.frame"),
                probability=_number(item.get("probability", 1.0), f"{w}.probability", lo=0.0, hi=1.0),
                pose=pose,
                placement=placement,
            )
        )
    names = [t.name for t in tools]
    for i, name in enumerate(names):
        if names.index(name) != i:
            _fail(f"{where}[{i}].name", f"tool name {name!r} is used twice; set name = ...")
    return tuple(tools)


def spec_from_dict(data: Mapping[str, Any], base_dir: str | Path = ".") -> DatasetSpec:
    """Validates a spec given as nested mappings (the parsed TOML/YAML).

    Raises:
      SpecError: naming the first invalid key.
    """
    top = {
        "name",
        "seed",
        "images_per_ct",
        "ct",
        "detector",
        "pose",
        "physics",
        "annotations",
        "output",
        "tools",
    }
    _check_keys(data, top, "spec")
    tools = _parse_tools(data.get("tools"))
    annotations = _parse_annotations(data.get("annotations", {}))
    if annotations.tool_path_length and not tools:
        _fail("annotations.tool_path_length", "needs tools: add a [[tools]] table")
    return DatasetSpec(
        cts=_parse_cts(data.get("ct")),
        name=_string(data.get("name", "dataset"), "name"),
        seed=_number(data.get("seed", 0), "seed", integer=True, nonneg=True, hi=2**32 - 1),
        images_per_ct=_number(data.get("images_per_ct", 64), "images_per_ct", integer=True, positive=True),
        detector=_parse_detector(data.get("detector", {})),
        pose=_parse_pose(data.get("pose", {})),
        physics=_parse_physics(data.get("physics", {})),
        annotations=annotations,
        output=_parse_output(data.get("output", {})),
        tools=tools,
        base_dir=str(base_dir),
    )


def load_spec(path: str | Path) -> DatasetSpec:
    """Reads and validates a TOML (``.toml``) or YAML (``.yaml``/``.yml``) spec file.

    Relative CT, landmark and label paths are taken relative to the spec file's directory.

    Raises:
      FileNotFoundError: no such file.
      SpecError: unreadable syntax (with the parser's line) or an invalid key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset spec {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise SpecError("YAML specs need PyYAML (pip install pyyaml), or write the spec in TOML") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"{path}: not valid YAML: {e}") from e
    elif suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{path}: not valid TOML: {e}") from e
    else:
        raise SpecError(f"{path}: the spec must be a .toml or .yaml file")
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: the spec must be a table of keys, got {type(data).__name__}")
    return spec_from_dict(data, base_dir=path.resolve().parent)


EXAMPLE_SPEC = """# A small runnable jaxdrr dataset: the built-in analytic pelvis phantom, 48 images of 128 x 128
# with 13 landmarks and 7 projected bone masks. Run: jaxdrr dataset --config {name} --out data/
name = "pelvis-example"
seed = 0
images_per_ct = 48

[[ct]]
phantom = "analytic"        # or: path = "ct/case01.nii.gz", landmarks = "case01.csv", labels = "seg.nii.gz"
shape = [96, 80, 64]
landmarks = "builtin"
labels = "builtin"

[detector]
height = 128
width = 128
pixel_mm = [3.0, 3.6]       # pitch range at the panel (mm): 380-460 mm wide

[pose]
lao_deg = [-45, 45]         # LAO (+) / RAO (-)
cran_deg = [-30, 30]        # CRAN (+) / CAUD (-)
isocenter_mm = "center"
isocenter_jitter_mm = 15
sdd_mm = [950, 1200]
sid_mm = [600, 750]

[physics]
kvp = [60, 90, 120]
photons_per_pixel = [1e4, 1e5]   # drawn log-uniformly
scatter_probability = 0.5        # scatter ConvNet on half of the images
noise = true
materials = "thresholds"
density_scale = {{ bone = [0.9, 1.1] }}

[annotations]
landmarks = true
heatmaps = true
heatmap_sigma_px = 2.0
masks = true
mask_threshold_mm = 0.0

[output]
shard_size = 16
batch_size = 8
image_dtype = "float32"
compression = "lzf"
coco = true

# Surgical tools (uncomment to add): a K-wire entering near the top of the CT in 80 % of the images.
# [[tools]]
# kind = "kwire"                    # kwire, screw, plate, guidewire, catheter, or mesh (path = ...)
# params = {{ diameter_mm = 2.0, length_mm = 150 }}
# probability = 0.8
# entry = {{ center_fraction = [0.5, 0.5, 0.8], radius_mm = 15 }}
# direction = {{ mean = [0, 0, -1], cone_deg = 25 }}
# depth_mm = [10, 60]               # how far the tip is advanced beyond the entry point
"""


def write_example_spec(path: str | Path) -> Path:
    """Writes :data:`EXAMPLE_SPEC` (a runnable spec for the built-in phantom) to ``path``.

    Refuses to overwrite an existing file.
    """
    path = Path(path)
    if path.exists():
        raise SpecError(f"{path} already exists; choose another name or delete it")
    if path.suffix.lower() != ".toml":
        raise SpecError(f"{path}: the example spec is TOML; give a .toml path")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(EXAMPLE_SPEC.format(name=path.name))
    return path
