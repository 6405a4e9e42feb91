r"""Weighted particle measures ``mu_M = sum_i w_i delta_{x_i}`` and the particle scaling rule.

**Particle scaling rule.** For a discrepancy ``D(mu)`` evaluated at a particle measure, the
autodiff gradient with respect to one particle position is the particle's weight times the
gradient of the first variation (the Wasserstein gradient evaluated at the particle):

.. math::  \nabla_{x_i} D(\mu_M) = w_i \, \nabla_x \frac{\delta D}{\delta \mu}[\mu_M](x_i),

so the particle velocity of the Wasserstein gradient flow
``d/dt mu = div(mu grad dD/dmu)`` is

.. math::  v_i = -\nabla_x \frac{\delta D}{\delta\mu}(x_i) = -\frac{1}{w_i}\nabla_{x_i} D(\mu_M).

For uniform weights ``w_i = 1/M`` this is ``-M grad_{x_i} D``. :func:`particle_velocity`
is the one place in cryosip where this rule is written. A consequence (tested): splitting
every particle into ``k`` copies of weight ``w_i/k`` leaves every velocity unchanged.

Example
-------
>>> import jax.numpy as jnp
>>> mu = ParticleMeasure.uniform(jnp.zeros((4, 2)))
>>> mu.n_particles, mu.dim, float(mu.weights.sum())
(4, 2, 1.0)
>>> mu.duplicate(3).n_particles
12
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["ParticleMeasure", "particle_velocity"]


def particle_velocity(
    grad_positions: Float[Array, "n_particles dim"], weights: Float[Array, " n_particles"]
) -> Float[Array, "n_particles dim"]:
    r"""Wasserstein velocity ``v_i = -grad_{x_i} D(mu_M) / w_i`` (the particle scaling rule).

    >>> import jax.numpy as jnp
    >>> particle_velocity(jnp.array([[0.5], [0.25]]), jnp.array([0.5, 0.25])).tolist()
    [[-1.0], [-1.0]]
    """
    return -grad_positions / weights[:, None]


class ParticleMeasure(eqx.Module):
    """A discrete probability measure: ``positions [n_particles, dim]``, ``weights`` sum to 1."""

    positions: Float[Array, "n_particles dim"]
    weights: Float[Array, " n_particles"]

    @classmethod
    def uniform(cls, positions: Float[Array, "n_particles dim"]) -> ParticleMeasure:
        """Equal weights ``1/n_particles`` (a 1-D array of positions is read as dim 1)."""
        positions = jnp.asarray(positions)
        if positions.ndim == 1:
            positions = positions[:, None]
        n = positions.shape[0]
        return cls(positions, jnp.full((n,), 1.0 / n, positions.dtype))

    @property
    def n_particles(self) -> int:
        return int(self.positions.shape[0])

    @property
    def dim(self) -> int:
        return int(self.positions.shape[1])

    def duplicate(self, copies: int) -> ParticleMeasure:
        """The same measure with every particle split into ``copies`` of weight ``w_i/copies``."""
        return ParticleMeasure(
            jnp.repeat(self.positions, copies, axis=0), jnp.repeat(self.weights, copies) / copies
        )

    def resample(self, key: PRNGKeyArray, n_particles: int | None = None) -> ParticleMeasure:
        """Systematic resampling to ``n_particles`` uniformly weighted particles.

        Each particle is kept ``floor(n w_i)`` or ``ceil(n w_i)`` times (one uniform offset),
        the lowest-variance unbiased scheme.
        """
        n = self.n_particles if n_particles is None else n_particles
        offsets = (jax.random.uniform(key, dtype=self.weights.dtype) + jnp.arange(n)) / n
        cdf = jnp.cumsum(self.weights) / jnp.sum(self.weights)
        index = jnp.clip(jnp.searchsorted(cdf, offsets), 0, self.n_particles - 1)
        return ParticleMeasure.uniform(self.positions[index])

    def normalized(self) -> ParticleMeasure:
        """Weights rescaled to sum to one."""
        return ParticleMeasure(self.positions, self.weights / jnp.sum(self.weights))

    def mean(self) -> Float[Array, " dim"]:
        return self.weights @ self.positions

    def covariance(self) -> Float[Array, "dim dim"]:
        centred = self.positions - self.mean()
        return (centred * self.weights[:, None]).T @ centred

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, weights)`` as numpy arrays."""
        return np.asarray(self.positions), np.asarray(self.weights)
