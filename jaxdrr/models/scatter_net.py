"""A small Flax ConvNet that predicts the scatter image from the primary, trained on our Monte Carlo.

The abstraction: **low-resolution primary in, low-resolution scatter out**, one pure, jittable,
differentiable function of ``(weights, images, conditioning)``::

    config, weights = load_pretrained()
    s = apply(weights, images, cond)      # [h, w, 2]: scatter (EI, PC) in transmission units

* ``images`` [h, w, 3]: the area-averaged primary transmissions ``T_ei``, ``T_pc`` and the total
  mass thickness (g/cm^2) on the low-resolution detector (plus, computed inside, blurred
  primary-weighted path lengths: :func:`features`)
  (:func:`jaxdrr.scatter.estimate.network_inputs`, the renderer's own quantities);
* ``cond`` [6]: kVp, mean energy (keV), SDD (mm), object fraction, low-resolution pixel pitch (mm),
  grid flag (:data:`jaxdrr.scatter.estimate.CONDITIONING`), physical units;
* output: scatter in the renderer's flat-field units (see :mod:`jaxdrr.scatter.estimate`),
  positive by construction (exponential of the network output).

Why these inputs: scatter reaching a pixel comes from the irradiated mass (the mass thickness), is
attenuated on its way out (the primary transmission, DSE's input), and depends on the spectrum,
the distances (air gap) and the field size; the network sees all of them, in units a render
already has, so it needs no knowledge of which material model made the image.

Structure: a U-Net on the 32 x 32 grid (widths 16-32-48-64, two 3x3 convolutions per level,
GroupNorm over groups of 4 channels, SiLU), the conditioning as constant input channels and, at the 4 x 4 bottleneck, a
global-context branch (spatial mean + conditioning -> dense -> added to every position), because a
large part of scatter is a function of the whole irradiated object. Odd sizes are edge-padded to
a multiple of 8 and cropped back. GroupNorm keeps the model stateless, so weights are a plain
pytree (``params["scatter_net"]`` in the renderer) that can be replaced, fine-tuned or
differentiated.

Training code (:mod:`jaxdrr.training.scatter_data`, :mod:`jaxdrr.training.train_scatter`) is
never imported at run time.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import JaxdrrError
from jaxdrr.models import weights_io

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = "scatter_default"
# Conditioning normalisation: (value - centre) / scale, for kVp, mean energy, SDD, object
# fraction, pixel pitch, grid (see jaxdrr.scatter.estimate.CONDITIONING).
COND_CENTRE = (90.0, 53.0, 1100.0, 0.67, 10.0, 0.5)
COND_SCALE = (30.0, 15.0, 200.0, 0.17, 4.0, 0.5)
T_FLOOR = 1e-6
GROUP_SIZE = 4  # channels per GroupNorm group


@dataclasses.dataclass(frozen=True)
class ScatterNetConfig:
    """Static architecture (hashable; stored beside the weights).

    The architecture is fully determined by the widths, which are read back from a weights
    pytree's shapes (:func:`config_from_weights`): GroupNorm uses groups of :data:`GROUP_SIZE`
    channels.

    Attributes:
      widths: channels per resolution level (len(widths) - 1 stride-2 downsamplings), multiples of
        :data:`GROUP_SIZE`.
    """

    widths: tuple[int, ...] = (16, 32, 48, 64)

    def __post_init__(self):
        if len(self.widths) < 2 or any(w % GROUP_SIZE or w <= 0 for w in self.widths):
            raise JaxdrrError(
                f"ScatterNetConfig: widths {self.widths} must be >= 2 positive multiples of {GROUP_SIZE}"
            )

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    in_channels = 6 + len(COND_CENTRE)
    out_channels = 2

    def to_json(self) -> dict:
        return {"widths": list(self.widths)}

    @classmethod
    def from_json(cls, d: dict) -> ScatterNetConfig:
        return cls(widths=tuple(d["widths"]))


BLUR_SIGMAS_PX = (2.0, 6.0)  # scatter-kernel-like context channels (low-resolution pixels)


def _gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of [B, h, w] images with edge padding (differentiable)."""
    radius = int(np.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = jnp.asarray(k / k.sum(), x.dtype)
    x = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    x = jax.vmap(lambda img: jax.vmap(lambda r: jnp.convolve(r, k, mode="valid"))(img))(x)
    x = jnp.swapaxes(x, 1, 2)
    x = jax.vmap(lambda img: jax.vmap(lambda r: jnp.convolve(r, k, mode="valid"))(img))(x)
    return jnp.swapaxes(x, 1, 2)


def features(images: jax.Array, cond: jax.Array) -> jax.Array:
    """Network input [B, h, w, C] from images [B, h, w, 3] and conditioning [B, 6].

    Channels: ``-ln T_ei``, ``-ln T_pc``, ``T_ei``, mass thickness, and the log of ``T (-ln T)``
    (the primary-weighted path length, a classic scatter-kernel source term; DSE's ``p e^-p``)
    blurred at :data:`BLUR_SIGMAS_PX`, so that a small network starts from kernel-like scatter
    estimates; then the normalised conditioning as constant channels.
    """
    dtype = jnp.result_type(images, cond, jnp.float32)  # float32, or float64 under x64 inputs
    images = jnp.asarray(images, dtype)
    t_ei, t_pc, mass = images[..., 0], images[..., 1], images[..., 2]
    p_ei = -jnp.log(jnp.maximum(t_ei, T_FLOOR))
    source = t_ei * p_ei
    blurred = [jnp.log(_gaussian_blur(source, s) + 1e-3) / 4.0 for s in BLUR_SIGMAS_PX]
    img = jnp.stack(
        [p_ei / 4.0, -jnp.log(jnp.maximum(t_pc, T_FLOOR)) / 4.0, t_ei, mass / 20.0, *blurred],
        -1,
    )
    c = (jnp.asarray(cond, dtype) - jnp.asarray(COND_CENTRE, dtype)) / jnp.asarray(COND_SCALE, dtype)
    c = jnp.broadcast_to(c[..., None, None, :], (*img.shape[:-1], c.shape[-1]))
    return jnp.concatenate([img, c], -1)


class _Block(nnx.Module):
    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        groups = cout // GROUP_SIZE
        self.conv1 = nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs)
        self.norm1 = nnx.GroupNorm(cout, num_groups=groups, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding="SAME", rngs=rngs)
        self.norm2 = nnx.GroupNorm(cout, num_groups=groups, rngs=rngs)
        self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

    def __call__(self, x):
        h = nnx.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return nnx.silu(h + (self.skip(x) if self.skip is not None else x))


