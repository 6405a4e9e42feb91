"""Known truths of the toy problems: diagonal Gaussian mixtures over ``x``.

>>> import numpy as np
>>> g = GaussianMixture(np.array([1.0]), np.array([[0.0]]), np.array([[1.0]]))
>>> round(float(g.quantile(np.array([0.975]))[0]), 2)
1.96
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special

__all__ = ["GaussianMixture"]


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """``sum_k weights_k N(means_k, diag(stds_k^2))``; ``means, stds [n_components, dim]``."""

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` i.i.d. draws, shape ``(n, dim)``."""
        component = rng.choice(len(self.weights), size=n, p=self.weights)
        eps = rng.standard_normal((n, self.dim))
        return self.means[component] + self.stds[component] * eps

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """Density at ``x [n, dim]``."""
        z = (x[:, None, :] - self.means[None]) / self.stds[None]
        norm = np.prod(self.stds, axis=1) * (2 * np.pi) ** (self.dim / 2)
        return np.exp(-0.5 * np.sum(z**2, axis=2)) @ (self.weights / norm)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """1-D only: ``F(x)`` for ``x [n]``."""
        z = (np.asarray(x)[:, None] - self.means[None, :, 0]) / self.stds[None, :, 0]
        return special.ndtr(z) @ self.weights

    def quantile(self, t: np.ndarray, n_grid: int = 200_001) -> np.ndarray:
        """1-D only: ``F^{-1}(t)`` by interpolating the CDF on a fine grid (error ~1e-5 sd)."""
        lo = np.min(self.means[:, 0] - 9 * self.stds[:, 0])
        hi = np.max(self.means[:, 0] + 9 * self.stds[:, 0])
        grid = np.linspace(lo, hi, n_grid)
        cdf = self.cdf(grid)
        keep = np.concatenate([[True], np.diff(cdf) > 0])
        return np.interp(t, cdf[keep], grid[keep])
