r"""The log-likelihood matrix ``L[n, k] = log p(y_n | x_k)`` of any random operator.

* **known nuisance** (``observations.nuisance`` is set): ``L = log N(y_n; G(x_k, w_n),
  sigma^2 I)`` through ``operator.log_likelihood_grid``;
* **unknown nuisance**: the marginal ``log p(y_n|x_k) = log ∫ N(y_n; G(x_k,w), sigma^2 I)
  dpi(w)``, the operator's ``log_marginal_likelihood_grid(ys, xs, key, n_draws)``: an
  operator's quadrature where it has one, else :class:`~cryosip.operators.AbstractRandomOperator`'s
  Monte Carlo estimate with ``B = n_draws`` nuisances ``w_b ~ pi`` shared by all images
  (common random numbers, so the result does not depend on the batch size):

  .. math::  \log p(y_n|x_k) \approx \operatorname{logsumexp}_b \log N(y_n; G(x_k, w_b),
             \sigma^2 I) - \log B.

The matrix is computed in blocks of observations and support points, each block padded to
a fixed shape so that one compiled function serves all blocks.

Example
-------
>>> import jax, jax.numpy as jnp
>>> from cryosip.operators import AbstractRandomOperator, Observations
>>> class Shift(AbstractRandomOperator):
...     noise_std: float = 1.0
...     def sample_nuisance(self, key, n_draws):
...         return jnp.zeros((n_draws, 1))
...     def clean(self, x, nuisance):
...         return x + nuisance
>>> obs = Observations(jnp.zeros((5, 1)), jnp.zeros((5, 1)))
>>> log_likelihood_matrix(Shift(), obs, jnp.array([[0.0], [1.0]])).shape
(5, 2)
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from cryosip.operators import AbstractRandomOperator, Observations

__all__ = ["default_block_sizes", "log_likelihood_matrix"]


def _pad_rows(a: Array, size: int) -> Array:
    """Pad the leading axis to ``size`` by repeating the last row."""
    extra = size - a.shape[0]
    if extra <= 0:
        return a
    return jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)], axis=0)


def _take(tree: PyTree, start: int, stop: int, size: int) -> PyTree:
    return jax.tree.map(lambda a: _pad_rows(a[start:stop], size), tree)


@eqx.filter_jit
def _known_block(operator, ys, xs, nuisance):
    return operator.log_likelihood_grid(ys, xs, nuisance)


def _blocks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def log_likelihood_matrix(  # noqa: PLR0913 (keyword-only batching and Monte Carlo options)
    operator: AbstractRandomOperator,
    observations: Observations,
    support: Float[Array, "n_support dim"],
    *,
    batch_size: int | None = None,
    support_batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    n_draws: int = 64,
) -> Float[np.ndarray, "n_obs n_support"]:
    """``L[n, k] = log p(y_n | x_k)`` as a float64 numpy array (module docstring).

    ``batch_size`` observations and ``support_batch_size`` support points are evaluated at
    a time (peak memory ~ their product times the image size, times ``n_draws`` for the
    marginal; by default chosen by :func:`default_block_sizes`). ``key`` and ``n_draws``
    are used only when the nuisance is unknown.
    """
    xs = jnp.asarray(support)
    n_obs, n_support = len(observations), xs.shape[0]
    obs_size = math.prod(observations.values.shape[1:])
    known = observations.nuisance is not None
    nb0, kb0 = default_block_sizes(obs_size, 1 if known else n_draws)
    nb = min(batch_size or nb0, n_obs)
    kb = min(support_batch_size or kb0, n_support)
    block = _block_function(operator, observations, key, n_draws)
    out = np.empty((n_obs, n_support), dtype=np.float64)
    for s0, s1 in _blocks(n_obs, nb):
        ys = _pad_rows(observations.values[s0:s1], nb)
        nuis = None if observations.nuisance is None else _take(observations.nuisance, s0, s1, nb)
        for k0, k1 in _blocks(n_support, kb):
            ll = block(ys, _pad_rows(xs[k0:k1], kb), nuis)
            out[s0:s1, k0:k1] = np.asarray(ll, dtype=np.float64)[: s1 - s0, : k1 - k0]
    return out


def _block_function(operator, observations, key, n_draws):
    """The per-block function ``(ys, xs, nuisance) -> L_block`` for the nuisance regime."""
    if observations.nuisance is not None:
        return lambda ys, xs, nuis: _known_block(operator, ys, xs, nuis)
    if key is None:
        raise ValueError("unknown nuisance: pass a JAX key for the marginal likelihood")
    # every operator has it: AbstractRandomOperator's Monte Carlo default, or quadrature
    marginal = eqx.filter_jit(operator.log_marginal_likelihood_grid)
    return lambda ys, xs, _: marginal(ys, xs, key, n_draws)


def default_block_sizes(obs_size: int, n_draws: int = 1, budget: int = 2**24) -> tuple[int, int]:
    """``(batch_size, support_batch_size)`` keeping ``n * k * n_draws * obs_size <= budget``."""
    per_pair = max(obs_size * n_draws, 1)
    pairs = max(budget // per_pair, 1)
    k = int(min(64, max(1, math.isqrt(pairs))))
    return int(max(1, pairs // k)), k
