"""The registration driver: optimise a :class:`~jaxdrr.registration.pose.Pose` so the DRR matches
an X-ray.

Algorithm (:func:`register`):

1. **Coarse to fine.** ``config.levels`` lists ``(factor, iterations)``. At level ``factor`` the DRR
   is *rendered* at ``height // factor x width // factor`` by rescaling the projection matrix
   (:func:`jaxdrr.geometry.rescale_detector`: pixels ``factor`` times larger, same field of view),
   so a coarse iteration costs ``factor^2`` times less. The measured X-ray is block-averaged to
   the same grid (pixel ``i'`` of the coarse grid covers fine pixels ``[i' f, (i'+1) f)``, matching
   ``rescale_detector``'s pixel centres).
2. **Several starts at once.** At the first level, ``config.n_starts`` poses (the initial pose and
   random perturbations of it, ``start_rotation_deg`` / ``start_translation_mm``) are optimised
   together under ``jax.vmap``; the one with the lowest loss continues to the finer levels.
3. **Optimiser.** optax Adam with a per-level schedule (``"cosine"``, ``"exponential"`` or
   ``"constant"``; learning rate in the pose's scaled units, i.e. ~mm per step, see
   :mod:`jaxdrr.registration.pose`), or L-BFGS (``optax.lbfgs`` with a zoom line search). One
   jitted step per iteration; compiled steps are cached across calls with the same static
   settings (so a benchmark compiles once per level).
4. **Stopping.** A level ends after its iteration budget, or earlier when the best loss has not
   improved by more than ``tol`` for ``patience`` iterations. The best pose seen at each level is
   carried on.
   Default (:class:`RegistrationConfig`): Adam for 60 iterations at 1/4 resolution, then L-BFGS
   for 15 at 1/2 and 25 at full resolution (L-BFGS resolves the weakly observed depth far better
   than a decaying Adam step).
5. **History.** Every iteration's loss, pose parameters, level and start index are recorded in
   :class:`RegistrationResult`.
6. **Decompose once.** A HU volume is converted to material densities once, before the first
   iteration (:func:`jaxdrr.decompose`), not inside every render.

Speed: an iteration's cost grows with the CT's voxel count as well as with the DRR's pixels. The
defaults are the benchmark's (``benchmarks/registration``: a 64 x 64 x 48 CT, a 128 x 128 X-ray,
about 1.5 s); a clinical CT (e.g. 256 x 256 x 133) takes several times longer at the same
settings. :func:`downsample_volume` (``jaxdrr register --ct-max-size``, default 128 voxels per
axis) and registering a block-averaged X-ray (``--max-size``) bring it back to the benchmark's
scale; they are not applied here, because what resolution keeps the accuracy depends on the CT.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdrr.errors import JaxdrrError
from jaxdrr.geometry.projection import rescale_detector
from jaxdrr.materials import decompose
from jaxdrr.registration import metrics as metrics_lib
from jaxdrr.registration.pose import (
    DEFAULT_RADIUS_MM,
    Camera,
    Pose,
    check_intrinsics,
    pose_extrinsics,
    pose_to_projection,
    random_pose,
)
from jaxdrr.render import RenderConfig, default_params, make_renderer
from jaxdrr.volume import Volume

SCHEDULES = ("cosine", "exponential", "constant")
OPTIMIZERS = ("adam", "lbfgs")

__all__ = [
    "RegistrationConfig",
    "RegistrationResult",
    "register",
    "make_loss_fn",
    "downsample_image",
    "level_camera_shape",
    "SCHEDULES",
    "OPTIMIZERS",
]


@dataclasses.dataclass(frozen=True)
class RegistrationConfig:
    """Static registration settings (hashable).

    Attributes:
      metric: similarity name (:data:`jaxdrr.registration.metrics.METRICS`); the loss is its negative.
      metric_kwargs: extra keyword arguments of the metric as a tuple of (name, value) pairs.
      optimizer: ``"adam"`` or ``"lbfgs"``.
      learning_rate: Adam's peak step size in scaled pose units (~mm); ignored by L-BFGS.
      schedule: Adam's per-level schedule: ``"cosine"`` (decay to ``final_lr_fraction``),
        ``"exponential"`` (same end point) or ``"constant"``.
      final_lr_fraction: the learning rate at the end of a level relative to its start.
      level_lr_scale: the learning rate at a level of factor f is ``learning_rate *
        f ** level_lr_scale`` (larger steps where pixels are larger).
      levels: ``((factor, iterations), ...)`` coarse to fine; factors are integers >= 1. An entry may
        name its own optimizer as a third item, e.g. ``(1, 15, "lbfgs")`` (default ``optimizer``).
      n_starts: poses optimised together at the first level (the best one is kept).
      start_rotation_deg, start_translation_mm: spread of the extra starts around the initial pose.
      parameterization: ``"so3"``, ``"6d"`` or ``"quaternion"``.
      radius_mm: rotation scaling (see :mod:`jaxdrr.registration.pose`).
      patience: iterations without improvement > ``tol`` before a level stops early.
      tol: absolute loss improvement counted as progress. Keep it small: near the optimum a 1 mm
        depth error changes an NCC-type loss by only ~1e-5.
      seed: PRNG seed of the extra starts (when no key is passed).
    """

    metric: str = "gncc"
    metric_kwargs: tuple = ()
    optimizer: str = "adam"
    learning_rate: float = 1.0
    schedule: str = "cosine"
    final_lr_fraction: float = 0.05
    level_lr_scale: float = 0.5
    levels: tuple = ((4, 60), (2, 15, "lbfgs"), (1, 25, "lbfgs"))
    n_starts: int = 1
    start_rotation_deg: float = 5.0
    start_translation_mm: float = 10.0
    parameterization: str = "so3"
    radius_mm: float = DEFAULT_RADIUS_MM
    patience: int = 10
    tol: float = 1e-7
    seed: int = 0

    def __post_init__(self):
        metrics_lib.similarity(self.metric)
        if self.optimizer not in OPTIMIZERS:
            raise JaxdrrError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise JaxdrrError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        try:
            levels = tuple((int(lv[0]), int(lv[1])) + tuple(str(o) for o in lv[2:3]) for lv in self.levels)
        except (TypeError, ValueError, IndexError) as e:
            raise JaxdrrError(
                f"levels must be ((factor, iterations[, optimizer]), ...), got {self.levels}"
            ) from e
        if not levels or any(lv[0] < 1 or lv[1] < 0 for lv in levels):
            raise JaxdrrError(f"levels must be non-empty (factor >= 1, iterations >= 0), got {self.levels}")
        if any(lv[2] not in OPTIMIZERS for lv in levels if len(lv) > 2):
            raise JaxdrrError(f"level optimizers must be one of {OPTIMIZERS}, got {self.levels}")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "metric_kwargs", tuple(tuple(kv) for kv in self.metric_kwargs))
        if self.n_starts < 1:
            raise JaxdrrError(f"n_starts must be >= 1, got {self.n_starts}")
        if not self.learning_rate > 0:
            raise JaxdrrError(f"learning_rate must be > 0, got {self.learning_rate}")

    def replace(self, **changes) -> RegistrationConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class RegistrationResult:
    """Outcome of :func:`register`.

    Attributes:
      pose: the best pose (relative to ``camera``).
      P: its projection matrix at full resolution [3, 4] (NumPy).
      R, t: its world-to-camera extrinsics.
      loss: its loss at the finest level.
      losses: [n] loss of every iteration (the kept start only after the first level; at the
        first level the best start's losses).
      history: list of per-iteration records ``{"level", "factor", "iteration", "loss",
        "rotation", "translation"}`` of the kept trajectory, plus ``start_losses`` [n_starts]
        after the first level.
      start_losses: final first-level loss of every start.
      best_start: index of the kept start.
      n_iterations: iterations run (all levels).
      time_s: wall time of the optimisation (excluding nothing: includes compilation on a cold cache).
    """

    pose: Pose
    P: np.ndarray
    R: np.ndarray
    t: np.ndarray
    loss: float
    losses: np.ndarray
    history: list[dict[str, Any]]
    start_losses: np.ndarray
    best_start: int
    n_iterations: int
    time_s: float


def level_camera_shape(height: int, width: int, factor: int) -> tuple[int, int]:
    """Detector size at a coarse level."""
    h, w = height // factor, width // factor
    if h < 4 or w < 4:
        raise JaxdrrError(
            f"level factor {factor} leaves a {h}x{w} detector from {height}x{width}; use smaller factors"
        )
    return h, w


def downsample_image(image, factor: int) -> jax.Array:
    """Block mean over ``factor x factor`` pixels (cropping the remainder at the far edges), the
    grid of :func:`jaxdrr.geometry.rescale_detector`."""
    image = jnp.asarray(image)
    if factor == 1:
        return image
    H, W = image.shape
    h, w = H // factor, W // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))


def downsample_volume(volume: Volume, factor: int) -> Volume:
    """A HU (or density) volume block-averaged over ``factor``^3 voxels, on the same world box.

    The far edges are padded with the volume's minimum (air) up to whole blocks; the new voxel
    centres are the block centres, so the affine keeps the world coordinates. Registration cost per
    iteration grows with the CT's voxel count, and a CT much finer than the DRR's pixels adds cost
    but no information (see ``jaxdrr register --ct-max-size``).
    """
    if factor == 1:
        return volume
    if factor < 1:
        raise JaxdrrError(f"volume factor must be an integer >= 1, got {factor}")
    data = jnp.asarray(volume.data)
    lead = data.shape[:-3]
    pad = [(0, 0)] * len(lead) + [(0, -n % factor) for n in data.shape[-3:]]
    data = jnp.pad(data, pad, constant_values=jnp.min(data))
    ni, nj, nk = (n // factor for n in data.shape[-3:])
    data = data.reshape(*lead, ni, factor, nj, factor, nk, factor).mean(axis=(-5, -3, -1))
    affine = np.array(volume.affine, np.float64)
    affine[:3, 3] += affine[:3, :3] @ np.full(3, (factor - 1) / 2.0)
    affine[:3, :3] *= factor
    return Volume.create(data, affine, kind=volume.kind, channel_names=volume.channel_names)


def make_loss_fn(render_config: RenderConfig, metric: str, metric_kwargs=(), factor: int = 1) -> Callable:
    """``loss(pose, volume, camera, target, mask, params)`` at one detector level (pure).

    ``target``/``mask`` must already be at the level's size (:func:`downsample_image`);
    ``render_config`` is the full-size model configuration.
    """
    h, w = level_camera_shape(render_config.height, render_config.width, factor)
    render = make_renderer(render_config.replace(height=h, width=w))
    loss = metrics_lib.make_loss(metric, **dict(metric_kwargs))

    def loss_fn(pose: Pose, volume: Volume, camera: Camera, target, mask, params):
        P = pose_to_projection(pose, camera)
        if factor != 1:
            P = rescale_detector(P, factor)
        drr = render(params, volume, P, None)
        return loss(drr, target, mask)

    return loss_fn


def _make_optimizer(config: RegistrationConfig, factor: int, iterations: int, optimizer: str):
    if optimizer == "lbfgs":
        return optax.lbfgs(
            memory_size=10,
            linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=12, initial_guess_strategy="one"),
        )
    lr = config.learning_rate * factor**config.level_lr_scale
    steps = max(iterations, 1)
    if config.schedule == "constant":
        sched = lr
    elif config.schedule == "cosine":
        sched = optax.cosine_decay_schedule(lr, steps, alpha=config.final_lr_fraction)
    else:
        sched = optax.exponential_decay(lr, steps, config.final_lr_fraction)
    return optax.adam(sched)


@functools.lru_cache(maxsize=64)
def _compiled_step(
    render_config: RenderConfig,
    config: RegistrationConfig,
    factor: int,
    iterations: int,
    batched: bool,
    optimizer: str,
):
    loss_fn = make_loss_fn(render_config, config.metric, config.metric_kwargs, factor)
    opt = _make_optimizer(config, factor, iterations, optimizer)

    def step(pose, state, volume, camera, target, mask, params):
        f = lambda p: loss_fn(p, volume, camera, target, mask, params)  # noqa: E731
        if optimizer == "lbfgs":
            value, grad = optax.value_and_grad_from_state(f)(pose, state=state)
            updates, state = opt.update(grad, state, pose, value=value, grad=grad, value_fn=f)
        else:
            value, grad = jax.value_and_grad(f)(pose)
            updates, state = opt.update(grad, state, pose)
        return optax.apply_updates(pose, updates), state, value

    init = opt.init
    if batched:
        step = jax.vmap(step, in_axes=(0, 0, None, None, None, None, None))
        init = jax.vmap(init)
    evaluate = jax.vmap(loss_fn, in_axes=(0,) + (None,) * 5) if batched else loss_fn
    return jax.jit(step), jax.jit(init), jax.jit(evaluate)


def check_problem(target, camera: Camera, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Validates the target image and mask against the camera; returns them as float arrays.

    Raises:
      JaxdrrError: shapes disagree with the camera's detector, intrinsics do not fit the image,
        the target has NaN/Inf, or the mask is empty.
    """
    target = np.asarray(target)
    if target.ndim != 2:
        raise JaxdrrError(f"the X-ray must be a 2D image [H, W], got shape {target.shape}")
    if target.shape != (camera.height, camera.width):
        raise JaxdrrError(
            f"X-ray image is {target.shape[0]}x{target.shape[1]} but the camera/intrinsics describe a "
            f"{camera.height}x{camera.width} detector; pass matching intrinsics or rescale them "
            "(jaxdrr.geometry.rescale_detector)"
        )
    check_intrinsics(camera.K, camera.height, camera.width)
    if not np.all(np.isfinite(target)):
        raise JaxdrrError(
            f"the X-ray has {int(np.sum(~np.isfinite(target)))} non-finite pixel(s) "
            "(NaN/Inf); fix or mask them (and pass the mask)"
        )
    dtype = jnp.result_type(float)
    if mask is None:
        mask = np.ones(target.shape, dtype)
    else:
        mask = np.asarray(mask, dtype)
        metrics_lib.check_images(target, target, mask)
        # A masked-out NaN would still poison sums (0 * NaN): require finiteness everywhere above.
    return target.astype(dtype), mask


def register(
    volume: Volume,
    target,
    camera: Camera,
    *,
    init: Pose | None = None,
    config: RegistrationConfig | None = None,
    render_config: RenderConfig | None = None,
    params=None,
    mask=None,
    key=None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> RegistrationResult:
    """Finds the pose whose DRR best matches ``target``.

    Args:
      volume: the CT (HU or densities).
      target: the X-ray [H, W] (e.g. a ``-log`` image); must match ``camera``'s detector.
      camera: intrinsics, reference extrinsics and rotation centre (:class:`Camera`).
      init: initial pose relative to the camera; default the identity (the reference camera).
      config: :class:`RegistrationConfig`.
      render_config: the registration's forward model; its height/width are replaced by the
        camera's, its noise switched off. Default: ``RenderConfig`` (120 kVp, "ei", "log").
      params: physics tables for the model (default :func:`jaxdrr.default_params`).
      mask: optional [H, W] pixel weights.
      key: PRNG key for the extra starts.
      callback: called after each iteration with a record dict (progress bars).

    Returns:
      :class:`RegistrationResult`.
    """
    config = config or RegistrationConfig()
    target, mask = check_problem(target, camera, mask)
    rc = (render_config or RenderConfig()).replace(height=camera.height, width=camera.width, noise=None)
    params = params if params is not None else default_params(rc)
    if volume.kind == "hu":  # the same DRRs; the per-voxel HU -> density work runs once, not per step
        volume = jax.jit(lambda p, v: decompose(p, v, rc.materials))(params, volume)
    if init is None:
        init = Pose.identity(config.parameterization, config.radius_mm)
    if (init.parameterization, init.radius_mm) != (config.parameterization, config.radius_mm):
        from jaxdrr.registration.pose import convert

        init = convert(init, config.parameterization, config.radius_mm)
    if key is None:
        key = jax.random.key(config.seed)

    t0 = time.perf_counter()
    S = config.n_starts
    batched = S > 1
    if batched:
        extra = random_pose(
            key,
            config.start_rotation_deg,
            config.start_translation_mm,
            config.parameterization,
            config.radius_mm,
            batch_shape=(S - 1,),
        )
        # Compose approximately: perturbations add to the initial parameters (small motions).
        pose = jax.tree_util.tree_map(
            lambda a, b: jnp.concatenate([a[None], a[None] + b], axis=0), init, extra
        )
    else:
        pose = init

    history: list[dict[str, Any]] = []
    losses: list[float] = []
    start_losses = np.zeros(S)
    best_start = 0
    n_iter = 0
    best_loss = np.inf
    for li, level in enumerate(config.levels):
        factor, iterations = level[:2]
        optimizer = level[2] if len(level) > 2 else config.optimizer
        level_batched = batched and li == 0
        step, init_fn, evaluate = _compiled_step(rc, config, factor, iterations, level_batched, optimizer)
        tgt = downsample_image(target, factor)
        msk = downsample_image(mask, factor)
        state = init_fn(pose)
        best_pose = pose
        best = evaluate(pose, volume, camera, tgt, msk, params)
        best = np.asarray(best, np.float64)
        since = np.zeros_like(best, dtype=int)
        for it in range(iterations):
            new_pose, state, value = step(pose, state, volume, camera, tgt, msk, params)
            value = np.asarray(value, np.float64)
            # ``value`` is the loss at ``pose`` (before the update).
            improved = value < best - config.tol
            if level_batched:
                sel = jnp.asarray(value < best)
                best_pose = jax.tree_util.tree_map(
                    lambda b, p: jnp.where(sel.reshape((-1,) + (1,) * (p.ndim - 1)), p, b), best_pose, pose
                )
            elif value < best:
                best_pose = pose
            best = np.minimum(best, value)
            since = np.where(improved, 0, since + 1)
            pose = new_pose
            n_iter += 1
            kept = int(np.argmin(value)) if level_batched else 0
            rec = {
                "level": li,
                "factor": factor,
                "iteration": it,
                "loss": float(value[kept] if level_batched else value),
                "rotation": np.asarray(pose.rotation[kept] if level_batched else pose.rotation).tolist(),
                "translation": np.asarray(
                    pose.translation[kept] if level_batched else pose.translation
                ).tolist(),
            }
            history.append(rec)
            losses.append(rec["loss"])
            if callback is not None:
                callback(rec)
            if np.all(since >= config.patience):
                break
        # The final pose of the level may be better than all evaluated ones.
        final = np.asarray(evaluate(pose, volume, camera, tgt, msk, params), np.float64)
        if level_batched:
            sel = jnp.asarray(final < best)
            best_pose = jax.tree_util.tree_map(
                lambda b, p: jnp.where(sel.reshape((-1,) + (1,) * (p.ndim - 1)), p, b), best_pose, pose
            )
            best = np.minimum(best, final)
            start_losses = best.copy()
            best_start = int(np.argmin(best))
            pose = jax.tree_util.tree_map(lambda a: a[best_start], best_pose)
            best_loss = float(best[best_start])
        else:
            if final < best:
                best_pose, best = pose, final
            pose = best_pose
            best_loss = float(best)
        if not batched and li == 0:
            start_losses = np.array([best_loss])

    R, t = pose_extrinsics(pose, camera)
    P = pose_to_projection(pose, camera)
    elapsed = time.perf_counter() - t0
    return RegistrationResult(
        pose=pose,
        P=np.asarray(P, np.float64),
        R=np.asarray(R, np.float64),
        t=np.asarray(t, np.float64),
        loss=best_loss,
        losses=np.asarray(losses),
        history=history,
        start_losses=start_losses,
        best_start=best_start,
        n_iterations=n_iter,
        time_s=elapsed,
    )
