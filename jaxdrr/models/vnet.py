"""A small Flax V-Net that splits a CT into (air, soft tissue, bone, metal) fractions.

The abstraction: **HU volume in, per-voxel material fractions out**, as one pure, jittable and
differentiable function of ``(weights, hu)``::

    config, weights = load_pretrained()
    fractions = predict_fractions(weights, hu, spacing_mm, config=config)   # [4, I, J, K]

Why a network: thresholds (DeepDRR's air <= -800 < soft <= 350 < bone) fail where HU ranges
overlap. Trabecular bone and marrow (often 50-350 HU, Pickhardt et al. 2013) land on the soft side,
while iodinated vessels (150-500 HU) and undiluted boluses (up to 3071 HU) land on the bone side.
Telling them apart needs context (is this voxel inside a cortical shell?), which a 3D ConvNet has.

Structure (Milletari et al. 2016, scaled to what a CPU can afford; see ../shared VNET.md facts):
residual stages of 3^3 convolutions + GroupNorm + SiLU; 2^3 stride-2 convolutions down;
2^3 stride-2 transposed convolutions up; skip connections by concatenation; a 1^3 head with
softmax over the classes. GroupNorm (not BatchNorm) keeps the model stateless, so the weights are
a plain pytree of arrays and inference is a pure function.

The network runs on a fixed isotropic grid (``config.spacing_mm``, 2 mm by default) in overlapping
patches blended with a smooth window, inside a ``lax.scan`` so memory is bounded by one patch
of activations plus the low-resolution output; fractions are resampled to the CT grid at the end.
Patches are cubes of ``config.patch`` voxels, or (``config.tile_voxels > 0``) the fewest boxes of at
most that many voxels that tile the grid with ``config.overlap`` voxels of overlap (less padding and
overlap to compute: 1.2x the grid instead of ~3x for 64^3 cubes on a 180 x 180 x 166 grid).

Two scales (``config.context_factor > 0``): a context U-Net first segments the whole CT on a grid
``context_factor`` times coarser (6 mm: a 64^3 patch sees 384 mm, the whole trunk's cross-section,
so it knows which region, which bone and where the body is); its class probabilities, upsampled,
are extra input channels of the fine network. The fine network then decides voxel by voxel with
that context, e.g. that a 150 HU voxel is the marrow inside a vertebral body rather than the aorta.
With ``context_factor = 0`` (the shipped ``vnet_default``) the network is the one-scale V-Net.
The soft fractions are differentiable w.r.t. HU, so a render through the decomposition is too
(decompose once per CT with :func:`jaxdrr.decompose` for speed).

Training code is :mod:`jaxdrr.training.train_vnet`, which the runtime never imports.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import JaxdrrError
from jaxdrr.models import weights_io

CLASS_NAMES = ("air", "soft_tissue", "bone", "metal")
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = "vnet_default"
HU_RANGE = (-1024.0, 3071.0)

# Input feature channels: HU/1000 plus soft "windows" (logistic steps at HU boundaries that matter
# for this task). They cost nothing and spare a small network from learning sharp HU steps itself:
# lung/air (-400), fat/soft (-50), soft/bone overlap zone (150, 400), dense bone (1000), metal (2200).
FEATURE_STEPS_HU = (
    (-400.0, 50.0),
    (-50.0, 25.0),
    (150.0, 40.0),
    (400.0, 60.0),
    (1000.0, 150.0),
    (2200.0, 200.0),
)


@dataclasses.dataclass(frozen=True)
class VNetConfig:
    """Static network and inference settings (hashable; stored beside the weights).

    Attributes:
      widths: channels per resolution level; len(widths) - 1 stride-2 downsamplings.
      convs_per_stage: 3^3 convolutions in each encoder stage (the decoder mirrors it).
      groups: GroupNorm groups (must divide every width).
      classes: output class names, in channel order.
      spacing_mm: isotropic grid (mm) the network sees; the CT is resampled to it.
      patch: cubic patch edge in voxels for inference (multiple of 2 ** (len(widths) - 1)).
      overlap: overlap between neighbouring patches, in voxels.
      tile_voxels: 0: cubic patches of ``patch``; > 0: the fewest boxes of at most this many voxels
        (edges multiples of the divisor) covering the grid with ``overlap`` (see :func:`tiling`).
      context_factor: 0: one scale. k > 0: a context network on a grid k times coarser feeds its
        class probabilities to the fine network (k an integer).
      context_widths, context_convs: the context U-Net's channels and convolutions per level.
      context_patch: its cubic patch edge (its tiling uses ``tile_voxels`` = context_patch^3).
      top_decoder_kernel: kernel edge (3 or 1) of the fine network's full-resolution decoder
        convolutions; 1 saves ~30 % of the fine network's work (the level below and the skip's
        3^3 encoder convolution already see the neighbourhood).
    """

    widths: tuple[int, ...] = (8, 16, 32, 64)
    convs_per_stage: tuple[int, ...] = (1, 2, 2, 2)
    groups: int = 4
    classes: tuple[str, ...] = CLASS_NAMES
    spacing_mm: float = 2.0
    patch: int = 64
    overlap: int = 16
    tile_voxels: int = 0
    context_factor: int = 0
    context_widths: tuple[int, ...] = ()
    context_convs: tuple[int, ...] = ()
    context_patch: int = 64
    top_decoder_kernel: int = 3

    def __post_init__(self):
        if len(self.widths) < 2 or len(self.widths) != len(self.convs_per_stage):
            raise JaxdrrError("VNetConfig: widths and convs_per_stage need the same length >= 2")
        if any(w % self.groups for w in self.widths):
            raise JaxdrrError(f"VNetConfig: groups={self.groups} must divide every width {self.widths}")
        if self.patch % self.divisor or self.patch <= 0:
            raise JaxdrrError(f"VNetConfig: patch {self.patch} must be a positive multiple of {self.divisor}")
        if not 0 <= self.overlap < self.patch:
            raise JaxdrrError(f"VNetConfig: overlap must be in [0, patch), got {self.overlap}")
        if not self.spacing_mm > 0:
            raise JaxdrrError(f"VNetConfig: spacing_mm must be > 0, got {self.spacing_mm}")
        if self.tile_voxels < 0 or (0 < self.tile_voxels < self.divisor**3):
            raise JaxdrrError(f"VNetConfig: tile_voxels must be 0 or >= {self.divisor**3}")
        if self.top_decoder_kernel not in (1, 3):
            raise JaxdrrError(f"VNetConfig: top_decoder_kernel must be 1 or 3, got {self.top_decoder_kernel}")
        if self.context_factor < 0 or int(self.context_factor) != self.context_factor:
            raise JaxdrrError(
                f"VNetConfig: context_factor must be a non-negative integer, got {self.context_factor}"
            )
        if self.context_factor:
            w, n = self.context_widths, self.context_convs
            if len(w) < 2 or len(w) != len(n) or any(c % self.groups for c in w):
                raise JaxdrrError(
                    "VNetConfig: context_widths/context_convs need the same length >= 2, groups | widths"
                )
            if self.context_patch % self.context_divisor or self.context_patch <= 0:
                raise JaxdrrError(f"VNetConfig: context_patch must be a multiple of {self.context_divisor}")

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    @property
    def context_divisor(self) -> int:
        return 2 ** max(len(self.context_widths) - 1, 0)

    @property
    def context_spacing_mm(self) -> float:
        return self.spacing_mm * self.context_factor

    @property
    def in_channels(self) -> int:
        """Fine-network input channels: HU features, plus the context probabilities with two scales."""
        return N_HU_FEATURES + (len(self.classes) if self.context_factor else 0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> VNetConfig:
        # Fields added later (tile_voxels, context_*) take their defaults: old files load unchanged.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


N_HU_FEATURES = 1 + len(FEATURE_STEPS_HU)


def hu_features(hu: jax.Array) -> jax.Array:
    """Network input channels from HU: [..., C] (channels last), float32.

    Args:
      hu: Hounsfield units, any shape.

    Returns:
      ``hu.shape + (1 + len(FEATURE_STEPS_HU),)``: clipped HU / 1000 and logistic windows.
    """
    hu = jnp.asarray(hu)
    hu = jnp.clip(hu.astype(jnp.result_type(hu.dtype, jnp.float32)), *HU_RANGE)
    steps = [jax.nn.sigmoid((hu - t) / s) for t, s in FEATURE_STEPS_HU]
    return jnp.stack([hu / 1000.0, *steps], axis=-1)


class _ResidualStage(nnx.Module):
    """n x (conv 3^3 -> GroupNorm -> SiLU) with a residual connection (V-Net's stage)."""

    def __init__(self, in_features: int, features: int, n: int, groups: int, rngs: nnx.Rngs, kernel: int = 3):
        self.project = (
            nnx.Conv(in_features, features, (1, 1, 1), rngs=rngs) if in_features != features else None
        )
        convs, norms = [], []
        for i in range(n):
            convs.append(nnx.Conv(in_features if i == 0 else features, features, (kernel,) * 3, rngs=rngs))
            norms.append(nnx.GroupNorm(features, num_groups=groups, rngs=rngs))
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)

    def __call__(self, x):
        residual = x if self.project is None else self.project(x)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = jax.nn.silu(norm(conv(x)))
        return x + residual


