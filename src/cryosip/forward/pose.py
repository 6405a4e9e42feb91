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

**Optics groups.** ``optics_group`` (integer, 0-based) says which group of a stacked
:class:`~cryosip.forward.ctf.Optics` (``Optics.stack``) the image's CTF uses; it is 0 by
default and ignored by a scalar ``Optics``. The prior draws it from
``optics_group_probs`` (the data's group frequencies, see
:mod:`cryosip.pipeline.data`), independently of pose and defocus, or sets it to 0 when
that is ``None``. It is an integer leaf: differentiate with ``eqx.filter_grad`` or with
respect to other arguments (``jax.grad`` over the conformation is unaffected).

>>> import jax
>>> w = NuisancePrior(shift_std_angstrom=2.0).sample(jax.random.key(0), 5)
>>> w.euler_deg.shape, w.shift_angstrom.shape, w.defocus_u_angstrom.shape
((5, 3), (5, 2), (5,))
>>> w.optics_group.tolist()
[0, 0, 0, 0, 0]
>>> g = NuisancePrior(optics_group_probs=(0.0, 1.0)).sample(jax.random.key(0), 3)
>>> g.optics_group.tolist()
[1, 1, 1]
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from cryosip.forward.base import AbstractPose
from cryosip.rotations import euler_to_matrix, sample_uniform_euler

__all__ = ["ImageNuisance", "NuisancePrior"]


class ImageNuisance(AbstractPose):
    """Pose, in-plane shift and CTF parameters of one image (or a batch, leading axes).

    ``optics_group`` (int, same batch shape) indexes a stacked ``Optics``; when omitted
    it is filled with zeros of the batch shape of ``euler_deg``.
    """

    euler_deg: Float[Array, "*batch 3"]
    shift_angstrom: Float[Array, "*batch 2"]
    defocus_u_angstrom: Float[Array, "*batch"]
    defocus_v_angstrom: Float[Array, "*batch"]
    astigmatism_angle_deg: Float[Array, "*batch"]
    phase_shift_deg: Float[Array, "*batch"]
    optics_group: Int[Array, "*batch"] = None

    def __post_init__(self):
        if self.optics_group is None:
            self.optics_group = jnp.zeros(jnp.shape(self.euler_deg)[:-1], dtype=jnp.int32)

    @classmethod
    def create(  # noqa: PLR0913 - one keyword per nuisance field, each with its default
        cls,
        euler_deg,
        shift_angstrom=None,
        defocus_u_angstrom=15000.0,
        defocus_v_angstrom=None,
        astigmatism_angle_deg=0.0,
        phase_shift_deg=0.0,
        optics_group=0,
    ) -> ImageNuisance:
        """Fill defaults and broadcast every leaf to the batch shape of ``euler_deg``."""
        euler = jnp.asarray(euler_deg, dtype=float)
        batch = euler.shape[:-1]
        shift = jnp.zeros((*batch, 2)) if shift_angstrom is None else shift_angstrom
        dv = defocus_u_angstrom if defocus_v_angstrom is None else defocus_v_angstrom
        scalars = (defocus_u_angstrom, dv, astigmatism_angle_deg, phase_shift_deg)
        scalars = [jnp.broadcast_to(jnp.asarray(s, dtype=euler.dtype), batch) for s in scalars]
        shift = jnp.broadcast_to(jnp.asarray(shift, dtype=euler.dtype), (*batch, 2))
        group = jnp.broadcast_to(jnp.asarray(optics_group, dtype=jnp.int32), batch)
        return cls(euler, shift, *scalars, group)

    def __len__(self) -> int:
        return int(self.euler_deg.shape[0])

    def rotation_matrix(self) -> Float[Array, "*batch 3 3"]:
        """``A`` of the RELION Euler angles (:func:`cryosip.rotations.euler_to_matrix`)."""
        return euler_to_matrix(self.euler_deg)

    def in_plane_shift_angstrom(self) -> Float[Array, "*batch 2"]:
        """``shift_angstrom`` (RELION 3.1 ``rlnOriginX/YAngst``)."""
        return self.shift_angstrom

    def take(self, index) -> ImageNuisance:
        """The nuisances at ``index`` along the leading axis."""
        return jax.tree.map(lambda a: a[index], self)


class NuisancePrior(eqx.Module):
    """The prior pi over :class:`ImageNuisance` (see the module docstring)."""

    defocus_range_angstrom: tuple[float, float] = (10000.0, 25000.0)
    astigmatism_angstrom: float = 0.0
    shift_std_angstrom: float = 0.0
    poses: Literal["uniform", "identity"] = eqx.field(default="uniform", static=True)
    optics_group_probs: tuple[float, ...] | None = eqx.field(default=None, static=True)

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
        group = self._sample_group(key)
        return ImageNuisance(euler, shift, mean + half, mean - half, angle, jnp.zeros(()), group)

    def _sample_group(self, key: PRNGKeyArray) -> Int[Array, ""]:
        """The optics group ~ ``optics_group_probs`` (a key of its own: the other draws
        do not change when groups are added)."""
        if self.optics_group_probs is None:
            return jnp.zeros((), dtype=jnp.int32)
        logits = jnp.log(jnp.asarray(self.optics_group_probs, dtype=jnp.float32))
        k_group = jax.random.fold_in(key, 0x0971C5)
        return jax.random.categorical(k_group, logits).astype(jnp.int32)
