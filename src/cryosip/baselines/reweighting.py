r"""Discretize-then-optimize on a fixed support: mixture reweighting and per-image MAP.

Both take ``K`` candidate conformations ``x_1..x_K`` (a grid on ``X`` or the frames of a
trajectory) and the log-likelihood matrix ``L[n, k] = log p(y_n | x_k)``:

* :class:`Reweighting` maximises the mixture likelihood ``(1/N) sum_n log sum_k w_k
  p(y_n|x_k)`` over the weights (EM, :func:`cryosip.baselines.em.em_weights`), optionally
  with a Dirichlet(``alpha``) prior (MAP). This is the "ensemble reweighting" family; it
  deconvolves the noise: with the true support and ``N -> inf`` it recovers the true
  weights.
* :class:`PerImageMAP` assigns each image its most likely support point,
  ``k_n = argmax_k L[n, k]``, and reports the histogram ``w_k = #{n: k_n = k} / N``. It
  does not deconvolve: at low SNR the assignments scatter and the histogram is the truth
  convolved with the per-image posterior spread (biased, over-dispersed).

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> support = np.array([[0.0], [1.0]])
>>> x = rng.choice([0.0, 1.0], p=[0.3, 0.7], size=4000)
>>> y = x + 0.2 * rng.standard_normal(4000)
>>> L = -0.5 * (y[:, None] - support[None, :, 0]) ** 2 / 0.2**2
>>> rw = Reweighting(support=support).fit_loglik(L)
>>> bool(abs(rw.weights_[1] - 0.7) < 0.03), rw.converged_
(True, True)
>>> PerImageMAP(support=support).fit_loglik(L).assignments_.shape
(4000,)
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int

from cryosip.baselines._base import LikelihoodEstimator
from cryosip.baselines.em import em_weights

__all__ = ["PerImageMAP", "Reweighting"]


def _as_support(support) -> Float[np.ndarray, "n_support dim"]:
    arr = np.asarray(support, dtype=float)
    return arr[:, None] if arr.ndim == 1 else arr


class Reweighting(LikelihoodEstimator):
    """Fixed-support mixture weights by EM with an optional Dirichlet prior.

    Parameters: ``support`` ``[K, dim]`` candidate conformations; ``prior_concentration``
    ``alpha`` (``None`` = maximum likelihood; a scalar or ``[K]``; ``alpha > 1`` pulls the
    weights towards uniform, ``alpha < 1`` towards sparsity); ``max_iter``; ``tol`` on the
    change of the mean log-likelihood per image; ``init_weights``; ``batch_size`` and
    ``n_draws`` for the likelihood of an operator; ``random_state`` (seeds the nuisance
    draws when the nuisance is unknown).

    Learned: ``support_`` ``[K, dim]``, ``weights_`` ``[K]``, ``n_iter_``, ``converged_``,
    ``log_likelihood_history_`` (mean log-likelihood per image, one per iteration).
    """

    def __init__(  # noqa: PLR0913 (scikit-learn: hyperparameters are constructor arguments)
        self,
        support,
        prior_concentration: float | np.ndarray | None = None,
        max_iter: int = 1000,
        tol: float = 1e-9,
        init_weights: np.ndarray | None = None,
        batch_size: int | None = None,
        n_draws: int = 64,
        random_state: int | np.random.Generator | None = None,
    ):
        self.support = support
        self.prior_concentration = prior_concentration
        self.max_iter = max_iter
        self.tol = tol
        self.init_weights = init_weights
        self.batch_size = batch_size
        self.n_draws = n_draws
        self.random_state = random_state

    def _fit_support(self):
        return _as_support(self.support)

    def fit_loglik(self, loglik: Float[np.ndarray, "n_obs n_support"]) -> Reweighting:
        """Fit the weights from a precomputed ``L[n, k] = log p(y_n | x_k)``."""
        fit = em_weights(
            loglik, self.init_weights, self.prior_concentration, self.max_iter, self.tol
        )
        self.support_ = _as_support(self.support)
        self.weights_ = fit.weights
        self.n_iter_ = fit.n_iter
        self.converged_ = fit.converged
        self.log_likelihood_history_ = fit.log_likelihood_history
        return self


class PerImageMAP(LikelihoodEstimator):
    """Per-image maximum likelihood on the support, then the histogram of assignments.

    With a flat prior on the support the per-image MAP is ``argmax_k L[n, k]`` (ties go to
    the first index). Learned: ``support_``, ``assignments_`` ``[N]`` (integer indices),
    ``weights_`` ``[K]`` (counts / N).
    """

    def __init__(
        self,
        support,
        batch_size: int | None = None,
        n_draws: int = 64,
        random_state: int | np.random.Generator | None = None,
    ):
        self.support = support
        self.batch_size = batch_size
        self.n_draws = n_draws
        self.random_state = random_state

    def _fit_support(self):
        return _as_support(self.support)

    def fit_loglik(self, loglik: Float[np.ndarray, "n_obs n_support"]) -> PerImageMAP:
        """Assign each image to ``argmax_k L[n, k]`` and histogram the assignments."""
        loglik = np.asarray(loglik)
        self.support_ = _as_support(self.support)
        self.assignments_: Int[np.ndarray, " n_obs"] = np.argmax(loglik, axis=1)
        counts = np.bincount(self.assignments_, minlength=loglik.shape[1])
        self.weights_ = counts / loglik.shape[0]
        return self
