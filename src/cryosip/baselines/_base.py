"""Shared plumbing of the baselines: the random state, the likelihood matrix of an operator."""

from __future__ import annotations

import jax
import numpy as np
from jaxtyping import Float

from cryosip.baselines.likelihood import log_likelihood_matrix
from cryosip.operators import AbstractRandomOperator, Observations
from cryosip.seeds import numpy_rng

__all__ = ["LikelihoodEstimator", "as_generator"]


def as_generator(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from a seed (stream ``"baseline"`` of :mod:`cryosip.seeds`), a
    Generator (used as is) or ``None`` (seed 0)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    return numpy_rng(0 if random_state is None else random_state, "baseline")


class LikelihoodEstimator:
    """Mixin: ``fit(operator, observations)`` = likelihood matrix on ``_fit_support()``, then
    ``fit_loglik(L)``. Subclasses set ``batch_size``, ``n_draws``, ``random_state``."""

    batch_size: int | None
    n_draws: int
    random_state: int | np.random.Generator | None

    def _fit_support(self) -> Float[np.ndarray, "n_support dim"]:
        raise NotImplementedError

    def fit_loglik(self, loglik: Float[np.ndarray, "n_obs n_support"]):
        raise NotImplementedError

    def fit(self, operator: AbstractRandomOperator, observations: Observations):
        """Fit from images: ``L = log p(y_n | x_k)`` on the support, then :meth:`fit_loglik`.

        Known per-image nuisances are used when ``observations.nuisance`` is set; otherwise
        the marginal likelihood with ``n_draws`` nuisance draws (seeded by
        ``random_state``).
        """
        seed = int(as_generator(self.random_state).integers(2**31 - 1))
        loglik = log_likelihood_matrix(
            operator,
            observations,
            np.asarray(self._fit_support()),
            batch_size=self.batch_size,
            key=jax.random.key(seed),
            n_draws=self.n_draws,
        )
        return self.fit_loglik(loglik)
