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
cubic patches blended with a smooth window, inside a ``lax.scan`` so memory is bounded by one patch
of activations plus the low-resolution output; fractions are resampled to the CT grid at the end.
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
    """

    widths: tuple[int, ...] = (8, 16, 32, 64)
    convs_per_stage: tuple[int, ...] = (1, 2, 2, 2)
    groups: int = 4
    classes: tuple[str, ...] = CLASS_NAMES
    spacing_mm: float = 2.0
    patch: int = 64
    overlap: int = 16

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

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    @property
    def in_channels(self) -> int:
        return 1 + len(FEATURE_STEPS_HU)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> VNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


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

    def __init__(self, in_features: int, features: int, n: int, groups: int, rngs: nnx.Rngs):
        self.project = (
            nnx.Conv(in_features, features, (1, 1, 1), rngs=rngs) if in_features != features else None
        )
        convs, norms = [], []
        for i in range(n):
            convs.append(nnx.Conv(in_features if i == 0 else features, features, (3, 3, 3), rngs=rngs))
            norms.append(nnx.GroupNorm(features, num_groups=groups, rngs=rngs))
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)

    def __call__(self, x):
        residual = x if self.project is None else self.project(x)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = jax.nn.silu(norm(conv(x)))
        return x + residual


class VNet(nnx.Module):
    """V-Net: residual encoder/decoder stages, strided convs down, transposed convs up.

    Input [B, D, H, W, C] HU features (:func:`hu_features`); output [B, D, H, W, classes] logits.
    """

    def __init__(self, config: VNetConfig, rngs: nnx.Rngs):
        w, n, g = config.widths, config.convs_per_stage, config.groups
        self.encoders = nnx.List(
            [
                _ResidualStage(config.in_channels if i == 0 else w[i], w[i], n[i], g, rngs)
                for i in range(len(w))
            ]
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
            [_ResidualStage(2 * w[i], w[i], max(n[i], 1), g, rngs) for i in range(len(w) - 1)]
        )
        self.head = nnx.Conv(w[0], len(config.classes), (1, 1, 1), rngs=rngs)

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


def init_weights(config: VNetConfig, seed: int = 0) -> dict:
    """Fresh weights (a nested dict of arrays) for a configuration."""
    model = VNet(config, rngs=nnx.Rngs(seed))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@functools.lru_cache(maxsize=8)
def _graph(config: VNetConfig):
    abstract = nnx.eval_shape(lambda: VNet(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    return graphdef, state


def apply(weights: dict, x: jax.Array, config: VNetConfig) -> jax.Array:
    """Pure forward pass: features [B, D, H, W, C] -> logits [B, D, H, W, classes]."""
    graphdef, abstract_state = _graph(config)
    state = jax.tree.map(lambda a: a, abstract_state)  # a fresh State to fill
    nnx.replace_by_pure_dict(state, weights)
    model = nnx.merge(graphdef, state, copy=True)
    return model(x)


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
    w = np.ones(patch, np.float64)
    if overlap > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        w[:overlap] = ramp
        w[-overlap:] = ramp[::-1]
    w = np.maximum(w, 1e-3)  # every voxel keeps a positive weight even where only one patch covers it
    return (w[:, None, None] * w[None, :, None] * w[None, None, :]).astype(np.float32)


def predict_probabilities_grid(weights: dict, hu_grid: jax.Array, config: VNetConfig) -> jax.Array:
    """Blended class probabilities on the network grid: [classes, D, H, W] from HU [D, H, W].

    The volume is padded (with air) to at least one patch per axis; patches of ``config.patch``
    voxels overlapping by ``config.overlap`` run one at a time in a ``lax.scan`` (rematerialised
    for gradients), each weighted by a raised-cosine window; the result is the weighted mean of the
    patch softmaxes.
    """
    shape = hu_grid.shape
    p, stride = config.patch, config.patch - config.overlap
    padded_shape = tuple(max(n, p) for n in shape)
    pad = [(0, m - n) for n, m in zip(shape, padded_shape, strict=True)]
    dtype = jnp.result_type(hu_grid.dtype, jnp.float32)
    hu_pad = jnp.pad(hu_grid.astype(dtype), pad, constant_values=HU_RANGE[0])
    starts = np.array(
        [
            (a, b, c)
            for a in _patch_starts(padded_shape[0], p, stride)
            for b in _patch_starts(padded_shape[1], p, stride)
            for c in _patch_starts(padded_shape[2], p, stride)
        ],
        np.int32,
    )
    window = jnp.asarray(_blend_window(p, config.overlap), dtype)
    k = len(config.classes)

    @jax.checkpoint
    def one_patch(start):
        block = jax.lax.dynamic_slice(hu_pad, start, (p, p, p))
        logits = apply(weights, hu_features(block)[None], config)[0]
        return jnp.moveaxis(jax.nn.softmax(logits, axis=-1), -1, 0) * window

    def body(carry, start):
        acc, norm = carry
        probs = one_patch(start)
        at = (jnp.zeros((), start.dtype), *start)  # same index dtype under x64
        acc = jax.lax.dynamic_update_slice(acc, jax.lax.dynamic_slice(acc, at, (k, p, p, p)) + probs, at)
        norm = jax.lax.dynamic_update_slice(
            norm, jax.lax.dynamic_slice(norm, start, (p, p, p)) + window, start
        )
        return (acc, norm), None

    acc0 = jnp.zeros((k, *padded_shape), dtype)
    norm0 = jnp.zeros(padded_shape, dtype)
    (acc, norm), _ = jax.lax.scan(body, (acc0, norm0), jnp.asarray(starts))
    probs = acc / norm[None]
    return probs[:, : shape[0], : shape[1], : shape[2]]


def _resize(x: jax.Array, shape) -> jax.Array:
    # Linear interpolation with antialiasing when shrinking: a triangle filter over the footprint,
    # close to the partial-volume averaging that built the training data. Weights sum to one, so
    # resampled fractions still sum to one.
    if tuple(x.shape) == tuple(shape):
        return x
    return jax.image.resize(x, shape, method="linear", antialias=True)


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
    out = jnp.stack([_resize(probs[c], hu.shape) for c in range(probs.shape[0])])
    # Linear resampling keeps the sum at one up to rounding; renormalise so it holds to float eps.
    out = jnp.clip(out, 0.0, 1.0)
    return out / jnp.sum(out, axis=0, keepdims=True)


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
