"""The option groups, loaders and checks the ``jaxdrr`` sub-commands share, each declared once.

A sub-command is a parser (options) plus a run function (what the options mean). The options
that several commands take — which CT to load, the C-arm geometry, the X-ray spectrum, the
material decomposition — are declared here, once, together with the function that turns the
parsed options into the library object (:func:`ct_selection` -> a :class:`CtSelection` whose
``load()`` gives a :class:`jaxdrr.Volume`, :func:`carm_geometry` -> a
:class:`jaxdrr.geometry.CArmGeometry`, :func:`spectrum_from_args` -> a rebinned
:class:`jaxdrr.physics.Spectrum`, :func:`materials_from_args` -> a :class:`jaxdrr.MaterialConfig`
with its label map).

Every command names its CT the same way (``--ct PATH|phantom`` with ``--phantom KIND``,
``--phantom-size I J K`` and ``--phantom-seed S``) and records the selection in what it writes
(:meth:`CtSelection.record`), so a later command reloads exactly the same CT.

Every command checks its options, inputs and outputs before any computation
(:func:`check_output`, :func:`check_input_file`, :func:`check_positive`, ...): a bad value is a
:class:`jaxdrr.JaxdrrError` that :func:`jaxdrr.cli.main.main` reports as one line with exit code 2.
Missing output directories are created (just before writing, so a command that fails leaves
nothing behind); existing output files are replaced atomically.

Where the commands still differ (defaults, one view or several), the difference is a field of a
frozen options dataclass (:class:`CtOptions`, :class:`GeometryOptions`) that each command fills
in; the declaration itself stays here. The command modules
(``jaxdrr.cli.<command>``) import from this module and from the library, never from each other.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import jaxdrr
from jaxdrr import physics
from jaxdrr.errors import GeometryError, JaxdrrError
from jaxdrr.geometry import CArmGeometry, carm, check_projection_matrix
from jaxdrr.io.mesh import MESH_SUFFIXES, read_mesh
from jaxdrr.io.write import IMAGE_FORMATS
from jaxdrr.materials import METALS, MaterialConfig, as_material_config
from jaxdrr.materials.labels import (
    check_label_map,
    load_label_mapping,
    mapping_table,
    read_structures_csv,
    totalsegmentator_mapping,
)
from jaxdrr.physics.spectra import check_spekpy_kvp, spekpy_kvp_range

# --------------------------------------------------------------------------------------------------
# Help texts
# --------------------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once: appended as "(default: X)" unless the help already says
    what the default is, or there is no value to show (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" in text.lower()
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return text
        return text + " (default: %(default)s)"


# --------------------------------------------------------------------------------------------------
# The CT: a file, a DICOM directory or a built-in phantom
# --------------------------------------------------------------------------------------------------

PHANTOMS = ("pelvis", "chest", "abdomen", "limb", "analytic")
DEFAULT_PHANTOM = "pelvis"
GEOMETRY_PRESETS = ("default", "deepdrr", "paper")
# The analytic phantom's grid when --phantom-size is not given.
ANALYTIC_PHANTOM_SHAPE = (192, 160, 128)


@dataclass(frozen=True)
class CtSelection:
    """Which CT a command loads: a NIfTI file or DICOM directory, or a built-in phantom.

    Attributes:
      path: the file or directory (absolute), or None for a phantom.
      series_uid: DICOM SeriesInstanceUID (files only; None: the directory's only series).
      phantom: the built-in phantom's kind (:data:`PHANTOMS`), or None for a file.
      phantom_size: its grid (I, J, K); None: the phantom's own (the anatomical phantoms' field of
        view at their default spacing; the analytic phantom is always recorded with its grid).
      phantom_seed: the subject of the anatomical phantoms (0 for the analytic one, which has none).
    """

    path: str | None = None
    series_uid: str | None = None
    phantom: str | None = None
    phantom_size: tuple[int, int, int] | None = None
    phantom_seed: int = 0

    @classmethod
    def of_phantom(cls, kind: str, size=None, seed: int = 0) -> CtSelection:
        """A built-in phantom, normalised so that equal CTs compare equal."""
        if kind not in PHANTOMS:
            raise JaxdrrError(f"unknown phantom {kind!r}; choose one of {', '.join(PHANTOMS)}")
        if size is not None:
            size = tuple(int(n) for n in size)
            if len(size) != 3 or min(size) < 1:
                raise JaxdrrError(f"--phantom-size needs three positive voxel counts, got {list(size)}")
        if kind == "analytic":
            return cls(phantom=kind, phantom_size=size or ANALYTIC_PHANTOM_SHAPE, phantom_seed=0)
        return cls(phantom=kind, phantom_size=size, phantom_seed=int(seed))

    @classmethod
    def of_file(cls, path, series_uid: str | None = None) -> CtSelection:
        """A NIfTI file or DICOM directory; it must exist."""
        path = Path(path)
        if not path.exists():
            raise JaxdrrError(
                f"CT {str(path)!r} does not exist (a NIfTI file, a DICOM directory or 'phantom')"
            )
        return cls(path=str(path.resolve()), series_uid=series_uid)

    @classmethod
    def from_record(cls, record) -> CtSelection | None:
        """The selection an output recorded (:meth:`record`), or None where it does not say.

        Older bundles recorded only ``ct: "phantom"`` (which phantom is unknown: None) or a path.
        """
        if isinstance(record, str):
            return None if record == "phantom" else cls(path=record)
        if not isinstance(record, dict):
            return None
        if record.get("path"):
            return cls(path=str(record["path"]), series_uid=record.get("series_uid"))
        if record.get("phantom") in PHANTOMS:
            return cls.of_phantom(
                record["phantom"], record.get("phantom_size"), record.get("phantom_seed", 0)
            )
        return None

    def record(self, volume: jaxdrr.Volume | None = None) -> dict:
        """What outputs store: enough to reload exactly this CT (plus its shape, as a check)."""
        if self.path is not None:
            out = {"path": self.path, "series_uid": self.series_uid}
        else:
            size = None if self.phantom_size is None else list(self.phantom_size)
            out = {"phantom": self.phantom, "phantom_size": size, "phantom_seed": self.phantom_seed}
        if volume is not None:
            out["shape"] = [int(n) for n in volume.shape]
        return out

    def describe(self) -> str:
        """One line for messages, e.g. ``phantom pelvis (its own grid, seed 0)``."""
        if self.path is not None:
            return self.path + (f" (series {self.series_uid})" if self.series_uid else "")
        grid = "its own grid" if self.phantom_size is None else "x".join(map(str, self.phantom_size))
        seed = f", seed {self.phantom_seed}" if self.phantom != "analytic" else ""
        return f"phantom {self.phantom} ({grid}{seed})"

    def command_line(self) -> str:
        """The options that select this CT, e.g. ``--ct phantom --phantom chest``."""
        if self.path is not None:
            return f"--ct {self.path}" + (f" --series-uid {self.series_uid}" if self.series_uid else "")
        text = f"--ct phantom --phantom {self.phantom}"
        if self.phantom_size is not None:
            text += " --phantom-size " + " ".join(map(str, self.phantom_size))
        return text + (f" --phantom-seed {self.phantom_seed}" if self.phantom_seed else "")

    def load(self) -> jaxdrr.Volume:
        """The CT as a HU :class:`jaxdrr.Volume` (a built-in phantom takes a few seconds)."""
        if self.path is not None:
            return jaxdrr.load_volume(self.path, series_uid=self.series_uid)
        if self.phantom == "analytic":
            return jaxdrr.phantom(shape=self.phantom_size)
        return jaxdrr.phantom(kind=self.phantom, shape=self.phantom_size, seed=self.phantom_seed)


@dataclass(frozen=True)
class CtOptions:
    """A command's variant of the CT options (``--ct``, ``--series-uid``, ``--phantom``, ...).

    Attributes:
      positional: also accept the CT as the first positional argument (``jaxdrr info CT``).
      recorded_default: the defaults are "the CT recorded in the input bundle" (``register``):
        the options default to None and :func:`ct_selection` fills them in from the record.
    """

    positional: bool = False
    recorded_default: bool = False


CT_HELP = (
    "the CT: a NIfTI file, a DICOM series directory, or 'phantom' for the built-in CT chosen with --phantom"
)


def add_ct_options(group, options: CtOptions) -> None:
    """Adds the CT selection to a parser or argument group (the same options for every command).

    Args:
      group: an ``argparse`` parser or argument group.
      options: the command's variant of the options.
    """
    recorded = options.recorded_default
    if options.positional:
        group.add_argument("ct_positional", nargs="?", metavar="CT", help="the same as --ct")
    if recorded:
        ct_help = CT_HELP + " (default: the CT recorded in the --xray bundle)"
    else:
        ct_help = CT_HELP + " (default: phantom)"
    # Commands with a positional CT leave --ct None so that the two can be told apart.
    default = None if (recorded or options.positional) else "phantom"
    group.add_argument("--ct", default=default, help=ct_help)
    group.add_argument(
        "--series-uid", default=None, help="DICOM SeriesInstanceUID when the directory holds several series"
    )
    group.add_argument(
        "--phantom",
        choices=PHANTOMS,
        default=None if recorded else DEFAULT_PHANTOM,
        help="the built-in CT used with --ct phantom: a detailed procedural adult CT of the pelvis "
        "(lumbar spine to the proximal femurs), chest, abdomen or a knee ('limb'), generated "
        "deterministically in a few seconds (jaxdrr.phantoms.demo_volume); or 'analytic', the smooth "
        "painted pelvis of ellipsoids with exact line integrals (jaxdrr.phantom()) "
        + ("(default: the bundle's, else pelvis)" if recorded else f"(default: {DEFAULT_PHANTOM})"),
    )
    group.add_argument(
        "--phantom-size",
        type=int,
        nargs=3,
        default=None,
        metavar=("I", "J", "K"),
        help="voxels of the built-in phantom (default: "
        + ("the bundle's, else " if recorded else "")
        + "the phantom's own: analytic 192 160 128; the anatomical phantoms their field of view at "
        "1.6-1.75 mm, 1 mm for the knee)",
    )
    group.add_argument(
        "--phantom-seed",
        type=int,
        default=None if recorded else 0,
        help="subject of the anatomical phantoms (small variations of size and tissue) (default: "
        + ("the bundle's, else 0)" if recorded else "0)"),
    )


def ct_selection(args, recorded: CtSelection | None = None) -> CtSelection:
    """The CT the parsed options name (:class:`CtSelection`), checked but not loaded.

    Args:
      args: parsed options of :func:`add_ct_options`.
      recorded: the CT an input file recorded (``register``'s bundle): it is the default of
        ``--ct`` and, with ``--ct phantom``, of the phantom options not given.

    Returns:
      The selection.
    """
    ct = args.ct
    positional = getattr(args, "ct_positional", None)
    if positional is not None:
        if ct is not None and ct != positional:
            raise JaxdrrError(f"two CTs given: {positional!r} and --ct {ct!r}; give one")
        ct = positional
    if ct is None:
        if recorded is not None:
            return recorded
        ct = "phantom"
    if ct == "phantom":
        base = recorded if (recorded is not None and recorded.phantom is not None) else None
        kind = args.phantom or (base.phantom if base else DEFAULT_PHANTOM)
        same_kind = base is not None and base.phantom == kind
        size = args.phantom_size
        if size is None and same_kind:
            size = base.phantom_size
        seed = args.phantom_seed
        if seed is None:
            seed = base.phantom_seed if same_kind else 0
        return CtSelection.of_phantom(kind, size, seed)
    return CtSelection.of_file(ct, getattr(args, "series_uid", None))


def load_ct(args) -> jaxdrr.Volume:
    """The CT the parsed options name, loaded (see :func:`ct_selection`)."""
    return ct_selection(args).load()


# --------------------------------------------------------------------------------------------------
# The C-arm geometry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeometryOptions:
    """A command's variant of the C-arm options (``--lao`` ... ``--pixel-size``).

    Attributes:
      several_views: ``--lao``/``--cran`` take one or more angles (a list) instead of one.
      lao_help, cran_help: help of the angles.
      height, width, pixel_size_mm: defaults of the detector options (None: the preset's).
    """

    several_views: bool
    lao_help: str
    cran_help: str
    height: int | None = None
    width: int | None = None
    pixel_size_mm: float | None = None


def add_geometry_options(group, options: GeometryOptions) -> None:
    """Adds the C-arm angles, isocentre, preset and detector options to a parser or group."""
    angles = {"nargs": "+", "default": [0.0]} if options.several_views else {"default": 0.0}
    group.add_argument("--lao", type=float, help=options.lao_help, **angles)
    group.add_argument("--cran", type=float, help=options.cran_help, **angles)
    group.add_argument(
        "--isocenter",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="rotation centre in world mm (default: the volume centre)",
    )
    group.add_argument(
        "--preset",
        choices=GEOMETRY_PRESETS,
        default="default",
        help="C-arm distances and detector: default (SDD 1020, SID 700, 512^2 x 0.8 mm), deepdrr "
        "(SDD 1020, SID 530, 1536^2 x 0.194 mm) or paper (615x479 x 0.616 mm); the options below "
        "override single values",
    )
    group.add_argument(
        "--sdd", type=float, default=None, help="source-detector distance, mm (default: the preset's)"
    )
    group.add_argument(
        "--sid",
        type=float,
        default=None,
        help="source-isocentre distance, mm, less than --sdd (default: the preset's)",
    )
    detector = (
        ("--height", int, options.height, "detector rows"),
        ("--width", int, options.width, "detector columns"),
        ("--pixel-size", float, options.pixel_size_mm, "pixel pitch, mm"),
    )
    for flag, kind, default, text in detector:
        suffix = " (default: the preset's)" if default is None else ""
        group.add_argument(flag, type=kind, default=default, help=text + suffix)


def carm_geometry(args) -> CArmGeometry:
    """The ``--preset`` C-arm with the distances and detector options that were given.

    Raises:
      GeometryError: an impossible geometry (pixel size or distances not positive and finite,
        SID >= SDD, detector size < 1), before any work.
    """
    presets = {"default": CArmGeometry(), "deepdrr": CArmGeometry.deepdrr(), "paper": CArmGeometry.paper()}
    changes = {
        field: value
        for field, value in (
            ("sdd_mm", args.sdd),
            ("sid_mm", args.sid),
            ("height", args.height),
            ("width", args.width),
            ("pixel_size_mm", args.pixel_size),
        )
        if value is not None
    }
    options = {"sdd_mm": "--sdd", "sid_mm": "--sid", "height": "--height", "width": "--width"}
    options["pixel_size_mm"] = "--pixel-size"
    try:
        return dataclasses.replace(presets[args.preset], **changes)
    except GeometryError as exc:
        text = str(exc)
        for field, flag in options.items():
            text = text.replace(f"C-arm {field}", flag).replace(f"detector {field}", flag)
        raise GeometryError(text) from exc


def check_angles(laos, crans) -> None:
    """A GeometryError unless every ``--lao``/``--cran`` angle is finite (before any work)."""
    for name, values in (("--lao", laos), ("--cran", crans)):
        for value in np.atleast_1d(values):
            if not math.isfinite(value):
                raise GeometryError(f"{name} must be a finite angle in degrees, got {value}")


def view_matrix(lao: float, cran: float, isocenter, geometry: CArmGeometry) -> np.ndarray:
    """P [3, 4] (float64) of one C-arm view, checked (a GeometryError for non-finite angles or P)."""
    check_angles(lao, cran)
    iso = np.asarray(isocenter, np.float64)
    if iso.shape != (3,) or not np.all(np.isfinite(iso)):
        raise GeometryError(f"--isocenter must be three finite mm values, got {iso.tolist()}")
    P = carm(lao, cran, isocenter=iso, geometry=geometry)
    return check_projection_matrix(P, f"P of the view LAO {lao:g} CRAN {cran:g}")


# --------------------------------------------------------------------------------------------------
# The X-ray spectrum
# --------------------------------------------------------------------------------------------------

SHIPPED_KVP = (60.0, 90.0, 120.0)  # the IPEM-78 spectra shipped with jaxdrr
SPEKPY_DEFAULT_FILTRATION_MM_AL = 4.3  # when another kVp is asked for without --filtration


def add_spectrum_options(group) -> None:
    """Adds ``--kvp``, ``--filtration`` and ``--spectrum-csv`` to a parser or group."""
    low, high = spekpy_kvp_range()
    group.add_argument(
        "--kvp",
        type=float,
        default=120.0,
        help="tube voltage in kV: 60, 90 or 120 use the shipped IPEM-78 spectra; others "
        f"({low:g}-{high:g} kV) a SpekPy spectrum (pip install jaxdrr[spectra]) (default: 120)",
    )
    group.add_argument(
        "--filtration",
        type=float,
        default=None,
        help="total Al filtration in mm (forces a SpekPy spectrum; default: IPEM-78's, "
        f"{SPEKPY_DEFAULT_FILTRATION_MM_AL:g} mm for other kVp)",
    )
    group.add_argument(
        "--spectrum-csv",
        default=None,
        help="CSV with a header and columns energy_keV,fluence (overrides --kvp)",
    )


def spectrum_from_args(args) -> physics.Spectrum:
    """The spectrum the options ask for, rebinned to the 1 keV grid of the attenuation tables.

    ``--spectrum-csv`` wins; else a shipped IPEM-78 spectrum for 60/90/120 kVp without
    ``--filtration``; else SpekPy (``--filtration`` mm Al, default 4.3) for a kVp in
    :func:`jaxdrr.physics.spectra.spekpy_kvp_range`. Cheap: call it before the work.
    """
    if args.spectrum_csv:
        check_input_file(args.spectrum_csv, "--spectrum-csv")
        try:
            data = np.genfromtxt(args.spectrum_csv, delimiter=",", comments="#", names=True)
            energies, fluence = data[data.dtype.names[0]], data[data.dtype.names[1]]
        except (ValueError, TypeError, IndexError) as exc:
            raise JaxdrrError(
                f"--spectrum-csv {args.spectrum_csv!r} is not a CSV with a header and two columns "
                f"energy_keV,fluence: {exc}"
            ) from exc
        try:
            spectrum = physics.from_arrays(
                np.atleast_1d(energies),
                np.atleast_1d(fluence),
                name=Path(args.spectrum_csv).name,
                provenance=f"user file {args.spectrum_csv}",
            )
        except JaxdrrError as exc:
            raise JaxdrrError(f"--spectrum-csv {args.spectrum_csv!r}: {exc}") from exc
    elif args.filtration is None and float(args.kvp) in SHIPPED_KVP:
        spectrum = physics.ipem78(int(args.kvp))
    else:
        check_spekpy_kvp(args.kvp)
        filtration = args.filtration if args.filtration is not None else SPEKPY_DEFAULT_FILTRATION_MM_AL
        check_non_negative(filtration, "--filtration")
        spectrum = physics.spekpy_spectrum(args.kvp, filtration)
    return physics.rebin(spectrum)


# --------------------------------------------------------------------------------------------------
# The material decomposition
# --------------------------------------------------------------------------------------------------


def add_material_options(group, *, render: bool) -> None:
    """Adds ``--mapping``/``--structures``/``--metal`` (and, for render, ``--hu-to-density`` and
    ``--materials``) to a parser or group.

    Args:
      group: an ``argparse`` parser or argument group.
      render: add the options only ``jaxdrr render`` has (``segment`` chooses its route with
        ``--method``/``--labels`` instead).
    """
    if render:
        group.add_argument(
            "--hu-to-density",
            choices=("deepdrr", "schneider"),
            default="deepdrr",
            help="HU -> mass density conversion: DeepDRR's bilinear map or Schneider et al. 2000",
        )
        group.add_argument(
            "--materials",
            default="thresholds",
            help="material decomposition: 'thresholds' (air/soft tissue/bone, DeepDRR's soft "
            "thresholds), 'thresholds+metal' (adds a metal channel above 2500 HU), 'vnet' (the "
            "V-Net, 4 channels) or 'labels:SEG.nii.gz' (a label map on the CT grid with --mapping "
            "or --structures; thresholds where unlabelled)",
        )
    group.add_argument(
        "--mapping",
        default=None,
        help='JSON label mapping, e.g. {"bone": [25, 26], "air": [16], "metal": [99]}',
    )
    group.add_argument(
        "--structures",
        default=None,
        help="CSV with columns structure,id (TotalSegmentator names): bones -> bone, airways -> "
        "air, implants -> metal, the rest left to the thresholds",
    )
    group.add_argument(
        "--metal",
        choices=METALS,
        default=None,
        help="attenuation material of the metal channel (default titanium)",
    )


def label_mapping_from_args(args) -> tuple[dict | None, str | None]:
    """(label id -> material mapping, where it came from) of ``--mapping``/``--structures``, or Nones."""
    if args.mapping and args.structures:
        raise JaxdrrError("give either --mapping or --structures, not both")
    if args.mapping:
        check_input_file(args.mapping, "--mapping")
        return load_label_mapping(args.mapping), f"mapping {args.mapping}"
    if args.structures:
        check_input_file(args.structures, "--structures")
        mapping = totalsegmentator_mapping(read_structures_csv(args.structures))
        return mapping, f"structures {args.structures}"
    return None, None


MATERIAL_METHODS = ("thresholds", "thresholds+metal", "vnet", "labels")


def check_material_options(args, method: str | None, labels_path: str | None) -> None:
    """The checks of :func:`materials_from_args` that need no CT: run them before the work."""
    if method not in MATERIAL_METHODS:
        raise JaxdrrError(
            f"unknown materials {method!r}; use thresholds, thresholds+metal, vnet or labels:SEG.nii.gz"
        )
    mapping, _ = label_mapping_from_args(args)
    if method == "labels":
        if labels_path is None:
            raise JaxdrrError("method labels needs a label map (segment: --labels SEG; render: labels:SEG)")
        check_input_file(labels_path, "label map")
        if mapping is None:
            raise JaxdrrError("a label map needs --mapping map.json or --structures structures.csv")
    elif labels_path is not None:
        raise JaxdrrError(f"a label map was given but the method is {method!r}; use labels")
    elif mapping is not None:
        raise JaxdrrError("--mapping/--structures apply to label maps only (method labels)")


def materials_from_args(args, volume, method: str | None, labels_path: str | None):
    """The material decomposition the options ask for, checked against the CT.

    Args:
      args: parsed options with ``mapping``, ``structures``, ``metal`` (and ``hu_to_density`` for render).
      volume: the CT (a label map must lie on its grid).
      method: "thresholds", "thresholds+metal", "vnet" or "labels".
      labels_path: the label map file (method "labels" only).

    Returns:
      (MaterialConfig, label Volume or None, mapping or None, description of the mapping or None).
    """
    check_material_options(args, method, labels_path)
    hu_to_density = getattr(args, "hu_to_density", None)
    mapping, source = label_mapping_from_args(args)
    if method == "labels":
        config = MaterialConfig.with_metal(metal=args.metal or "titanium", method="labels")
        labels = jaxdrr.load_volume(labels_path)
        try:
            check_label_map(labels, volume)  # eagerly: under jit the integer check cannot run
            mapping_table(mapping, config.names)
        except JaxdrrError as exc:
            raise JaxdrrError(f"label map {labels_path}: {exc}") from exc
        config = as_material_config(config, hu_to_density=hu_to_density)
        return config, labels, mapping, source
    if method == "vnet":
        config = MaterialConfig.with_metal(metal=args.metal or "titanium", method="vnet")
    else:
        config = as_material_config(method, metal=args.metal)
    return as_material_config(config, hu_to_density=hu_to_density), None, None, None


# --------------------------------------------------------------------------------------------------
# Surgical tools: parametric instruments and mesh files placed in the CT (docs/tools.md)
# --------------------------------------------------------------------------------------------------

TOOL_KINDS = ("kwire", "screw", "plate", "guidewire", "catheter")
DEFAULT_MESH_MATERIAL = "titanium"
# Keys every --tool / --mesh spec accepts besides the builder's own parameters.
_COMMON_TOOL_KEYS = ("name", "material", "density", "displace")
_MESH_KEYS = (*_COMMON_TOOL_KEYS, "scale")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class _AppendTool(argparse.Action):
    """Appends ``(option kind, text)`` to one shared list, so --tool and --mesh keep their order."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        items.append((self.const, values))
        setattr(namespace, self.dest, items)


def add_tool_options(group) -> None:
    """Adds ``--tool``, ``--mesh``, ``--tool-pose`` and ``--tool-material`` to a parser or group."""
    group.add_argument(
        "--tool",
        dest="tools",
        action=_AppendTool,
        const="tool",
        default=None,
        metavar="KIND[:KEY=VALUE,...]",
        help="add a parametric instrument (repeatable): "
        + ", ".join(TOOL_KINDS)
        + "; keys are the builder's parameters without the _mm suffix (kwire:diameter=1.6,length=150; "
        "screw:length=40,cannulated=true; plate:holes=8; guidewire:points=0/0/0;0/20/80) plus "
        "name=, material=, density= (g/cm^3) and displace=false (lie on top of the tissue instead of "
        "replacing it). Lengths in mm; the tool's base is its origin, its long axis +z",
    )
    group.add_argument(
        "--mesh",
        dest="tools",
        action=_AppendTool,
        const="mesh",
        default=None,
        metavar="PATH[:KEY=VALUE,...]",
        help="add a closed triangle mesh file (STL, OBJ or PLY; repeatable) in mm, with keys "
        f"material= (default {DEFAULT_MESH_MATERIAL}), density=, scale= (file units -> mm, e.g. "
        "1000 for metres), name=, displace=false",
    )
    group.add_argument(
        "--tool-pose",
        action="append",
        default=None,
        metavar="[NAME=]RX,RY,RZ,TX,TY,TZ",
        help="pose of a tool (repeatable): rotation vector in degrees (axis x angle, about the tool's "
        "origin) and the position of the tool's origin in mm from the isocentre (RAS+). Without "
        "NAME= the poses apply to the tools in the order given; default: no rotation, origin at "
        "the isocentre",
    )
    group.add_argument(
        "--tool-material",
        action="append",
        default=None,
        metavar="[NAME=]MATERIAL",
        help="attenuation material of every tool (or of the tool NAME) whose spec has no material=: "
        "e.g. titanium, ti6al4v, stainless_steel_316l, cobalt_chrome, peek, tungsten; the density "
        "is the material's unless density= is given",
    )


@dataclass(frozen=True)
class ToolSpec:
    """One ``--tool`` or ``--mesh``, parsed and checked (no file read, nothing built yet).

    Attributes:
      option: ``"--tool"`` or ``"--mesh"``.
      text: the option's value as given (recorded in outputs).
      kind: an instrument kind (:data:`TOOL_KINDS`) or ``"mesh"``.
      name: the unique object name in the scene.
      params: builder keyword arguments (instruments) as ``(key, value)`` pairs.
      path: the mesh file (``--mesh``).
      scale: file units -> mm (``--mesh``).
      material: attenuation material, or None for the instrument's default.
      density: g/cm^3, or None for the material's (or instrument's) default.
      displaces: the tool replaces the tissue it occupies.
      rotation_deg: rotation vector (degrees) of ``--tool-pose``.
      offset_mm: position of the tool's origin relative to the isocentre (mm).
    """

    option: str
    text: str
    kind: str
    name: str
    params: tuple = ()
    path: str | None = None
    scale: float = 1.0
    material: str | None = None
    density: float | None = None
    displaces: bool = True
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _split_spec(option: str, text: str, path_like: bool) -> tuple[str, dict[str, str]]:
    """``HEAD[:k=v,k=v]`` -> (HEAD, {k: v}); for paths only a last ``:`` followed by ``=`` splits."""
    head, sep, tail = text.rpartition(":") if path_like else text.partition(":")
    if path_like and (not sep or "=" not in tail):
        head, tail = text, ""
    if not head:
        raise JaxdrrError(f"{option} {text!r}: missing the " + ("file" if path_like else "kind"))
    items: dict[str, str] = {}
    if not tail:
        return head, items
    for item in tail.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise JaxdrrError(
                f"{option} {text!r}: expected KEY=VALUE items separated by commas, got {item!r}"
            )
        if key in items:
            raise JaxdrrError(f"{option} {text!r}: {key}= is given twice")
        items[key] = value
    return head, items


def _number(option: str, text: str, key: str, value: str, *, positive=False, non_negative=False) -> float:
    try:
        number = float(value)
    except ValueError:
        raise JaxdrrError(f"{option} {text!r}: {key}= must be a number, got {value!r}") from None
    if not math.isfinite(number) or (positive and number <= 0) or (non_negative and number < 0):
        need = "a positive number" if positive else ("a number >= 0" if non_negative else "a finite number")
        raise JaxdrrError(f"{option} {text!r}: {key}= must be {need}, got {value}")
    return number


def _boolean(option: str, text: str, key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise JaxdrrError(f"{option} {text!r}: {key}= must be true or false, got {value!r}")


def _points(option: str, text: str, key: str, value: str) -> list[list[float]]:
    """``x/y/z;x/y/z;...`` (mm) -> a list of points."""
    points = []
    for item in value.split(";"):
        coords = item.split("/")
        if len(coords) != 3:
            raise JaxdrrError(f"{option} {text!r}: {key}= needs points X/Y/Z separated by ';', got {item!r}")
        points.append([_number(option, text, key, c) for c in coords])
    return points


def _builder_parameters(kind: str) -> dict:
    import inspect

    from jaxdrr import instruments

    return dict(inspect.signature(getattr(instruments, kind)).parameters)


def _tool_params(text: str, kind: str, items: dict[str, str]) -> tuple:
    """Builder keyword arguments of ``--tool KIND:...`` checked against the builder's signature."""
    import inspect

    parameters = _builder_parameters(kind)
    accepted = {name.removesuffix("_mm"): name for name in parameters if name not in ("material", "density")}
    accepted["points"] = "control_points_mm" if "control_points_mm" in parameters else None
    accepted = {k: v for k, v in accepted.items() if v is not None and k != "control_points"}
    out = {}
    for key, value in items.items():
        if key in _COMMON_TOOL_KEYS:
            continue
        if key not in accepted:
            raise JaxdrrError(
                f"--tool {text!r}: unknown key {key!r} for {kind}; use "
                + ", ".join(sorted((*accepted, *_COMMON_TOOL_KEYS)))
            )
        name = accepted[key]
        default = parameters[name].default
        if name == "control_points_mm":
            out[name] = _points("--tool", text, key, value)
        elif isinstance(default, bool):
            out[name] = _boolean("--tool", text, key, value)
        elif isinstance(default, int):
            number = _number("--tool", text, key, value)
            if number != int(number):
                raise JaxdrrError(f"--tool {text!r}: {key}= must be an integer, got {value}")
            out[name] = int(number)
        elif isinstance(default, str):
            out[name] = value
        else:
            out[name] = _number("--tool", text, key, value)
    required = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name not in out and p.kind != p.VAR_KEYWORD
    ]
    if required:
        keys = ["points" if r == "control_points_mm" else r.removesuffix("_mm") for r in required]
        raise JaxdrrError(f"--tool {text!r}: {kind} needs " + ", ".join(f"{k}=" for k in keys))
    return tuple(sorted(out.items()))


def _check_table_material(option: str, text: str, material: str) -> str:
    if material not in physics.available_materials():
        raise JaxdrrError(
            f"{option} {text!r}: unknown material {material!r}; use one of "
            + ", ".join(physics.available_materials())
        )
    return material


def _parse_pose(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    parts = text.split(",")
    if len(parts) != 6:
        raise JaxdrrError(f"--tool-pose {text!r}: expected RX,RY,RZ,TX,TY,TZ (degrees, then mm)")
    values = [_number("--tool-pose", text, "the pose", p) for p in parts]
    return tuple(values[:3]), tuple(values[3:])


def _named(option: str, text: str, names: list[str]) -> tuple[str | None, str]:
    """``NAME=VALUE`` -> (NAME, VALUE) when NAME is a tool's name, else (None, text)."""
    name, eq, value = text.partition("=")
    if not eq:
        return None, text
    if name not in names:
        raise JaxdrrError(f"{option} {text!r}: no tool named {name!r}; tools: {', '.join(names) or 'none'}")
    return name, value


def tool_specs_from_args(args) -> list[ToolSpec]:
    """The ``--tool``/``--mesh`` objects with their poses and materials, parsed and checked.

    Cheap (no file is read, no mesh built): call it before any work. Names default to the kind
    (``kwire``, ``kwire_2``, ...) or the mesh file's stem.

    Raises:
      JaxdrrError: an unknown kind, key or material, a value that is not a number, a negative
        density, a missing mesh file, duplicate names, more ``--tool-pose`` than tools, ...
    """
    raw = list(getattr(args, "tools", None) or [])
    poses = list(getattr(args, "tool_pose", None) or [])
    materials = list(getattr(args, "tool_material", None) or [])
    if not raw:
        if poses or materials:
            raise JaxdrrError("--tool-pose/--tool-material need a --tool or --mesh to apply to")
        return []
    specs: list[dict] = []
    for which, text in raw:
        option = f"--{which}"
        head, items = _split_spec(option, text, path_like=which == "mesh")
        allowed = _MESH_KEYS if which == "mesh" else None
        if allowed is not None:
            unknown = [k for k in items if k not in allowed]
            if unknown:
                raise JaxdrrError(f"{option} {text!r}: unknown key {unknown[0]!r}; use {', '.join(allowed)}")
        spec = dict(option=option, text=text)
        if which == "mesh":
            path = check_input_file(head, "--mesh")
            if not path.is_file() or not path.name.lower().endswith(MESH_SUFFIXES):
                raise JaxdrrError(f"--mesh {head!r} is not a {', '.join(MESH_SUFFIXES)} file")
            spec.update(kind="mesh", path=str(path), default_name=path.stem)
            if "scale" in items:
                spec["scale"] = _number(option, text, "scale", items["scale"], positive=True)
        else:
            if head not in TOOL_KINDS:
                raise JaxdrrError(
                    f"--tool {text!r}: unknown kind {head!r}; use one of {', '.join(TOOL_KINDS)}"
                )
            spec.update(kind=head, params=_tool_params(text, head, items), default_name=head)
        if "material" in items:
            spec["material"] = _check_table_material(option, text, items["material"])
        if "density" in items:
            spec["density"] = _number(option, text, "density", items["density"], non_negative=True)
        if "displace" in items:
            spec["displaces"] = _boolean(option, text, "displace", items["displace"])
        spec["explicit_name"] = items.get("name")
        specs.append(spec)
    # Names: explicit ones as given, the others the kind / file stem, numbered when repeated.
    taken = [s["explicit_name"] for s in specs if s["explicit_name"]]
    duplicates = sorted({n for n in taken if taken.count(n) > 1})
    if duplicates:
        raise JaxdrrError(f"two tools are named {duplicates[0]!r}; give each a unique name=")
    counts: dict[str, int] = {}
    for s in specs:
        if s["explicit_name"]:
            s["name"] = s["explicit_name"]
            continue
        base = s["default_name"]
        while True:
            counts[base] = counts.get(base, 0) + 1
            name = base if counts[base] == 1 else f"{base}_{counts[base]}"
            if name not in taken:
                break
        taken.append(name)
        s["name"] = name
    names = [s["name"] for s in specs]
    positional = 0
    posed: set[str] = set()
    for text in poses:
        name, value = _named("--tool-pose", text, names)
        if name is None:
            if positional >= len(specs):
                raise JaxdrrError(f"--tool-pose {text!r}: more --tool-pose values than tools ({len(specs)})")
            name = names[positional]
            positional += 1
        if name in posed:
            raise JaxdrrError(f"--tool-pose {text!r}: the tool {name!r} already has a pose")
        posed.add(name)
        rotation, offset = _parse_pose(value)
        specs[names.index(name)].update(rotation_deg=rotation, offset_mm=offset)
    every, named = None, {}
    for text in materials:
        name, value = _named("--tool-material", text, names)
        _check_table_material("--tool-material", text, value)
        if name is None:
            if every is not None:
                raise JaxdrrError(
                    f"--tool-material {text!r}: a material for every tool is already given ({every})"
                )
            every = value
        elif name in named:
            raise JaxdrrError(f"--tool-material {text!r}: the tool {name!r} already has a --tool-material")
        elif "material" in specs[names.index(name)]:
            raise JaxdrrError(
                f"--tool-material {text!r}: the tool {name!r} already has material= in its spec"
            )
        else:
            named[name] = value
    for s in specs:
        if "material" not in s and (s["name"] in named or every is not None):
            s["material"] = named.get(s["name"], every)
    fields = {f.name for f in dataclasses.fields(ToolSpec)}
    return [ToolSpec(**{k: v for k, v in s.items() if k in fields}) for s in specs]


def build_tools(specs: list[ToolSpec]) -> list:
    """The un-posed :class:`jaxdrr.scene.MeshObject` of each spec: instruments built, mesh files read.

    Runs before the CT is loaded (a bad mesh or impossible instrument stops the command early).
    Each object is at the identity pose; :func:`posed_tools` places them.
    """
    from jaxdrr import instruments
    from jaxdrr.scene import MeshObject

    out = []
    for s in specs:
        try:
            if s.kind == "mesh":
                mesh = read_mesh(s.path, scale=s.scale, name=s.name)
                material = s.material or DEFAULT_MESH_MATERIAL
                obj = MeshObject.create(mesh, material, density=s.density, name=s.name, displaces=s.displaces)
            else:
                builder = getattr(instruments, s.kind)
                overrides = {"material": s.material} if s.material else {}
                if s.density is not None:
                    overrides["density"] = s.density
                instrument = builder(**dict(s.params), **overrides)
                obj = MeshObject.from_instrument(instrument, name=s.name, displaces=s.displaces)
        except JaxdrrError as exc:
            raise JaxdrrError(f"{s.option} {s.text!r}: {exc}") from exc
        out.append(obj)
    return out


def posed_tools(specs: list[ToolSpec], objects: list, isocenter) -> list:
    """The objects of :func:`build_tools` at their ``--tool-pose`` (origin relative to ``isocenter``)."""
    from jaxdrr.geometry.rigid import RigidTransform

    iso = np.asarray(isocenter, np.float64)
    out = []
    for s, obj in zip(specs, objects, strict=True):
        pose = RigidTransform.create(
            rotation=np.deg2rad(np.asarray(s.rotation_deg, np.float64)),
            translation=iso + np.asarray(s.offset_mm, np.float64),
        )
        out.append(obj.replace(pose=pose))
    return out


# --------------------------------------------------------------------------------------------------
# Checks of options, inputs and outputs (before any computation)
# --------------------------------------------------------------------------------------------------


def check_positive(value, option: str, *, integer: bool = False) -> None:
    """A JaxdrrError unless ``value`` is finite and > 0 (an integer >= 1 with ``integer``)."""
    if value is None:
        return
    if not (math.isfinite(value) and value > 0) or (integer and value < 1):
        need = "an integer >= 1" if integer else "a positive finite number"
        raise JaxdrrError(f"{option} must be {need}, got {value:g}")


def check_non_negative(value, option: str) -> None:
    """A JaxdrrError unless ``value`` is finite and >= 0."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise JaxdrrError(f"{option} must be a finite number >= 0, got {value:g}")


def check_window(window) -> tuple[float, float] | None:
    """``--window LOW HIGH`` as a tuple, checked (finite, LOW < HIGH); None stays None."""
    if window is None:
        return None
    low, high = (float(v) for v in window)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise JaxdrrError(f"--window needs finite LOW < HIGH, got {low:g} {high:g}")
    return low, high


def check_input_file(path, what: str, *, suffixes: tuple[str, ...] | None = None, hint: str = "") -> Path:
    """An existing input file (or DICOM directory when ``suffixes`` is None and it is a directory).

    Args:
      path: the file.
      what: the option, for the message (e.g. ``--xray``).
      suffixes: accepted endings (lower case); None: any.
      hint: appended to the message of a wrong ending (what to pass instead).

    Returns:
      The path.
    """
    path = Path(path)
    if not path.exists():
        raise JaxdrrError(f"{what} {str(path)!r} does not exist")
    if suffixes is not None:
        if not path.is_file():
            raise JaxdrrError(f"{what} {str(path)!r} is not a file")
        if not path.name.lower().endswith(suffixes):
            raise JaxdrrError(
                f"{what} {str(path)!r} is not a {' or '.join(suffixes)} file" + (f"; {hint}" if hint else "")
            )
    return path


def _nearest_existing(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def check_output(path, what: str, suffixes: tuple[str, ...], *, inputs=()) -> Path:
    """Checks, before any work, that ``path`` can be written as one of ``suffixes``.

    The format must be one of ``suffixes`` (by the file name's ending); the path must not be a
    directory nor an input file; its folder must be a directory (or missing: it is created when
    the file is written, see :func:`make_parent_dir`) in which this process can create files
    (tested by creating and removing an empty file there: ``os.access`` is wrong for root and on
    read-only file systems). An existing file is replaced (atomically).

    Args:
      path: the output file.
      what: the option, for the message (e.g. ``--out``).
      suffixes: accepted endings, lower case (e.g. ``(".png", ".tif")``).
      inputs: input paths the output must not overwrite.

    Returns:
      The path.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(tuple(suffixes)):
        raise JaxdrrError(
            f"{what} {str(path)!r}: unsupported format {path.suffix or '(no extension)'!r}; "
            f"use {', '.join(suffixes)}"
        )
    if path.is_dir():
        raise JaxdrrError(f"{what} {str(path)!r} is a directory; give a file name")
    for other in inputs:
        if other is not None and Path(other).exists() and path.exists() and path.samefile(other):
            raise JaxdrrError(f"{what} {str(path)!r} is an input of this command; choose another name")
    check_writable_dir(path.parent, f"{what} {str(path)!r}")
    return path


IMAGE_SUFFIXES = tuple(IMAGE_FORMATS)  # what jaxdrr.save_image writes


def parse_bit_depth(text: str | None) -> int | str | None:
    """``--bit-depth`` "8"/"16"/"float" as :func:`jaxdrr.save_image` takes it (None: the format's)."""
    return None if text is None else (text if text == "float" else int(text))


def check_image_output(path, bit_depth, what: str = "--out", *, inputs=()) -> Path:
    """:func:`check_output` for an image of :func:`jaxdrr.save_image`, with its bit depth."""
    path = check_output(path, what, IMAGE_SUFFIXES, inputs=inputs)
    suffix = path.suffix.lower()
    allowed = IMAGE_FORMATS[suffix][1]
    if bit_depth is not None and bit_depth not in allowed:
        raise JaxdrrError(
            f"--bit-depth {bit_depth} is not supported for {suffix} files; choose one of "
            + ", ".join(str(b) for b in allowed)
        )
    return path


def check_writable_dir(directory, what: str) -> Path:
    """``directory`` is (or can be created as) a folder this process can write in; returns it."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise JaxdrrError(f"{what}: {str(directory)!r} is a file, not a directory")
    existing = directory if directory.is_dir() else _nearest_existing(directory / "x")
    if not existing.is_dir():
        raise JaxdrrError(f"{what}: {str(existing)!r} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".jaxdrr-write-test-", dir=existing)
    except OSError as exc:
        raise JaxdrrError(f"{what}: cannot write in {str(existing)!r} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    return directory


def make_parent_dir(path: str | Path) -> Path:
    """Creates the directory of an output file (and its parents) just before writing; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------


def progress_bar_class():
    """``tqdm.tqdm``, or None where tqdm cannot be imported (then no progress bar is shown)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm


class _NoBar:
    """Stands in for a tqdm bar where tqdm is missing."""

    n = 0

    def update(self, n=1):
        self.n += n

    def set_postfix(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass

    def close(self):
        pass

    @staticmethod
    def write(text):
        print(text)


def progress_bar(total, *, desc: str, unit: str, disable: bool = False, **kwargs):
    """A tqdm bar on stderr (or a silent stand-in without tqdm)."""
    tqdm = progress_bar_class()
    if tqdm is None:  # pragma: no cover - tqdm is a dependency
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def long_step(message: str, *, estimate_s: float | None = None, disable: bool = False):
    """Shows ``message`` with the elapsed time (and the estimate, when known) while the block runs.

    For steps that are one opaque call (a jitted V-Net or Monte Carlo, a first compilation): no
    count to show, but the user sees what runs and for how long, ticking twice a second on stderr.
    """
    tqdm = progress_bar_class()
    if disable or tqdm is None:
        yield
        return
    if not sys.stderr.isatty():  # a log or a pipe: one line, no ticking
        print(f"{message} ...", flush=True)
        yield
        return
    if estimate_s is not None and estimate_s > 0:
        fmt = f"{{desc}}: {{elapsed}} (estimate ~{estimate_s:.0f} s)"
    else:
        fmt = "{desc}: {elapsed}"
    bar = tqdm(total=None, desc=message, bar_format=fmt, leave=False, dynamic_ncols=True)
    stop = threading.Event()

    def tick():
        while not stop.wait(0.5):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True, name="jaxdrr-long-step")
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.close()
