"""2D/3D registration: find the pose of an X-ray from its CT by optimising a differentiable DRR.

* :mod:`~jaxdrr.registration.pose`: :class:`Pose` (so3 / 6d / quaternion rotation + translation,
  about a rotation centre, relative to a reference :class:`Camera`), conversions to P and C-arm angles.
* :mod:`~jaxdrr.registration.metrics`: NCC, gradient NCC, patch-wise / multiscale NCC, MSE.
* :mod:`~jaxdrr.registration.optimize`: :func:`register` (Adam / L-BFGS, coarse to fine, multi-start).
* :mod:`~jaxdrr.registration.accuracy`: mTRE, projection distance, rotation / translation errors.
* :mod:`~jaxdrr.registration.multiview`: :func:`register_multiview` (several bones, several calibrated
  views, jointly) and :func:`track_sequence` (frame-by-frame tracking with quality flags; a lost
  frame can be re-seeded).
* :mod:`~jaxdrr.registration.initialize`: starting poses of long bones found from two views
  (:func:`initialize_bones`, :func:`search_seeds`), and the manual override (:func:`load_initial_poses`).
* ``jaxdrr register`` (the command line) lives in :mod:`jaxdrr.cli.register`.

Example::

    camera = Camera.from_projection(P_nominal, H, W, center=volume.center)
    result = register(volume, xray, camera, config=RegistrationConfig(metric="gncc"))
    result.P, result.history
"""

from jaxdrr.registration import accuracy, initialize, metrics, multiview, optimize, pose
from jaxdrr.registration.accuracy import (
    grid_points,
    mtre,
    projection_distance,
    registration_errors,
    rotation_error_deg,
    translation_error_mm,
)
from jaxdrr.registration.initialize import (
    initialize_bone,
    initialize_bones,
    joint_seeds,
    limb_axes_3d,
    load_initial_poses,
    save_initial_poses,
    search_seeds,
)
from jaxdrr.registration.metrics import (
    gradient_ncc,
    make_loss,
    mse,
    multiscale_ncc,
    ncc,
    patch_ncc,
)
from jaxdrr.registration.multiview import (
    MultiViewConfig,
    MultiViewResult,
    TrackingResult,
    View,
    register_multiview,
    track_sequence,
)
from jaxdrr.registration.optimize import (
    RegistrationConfig,
    RegistrationResult,
    downsample_image,
    downsample_volume,
    make_loss_fn,
    register,
)
from jaxdrr.registration.pose import (
    Camera,
    Pose,
    camera_from_carm,
    carm_parameters,
    convert,
    pose_extrinsics,
    pose_from_extrinsics,
    pose_from_projection,
    pose_from_rotation,
    pose_to_projection,
    random_pose,
    rotation_matrix,
)
from jaxdrr.registration.tool_pose import ToolRegistrationResult, register_tool, tool_pose_errors

__all__ = [
    "initialize",
    "initialize_bone",
    "initialize_bones",
    "limb_axes_3d",
    "joint_seeds",
    "search_seeds",
    "load_initial_poses",
    "save_initial_poses",
    "Pose",
    "Camera",
    "camera_from_carm",
    "carm_parameters",
    "convert",
    "pose_extrinsics",
    "pose_from_extrinsics",
    "pose_from_projection",
    "pose_from_rotation",
    "pose_to_projection",
    "random_pose",
    "rotation_matrix",
    "ncc",
    "gradient_ncc",
    "patch_ncc",
    "multiscale_ncc",
    "mse",
    "make_loss",
    "RegistrationConfig",
    "RegistrationResult",
    "register",
    "make_loss_fn",
    "downsample_image",
    "downsample_volume",
    "grid_points",
    "mtre",
    "projection_distance",
    "registration_errors",
    "rotation_error_deg",
    "translation_error_mm",
    "View",
    "MultiViewConfig",
    "MultiViewResult",
    "TrackingResult",
    "register_multiview",
    "register_tool",
    "ToolRegistrationResult",
    "tool_pose_errors",
    "track_sequence",
    "accuracy",
    "metrics",
    "multiview",
    "optimize",
    "pose",
]
