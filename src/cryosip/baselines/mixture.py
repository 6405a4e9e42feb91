r"""A Gaussian mixture in conformation space fitted by maximum likelihood through the images.

The model is ``mu = sum_c pi_c N(m_c, S_c)`` restricted to the box and discretised on a
fine quadrature grid ``z_1..z_G`` of ``X``: component ``c`` puts mass
``phi_cj = N(z_j; m_c, S_c) / sum_i N(z_i; m_c, S_c)`` on grid point ``j``, the mixture
``q_j = sum_c pi_c phi_cj``, and the image likelihood is ``p(y_n) = sum_j q_j p(y_n|z_j)``
with ``L[n, j] = log p(y_n | z_j)``. EM over the latent (grid point, component):

.. math::  a_j = \frac1N \sum_n \frac{q_j p(y_n|z_j)}{\sum_i q_i p(y_n|z_i)}, \quad
           b_{cj} = a_j \frac{\pi_c \phi_{cj}}{q_j}, \quad
           \pi_c = \sum_j b_{cj}, \quad m_c = \frac{\sum_j b_{cj} z_j}{\pi_c}, \quad
           S_c = \frac{\sum_j b_{cj} (z_j - m_c)(z_j - m_c)^T}{\pi_c} + \epsilon I.

The M-step matches moments on the grid (exact for an untruncated Gaussian; for mass near
the box edges it is the usual approximation). ``epsilon = reg_covar`` keeps components
from collapsing below the grid spacing. Initialisation: a few reweighting EM steps on the
grid give ``a``; the means are drawn from ``a`` (``random_state``), the covariances are the
covariance of ``a`` divided by ``n_components``.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> x = np.where(rng.random(3000) < 0.4, rng.normal(0.3, 0.05, 3000), rng.normal(0.7, 0.05, 3000))
>>> grid = np.linspace(0, 1, 101)[:, None]
>>> L = -0.5 * (x[:, None] + 0.05 * rng.standard_normal((3000, 1)) - grid[:, 0]) ** 2 / 0.05**2
>>> gm = GaussianMixtureX(2, grid=grid, random_state=0).fit_loglik(L)
>>> np.round(np.sort(gm.means_[:, 0]), 1).tolist()
[0.3, 0.7]
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from cryosip.baselines._base import LikelihoodEstimator, as_generator
from cryosip.baselines.em import _ShiftedLikelihood, em_weights, log_responsibilities
from cryosip.baselines.support import grid_support

__all__ = ["GaussianMixtureX"]


def _log_gauss(z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Unnormalised ``log N(z_j; mean, cov)`` on the grid rows (constants cancel)."""
    chol = np.linalg.cholesky(cov)
    sol = np.linalg.solve(chol, (z - mean).T)
    return -0.5 * np.sum(sol**2, axis=0) - np.sum(np.log(np.diag(chol)))


def _weighted_cov(z: np.ndarray, w: np.ndarray, mean: np.ndarray) -> np.ndarray:
    d = z - mean
    return (w[:, None] * d).T @ d / w.sum()


