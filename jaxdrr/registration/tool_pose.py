"""Pose of a surgical tool from X-ray images: gradient descent on one scene object's rigid pose.

The abstraction
---------------
The CT and the camera(s) are known and fixed (e.g. after the patient's 2D/3D registration); one
object of a :class:`jaxdrr.scene.Scene` (a K-wire, a screw) has an unknown pose. Its
:class:`jaxdrr.geometry.RigidTransform` is estimated by minimising an image loss between the scene
rendered with the tool at the current pose and the target image(s):

    loss(pose) = mean over views v of  -similarity(blur_s(render(params, scene(pose), P_v)),
                                                    blur_s(target_v), mask_v)

* **Parameters.** The rotation vector (radians) and translation (mm) of the tool's pose, the
  rotation turning about a *pivot* in tool coordinates (default the ``"tip"`` landmark): the
  translation is then the tip's displacement and a rotation swings the shaft about the tip, which
  decouples the two (a rotation about the tool's base would move the tip by length x angle).
* **Optimiser.** optax Adam on per-component scaled steps (``learning_rate_mm`` for the
  translation, ``learning_rate_deg`` for the rotation: Adam's first steps are about that size per
  component), cosine-decayed within each stage. The translation's components are taken along the
  start pose's tool axes: a thin tool's image changes ~100x less when it slides along its axis
  than across it, and Adam's per-component normalisation only balances the two when they are
  separate components.
* **Coarse to fine** in scale space: the stages blur both images with a Gaussian of
  ``blur_sigmas_px`` (e.g. 3 px, then 1 px, then none). A thin tool is a few pixels wide; blurring
  widens its basin of attraction so that a start several pixels off still feels the target. The
  sigma is a traced argument: one compilation serves every stage. (The render costs the same at
  every stage: the detector size is the renderer's static configuration.)
* **Views.** ``P`` [3, 4] and ``target`` [H, W] for one view, or ``P`` [V, 3, 4] and ``target``
  [V, H, W] for several (the renderer is vmapped over the views). One view constrains the tool
  well in the image plane but weakly along the viewing direction (only through magnification and
  perspective): report the depth error separately (:func:`tool_pose_errors`) or add a view.

Gradients of the rendered image w.r.t. the pose flow through the mesh path lengths (ray/triangle
hit depths) and the displaced tissue; see :mod:`jaxdrr.ops.mesh_project`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdrr.errors import JaxdrrError
from jaxdrr.geometry.projection import project_points, source_position
from jaxdrr.geometry.rigid import RigidTransform
from jaxdrr.geometry.rotations import so3_exp
from jaxdrr.registration.metrics import check_images, similarity

__all__ = [
    "ToolRegistrationResult",
    "register_tool",
    "tool_loss_fn",
    "tool_pose_errors",
    "gaussian_blur",
    "repivot",
    "tool_pose_along",
    "perturb_tool_pose",
]

MIN_SIGMA_PX = 0.3  # nearly no blur: the 2D kernel keeps 98 % of the weight on the centre pixel
MAX_SIGMA_PX = 4.0  # the widest blur (kernel radius 3 sigma = 12 px)


@dataclasses.dataclass(frozen=True)
class ToolRegistrationResult:
    """The estimated tool pose and the optimisation history.

    Attributes:
      pose: estimated object -> world :class:`RigidTransform` (about the registration's pivot).
      loss: final loss (at ``pose``, finest stage).
      losses: [N] loss per iteration (before that iteration's step; each stage's own blur).
      rotations, translations: [N + 1, 3] the pose's leaves before each step and at the end.
      stages: [N] the stage index of each iteration (an axial scan, if any, is the last step, in
        the last stage).
      pivot: the pivot (tool coordinates, mm) of every pose in the history.
      seconds: wall time of the optimisation (compilation included on a first call).
    """

    pose: RigidTransform
    loss: float
    losses: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    stages: np.ndarray
    pivot: tuple
    seconds: float

    def pose_at(self, i: int) -> RigidTransform:
        """The pose before iteration ``i`` (``i = -1``: the final pose)."""
        return RigidTransform(jnp.asarray(self.rotations[i]), jnp.asarray(self.translations[i]), self.pivot)


def gaussian_blur(image, sigma_px) -> jax.Array:
    """Separable Gaussian blur of ``image`` [H, W] with a (traceable) ``sigma_px``.

    ``sigma_px`` is clipped to [``MIN_SIGMA_PX``, ``MAX_SIGMA_PX``] (the fixed kernel radius is
    3 x ``MAX_SIGMA_PX``; ``MIN_SIGMA_PX`` keeps 98 % of the weight on the centre pixel: 0 means "no blur"). The
    image is edge-padded: a constant image stays constant.
    """
    image = jnp.asarray(image)
    radius = int(np.ceil(3 * MAX_SIGMA_PX))
    sigma = jnp.clip(jnp.asarray(sigma_px, image.dtype), MIN_SIGMA_PX, MAX_SIGMA_PX)
    x = jnp.arange(-radius, radius + 1, dtype=image.dtype)
    w = jnp.exp(-0.5 * (x / sigma) ** 2)
    w = w / jnp.sum(w)
    padded = jnp.pad(image, radius, mode="edge")
    rows = jax.lax.conv_general_dilated(padded[None, None], w[None, None, :, None], (1, 1), "VALID")
    out = jax.lax.conv_general_dilated(rows, w[None, None, None, :], (1, 1), "VALID")
    return out[0, 0]


def repivot(pose: RigidTransform, pivot) -> RigidTransform:
    """The same rigid map as ``pose`` expressed about another ``pivot`` (tool coordinates, mm)."""
    R = pose.rotation_matrix()
    c = jnp.asarray(pivot, R.dtype)
    # R (x - c) + c + t' = R (x - c0) + c0 + t  =>  t' = t + (R - I)(c - c0)
    c0 = jnp.asarray(pose.pivot, R.dtype)
    translation = pose.translation + (R - jnp.eye(3, dtype=R.dtype)) @ (c - c0)
    return RigidTransform.create(pose.rotation, translation, pivot=tuple(np.asarray(pivot, np.float64)))


def tool_pose_along(tip_world, direction, tip=(0.0, 0.0, 1.0), base=(0.0, 0.0, 0.0)) -> RigidTransform:
    """The pose that puts a straight tool's ``tip`` at ``tip_world`` with its axis along ``direction``.

    The rotation is the smallest one taking the tool's ``base -> tip`` axis onto ``direction``
    (the spin about the axis is left as it is); the pose turns about ``tip`` (its pivot).

    Args:
      tip_world: [3] world position of the tip (mm).
      direction: [3] world direction the tool points to (base -> tip), any length > 0.
      tip, base: [3] tool-coordinate points of the tip and the base (e.g. a K-wire's landmarks).
    """
    tip, base = np.asarray(tip, np.float64), np.asarray(base, np.float64)
    a = tip - base
    b = np.asarray(direction, np.float64)
    if not (np.linalg.norm(a) > 0 and np.linalg.norm(b) > 0 and np.all(np.isfinite(b))):
        raise JaxdrrError("tool_pose_along: the tool's axis and the direction must be finite and non-zero")
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    cross = np.cross(a, b)
    sin, cos = np.linalg.norm(cross), float(a @ b)
    if sin > 1e-12:
        rotvec = cross / sin * np.arctan2(sin, cos)
    elif cos > 0:
        rotvec = np.zeros(3)
    else:  # opposite: half a turn about any axis perpendicular to a
        perpendicular = np.cross(a, np.eye(3)[np.argmin(np.abs(a))])
        rotvec = np.pi * perpendicular / np.linalg.norm(perpendicular)
    return RigidTransform.create(rotvec, np.asarray(tip_world, np.float64) - tip, pivot=tuple(tip))


def perturb_tool_pose(
    pose: RigidTransform, shift_mm: float, angle_deg: float, rng, tip=None
) -> RigidTransform:
    """``pose`` with the tip moved ``shift_mm`` and the tool turned ``angle_deg`` about its tip.

    Directions are random (``rng``: a ``numpy.random.Generator``): the shift along a uniform unit
    vector, the rotation about a uniform unit axis through the tip (world frame), applied after
    ``pose``. ``tip``: tool coordinates of the point kept (before the shift); default the pivot.
    Returns the pose about the same pivot.
    """
    tip = np.asarray(pose.pivot if tip is None else tip, np.float64)
    shift, axis = rng.normal(size=3), rng.normal(size=3)
    shift, axis = shift / np.linalg.norm(shift), axis / np.linalg.norm(axis)
    T = np.asarray(pose.matrix(), np.float64)
    turn = np.asarray(so3_exp(jnp.asarray(np.deg2rad(angle_deg) * axis, jnp.float32)), np.float64)
    tip_world = T[:3, :3] @ tip + T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = turn @ T[:3, :3]
    out[:3, 3] = tip_world + shift_mm * shift - out[:3, :3] @ tip
    moved = RigidTransform.from_matrix(jnp.asarray(out, pose.rotation.dtype), pivot=tuple(tip))
    return repivot(moved, pose.pivot)


def _metric(metric) -> Callable:
    if callable(metric):
        return metric
    if not isinstance(metric, str):
        raise JaxdrrError(f"metric must be a metric name or a callable similarity, got {metric!r}")
    return similarity(metric)


def _views(P, target, mask):
    P = jnp.asarray(P)
    target = jnp.asarray(target)
    if P.shape[-2:] != (3, 4) or P.ndim not in (2, 3):
        raise JaxdrrError(f"P must be [3, 4] or [V, 3, 4], got shape {P.shape}")
    single = P.ndim == 2
    if single:
        P, target = P[None], target[None]
        mask = None if mask is None else jnp.asarray(mask)[None]
    if target.ndim != 3 or target.shape[0] != P.shape[0]:
        raise JaxdrrError(
            f"target must be [H, W] for one view or [V, H, W] for V = {P.shape[0]} views, got {target.shape}"
        )
    for v in range(target.shape[0]):
        check_images(target[v], target[v], None if mask is None else mask[v])
    return P, target, mask


def _view_loss(
    rotation, translation, sigma_px, params, scene, P, target, mask, render_fn, similarity_fn, name, pivot
):
    """Mean over views of ``-similarity`` (P [V, 3, 4], target [V, H, W], mask None or [V, H, W])."""
    posed = scene.with_pose(name, RigidTransform(rotation, translation, pivot))

    def one(P_v, target_v, mask_v):
        image = render_fn(params, posed, P_v, None)
        return -similarity_fn(gaussian_blur(image, sigma_px), gaussian_blur(target_v, sigma_px), mask=mask_v)

    per_view = jax.vmap(one, in_axes=(0, 0, None if mask is None else 0))(P, target, mask)
    return jnp.mean(per_view)


# One compiled loss-and-gradient per (renderer, metric, object, pivot) and shapes: the scene, params,
# cameras and targets are arguments (not constants baked into the program), so repeated
# registrations (a benchmark, a video) reuse the compilation.
_STATIC = (8, 9, 10, 11)
_value_and_grad_jit = jax.jit(jax.value_and_grad(_view_loss, argnums=(0, 1)), static_argnums=_STATIC)
_value_and_grad_eager = jax.value_and_grad(_view_loss, argnums=(0, 1))


def _axial_losses(offsets, rotation, translation, axis, sigma_px, *rest):
    """The loss with the tool slid by each of ``offsets`` (mm) along the world direction ``axis``.

    ``rest``: the arguments of :func:`_view_loss` after ``sigma_px``.
    """
    # One render at a time (lax.map): the memory of a single loss evaluation.
    return jax.lax.map(
        lambda offset: _view_loss(rotation, translation + offset * axis, sigma_px, *rest), offsets
    )


_axial_losses_jit = jax.jit(_axial_losses, static_argnums=(10, 11, 12, 13))


def tool_loss_fn(render_fn, params, scene, name: str, P, target, *, metric="mse", mask=None) -> Callable:
    """``loss(rotation, translation, pivot, sigma_px)``: the image loss of the tool ``name`` at a pose.

    Args:
      render_fn: ``render(params, scene, P, key)`` (:func:`jaxdrr.scene.make_scene_renderer`;
        noise-free: it is called with ``key=None``).
      params: the renderer's params (:func:`jaxdrr.scene.scene_params`).
      scene: the scene; the object ``name`` is re-posed, everything else is fixed.
      name: the tool's object name.
      P: [3, 4] or [V, 3, 4] projection matrices.
      target: [H, W] or [V, H, W] images in the renderer's output units.
      metric: a similarity name of :mod:`jaxdrr.registration.metrics` (higher is better) or a
        callable ``similarity(x, y, mask=None)``; default ``"mse"`` (same physics in render and
        target: the CT and camera are known); ``"gncc"``/``"ncc"`` for real images.
      mask: optional [H, W] / [V, H, W] weights.

    Returns:
      A pure function of ``(rotation [3], translation [3], pivot (static tuple), sigma_px)``: the mean
      over views of ``-similarity`` of the blurred render and blurred target.
    """
    scene.object(name)  # a clear error for an unknown name
    similarity_fn = _metric(metric)
    P, target, mask = _views(P, target, mask)

    def loss(rotation, translation, pivot, sigma_px):
        return _view_loss(
            rotation,
            translation,
            sigma_px,
            params,
            scene,
            P,
            target,
            mask,
            render_fn,
            similarity_fn,
            name,
            pivot,
        )

    return loss


def _default_pivot(obj) -> tuple:
    landmarks = dict(getattr(obj, "landmarks", ()) or ())
    if "tip" in landmarks:
        return tuple(float(v) for v in landmarks["tip"])
    if hasattr(obj, "mesh"):
        return tuple(float(v) for v in np.asarray(obj.mesh.vertices, np.float64).mean(0))
    return (0.0, 0.0, 0.0)


def register_tool(
    render_fn,
    params,
    scene,
    name: str,
    P,
    target,
    start_pose: RigidTransform,
    *,
    iterations: int | Sequence[int] = (30, 20, 20),
    blur_sigmas_px: Sequence[float] = (3.0, 1.5, 0.0),
    metric="mse",
    learning_rate_mm: float = 1.0,
    learning_rate_deg: float = 1.0,
    final_lr_fraction: float = 0.1,
    pivot=None,
    mask=None,
    axial_search_mm: float = 0.0,
    axial_step_mm: float = 0.5,
    jit: bool = True,
) -> ToolRegistrationResult:
    """Estimates the pose of the scene object ``name`` from image(s) by gradient descent (Adam).

    Args:
      render_fn, params, scene, name, P, target, metric, mask: as :func:`tool_loss_fn`.
      start_pose: the initial object -> world pose (any pivot; it is re-expressed about ``pivot``).
      iterations: Adam steps per stage (an int: the same for every stage).
      blur_sigmas_px: the Gaussian blur of each stage (coarse to fine); 0 = no blur.
      learning_rate_mm, learning_rate_deg: first-step sizes of the translation (mm) and rotation
        (degrees) components; each stage decays them (cosine) to ``final_lr_fraction`` of that,
        and each later stage starts at half the previous stage's rates.
      pivot: the point (tool coordinates, mm) the rotation turns about; default the object's
        ``"tip"`` landmark, else its mesh's vertex centroid.
      axial_search_mm: after the last gradient stage, slide the tool along its own axis
        (``"base"`` -> ``"tip"`` landmarks) by every multiple of ``axial_step_mm`` within +-this
        and keep the lowest loss (at the last stage's blur). A wire's image constrains its
        position along its axis only at the tip, so the gradient along the axis is weak and Adam
        (which normalises each component) drifts there; a 1-D scan fixes it. It trusts the axis:
        a start too far off for the stages to align it gets no better. (After every stage instead,
        the 20-start benchmark did no better: 17 vs 18 of 20.) 0 (default): no scan.
      axial_step_mm: the scan's spacing (mm).
      jit: compile the loss and gradient (one compilation for all stages, reused by later calls
        with the same renderer, metric, object, pivot and shapes).

    Returns:
      :class:`ToolRegistrationResult` (the pose about ``pivot``, the loss and pose history).

    Raises:
      JaxdrrError: unknown object, bad shapes, a non-finite target, non-positive iterations.
    """
    obj = scene.object(name)
    sigmas = [float(s) for s in blur_sigmas_px]
    steps = [int(iterations)] * len(sigmas) if np.ndim(iterations) == 0 else [int(n) for n in iterations]
    if len(steps) != len(sigmas) or not sigmas:
        raise JaxdrrError(f"one iteration count per blur stage: got {steps} for sigmas {sigmas}")
    if any(n < 1 for n in steps) or any(not np.isfinite(s) or s < 0 for s in sigmas):
        raise JaxdrrError(f"iterations must be >= 1 and blur sigmas finite and >= 0, got {steps}, {sigmas}")
    if not (learning_rate_mm > 0 and learning_rate_deg > 0 and 0 < final_lr_fraction <= 1):
        raise JaxdrrError("learning rates must be > 0 and final_lr_fraction in (0, 1]")
    if not (
        np.isfinite(axial_search_mm)
        and axial_search_mm >= 0
        and np.isfinite(axial_step_mm)
        and axial_step_mm > 0
    ):
        raise JaxdrrError(
            f"axial_search_mm must be >= 0 and axial_step_mm > 0, got {axial_search_mm}, {axial_step_mm}"
        )
    landmarks = dict(getattr(obj, "landmarks", ()) or ())
    if axial_search_mm > 0 and not {"tip", "base"} <= set(landmarks):
        raise JaxdrrError(
            f"axial_search_mm needs 'tip' and 'base' landmarks; {name!r} has {sorted(landmarks)}"
        )
    pivot = _default_pivot(obj) if pivot is None else tuple(float(v) for v in np.asarray(pivot).reshape(3))
    pose = repivot(start_pose, pivot)
    if not (
        np.all(np.isfinite(np.asarray(pose.rotation))) and np.all(np.isfinite(np.asarray(pose.translation)))
    ):
        raise JaxdrrError("start_pose has non-finite values")

    similarity_fn = _metric(metric)
    P, target, mask = _views(P, target, mask)
    static = (render_fn, similarity_fn, name, pivot)
    compiled = _value_and_grad_jit if jit else _value_and_grad_eager

    def value_and_grad(rotation, translation, sigma_px):
        return compiled(rotation, translation, sigma_px, params, scene, P, target, mask, *static)

    # Per-component step sizes: Adam's update is ~ +-1 per component at first.
    dtype = pose.rotation.dtype
    scale = jnp.asarray([np.deg2rad(learning_rate_deg)] * 3 + [learning_rate_mm] * 3, dtype)

    # The translation is optimised in the start pose's tool axes (t = t0 + R0 u): for a long thin
    # tool the loss is ~100x stiffer across the axis than along it, and Adam's per-component
    # normalisation only separates the two when they are components.
    R0 = pose.rotation_matrix()
    t0_world = pose.translation

    def pose_vector(x):
        return jnp.concatenate([x[:3], t0_world + R0 @ x[3:]])

    x = jnp.concatenate([pose.rotation, jnp.zeros(3, dtype)])
    if axial_search_mm > 0:
        n_side = int(np.floor(axial_search_mm / axial_step_mm))
        offsets = jnp.asarray(np.arange(-n_side, n_side + 1) * axial_step_mm, dtype)
        along = np.asarray(landmarks["tip"], np.float64) - np.asarray(landmarks["base"], np.float64)
        along = jnp.asarray(along / np.linalg.norm(along), dtype)
        scan = _axial_losses_jit if jit else _axial_losses

    def axial_scan(x, sigma):
        """x slid along the tool's current axis to the scan's lowest loss; the loss at offset 0."""
        current = pose_vector(x)
        axis = RigidTransform(current[:3], current[3:], pivot).rotation_matrix() @ along
        values = scan(offsets, current[:3], current[3:], axis, sigma, params, scene, P, target, mask, *static)
        best = int(jnp.argmin(values))  # offset 0 (the gradient result) is among the candidates
        return x.at[3:].add(R0.T @ (offsets[best] * axis)), float(values[n_side])

    losses, history, stages = [], [np.asarray(pose_vector(x))], []
    t0 = time.perf_counter()
    for stage, (n, sigma) in enumerate(zip(steps, sigmas, strict=True)):
        schedule = optax.cosine_decay_schedule(0.5**stage, n, alpha=final_lr_fraction)
        opt = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(schedule), optax.scale(-1.0))
        state = opt.init(x)
        for _ in range(n):
            current = pose_vector(x)
            value, (g_rot, g_tr) = value_and_grad(current[:3], current[3:], jnp.asarray(sigma, dtype))
            grad = jnp.concatenate([g_rot, R0.T @ g_tr])
            if not bool(jnp.all(jnp.isfinite(grad))) or not np.isfinite(float(value)):
                raise JaxdrrError(
                    f"non-finite loss or gradient at iteration {len(losses)} (loss {float(value)}): the tool "
                    "may have left the field of view or the images are degenerate"
                )
            updates, state = opt.update(grad, state, x)
            x = x + scale * updates
            losses.append(float(value))
            history.append(np.asarray(pose_vector(x)))
            stages.append(stage)
        if axial_search_mm > 0 and stage == len(steps) - 1:  # one more step: loss before, pose after
            x, before = axial_scan(x, jnp.asarray(sigma, dtype))
            losses.append(before)
            history.append(np.asarray(pose_vector(x)))
            stages.append(stage)
    x = pose_vector(x)
    final, _ = value_and_grad(x[:3], x[3:], jnp.asarray(sigmas[-1], dtype))
    seconds = time.perf_counter() - t0
    history = np.stack(history)
    return ToolRegistrationResult(
        pose=RigidTransform(x[:3], x[3:], pivot),
        loss=float(final),
        losses=np.asarray(losses),
        rotations=history[:, :3],
        translations=history[:, 3:],
        stages=np.asarray(stages),
        pivot=pivot,
        seconds=seconds,
    )


def tool_pose_errors(estimate: RigidTransform, truth: RigidTransform, tip, base, P=None) -> dict:
    """Errors of an estimated tool pose: tip distance, axis angle and, given a view, their split.

    Args:
      estimate, truth: object -> world poses (any pivots).
      tip, base: [3] tool-coordinate points (mm) of the tip and the other end of the long axis.
      P: optional [3, 4] view: adds the tip's reprojection error (pixels) and the split of the 3D
        tip error into the component along the viewing ray through the true tip (``depth``) and
        the component perpendicular to it (``in_plane``).

    Returns:
      ``{"tip_mm", "axis_deg"}`` (+ ``"tip_px", "tip_depth_mm", "tip_in_plane_mm"`` with ``P``),
      Python floats. The axis angle ignores the spin about the tool's own axis (unobservable for a
      round wire).
    """
    tip, base = np.asarray(tip, np.float64), np.asarray(base, np.float64)
    ends_est = np.asarray(estimate.apply(np.stack([tip, base])), np.float64)
    ends_true = np.asarray(truth.apply(np.stack([tip, base])), np.float64)
    error = ends_est[0] - ends_true[0]
    axis_est = ends_est[0] - ends_est[1]
    axis_true = ends_true[0] - ends_true[1]
    cos = axis_est @ axis_true / (np.linalg.norm(axis_est) * np.linalg.norm(axis_true))
    out = {
        "tip_mm": float(np.linalg.norm(error)),
        "axis_deg": float(np.degrees(np.arccos(np.clip(cos, -1, 1)))),
    }
    if P is not None:
        uv_est, _ = project_points(P, ends_est[0])
        uv_true, _ = project_points(P, ends_true[0])
        ray = ends_true[0] - np.asarray(source_position(P), np.float64)
        ray = ray / np.linalg.norm(ray)
        depth = float(error @ ray)
        out["tip_px"] = float(
            np.linalg.norm(np.asarray(uv_est, np.float64) - np.asarray(uv_true, np.float64))
        )
        out["tip_depth_mm"] = abs(depth)
        out["tip_in_plane_mm"] = float(np.linalg.norm(error - depth * ray))
    return out