class _UNet(nnx.Module):
    """Residual encoder/decoder stages, strided convs down, transposed convs up, a 1^3 head."""

    def __init__(
        self, in_channels: int, w, n, g: int, out_channels: int, rngs: nnx.Rngs, top_kernel: int = 3
    ):
        self.encoders = nnx.List(
            [_ResidualStage(in_channels if i == 0 else w[i], w[i], n[i], g, rngs) for i in range(len(w))]
        )
        self.downs = nnx.List(
            [
                nnx.Conv(w[i], w[i + 1], (2, 2, 2), strides=(2, 2, 2), padding="VALID", rngs=rngs)
                for i in range(len(w) - 1)
            ]
        )
        self.ups = nnx.List(
            [
                nnx.ConvTranspose(w[i + 1], w[i], (2, 2, 2), strides=(2, 2, 2), padding="VALID", rngs=rngs)
                for i in range(len(w) - 1)
            ]
        )
        self.decoders = nnx.List(
            [
                _ResidualStage(2 * w[i], w[i], max(n[i], 1), g, rngs, top_kernel if i == 0 else 3)
                for i in range(len(w) - 1)
            ]
        )
        self.head = nnx.Conv(w[0], out_channels, (1, 1, 1), rngs=rngs)

    def __call__(self, x):
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x)
            if i < len(self.downs):
                skips.append(x)
                x = jax.nn.silu(self.downs[i](x))
        for i in reversed(range(len(self.ups))):
            x = jax.nn.silu(self.ups[i](x))
            x = self.decoders[i](jnp.concatenate([x, skips[i]], axis=-1))
        return self.head(x)