class ScatterNet(nnx.Module):
    """U-Net with a global-context bottleneck: [B, h, w, 10] features -> [B, h, w, 2] log scatter."""

    def __init__(self, config: ScatterNetConfig, rngs: nnx.Rngs):
        w = config.widths
        self.encoders = nnx.List(
            [_Block(config.in_channels if i == 0 else w[i - 1], w[i], rngs) for i in range(len(w))]
        )
        self.context = nnx.Linear(w[-1] + len(COND_CENTRE), w[-1], rngs=rngs)
        self.ups = nnx.List(
            [nnx.ConvTranspose(w[i + 1], w[i], (2, 2), strides=(2, 2), rngs=rngs) for i in range(len(w) - 1)]
        )
        self.decoders = nnx.List([_Block(2 * w[i], w[i], rngs) for i in range(len(w) - 1)])
        self.head = nnx.Conv(w[0], config.out_channels, (1, 1), rngs=rngs)

    def __call__(self, x):
        cond = x[:, 0, 0, -len(COND_CENTRE) :]
        skips = []
        for i, enc in enumerate(self.encoders):
            if i:
                x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
            x = enc(x)
            skips.append(x)
        ctx = self.context(jnp.concatenate([x.mean(axis=(1, 2)), cond], -1))
        x = x + nnx.silu(ctx)[:, None, None, :]
        for i in reversed(range(len(self.ups))):
            x = self.ups[i](x)
            x = self.decoders[i](jnp.concatenate([x, skips[i]], -1))
        return self.head(x)


@functools.lru_cache(maxsize=4)
def _graph(config: ScatterNetConfig):
    abstract = nnx.eval_shape(lambda: ScatterNet(config, nnx.Rngs(0)))
    return nnx.split(abstract)


