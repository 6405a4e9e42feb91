r"""Random forward operators of the toy problems (scalar observations, ``obs = (1,)``).

* :class:`RandomAffineOperator`: ``y = a x + b + s eps``, ``a ~ U(gain_low, gain_high)``,
  ``b ~ N(0, offset_std^2)``; nuisance ``[n, 2] = (a, b)``. Its marginal likelihood is
  computed by quadrature: given ``a``, ``y ~ N(a x, offset_std^2 + s^2)``, and ``a`` is
  integrated by Gauss-Legendre (``n_nodes``), deterministic and exact to ~1e-10.
* :class:`RandomProjectionOperator`: ``y = <x, u> + s eps``, ``u`` uniform on the unit
  circle; nuisance ``[n, 2] = u``.
* :class:`AbsoluteValueOperator`: ``y = |x| + s eps``; no nuisance (a dummy ``[n, 1]``).

>>> import jax, jax.numpy as jnp
>>> op = RandomAffineOperator(noise_std=0.2)
>>> op.clean(jnp.array([2.0]), jnp.array([1.5, -1.0])).tolist()
[2.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cryosip.operators import AbstractRandomOperator

__all__ = ["AbsoluteValueOperator", "RandomAffineOperator", "RandomProjectionOperator"]


def _normal_loglik_grid(ys, means, var):
    """``log N(y_n; means_i, var)`` for scalar observations: ``[n_obs, n_particles]``."""
    return -0.5 * (ys[:, None] - means[None, :]) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var)


class RandomAffineOperator(AbstractRandomOperator):
    noise_std: float = 0.1
    gain_low: float = 0.9
    gain_high: float = 1.1
    offset_std: float = 0.1
    n_nodes: int = 16

    def sample_nuisance(self, key, n_draws):
        k_a, k_b = jax.random.split(key)
        gain = jax.random.uniform(k_a, (n_draws,), minval=self.gain_low, maxval=self.gain_high)
        return jnp.stack([gain, self.offset_std * jax.random.normal(k_b, (n_draws,))], axis=1)

    def clean(self, x, nuisance):
        return nuisance[0] * x[:1] + nuisance[1]

    def log_marginal_likelihood_grid(self, ys, xs, key, n_draws):
        """Quadrature over the gain (``key`` and ``n_draws`` are unused)."""
        nodes, node_w = np.polynomial.legendre.leggauss(self.n_nodes)
        gains = self.gain_low + 0.5 * (nodes + 1.0) * (self.gain_high - self.gain_low)
        var = self.offset_std**2 + self.noise_std**2
        ll = jax.vmap(lambda a: _normal_loglik_grid(ys[:, 0], a * xs[:, 0], var))(gains)
        return jax.nn.logsumexp(ll + jnp.log(0.5 * node_w)[:, None, None], axis=0)


class RandomProjectionOperator(AbstractRandomOperator):
    noise_std: float = 0.2

    def sample_nuisance(self, key, n_draws):
        angle = jax.random.uniform(key, (n_draws,), maxval=2 * jnp.pi)
        return jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)

    def clean(self, x, nuisance):
        return jnp.dot(x, nuisance)[None]


class AbsoluteValueOperator(AbstractRandomOperator):
    noise_std: float = 0.2

    def sample_nuisance(self, key, n_draws):
        return jnp.zeros((n_draws, 1))

    def clean(self, x, nuisance):
        return jnp.abs(x[:1])

    def log_marginal_likelihood_grid(self, ys, xs, key, n_draws):
        """Exact (no nuisance): ``log N(y_n; |x_i|, s^2)``."""
        return _normal_loglik_grid(ys[:, 0], jnp.abs(xs[:, 0]), self.noise_std**2)