class GaussianMixtureX(LikelihoodEstimator):
    """Gaussian mixture in ``x`` by maximum likelihood of the images (module docstring).

    The grid is ``grid`` ``[G, dim]`` if given, else ``grid_support(lower, upper, n_grid)``.
    Learned: ``weights_`` ``[C]``, ``means_`` ``[C, dim]``, ``covariances_``
    ``[C, dim, dim]``, ``grid_``, ``n_iter_``, ``converged_``, ``log_likelihood_history_``;
    :meth:`measure_` gives the fitted measure on the grid.
    """

    def __init__(  # noqa: PLR0913 (scikit-learn: hyperparameters are constructor arguments)
        self,
        n_components: int,
        grid: np.ndarray | None = None,
        lower=None,
        upper=None,
        n_grid: int = 201,
        max_iter: int = 500,
        tol: float = 1e-8,
        reg_covar: float = 1e-6,
        n_init_steps: int = 20,
        batch_size: int | None = None,
        n_draws: int = 64,
        random_state: int | np.random.Generator | None = None,
    ):
        self.n_components = n_components
        self.grid, self.lower, self.upper, self.n_grid = grid, lower, upper, n_grid
        self.max_iter, self.tol, self.reg_covar = max_iter, tol, reg_covar
        self.n_init_steps = n_init_steps
        self.batch_size, self.n_draws, self.random_state = batch_size, n_draws, random_state

    def _fit_support(self) -> Float[np.ndarray, "n_grid dim"]:
        if self.grid is not None:
            grid = np.asarray(self.grid, float)
            return grid[:, None] if grid.ndim == 1 else grid
        if self.lower is None or self.upper is None:
            raise ValueError("GaussianMixtureX needs grid=, or lower= and upper=")
        return grid_support(self.lower, self.upper, self.n_grid)

    def _grid_mass(self) -> tuple[np.ndarray, np.ndarray]:
        """``(phi [C, G], q [G])``: per-component and mixture masses on the grid."""
        pairs = zip(self.means_, self.covariances_, strict=True)
        log_phi = np.stack([_log_gauss(self.grid_, m, s) for m, s in pairs])
        phi = log_responsibilities(log_phi)[1]
        return phi, self.weights_ @ phi

    def _initialise(self, loglik: np.ndarray) -> None:
        a = em_weights(loglik, max_iter=self.n_init_steps, tol=0.0).weights
        rng = as_generator(self.random_state)
        n_pos = int(np.count_nonzero(a > 0))
        idx = rng.choice(len(a), self.n_components, replace=n_pos < self.n_components, p=a)
        mean_all = a @ self.grid_
        cov = _weighted_cov(self.grid_, a, mean_all) / self.n_components
        cov = cov + self._eps()
        self.means_ = self.grid_[idx].copy()
        self.covariances_ = np.repeat(cov[None], self.n_components, axis=0)
        self.weights_ = np.full(self.n_components, 1.0 / self.n_components)

    def _eps(self) -> np.ndarray:
        dim = self.grid_.shape[1]
        return self.reg_covar * np.eye(dim)

    def _m_step(self, a: np.ndarray, phi: np.ndarray, q: np.ndarray) -> None:
        safe_q = np.where(q > 0, q, 1.0)
        b = a[None, :] * self.weights_[:, None] * phi / safe_q[None, :]
        pi = b.sum(axis=1)
        keep = pi > 1e-12
        for c in np.flatnonzero(keep):
            self.means_[c] = b[c] @ self.grid_ / pi[c]
            self.covariances_[c] = _weighted_cov(self.grid_, b[c], self.means_[c]) + self._eps()
        self.weights_ = np.where(keep, pi, 0.0) / pi[keep].sum()

    def fit_loglik(self, loglik: Float[np.ndarray, "n_obs n_grid"]) -> GaussianMixtureX:
        """Fit from ``L[n, j] = log p(y_n | z_j)`` on the grid."""
        self.grid_ = self._fit_support()
        self._initialise(loglik)
        lik = _ShiftedLikelihood(loglik)
        history: list[float] = []
        self.converged_ = False
        while len(history) < self.max_iter and not self.converged_:
            phi, q = self._grid_mass()
            sums, ell = lik.responsibility_sums(q)
            self.converged_ = bool(history) and abs(ell - history[-1]) < self.tol
            history.append(ell)
            self._m_step(sums / loglik.shape[0], phi, q)
        self.n_iter_ = len(history)
        self.log_likelihood_history_ = np.asarray(history)
        return self

    def measure_(self) -> tuple[Float[np.ndarray, "n_grid dim"], Float[np.ndarray, " n_grid"]]:
        """The fitted mixture on the grid: ``(positions [G, dim], weights q [G])``."""
        return self.grid_, self._grid_mass()[1]
