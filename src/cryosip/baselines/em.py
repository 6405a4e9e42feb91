r"""Fixed-support mixture weights by EM (multiplicative updates), in stabilised log-space.

Given a log-likelihood matrix ``L[n, k] = log p(y_n | x_k)`` of ``N`` observations under
``K`` fixed support points, the mixture ``p_w(y) = sum_k w_k p(y | x_k)`` is fitted by
maximising the mean log-likelihood

.. math::  \ell(w) = \frac1N \sum_n \log \sum_k w_k e^{L_{nk}}

over the simplex, optionally with a Dirichlet(alpha) prior (MAP). The EM step is

.. math::  \gamma_{nk} = \frac{w_k e^{L_{nk}}}{\sum_j w_j e^{L_{nj}}}, \qquad
           w_k \leftarrow \frac{\max(\sum_n \gamma_{nk} + \alpha_k - 1,\, 0)}
                              {\sum_j \max(\sum_n \gamma_{nj} + \alpha_j - 1,\, 0)},

which for ``alpha = 1`` (no prior) is the multiplicative update
``w_k <- w_k * mean_n(p_nk / sum_j w_j p_nj)``. ``ell`` never decreases under it (for
``alpha >= 1``). Stabilisation: each row is shifted by its maximum once,
``P = exp(L - max_k L)``, so ``log p_w(y_n) = max_k L_nk + log (P w)_n`` (the logsumexp
trick with the shift hoisted out of the loop); rows whose ``(P w)_n`` underflows are
recomputed with a full logsumexp. The iteration stops when ``|ell_t - ell_{t-1}| < tol``.

Example
-------
>>> import numpy as np
>>> L = np.log(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]) + 1e-300)
>>> fit = em_weights(L)
>>> np.round(fit.weights, 6).tolist()
[0.666667, 0.333333]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

__all__ = ["EMFit", "em_weights", "log_responsibilities", "mixture_log_likelihood",
           "responsibilities", "weight_update"]

_TINY = 1e-300


@dataclass(frozen=True)
class EMFit:
    """Result of :func:`em_weights`: weights on the simplex, iterations, convergence flag,
    and the mean log-likelihood per observation after each iteration (index 0 = start)."""

    weights: Float[np.ndarray, " n_support"]
    n_iter: int
    converged: bool
    log_likelihood_history: Float[np.ndarray, " n_iter_plus_1"]


class _ShiftedLikelihood:
    """``L`` split as ``max_k L_nk + log P_nk`` with ``P = exp(L - max)`` in ``[0, 1]``."""

    def __init__(self, loglik: Float[np.ndarray, "n_obs n_support"]):
        self.loglik = np.asarray(loglik, dtype=np.float64)
        self.row_max = self.loglik.max(axis=1)
        self.p = np.exp(self.loglik - self.row_max[:, None])

    def row_log_density(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log p_w(y_n), (P w)_n)``; underflowing rows go through a full logsumexp."""
        pw = self.p @ weights
        bad = pw < _TINY
        with np.errstate(divide="ignore"):
            log_pw = np.log(np.where(bad, 1.0, pw)) + self.row_max
            if bad.any():
                log_w = np.log(weights)
                log_pw[bad] = log_responsibilities(self.loglik[bad] + log_w)[0]
        return log_pw, pw

    def responsibility_sums(self, weights: np.ndarray) -> tuple[np.ndarray, float]:
        """``(sum_n gamma_nk, ell(w))``: the E-step and the current mean log-likelihood."""
        log_pw, pw = self.row_log_density(weights)
        bad = pw < _TINY
        inv = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, pw))
        sums = weights * (self.p.T @ inv)
        if bad.any():
            with np.errstate(divide="ignore"):
                log_g = self.loglik[bad] + np.log(weights) - log_pw[bad, None]
            sums = sums + np.exp(log_g).sum(axis=0)
        return sums, float(np.mean(log_pw))


def log_responsibilities(z: Float[np.ndarray, "... n_obs n_support"]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(log sum_k e^{z_nk}, gamma_nk = e^{z_nk} / sum_j e^{z_nj})`` over the last axis.

    ``z = L + log w`` (any leading batch axes); the one log-sum-exp of cryosip's EMs (the
    baselines, the contrast fit, the registration), shifted by the row maximum.

    >>> log_norm, gamma = log_responsibilities(np.log(np.array([[1.0, 3.0]])))
    >>> round(float(log_norm[0]), 6), gamma.tolist()
    (1.386294, [[0.25, 0.75]])
    """
    z = np.asarray(z, np.float64)
    top = z.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(z - top)
    norm = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return (np.log(norm) + top)[..., 0], e / norm


def weight_update(sums: Float[np.ndarray, "... n_support"],
                  alpha: np.ndarray | None = None) -> np.ndarray:
    """The M-step: ``w_k ∝ max(S_k + alpha_k - 1, 0)`` from responsibility sums
    ``S_k = sum_n gamma_nk`` (plain ``S_k / sum_j S_j`` when ``alpha`` is None, the
    Dirichlet-MAP update otherwise); leading batch axes allowed.

    >>> weight_update(np.array([3.0, 1.0])).tolist()
    [0.75, 0.25]
    """
    sums = np.asarray(sums, np.float64)
    unnorm = sums if alpha is None else np.maximum(sums + alpha - 1.0, 0.0)
    total = unnorm.sum(axis=-1, keepdims=True)
    if not np.all(total > 0):
        raise ValueError("Dirichlet M-step gave all-zero weights: raise prior_concentration")
    return unnorm / total


def em_weights(
    loglik: Float[np.ndarray, "n_obs n_support"],
    init: Float[np.ndarray, " n_support"] | None = None,
    alpha: float | Float[np.ndarray, " n_support"] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-9,
) -> EMFit:
    """EM for mixture weights on a fixed support (module docstring for the formulas).

    ``init`` defaults to uniform weights; ``alpha`` is the Dirichlet concentration
    (``None`` = maximum likelihood); ``tol`` bounds the change of the mean log-likelihood
    per observation between two iterations.
    """
    lik = _ShiftedLikelihood(loglik)
    n_support = lik.p.shape[1]
    w = np.full(n_support, 1.0 / n_support) if init is None else np.asarray(init, float)
    w = w / w.sum()
    a = None if alpha is None else np.broadcast_to(np.asarray(alpha, float), (n_support,))
    history: list[float] = []
    converged = False
    while len(history) < max_iter and not converged:
        sums, ell = lik.responsibility_sums(w)
        converged = bool(history) and abs(ell - history[-1]) < tol
        history.append(ell)
        w = weight_update(sums, a)
    history.append(float(np.mean(lik.row_log_density(w)[0])))
    return EMFit(w, len(history) - 1, converged, np.asarray(history))


def mixture_log_likelihood(
    loglik: Float[np.ndarray, "n_obs n_support"], weights: Float[np.ndarray, " n_support"]
) -> float:
    """Mean log-likelihood per observation ``ell(w)`` of the mixture with these weights."""
    return float(np.mean(_ShiftedLikelihood(loglik).row_log_density(weights)[0]))


def responsibilities(
    loglik: Float[np.ndarray, "n_obs n_support"], weights: Float[np.ndarray, " n_support"]
) -> Float[np.ndarray, "n_obs n_support"]:
    """``gamma_nk = w_k p_nk / sum_j w_j p_nj`` (posterior of the support point per image)."""
    with np.errstate(divide="ignore"):
        z = np.asarray(loglik, float) + np.log(np.asarray(weights, float))
    return log_responsibilities(z)[1]
