r"""Rotations in the RELION ZYZ Euler convention, and uniform sampling on SO(3).

RELION's angles ``(rot, tilt, psi)`` (degrees) define the matrix ``A`` that rotates the
reference (model) into the observation (image) frame, ``r_image = A @ r_model``; the image
is the projection of the rotated model along ``z``. With active right-handed rotations
``R_z(t) = [[cos t, -sin t, 0], [sin t, cos t, 0], [0, 0, 1]]`` and ``R_y`` likewise,

.. math::  A(\mathrm{rot}, \mathrm{tilt}, \mathrm{psi})
           = R_z(-\mathrm{psi})\, R_y(-\mathrm{tilt})\, R_z(-\mathrm{rot}),

which is RELION's ``Euler_angles2matrix`` written entry by entry below (see
``docs/conventions.md``). The inverse map returns ``tilt`` in ``[0, 180]`` and ``rot``,
``psi`` in ``(-180, 180]``.

Uniform (Haar) rotations: ``rot, psi ~ U(-180, 180)``, ``cos(tilt) ~ U(-1, 1)``.

>>> import jax.numpy as jnp
>>> a = euler_to_matrix(jnp.array([30.0, 40.0, 50.0]))
>>> bool(jnp.allclose(a @ a.T, jnp.eye(3), atol=1e-6))
True
>>> [round(float(v), 3) for v in matrix_to_euler(a)]
[30.0, 40.0, 50.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["euler_to_matrix", "matrix_to_euler", "sample_uniform_euler"]


def euler_to_matrix(euler_deg: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3 3"]:
    """RELION matrix ``A`` (model -> image frame) from ``(rot, tilt, psi)`` in degrees."""
    rad = jnp.deg2rad(euler_deg)
    ca, cb, cg = jnp.cos(rad[..., 0]), jnp.cos(rad[..., 1]), jnp.cos(rad[..., 2])
    sa, sb, sg = jnp.sin(rad[..., 0]), jnp.sin(rad[..., 1]), jnp.sin(rad[..., 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = (
        (cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb),
        (-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb),
        (sc, ss, cb),
    )
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def matrix_to_euler(matrix: Float[Array, "*batch 3 3"]) -> Float[Array, "*batch 3"]:
    """``(rot, tilt, psi)`` in degrees with tilt in [0, 180]; inverse of :func:`euler_to_matrix`.

    At ``tilt`` 0 or 180 only ``rot ± psi`` is defined; ``rot = 0`` is returned there.
    """
    a = matrix
    sin_tilt = jnp.sqrt(a[..., 0, 2] ** 2 + a[..., 1, 2] ** 2)
    tilt = jnp.arctan2(sin_tilt, a[..., 2, 2])
    regular = sin_tilt > 1e-6
    rot = jnp.where(regular, jnp.arctan2(a[..., 2, 1], a[..., 2, 0]), 0.0)
    flip = jnp.where(a[..., 2, 2] > 0, 1.0, -1.0)
    psi_degenerate = jnp.arctan2(-flip * a[..., 1, 0], flip * a[..., 0, 0])
    psi = jnp.where(regular, jnp.arctan2(a[..., 1, 2], -a[..., 0, 2]), psi_degenerate)
    return jnp.rad2deg(jnp.stack([rot, tilt, psi], axis=-1))


def sample_uniform_euler(key: PRNGKeyArray, n: int) -> Float[Array, "n 3"]:
    """``n`` Haar-uniform rotations as RELION angles (degrees)."""
    k_rot, k_tilt, k_psi = jax.random.split(key, 3)
    rot = jax.random.uniform(k_rot, (n,), minval=-180.0, maxval=180.0)
    psi = jax.random.uniform(k_psi, (n,), minval=-180.0, maxval=180.0)
    tilt = jnp.rad2deg(jnp.arccos(jax.random.uniform(k_tilt, (n,), minval=-1.0, maxval=1.0)))
    return jnp.stack([rot, tilt, psi], axis=-1)
