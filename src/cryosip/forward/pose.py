r"""Per-image nuisance (pose, shift, CTF parameters) and its prior.

Every leaf of an :class:`ImageNuisance` carries the same leading batch shape (``n_images``
when batched). Angles are RELION ``(rot, tilt, psi)`` in degrees; ``shift_angstrom`` is
RELION 3.1 ``(rlnOriginXAngst, rlnOriginYAngst)``: the model origin appears at
``image_centre - shift`` (see :mod:`cryosip.conventions`). Defoci follow CTFFIND
(underfocus positive), the astigmatism angle is ``rlnDefocusAngle``.

The prior :class:`NuisancePrior` draws Haar-uniform rotations, a mean defocus
``d ~ U(defocus_range)``, ``d_U = d + a/2``, ``d_V = d - a/2`` with
``a = astigmatism_angstrom``, an astigmatism angle ``~ U(0, 180)``, shifts
``~ N(0, shift_std^2 I)`` and zero phase shift.

>>> import jax
>>> w = NuisancePrior(shift_std_angstrom=2.0).sample(jax.random.key(0), 5)
>>> w.euler_deg.shape, w.shift_angstrom.shape, w.defocus_u_angstrom.shape
((5, 3), (5, 2), (5,))
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from cryosip.rotations import sample_uniform_euler

__all__ = ["ImageNuisance", "NuisancePrior"]


class ImageNuisance(eqx.Module):
    """Pose, in-plane shift and CTF parameters of one image (or a batch, leading axes)."""

    euler_deg: Float[Array, "*batch 3"]
    shift_angstrom: Float[Array, "*batch 2"]
    defocus_u_angstrom: Float[Array, "*batch"]
    defocus_v_angstrom: Float[Array, "*batch"]
    astigmatism_angle_deg: Float[Array, "*batch"]
    phase_shift_deg: Float[Array, "*batch"]

    @classmethod
    def create(
        cls,
        euler_deg,
        shift_angstrom=None,
        defocus_u_angstrom=15000.0,
        defocus_v_angstrom=None,
        astigmatism_angle_deg=0.0,
        phase_shift_deg=0.0,
    ) -> ImageNuisance:
        """Fill defaults and broadcast every leaf to the batch shape of ``euler_deg``."""
        euler = jnp.asarray(euler_deg, dtype=float)
        batch = euler.shape[:-1]
        shift = jnp.zeros((*batch, 2)) if shift_angstrom is None else shift_angstrom
        dv = defocus_u_angstrom if defocus_v_angstrom is None else defocus_v_angstrom
        scalars = (defocus_u_angstrom, dv, astigmatism_angle_deg, phase_shift_deg)
        scalars = [jnp.broadcast_to(jnp.asarray(s, dtype=euler.dtype), batch) for s in scalars]
        shift = jnp.broadcast_to(jnp.asarray(shift, dtype=euler.dtype), (*batch, 2))
        return cls(euler, shift, *scalars)

    def __len__(self) -> int:
        return int(self.euler_deg.shape[0])

    def take(self, index) -> ImageNuisance:
        """The nuisances at ``index`` along the leading axis."""
        return jax.tree.map(lambda a: a[index], self)


class NuisancePrior(eqx.Module):
    """The prior pi over :class:`ImageNuisance` (see the module docstring)."""

    defocus_range_angstrom: tuple[float, float] = (10000.0, 25000.0)
    astigmatism_angstrom: float = 0.0
    shift_std_angstrom: float = 0.0
    poses: Literal["uniform", "identity"] = eqx.field(default="uniform", static=True)

    def sample(self, key: PRNGKeyArray, n: int) -> ImageNuisance:
        """``n`` i.i.d. nuisances; image ``i`` uses ``fold_in(key, i)`` (prefix-stable)."""
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n))
        return jax.vmap(self._sample_one)(keys)

    def _sample_one(self, key: PRNGKeyArray) -> ImageNuisance:
        k_pose, k_def, k_ang, k_shift = jax.random.split(key, 4)
        if self.poses == "uniform":
            euler = sample_uniform_euler(k_pose, 1)[0]
        else:
            euler = jnp.zeros(3)
        lo, hi = self.defocus_range_angstrom
        mean = jax.random.uniform(k_def, (), minval=lo, maxval=hi)
        half = 0.5 * self.astigmatism_angstrom
        angle = jax.random.uniform(k_ang, (), minval=0.0, maxval=180.0)
        shift = self.shift_std_angstrom * jax.random.normal(k_shift, (2,))
        return ImageNuisance(euler, shift, mean + half, mean - half, angle, jnp.zeros(()))
