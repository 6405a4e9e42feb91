"""The conformation box ``[lower, upper]`` with reflecting or periodic walls, per axis.

>>> import jax.numpy as jnp
>>> box = Domain(jnp.array([0.0, 0.0]), jnp.array([1.0, 1.0]), periodic=(False, True))
>>> box.project(jnp.array([[1.25, 1.25], [-0.5, -0.25]])).tolist()
[[0.75, 0.25], [0.5, 0.75]]
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["Domain"]


class Domain(eqx.Module):
    """Axis-aligned box; non-periodic axes reflect, periodic axes wrap."""

    lower: Float[Array, " dim"]
    upper: Float[Array, " dim"]
    periodic: tuple[bool, ...] = eqx.field(static=True, default=())

    def __post_init__(self):
        if not self.periodic:
            object.__setattr__(self, "periodic", (False,) * int(jnp.shape(self.lower)[0]))

    @property
    def width(self) -> Float[Array, " dim"]:
        return self.upper - self.lower

    def project(self, x: Float[Array, "n_particles dim"]) -> Float[Array, "n_particles dim"]:
        """Fold positions back into the box (reflection, or wrap on periodic axes)."""
        w = self.width
        wrapped = self.lower + jnp.mod(x - self.lower, w)
        t = jnp.mod(x - self.lower, 2.0 * w)
        reflected = self.lower + jnp.where(t > w, 2.0 * w - t, t)
        return jnp.where(jnp.asarray(self.periodic), wrapped, reflected)

    def uniform(self, u: Float[Array, "n dim"]) -> Float[Array, "n dim"]:
        """Map ``u`` in ``[0, 1)^dim`` to the box."""
        return self.lower + u * self.width
