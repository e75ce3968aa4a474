"""One differentiable wrapper for every hand-written projector kernel (Pallas GPU, native CPU).

A kernel backend supplies three calls over the same operands as :func:`jaxdrr.ops.march.march`:
the padded flat volume ``flat`` [N, C] and the rays ``entry`` [R, 3], ``direction`` [R, 3],
``step`` [R], ``num_steps`` [R]:

* ``forward(cfg, flat, entry, direction, step, num_steps)`` -> line integrals [R, C];
* ``volume_backward(..., g)`` -> the volume cotangent, shaped like ``flat`` (a scatter);
* ``geometry_backward(..., g)`` -> ``(g_entry, g_direction)``, each [R, 3] (a gather).

:func:`kernel_projector` turns them into one ``jax.custom_vjp`` function with the structure of the
pure-JAX marcher's: ``symbolic_zeros`` decides which backward kernels run (the volume scatter only
when the volume is differentiated, the geometry gather only when the rays are), and the step-length
cotangent follows from :func:`jaxdrr.ops.march.step_cotangent`, the one formula all backends share.
``cfg`` is the backend's static configuration (hashable).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxdrr.ops.march import step_cotangent


class ProjectorKernels(NamedTuple):
    """The three kernel calls of a projector backend (see the module docstring)."""

    forward: Callable
    volume_backward: Callable
    geometry_backward: Callable


def kernel_projector(kernels: ProjectorKernels) -> Callable:
    """``project(cfg, flat, entry, direction, step, num_steps) -> [R, C]``, differentiable.

    Differentiable w.r.t. ``flat``, ``entry``, ``direction`` and ``step`` (``num_steps`` is an
    integer count); composes with ``jit``, ``vmap`` and ``grad``.
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def project(cfg, flat, entry, direction, step, num_steps):
        return kernels.forward(cfg, flat, entry, direction, step, num_steps)

    def project_fwd(cfg, flat, entry, direction, step, num_steps):
        out = kernels.forward(cfg, flat.value, entry.value, direction.value, step.value, num_steps.value)
        # The residual's tree structure records (statically) which cotangents are wanted.
        wants = {}
        if flat.perturbed:
            wants["volume"] = ()
        if entry.perturbed or direction.perturbed or step.perturbed:
            wants["geometry"] = ()
        return out, (flat.value, entry.value, direction.value, step.value, num_steps.value, out, wants)

    def project_bwd(cfg, residuals, g):
        flat, entry, direction, step, num_steps, out, wants = residuals
        if isinstance(g, SymbolicZero):  # the output is not used: nothing to propagate
            return None, None, None, None, None
        g = jnp.asarray(g, out.dtype)
        rays = (entry, direction, step, num_steps)
        g_flat = g_entry = g_direction = g_step = None  # None: a zero cotangent
        if "volume" in wants:
            g_flat = kernels.volume_backward(cfg, flat, *rays, g)
        if "geometry" in wants:
            g_entry, g_direction = kernels.geometry_backward(cfg, flat, *rays, g)
            g_step = step_cotangent(g, out, direction, g_direction, step, num_steps)
        return g_flat, g_entry, g_direction, g_step, None

    project.defvjp(project_fwd, project_bwd, symbolic_zeros=True)
    return project
