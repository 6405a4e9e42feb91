r"""Objectives ``D(positions, weights, batch, key) -> scalar``: operator + discrepancy + data.

An objective is the discrepancy between the push-forward of
``mu_M = sum_i w_i delta_{x_i}`` and a minibatch of observations, as a differentiable
function of positions and weights (weights enter linearly, so ``grad_w`` is the first
variation used by Wasserstein-Fisher-Rao). It is a MEAN over the observations of the
batch of per-observation terms plus terms that do not depend on the observations, so the
gradient over the whole data set is the sum over minibatches ``k`` of
``(B_k / N) grad D_k`` (:func:`full_gradient`): data-parallel is a reduction.

* :class:`MMDObjective`, unknown nuisance: ``n_draws`` nuisances per particle from the
  prior, ``MMD^2(sum_i w_i/n_draws sum_b delta_{G(x_i,w_ib)} * N(0,s^2), nu_B)`` with the
  noise integrated out (noise-marginalised Gaussian kernel) or simulated.
* :class:`MMDObjective`, known nuisance: conditional MMD over ``G(x_i, w_n)`` from
  ``operator.clean_grid(xs, batch.nuisance)``.
* :class:`KLObjective`: ``-mean_n log sum_i w_i p(y_n|x_i)`` with
  ``operator.log_likelihood_grid`` (known nuisance) or
  ``operator.log_marginal_likelihood_grid`` (unknown nuisance).
* :class:`SampleObjective`: any :class:`~cryosip.discrepancies.AbstractSampleDiscrepancy`
  (a registered name, ``docs/extending.md``) between ``n_draws`` noisy simulations per
  particle, weighted ``w_i / n_draws``, and the batch, weighted ``1 / B``. Nuisances come
  from the prior (unknown) or are drawn uniformly from the batch's own (known: the
  push-forward under the data's empirical nuisance distribution).

The same ``key`` gives the same simulations for every minibatch of a step.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from cryosip.discrepancies import (
    AbstractKernel,
    AbstractSampleDiscrepancy,
    conditional_mmd2,
    mmd2,
    negative_log_likelihood,
    noise_marginalised_mmd2,
)
from cryosip.operators import AbstractRandomOperator, Observations

__all__ = ["KLObjective", "MMDObjective", "SampleObjective", "full_gradient"]


class MMDObjective(eqx.Module):
    """MMD^2 between simulated and observed data (module docstring)."""

    operator: AbstractRandomOperator
    kernel: AbstractKernel
    n_draws: int = eqx.field(static=True, default=8)
    marginalise_noise: bool = eqx.field(static=True, default=True)
    estimator: str = eqx.field(static=True, default="v")
    feature_map: Callable | None = eqx.field(static=True, default=None)

    def _exact_noise(self) -> bool:
        return self.marginalise_noise and self.feature_map is None

    def __call__(
        self,
        positions: Float[Array, "n_particles dim"],
        weights: Float[Array, " n_particles"],
        batch: Observations,
        key: PRNGKeyArray,
    ) -> Float[Array, ""]:
        if batch.nuisance is None:
            return self._unknown(positions, weights, batch.values, key)
        return self._known(positions, weights, batch, key)

    def _noisy(self, clean, key):
        return self.operator.add_noise(key, clean)

    def _unknown(self, positions, weights, ys, key):
        k_nuisance, k_noise = jax.random.split(key)
        n_sim = positions.shape[0] * self.n_draws
        nuisance = self.operator.sample_nuisance(k_nuisance, n_sim)
        clean = self.operator.clean_paired(jnp.repeat(positions, self.n_draws, 0), nuisance)
        w_sim = jnp.repeat(weights, self.n_draws) / self.n_draws
        w_obs = jnp.full((ys.shape[0],), 1.0 / ys.shape[0], ys.dtype)
        if self._exact_noise():
            var = self.operator.noise_std**2
            return noise_marginalised_mmd2(clean, w_sim, ys, w_obs, self.kernel, var,
                                           self.estimator, noise_dim=self.operator.noise_dim)
        sim = self._noisy(clean, k_noise)
        return mmd2(sim, w_sim, ys, w_obs, self.kernel, self.estimator, self.feature_map)

    def _known(self, positions, weights, batch, key):
        clean = self.operator.clean_grid(positions, batch.nuisance)
        if self._exact_noise():
            var = self.operator.noise_std**2
            return conditional_mmd2(clean, weights, batch.values, self.kernel, var,
                                    noise_dim=self.operator.noise_dim)
        sim = self._noisy(clean, key)
        return conditional_mmd2(sim, weights, batch.values, self.kernel, 0.0, self.feature_map)


class KLObjective(eqx.Module):
    """Negative mixture log-likelihood per observation (forward KL up to a constant)."""

    operator: AbstractRandomOperator
    n_draws: int = eqx.field(static=True, default=64)

    def __call__(
        self,
        positions: Float[Array, "n_particles dim"],
        weights: Float[Array, " n_particles"],
        batch: Observations,
        key: PRNGKeyArray,
    ) -> Float[Array, ""]:
        if batch.nuisance is None:
            ll = self.operator.log_marginal_likelihood_grid(
                batch.values, positions, key, self.n_draws
            )
        else:
            ll = self.operator.log_likelihood_grid(batch.values, positions, batch.nuisance)
        return negative_log_likelihood(ll, jnp.log(weights))


class SampleObjective(eqx.Module):
    """A sample discrepancy between simulated and observed images (module docstring)."""

    operator: AbstractRandomOperator
    discrepancy: AbstractSampleDiscrepancy
    n_draws: int = eqx.field(static=True, default=8)

    def __call__(
        self,
        positions: Float[Array, "n_particles dim"],
        weights: Float[Array, " n_particles"],
        batch: Observations,
        key: PRNGKeyArray,
    ) -> Float[Array, ""]:
        k_nuisance, k_noise = jax.random.split(key)
        n_sim = positions.shape[0] * self.n_draws
        if batch.nuisance is None:
            nuisance = self.operator.sample_nuisance(k_nuisance, n_sim)
        else:
            rows = jax.random.randint(k_nuisance, (n_sim,), 0, len(batch))
            nuisance = batch.take(rows).nuisance
        clean = self.operator.clean_paired(jnp.repeat(positions, self.n_draws, 0), nuisance)
        sim = self.operator.add_noise(k_noise, clean)
        w_sim = jnp.repeat(weights, self.n_draws) / self.n_draws
        ys = batch.values
        return self.discrepancy(sim, w_sim, ys, jnp.full((ys.shape[0],), 1.0 / ys.shape[0],
                                                         ys.dtype))


def full_gradient(
    objective: Callable,
    positions: Float[Array, "n_particles dim"],
    weights: Float[Array, " n_particles"],
    observations: Observations,
    key: PRNGKeyArray,
    batch_size: int,
) -> tuple[Float[Array, "n_particles dim"], Float[Array, " n_particles"]]:
    """Gradient over all observations as the sum over minibatches of ``(B_k/N) grad D_k``.

    Returns ``(grad_positions, grad_weights)``.
    """
    n = len(observations)
    grad = jax.jit(lambda x, w, batch, k: jax.grad(objective, argnums=(0, 1))(x, w, batch, k))
    total = (jnp.zeros_like(positions), jnp.zeros_like(weights))
    for start in range(0, n, batch_size):
        index = jnp.arange(start, min(start + batch_size, n))
        g = grad(positions, weights, observations.take(index), key)
        fraction = index.shape[0] / n
        total = jax.tree.map(lambda a, b, f=fraction: a + b * f, total, g)
    return total
