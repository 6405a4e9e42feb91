r"""Forward KL ``KL(nu || F#mu)`` as the negative mixture log-likelihood of the observations.

For ``mu_M = sum_i w_i delta_{x_i}`` and log-likelihoods ``L_ni = log p(y_n | x_i)``
(nuisance known per observation, or marginalised over the prior),

.. math::  D(\mu_M) = -\frac1N \sum_n \log \sum_i w_i e^{L_{ni}}
           = KL(\nu_N \| F\#\mu) - H(\nu_N).

The weights enter linearly inside the log (``log w_i``, never renormalised), so the
gradient with respect to ``w_i`` is the first variation
``dD/dmu(x_i) = -(1/N) sum_n p(y_n|x_i) / p_mu(y_n)``. The gradient with respect to ``x_i``
is ``-(1/N) sum_n gamma_ni grad log p(y_n|x_i)`` with responsibilities
``gamma_ni = w_i p(y_n|x_i) / p_mu(y_n)``; by the particle scaling rule the velocity is that
divided by ``-w_i``.

>>> import jax.numpy as jnp
>>> ll = jnp.log(jnp.array([[0.5, 0.25]]))
>>> round(float(negative_log_likelihood(ll, jnp.log(jnp.array([0.5, 0.5])))), 4)
0.9808
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from cryosip.discrepancies.base import AbstractLikelihoodDiscrepancy, register_discrepancy

__all__ = ["ForwardKL", "gaussian_kl", "negative_log_likelihood", "responsibilities"]


def negative_log_likelihood(
    loglik: Float[Array, "n_obs n_particles"], log_weights: Float[Array, " n_particles"]
) -> Float[Array, ""]:
    """``-mean_n logsumexp_i(loglik_ni + log w_i)``."""
    return -jnp.mean(jax.nn.logsumexp(loglik + log_weights[None, :], axis=1))


@register_discrepancy("kl")
class ForwardKL(AbstractLikelihoodDiscrepancy):
    """:func:`negative_log_likelihood` as a member of the discrepancy family (``"kl"``)."""

    def __call__(self, log_likelihoods, log_weights):
        return negative_log_likelihood(log_likelihoods, log_weights)


def responsibilities(
    loglik: Float[Array, "n_obs n_particles"], log_weights: Float[Array, " n_particles"]
) -> Float[Array, "n_obs n_particles"]:
    """``gamma_ni = w_i p(y_n|x_i) / sum_j w_j p(y_n|x_j)`` (rows sum to one)."""
    return jax.nn.softmax(loglik + log_weights[None, :], axis=1)


def gaussian_kl(
    mean_p: Float[Array, " dim"],
    cov_p: Float[Array, "dim dim"],
    mean_q: Float[Array, " dim"],
    cov_q: Float[Array, "dim dim"],
) -> Float[Array, ""]:
    r"""``KL(N(m_p,S_p) || N(m_q,S_q)) = (tr(S_q^-1 S_p) + d^T S_q^-1 d - k + log|S_q|/|S_p|)/2``.

    >>> import jax.numpy as jnp
    >>> float(gaussian_kl(jnp.zeros(1), jnp.eye(1), jnp.ones(1), jnp.eye(1)))
    0.5
    """
    k = mean_p.shape[0]
    d = mean_q - mean_p
    trace = jnp.trace(jnp.linalg.solve(cov_q, cov_p))
    quad = d @ jnp.linalg.solve(cov_q, d)
    logdet = jnp.linalg.slogdet(cov_q)[1] - jnp.linalg.slogdet(cov_p)[1]
    return 0.5 * (trace + quad - k + logdet)
