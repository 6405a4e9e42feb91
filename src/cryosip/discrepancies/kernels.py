r"""Kernels as functions of the squared distance ``r2 = |a - b|^2``.

* :class:`GaussianKernel` ``k = c exp(-r2 / (2 h^2))`` (``c`` = ``scale``, 1 by default);
* :class:`MultiGaussianKernel` ``k = sum_l exp(-r2 / (2 h_l^2))``;
* :class:`InverseMultiquadricKernel` ``k = (1 + r2 / c^2)^(-1/2)``;
* :class:`EnergyKernel` ``k = -sqrt(r2)`` (negative distance; its MMD^2 is the energy
  distance ``2E|X-Y| - E|X-X'| - E|Y-Y'|``, conditionally positive definite).

**Noise marginalisation** (Gaussian kernels only). For ``e ~ N(0, s^2 I_D)``

.. math::  E\,e^{-|a+e|^2/2h^2} = \left(\frac{h^2}{h^2+s^2}\right)^{D/2} e^{-|a|^2/2(h^2+s^2)},

so :meth:`GaussianKernel.noise_marginalised` returns the Gaussian kernel with
``h^2 -> h^2 + s^2`` and scale multiplied by ``(h^2/(h^2+s^2))^(D/2)`` (computed in log
space: safe for ``D = 4096``). Between two clean simulated samples the noise difference
has variance ``2 s^2``; between a clean simulated and an observed sample, ``s^2``.

Bandwidths are in the units of the samples (after the feature map).

>>> import jax.numpy as jnp
>>> k = GaussianKernel(1.0)
>>> float(k(jnp.array(0.0)))
1.0
>>> round(float(k.noise_marginalised(1.0, 2)(jnp.array(0.0))), 3)
0.5
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = [
    "AbstractKernel",
    "EnergyKernel",
    "GaussianKernel",
    "InverseMultiquadricKernel",
    "MultiGaussianKernel",
    "median_bandwidth",
]


class AbstractKernel(eqx.Module):
    """A translation-invariant kernel ``k(a, b) = kappa(|a - b|^2)``."""

    @abc.abstractmethod
    def __call__(self, sqdist: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """``kappa`` applied elementwise to squared distances."""

    def noise_marginalised(self, noise_var: float, dim: int) -> AbstractKernel:
        """The kernel averaged over ``a - b + e``, ``e ~ N(0, noise_var I_dim)``."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form noise average")


class GaussianKernel(AbstractKernel):
    """``scale * exp(-r2 / (2 bandwidth^2))``."""

    bandwidth: float | Float[Array, ""]
    scale: float | Float[Array, ""] = 1.0

    def __call__(self, sqdist):
        return self.scale * jnp.exp(-0.5 * sqdist / self.bandwidth**2)

    def noise_marginalised(self, noise_var, dim):
        h2 = self.bandwidth**2
        log_factor = 0.5 * dim * (jnp.log(h2) - jnp.log(h2 + noise_var))
        return GaussianKernel(jnp.sqrt(h2 + noise_var), self.scale * jnp.exp(log_factor))


class MultiGaussianKernel(AbstractKernel):
    """Sum of Gaussian kernels with ``bandwidths`` (tuple or array), each of scale 1."""

    bandwidths: Float[Array, " n_bandwidths"]
    scales: Float[Array, " n_bandwidths"] | None = None

    def _scales(self):
        return jnp.ones_like(self.bandwidths) if self.scales is None else self.scales

    def __call__(self, sqdist):
        h2 = jnp.asarray(self.bandwidths) ** 2
        terms = jnp.exp(-0.5 * sqdist[..., None] / h2) * self._scales()
        return jnp.sum(terms, axis=-1)

    def noise_marginalised(self, noise_var, dim):
        h2 = jnp.asarray(self.bandwidths) ** 2
        log_factor = 0.5 * dim * (jnp.log(h2) - jnp.log(h2 + noise_var))
        return MultiGaussianKernel(jnp.sqrt(h2 + noise_var), self._scales() * jnp.exp(log_factor))


class InverseMultiquadricKernel(AbstractKernel):
    """``(1 + r2 / c^2)^(-1/2)``: heavy tails, so gradients do not vanish far away."""

    c: float | Float[Array, ""] = 1.0

    def __call__(self, sqdist):
        return jax.lax.rsqrt(1.0 + sqdist / self.c**2)


class EnergyKernel(AbstractKernel):
    """``-|a - b|`` with a gradient that is 0 (not NaN) at ``a = b``."""

    def __call__(self, sqdist):
        positive = sqdist > 0
        return -jnp.where(positive, jnp.sqrt(jnp.where(positive, sqdist, 1.0)), 0.0)


def median_bandwidth(
    samples: Float[Array, "n_samples dim"], max_samples: int = 1000
) -> Float[Array, ""]:
    """Median heuristic ``h = sqrt(median_{i<j} |a_i - a_j|^2)`` over the first ``max_samples``.

    >>> import jax.numpy as jnp
    >>> float(median_bandwidth(jnp.array([[0.0], [1.0], [3.0]])))
    2.0
    """
    a = jnp.reshape(samples[:max_samples], (min(samples.shape[0], max_samples), -1))
    sq = jnp.sum(a**2, axis=1)
    d2 = jnp.clip(sq[:, None] + sq[None, :] - 2.0 * a @ a.T, 0.0)
    upper = jnp.triu_indices(a.shape[0], k=1)
    return jnp.sqrt(jnp.median(d2[upper]))
