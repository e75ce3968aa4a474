"""Small checks shared by the projector tests: float64 central differences over a pose and a
walk over every equation of a jaxpr, nested ones included."""

import jax.numpy as jnp
import numpy as np


def pose_central_differences(f, P, rel_step=1e-6):
    """Central differences of the scalar f(P) for each entry of the 3 x 4 matrix P.

    Meant for float64 (under ``jax.enable_x64`` the perturbation is float64 whatever P is). The
    step is ``rel_step * max(1, |P_ij|)``: truncation error ~ step^2 and rounding error ~ eps / step
    both stay near 1e-10 relative, far below the tests' 1e-4.
    """
    fd = np.zeros((3, 4))
    for i in range(3):
        for j in range(4):
            h = rel_step * max(1.0, abs(float(P[i, j])))
            E = jnp.zeros((3, 4)).at[i, j].set(h)
            fd[i, j] = (f(P + E) - f(P - E)) / (2 * h)
    return fd


def jaxpr_equations(jaxpr, opaque=()):
    """Every equation of ``jaxpr`` and of the jaxprs nested in its equations' parameters
    (loops, custom_vjp, pjit), except inside primitives named in ``opaque``."""
    for e in jaxpr.eqns:
        yield e
        if e.primitive.name in opaque:
            continue
        for p in e.params.values():
            for inner in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(inner, "jaxpr", inner)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    yield from jaxpr_equations(inner, opaque)
