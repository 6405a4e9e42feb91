r"""The second-moment MMD objective for unknown poses (:mod:`cryosip.discrepancies.moments`).

``D(mu) = ||M_mu + s^2 Pi - M_nu||_F^2 / tau^2``: ``M_mu`` the pose-averaged second moment
``E[c c^T]`` of the clean images of ``mu = sum_i w_i delta_{x_i}``, estimated from
``n_draws`` clean simulations per particle with poses and shifts drawn from the prior;
``M_nu`` that of the observed minibatch; ``s^2 Pi`` the noise's known second moment
(removed analytically, so simulations carry no noise). The poses in the batch, if any,
are never used: the statistic is pose-invariant by construction. The CTF of each
simulation is that of a random image of the batch when the batch carries its nuisance
(CTF from the file; the push-forward under the data's empirical CTF distribution), else
the prior's. ``tau`` (:func:`moment_scale`) is the mean squared norm of clean prior
simulations, so the value is a relative discrepancy of order ``(signal/tau)^2``.

The same ``key`` gives the same simulations for every minibatch of a step.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from cryosip.discrepancies.moments import second_moment_mmd2
from cryosip.operators import AbstractRandomOperator, Observations

__all__ = ["SecondMomentObjective", "moment_scale", "pose_from_prior", "prior_pose_nuisance"]


def pose_from_prior(prior_draws, image_nuisance):
    """``image_nuisance`` (CTF, optics group) with the pose and shift of ``prior_draws``."""
    return eqx.tree_at(lambda w: (w.euler_deg, w.shift_angstrom), image_nuisance,
                       (prior_draws.euler_deg.astype(image_nuisance.euler_deg.dtype),
                        prior_draws.shift_angstrom.astype(image_nuisance.shift_angstrom.dtype)))


class SecondMomentObjective(eqx.Module):
    """Second-moment MMD between simulated and observed images (module docstring)."""

    operator: AbstractRandomOperator
    scale: float | Float[Array, ""] = 1.0
    n_draws: int = eqx.field(static=True, default=8)
    estimator: str = eqx.field(static=True, default="u")

    def __call__(
        self,
        positions: Float[Array, "n_particles dim"],
        weights: Float[Array, " n_particles"],
        batch: Observations,
        key: PRNGKeyArray,
    ) -> Float[Array, ""]:
        n_p = positions.shape[0]
        nuisance = prior_pose_nuisance(self.operator, batch, key, n_p * self.n_draws)
        clean = self.operator.clean_paired(jnp.repeat(positions, self.n_draws, 0), nuisance)
        sims = jnp.reshape(clean, (n_p, self.n_draws, *clean.shape[1:]))
        ys = batch.values
        q = jnp.full((ys.shape[0],), 1.0 / ys.shape[0], ys.dtype)
        return second_moment_mmd2(sims, weights, ys, q, self.operator.noise_std**2,
                                  self.operator.noise_dim, self.scale, self.estimator)


def prior_pose_nuisance(operator: AbstractRandomOperator, batch: Observations,
                        key: PRNGKeyArray, n_sim: int):
    """``n_sim`` nuisances: pose and shift from the prior, the CTF (and optics group) of a
    random image of ``batch`` when it carries its nuisance, else the prior's."""
    k_prior, k_rows = jax.random.split(key)
    draws = operator.sample_nuisance(k_prior, n_sim)
    if batch.nuisance is None:
        return draws
    rows = jax.random.randint(k_rows, (n_sim,), 0, len(batch))
    return pose_from_prior(draws, batch.nuisance.take(rows))


def moment_scale(operator: AbstractRandomOperator, lower, upper, key: PRNGKeyArray,
                 n: int = 256) -> float:
    """``tau``: the mean ``|c|^2`` of ``n`` clean prior simulations, ``x`` uniform in the box."""
    w = operator.sample_nuisance(key, n)
    xs = jax.random.uniform(jax.random.fold_in(key, 1), (n, len(lower)),
                            minval=jnp.asarray(lower), maxval=jnp.asarray(upper))
    clean = eqx.filter_jit(operator.clean_paired)(xs, w)
    return float(jnp.mean(jnp.sum(jnp.reshape(clean, (n, -1)) ** 2, axis=1)))