class VNet(_UNet):
    """V-Net: residual encoder/decoder stages, strided convs down, transposed convs up.

    Input [B, D, H, W, C] features (:func:`hu_features`, then with two scales the upsampled context
    probabilities); output [B, D, H, W, classes] logits. With ``config.context_factor`` it also holds
    ``context``, the coarse U-Net (HU features in, class logits out), run by :func:`apply_context`.
    """

    def __init__(self, config: VNetConfig, rngs: nnx.Rngs):
        k = len(config.classes)
        super().__init__(
            config.in_channels,
            config.widths,
            config.convs_per_stage,
            config.groups,
            k,
            rngs,
            config.top_decoder_kernel,
        )
        self.context = (
            _UNet(N_HU_FEATURES, config.context_widths, config.context_convs, config.groups, k, rngs)
            if config.context_factor
            else None
        )


def init_weights(config: VNetConfig, seed: int = 0) -> dict:
    """Fresh weights (a nested dict of arrays) for a configuration."""
    model = VNet(config, rngs=nnx.Rngs(seed))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@functools.lru_cache(maxsize=8)
def _graph(config: VNetConfig):
    abstract = nnx.eval_shape(lambda: VNet(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    return graphdef, state


def _model(weights: dict, config: VNetConfig) -> VNet:
    graphdef, abstract_state = _graph(config)
    state = jax.tree.map(lambda a: a, abstract_state)  # a fresh State to fill
    nnx.replace_by_pure_dict(state, weights)
    return nnx.merge(graphdef, state, copy=True)


def apply(weights: dict, x: jax.Array, config: VNetConfig) -> jax.Array:
    """Pure forward pass: features [B, D, H, W, C] -> logits [B, D, H, W, classes]."""
    return _model(weights, config)(x)


def apply_context(weights: dict, x: jax.Array, config: VNetConfig) -> jax.Array:
    """The context network (two scales only): HU features [B, d, h, w, C] on the coarse grid -> logits."""
    if not config.context_factor:
        raise JaxdrrError("apply_context: this V-Net has one scale (context_factor = 0)")
    return _model(weights, config).context(x)


count_parameters = weights_io.count_parameters


# ----------------------------------------------------------------------------------------------
# Whole-volume inference: resample -> overlapping patches (scan) -> blend -> resample back.


def network_grid_shape(shape, spacing_mm, config: VNetConfig) -> tuple[int, int, int]:
    """Grid size on the network's isotropic spacing covering the same extent as the CT."""
    return tuple(
        max(1, int(round(n * float(s) / config.spacing_mm))) for n, s in zip(shape, spacing_mm, strict=True)
    )


def _patch_starts(n: int, patch: int, stride: int) -> list[int]:
    if n <= patch:
        return [0]
    starts = list(range(0, n - patch, stride)) + [n - patch]
    return sorted(set(starts))


def _blend_window(patch: int, overlap: int) -> np.ndarray:
    """Separable weight that tapers (raised cosine) over the overlap, so seams are invisible."""
    return _blend_window_box((patch,) * 3, overlap)


def _window_1d(patch: int, overlap: int) -> np.ndarray:
    w = np.ones(patch, np.float64)
    overlap = min(overlap, patch)  # a small tile (tile_voxels) may be shorter than the overlap
    if overlap > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        w[:overlap] = ramp
        w[-overlap:] = ramp[::-1]
    return np.maximum(w, 1e-3)  # every voxel keeps a positive weight even where only one patch covers it


def _blend_window_box(patch_shape, overlap: int) -> np.ndarray:
    a, b, c = (_window_1d(p, overlap) for p in patch_shape)
    return (a[:, None, None] * b[None, :, None] * c[None, None, :]).astype(np.float32)


def _tiles_along(n: int, count: int, overlap: int, divisor: int) -> int:
    """Edge (a multiple of ``divisor``) of ``count`` tiles covering n voxels with >= ``overlap`` overlap."""
    edge = -(-(n + (count - 1) * overlap) // count)
    return max(divisor, -(-edge // divisor) * divisor)


def tiling(shape, patch: int, overlap: int, divisor: int, tile_voxels: int = 0):
    """How a grid is cut into patches: (patch shape, padded grid shape, patch starts [T, 3]).

    ``tile_voxels = 0``: cubes of ``patch`` voxels every ``patch - overlap`` (the grid padded to at
    least one patch). Otherwise the patch shape minimising the voxels computed (patches x patch
    voxels) among boxes of at most ``tile_voxels`` voxels, with edges multiples of ``divisor`` and
    neighbours overlapping by at least ``overlap``; starts evenly spaced.
    """
    shape = tuple(int(n) for n in shape)
    if tile_voxels == 0:
        box = (patch,) * 3
        padded = tuple(max(n, patch) for n in shape)
        axes = [_patch_starts(m, patch, patch - overlap) for m in padded]
    else:
        options = []
        for n in shape:
            edges = {}
            for count in range(1, max(1, -(-n // divisor)) + 1):
                edges.setdefault(_tiles_along(n, count, overlap, divisor), count)
            options.append(sorted((c, e) for e, c in edges.items())[:24])
        best = None
        for c0, e0 in options[0]:
            for c1, e1 in options[1]:
                for c2, e2 in options[2]:
                    if e0 * e1 * e2 > tile_voxels:
                        continue
                    cost = (c0 * c1 * c2 * e0 * e1 * e2, c0 * c1 * c2)
                    if best is None or cost < best[0]:
                        best = (cost, (c0, c1, c2), (e0, e1, e2))
        if best is None:
            raise JaxdrrError(f"no tiling of {shape} in patches of <= {tile_voxels} voxels")
        _, counts, box = best
        padded = tuple(max(n, e) for n, e in zip(shape, box))
        axes = [
            sorted(set(np.round(np.linspace(0, m - e, c)).astype(int).tolist()))
            for m, e, c in zip(padded, box, counts)
        ]
    starts = np.array([(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]], np.int32)
    return box, padded, starts


def _blended_probabilities(forward, hu_grid, box, padded, starts, overlap, k, extra=None):
    """Window-weighted mean of the patch softmaxes of ``forward`` (features [1, *box, C] -> logits).

    Patches run one at a time in a ``lax.scan`` (rematerialised for gradients). ``extra``
    [E, D, H, W] are channels appended to the HU features (the upsampled context), padded by edge.
    """
    shape = hu_grid.shape
    pad = [(0, m - n) for n, m in zip(shape, padded, strict=True)]
    dtype = jnp.result_type(hu_grid.dtype, jnp.float32)
    hu_pad = jnp.pad(hu_grid.astype(dtype), pad, constant_values=HU_RANGE[0])
    extra_pad = None if extra is None else jnp.pad(extra.astype(dtype), [(0, 0), *pad], mode="edge")
    window = jnp.asarray(_blend_window_box(box, overlap), dtype)

    @jax.checkpoint
    def one_patch(start):
        block = jax.lax.dynamic_slice(hu_pad, start, box)
        features = hu_features(block)
        if extra_pad is not None:
            at = (jnp.zeros((), start.dtype), *start)
            more = jax.lax.dynamic_slice(extra_pad, at, (extra_pad.shape[0], *box))
            features = jnp.concatenate([features, jnp.moveaxis(more, 0, -1)], axis=-1)
        logits = forward(features[None])[0]
        return jnp.moveaxis(jax.nn.softmax(logits, axis=-1), -1, 0) * window

    def body(carry, start):
        acc, norm = carry
        probs = one_patch(start)
        at = (jnp.zeros((), start.dtype), *start)  # same index dtype under x64
        acc = jax.lax.dynamic_update_slice(acc, jax.lax.dynamic_slice(acc, at, (k, *box)) + probs, at)
        norm = jax.lax.dynamic_update_slice(norm, jax.lax.dynamic_slice(norm, start, box) + window, start)
        return (acc, norm), None

    acc0 = jnp.zeros((k, *padded), dtype)
    norm0 = jnp.zeros(padded, dtype)
    (acc, norm), _ = jax.lax.scan(body, (acc0, norm0), jnp.asarray(starts))
    probs = acc / norm[None]
    return probs[:, : shape[0], : shape[1], : shape[2]]


def block_mean(x: jax.Array, factor: int) -> jax.Array:
    """Mean over factor^3 blocks of the last three axes (their sizes multiples of ``factor``)."""
    *lead, d, h, w = x.shape
    f = factor
    return x.reshape(*lead, d // f, f, h // f, f, w // f, f).mean(axis=(-5, -3, -1))


def context_probabilities(weights: dict, hu_grid: jax.Array, config: VNetConfig) -> jax.Array:
    """The context network's class probabilities on the coarse grid: [classes, d, h, w].

    The fine grid is padded with air to multiples of ``config.context_factor`` and block-averaged.
    """
    r = config.context_factor
    shape = hu_grid.shape
    padded = tuple(-(-n // r) * r for n in shape)
    hu_r = jnp.pad(hu_grid, [(0, m - n) for n, m in zip(shape, padded)], constant_values=HU_RANGE[0])
    hu_coarse = block_mean(hu_r, r)
    box, padded_c, starts = tiling(
        hu_coarse.shape,
        config.context_patch,
        config.overlap,
        config.context_divisor,
        config.context_patch**3 if config.tile_voxels else 0,
    )
    return _blended_probabilities(
        lambda x: apply_context(weights, x, config),
        hu_coarse,
        box,
        padded_c,
        starts,
        config.overlap,
        len(config.classes),
    )


def upsample_context(probs: jax.Array, factor: int, shape) -> jax.Array:
    """Coarse probabilities [k, d, h, w] linearly upsampled ``factor`` times, cropped to ``shape``.

    Coarse voxel j covers fine voxels [j * factor, (j + 1) * factor) (the block mean of
    :func:`context_probabilities`), so fine voxel i sits at coarse coordinate (i + 0.5) / factor - 0.5.
    """
    for axis in range(1, 4):
        probs = resize_axis_linear(probs, axis, probs.shape[axis] * factor)
    return probs[:, : shape[0], : shape[1], : shape[2]]


def resize_axis_linear(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Linear interpolation along one axis to ``size`` samples (pixel centres aligned as in
    ``jax.image.resize``, edges clamped): two gathers and a lerp, O(output). Equal to
    ``jax.image.resize(..., "linear")`` for upsampling, where antialiasing does nothing."""
    n = x.shape[axis]
    if n == size:
        return x
    pos = (np.arange(size) + 0.5) * (n / size) - 0.5
    lo = np.floor(pos)
    t = (pos - lo).astype(np.float64)
    i0 = np.clip(lo, 0, n - 1).astype(np.int32)
    i1 = np.clip(lo + 1, 0, n - 1).astype(np.int32)
    shape = [1] * x.ndim
    shape[axis] = size
    t = jnp.asarray(t.reshape(shape), x.dtype)
    a = jnp.take(x, jnp.asarray(i0), axis=axis)
    b = jnp.take(x, jnp.asarray(i1), axis=axis)
    return a + t * (b - a)


def predict_probabilities_grid(weights: dict, hu_grid: jax.Array, config: VNetConfig) -> jax.Array:
    """Blended class probabilities on the network grid: [classes, D, H, W] from HU [D, H, W].

    The volume is padded (with air) to whole patches (:func:`tiling`); each patch's softmax is
    weighted by a raised-cosine window over the overlap and the result is the weighted mean. With
    two scales the context probabilities (:func:`context_probabilities`, upsampled) are extra
    input channels of every fine patch.
    """
    k = len(config.classes)
    extra = None
    if config.context_factor:
        context = context_probabilities(weights, hu_grid, config)
        extra = upsample_context(context, config.context_factor, hu_grid.shape)
    box, padded, starts = tiling(
        hu_grid.shape, config.patch, config.overlap, config.divisor, config.tile_voxels
    )
    return _blended_probabilities(
        lambda x: apply(weights, x, config), hu_grid, box, padded, starts, config.overlap, k, extra
    )


def _resize(x: jax.Array, shape) -> jax.Array:
    # Linear interpolation with antialiasing when shrinking: a triangle filter over the footprint,
    # close to the partial-volume averaging that built the training data. Weights sum to one, so
    # resampled fractions still sum to one.
    if tuple(x.shape) == tuple(shape):
        return x
    return jax.image.resize(x, shape, method="linear", antialias=True)


def _resize_to_ct(x: jax.Array, shape) -> jax.Array:
    """:func:`_resize` one axis at a time, shrinking axes first: upsampled axes by two gathers and a
    lerp (:func:`resize_axis_linear`) instead of ``jax.image.resize``'s dense [out, in] weights,
    which cost ~10 s for a 512^2 CT. The same filter (separable triangle), so the same values up to
    rounding."""
    order = sorted(range(3), key=lambda a: shape[a] / x.shape[a])
    for axis in order:
        if shape[axis] < x.shape[axis]:
            target = list(x.shape)
            target[axis] = shape[axis]
            x = jax.image.resize(x, tuple(target), method="linear", antialias=True)
        else:
            x = resize_axis_linear(x, axis, shape[axis])
    return x


def predict_fractions(weights: dict, hu: jax.Array, spacing_mm, *, config: VNetConfig) -> jax.Array:
    """Material fractions of a CT: [classes, I, J, K] (sum 1 per voxel) from HU [I, J, K].

    Args:
      weights: network weights (nested dict of arrays, e.g. from :func:`load_pretrained`).
      hu: Hounsfield units [I, J, K] on a grid with voxel spacing ``spacing_mm``.
      spacing_mm: voxel spacing (3 floats, static).
      config: the network's :class:`VNetConfig` (static).

    Returns:
      Fractions in the order of ``config.classes``, on the CT grid (float32; float64 for float64 HU
      under x64, which the gradient tests use). Differentiable w.r.t.
      ``hu`` and ``weights``; works under jit and vmap.
    """
    hu = jnp.asarray(hu)
    hu = hu.astype(jnp.result_type(hu.dtype, jnp.float32))  # float32, or float64 under x64
    if hu.ndim != 3:
        raise JaxdrrError(f"predict_fractions expects HU [I, J, K], got shape {hu.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise JaxdrrError(f"spacing_mm must be 3 positive numbers, got {spacing_mm!r}")
    grid = network_grid_shape(hu.shape, spacing, config)
    # Clip before resampling: scanners pad outside the reconstruction circle with -2048 or -3024 HU,
    # which would otherwise bleed into the body's edge voxels on the coarser grid.
    hu_grid = _resize(jnp.clip(hu, *HU_RANGE), grid)
    probs = predict_probabilities_grid(weights, hu_grid, config)
    # Linear resampling keeps values in [0, 1] and the sum at one up to rounding; the last class is
    # one minus the others, so the sum holds to float eps without a second full-size copy (a
    # 512 x 512 x 500 CT's four fractions are 2.1 GB).
    first = [jnp.clip(_resize_to_ct(probs[c], hu.shape), 0.0, 1.0) for c in range(probs.shape[0] - 1)]
    rest = jnp.clip(1.0 - functools.reduce(jnp.add, first), 0.0, 1.0)
    return jnp.stack([*first, rest])


# ----------------------------------------------------------------------------------------------
# Weights files: <name>.msgpack (pure-dict weights) + <name>.json (config, training record).


def save_weights(path: str | Path, weights: dict, config: VNetConfig, record: dict | None = None) -> Path:
    """Writes ``path.msgpack`` and ``path.json`` atomically (:func:`jaxdrr.models.weights_io.save`)."""
    return weights_io.save(path, weights, config.to_json(), record)


def load_weights(path: str | Path) -> tuple[VNetConfig, dict, dict]:
    """Reads weights written by :func:`save_weights`: (config, weights, metadata)."""
    raw, meta = weights_io.load(path, "V-Net")
    config = VNetConfig.from_json(meta["config"])
    weights_io.check_shapes(raw, init_weights_shapes(config), "V-Net", Path(path).with_suffix(".msgpack"))
    return config, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), raw), meta


def init_weights_shapes(config: VNetConfig) -> dict:
    """Abstract weights (ShapeDtypeStructs) of a configuration, without allocating."""
    _, state = _graph(config)
    return nnx.to_pure_dict(state)


@functools.lru_cache(maxsize=2)
def _load_pretrained_cached(name: str):
    return load_weights(WEIGHTS_DIR / name)


def load_pretrained(name: str = DEFAULT_WEIGHTS) -> tuple[VNetConfig, dict]:
    """The V-Net weights shipped in the package: (config, weights).

    Trained on procedural synthetic CTs only (``jaxdrr.phantoms.synthetic``); see
    ``jaxdrr/models/weights/README.md`` for the training command, seed, log and validation score.
    """
    config, weights, _ = _load_pretrained_cached(name)
    return config, weights


def pretrained_record(name: str = DEFAULT_WEIGHTS) -> dict:
    """The training record stored beside the shipped weights (validation scores, seed, steps)."""
    return dict(_load_pretrained_cached(name)[2])
