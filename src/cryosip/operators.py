r"""Random forward operators: the one interface every stochastic inverse problem plugs into.

A random forward operator maps a parameter (conformation) ``x`` in ``X ⊂ R^d`` and a
nuisance ``w ~ pi`` to an observation

.. math::  y = F(x, w) = G(x, w) + \sigma \varepsilon, \qquad \varepsilon \sim N(0, I),

where ``G`` is the clean (noiseless, differentiable in ``x``) observation. The data are
``y_n ~ nu = F#(mu ⊗ pi)``. The nuisance is any JAX PyTree whose leaves carry a leading
``n_draws`` axis when batched (for cryo-EM: pose, shift and CTF parameters).

Two regimes are supported without change to the operator:

* **unknown nuisance**: the solver draws ``w`` from :meth:`sample_nuisance`;
* **known nuisance per observation**: :class:`Observations` carries ``nuisance`` aligned
  with ``values``; the solver then pairs simulated and observed data through it.

Subclasses implement :meth:`sample_nuisance`, :meth:`clean` and the ``noise_std`` field.
The batched methods (:meth:`clean_grid`, :meth:`clean_paired`, :meth:`log_likelihood_grid`)
have vmap defaults; operators with a faster batched path (cryo-EM renders the structure
once per conformation) override them. Everything must be traceable by ``jax.jit``.

Example
-------
>>> import jax, jax.numpy as jnp
>>> class Shift(AbstractRandomOperator):
...     noise_std: float = 0.1
...     def sample_nuisance(self, key, n_draws):
...         return jax.random.normal(key, (n_draws,))
...     def clean(self, x, nuisance):
...         return x + nuisance
>>> op = Shift()
>>> w = op.sample_nuisance(jax.random.key(0), 4)
>>> op.clean_grid(jnp.zeros((3, 1)), w).shape
(3, 4, 1)
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

__all__ = ["AbstractRandomOperator", "Observations", "gaussian_log_likelihood"]


def gaussian_log_likelihood(
    y: Float[Array, "*obs"], mean: Float[Array, "*obs"], noise_std: float | Float[Array, ""]
) -> Float[Array, ""]:
    r"""``log N(y; mean, s^2 I) = -|y-mean|^2/(2 s^2) - (D/2) log(2 pi s^2)``, D = y.size."""
    size = math.prod(y.shape)
    resid = jnp.sum((y - mean) ** 2)
    return -0.5 * resid / noise_std**2 - 0.5 * size * jnp.log(2.0 * jnp.pi * noise_std**2)


class Observations(eqx.Module):
    """Observed data ``values`` (leading axis ``n_obs``) and, if known, their nuisances.

    ``nuisance`` is ``None`` (unknown, drawn from the operator's prior) or a PyTree whose
    leaves have leading axis ``n_obs``, aligned with ``values``.
    """

    values: Float[Array, " n_obs *obs"]
    nuisance: PyTree | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def take(self, index: Array) -> Observations:
        """The observations at integer ``index`` (a minibatch), nuisances included."""
        nuisance = (
            None if self.nuisance is None else jax.tree.map(lambda a: a[index], self.nuisance)
        )
        return Observations(self.values[index], nuisance)


class AbstractRandomOperator(eqx.Module):
    """A differentiable random forward operator ``y = G(x, w) + noise_std * eps``."""

    noise_std: eqx.AbstractVar[float | Float[Array, ""]]

    @abc.abstractmethod
    def sample_nuisance(self, key: PRNGKeyArray, n_draws: int) -> PyTree:
        """``n_draws`` i.i.d. nuisances from the prior pi (leaves with leading axis n_draws)."""

    @abc.abstractmethod
    def clean(self, x: Float[Array, " dim"], nuisance: PyTree) -> Float[Array, "*obs"]:
        """The noiseless observation ``G(x, w)`` for one ``x`` and one nuisance."""

    def sample(
        self, key: PRNGKeyArray, x: Float[Array, " dim"], nuisance: PyTree
    ) -> Float[Array, "*obs"]:
        """One noisy observation ``F(x, w) = G(x, w) + noise_std * eps``."""
        return self.add_noise(key, self.clean(x, nuisance))

    def add_noise(self, key: PRNGKeyArray, clean: Float[Array, " *obs"]) -> Float[Array, " *obs"]:
        """``clean + noise_std * eps`` (any leading axes); operators whose observations are
        a transform of white noise (e.g. a Fourier band) draw it in their own space."""
        return clean + self.noise_std * jax.random.normal(key, clean.shape, clean.dtype)

    @property
    def noise_dim(self) -> int | None:
        """Dimensions of the noise in an observation; ``None``: every entry's (its size).
        Noise-marginalised kernels need it when observations embed a lower-dimensional
        noise (a band whose entries repeat or vanish)."""
        return None

    def clean_grid(
        self, xs: Float[Array, "n_particles dim"], nuisance: PyTree
    ) -> Float[Array, " n_particles n_draws *obs"]:
        """``G(x_i, w_b)`` for every particle ``i`` and every nuisance ``b`` (all pairs)."""
        per_x = lambda x: jax.vmap(lambda w: self.clean(x, w))(nuisance)
        return jax.vmap(per_x)(xs)

    def clean_paired(
        self, xs: Float[Array, "n_draws dim"], nuisance: PyTree
    ) -> Float[Array, " n_draws *obs"]:
        """``G(x_b, w_b)``: particle ``b`` with nuisance ``b``."""
        return jax.vmap(self.clean)(xs, nuisance)

    def log_likelihood_grid(
        self, ys: Float[Array, " n_obs *obs"], xs: Float[Array, "n_particles dim"], nuisance: PyTree
    ) -> Float[Array, "n_obs n_particles"]:
        """``log p(y_n | x_i, w_n)`` with the nuisance ``w_n`` known per observation."""
        g = self.clean_grid(xs, nuisance)  # (n_particles, n_obs, *obs)
        ll = jax.vmap(jax.vmap(gaussian_log_likelihood, (0, 0, None)), (None, 0, None))(
            ys, g, self.noise_std
        )
        return ll.T

    def log_marginal_likelihood_grid(
        self,
        ys: Float[Array, " n_obs *obs"],
        xs: Float[Array, "n_particles dim"],
        key: PRNGKeyArray,
        n_draws: int,
    ) -> Float[Array, "n_obs n_particles"]:
        r"""``log p(y_n | x_i) = log E_{w~pi} N(y_n; G(x_i, w), s^2 I)`` (unknown nuisance).

        Default: importance sampling from the prior with ``n_draws`` draws shared by all
        particles and observations, ``logsumexp_b log N(y_n; G(x_i, w_b), s^2) - log n_draws``
        (biased low by Jensen, consistent as ``n_draws`` grows). Operators with a
        low-dimensional nuisance override this with quadrature.
        """
        nuisance = self.sample_nuisance(key, n_draws)
        g = self.clean_grid(xs, nuisance)  # (n_particles, n_draws, *obs)
        ll_one = jax.vmap(jax.vmap(gaussian_log_likelihood, (None, 0, None)), (None, 0, None))
        ll = jax.vmap(lambda y: ll_one(y, g, self.noise_std))(ys)  # (n_obs, n_particles, n_draws)
        return jax.nn.logsumexp(ll, axis=-1) - jnp.log(n_draws)