def init_weights(config: ScatterNetConfig | None = None, seed: int = 0) -> dict:
    """Fresh weights (a pure dict pytree) with the head biased to a typical scatter level."""
    config = config or ScatterNetConfig()
    model = ScatterNet(config, nnx.Rngs(seed))
    _, state = nnx.split(model)
    weights = nnx.to_pure_dict(state)
    weights["head"]["bias"] = jnp.full_like(weights["head"]["bias"], np.log(0.005))
    weights["head"]["kernel"] = weights["head"]["kernel"] * 0.1
    return weights


def config_from_weights(weights: dict) -> ScatterNetConfig:
    """The architecture of a weights pytree (widths from the encoder kernels' shapes)."""
    try:
        encoders = weights["encoders"]
        widths = tuple(int(np.shape(encoders[i]["conv1"]["kernel"])[-1]) for i in sorted(encoders))
    except (KeyError, TypeError, IndexError) as exc:
        raise JaxdrrError("not scatter-network weights: no encoders/<i>/conv1/kernel entries") from exc
    return ScatterNetConfig(widths=widths)


def apply_log(weights: dict, images, cond, config: ScatterNetConfig | None = None) -> jax.Array:
    """Log scatter [..., h, w, 2] (one optional leading batch axis)."""
    config = config or config_from_weights(weights)
    images = jnp.asarray(images)
    batched = images.ndim == 4
    x = features(images if batched else images[None], cond if batched else jnp.asarray(cond)[None])
    h, w = x.shape[1:3]
    d = config.divisor
    ph, pw = (-h) % d, (-w) % d
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    graphdef, abstract_state = _graph(config)
    state = jax.tree.map(lambda a: a, abstract_state)
    nnx.replace_by_pure_dict(state, weights)
    model = nnx.merge(graphdef, state, copy=True)
    out = model(x)[:, :h, :w]
    return out if batched else out[0]


def apply(weights: dict, images, cond, config: ScatterNetConfig | None = None) -> jax.Array:
    """Scatter [..., h, w, 2] (EI, PC; flat-field units) from low-resolution images and conditioning.

    Args:
      weights: network weights (:func:`load_pretrained` or :func:`init_weights`).
      images: [h, w, 3] or [B, h, w, 3]: ``T_ei``, ``T_pc``, mass thickness (g/cm^2).
      cond: [6] or [B, 6] conditioning (:data:`jaxdrr.scatter.estimate.CONDITIONING`).
      config: architecture; default read from the weights' shapes (:func:`config_from_weights`).
    """
    return jnp.exp(apply_log(weights, images, cond, config))


count_parameters = weights_io.count_parameters


def save_weights(
    path: str | Path, weights: dict, config: ScatterNetConfig, record: dict | None = None
) -> Path:
    """Writes ``path.msgpack`` and ``path.json`` atomically (:func:`jaxdrr.models.weights_io.save`)."""
    return weights_io.save(path, weights, config.to_json(), record)


def load_weights(path: str | Path) -> tuple[ScatterNetConfig, dict, dict]:
    """Reads weights written by :func:`save_weights`: (config, weights, metadata)."""
    raw, meta = weights_io.load(path, "scatter network")
    config = ScatterNetConfig.from_json(meta["config"])
    weights_io.check_shapes(
        raw, nnx.to_pure_dict(_graph(config)[1]), "scatter network", Path(path).with_suffix(".msgpack")
    )
    return config, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), raw), meta


@functools.lru_cache(maxsize=2)
def _load_pretrained_cached(name: str):
    return load_weights(WEIGHTS_DIR / name)


def load_pretrained(name: str = DEFAULT_WEIGHTS) -> tuple[ScatterNetConfig, dict]:
    """The scatter network shipped in the package: (config, weights).

    Trained on Monte Carlo scatter of procedural synthetic patients only
    (``jaxdrr/models/weights/README.md``: command, seed, data budget, log, held-out error).
    """
    config, weights, _ = _load_pretrained_cached(name)
    return config, weights


def pretrained_record(name: str = DEFAULT_WEIGHTS) -> dict:
    """The training record stored beside the shipped weights (held-out errors, data budget, seed)."""
    return dict(_load_pretrained_cached(name)[2])
