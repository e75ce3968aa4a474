"""Geometry: projection matrices, rays, the C-arm model and rotation parameterisations."""

from jaxdrr.geometry.carm import CArmGeometry, carm, carm_extrinsics, carm_rotation, carm_source
from jaxdrr.geometry.projection import (
    check_detector,
    check_projection_matrix,
    decompose_projection,
    intrinsic_matrix,
    pixel_grid,
    pixel_rays,
    project_points,
    projection_matrix,
    ray_directions,
    rescale_detector,
    source_position,
)
from jaxdrr.geometry.rigid import RigidTransform, object_projection
from jaxdrr.geometry.rotations import (
    rotation_angle_between,
    rotation_from_6d,
    rotation_from_quaternion,
    rotation_to_6d,
    rotation_to_quaternion,
    rotation_x,
    rotation_y,
    rotation_z,
    so3_exp,
    so3_log,
)
