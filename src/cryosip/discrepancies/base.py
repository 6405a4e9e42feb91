r"""The discrepancy family: one interface, one registry.

A discrepancy ``D(mu)`` compares the push-forward of ``mu = sum_i w_i delta_{x_i}`` with
the data. The weights enter linearly, so the gradient with respect to ``w_i`` is the first
variation ``dD/dmu(x_i)`` and, by the particle scaling rule (:mod:`cryosip.measures`),
the particle velocity is ``-grad_{x_i} D / w_i``. Two kinds, by what they need:

* :class:`AbstractSampleDiscrepancy`: weighted samples of both sides,
  ``D(P, Q)`` with ``P = sum_i p_i delta_{x_i}``, ``Q = sum_j q_j delta_{y_j}`` (weights
  summing to 1): MMD (:class:`~cryosip.discrepancies.mmd.MMD`), the energy distance of
  ``docs/extending.md``.
* :class:`AbstractLikelihoodDiscrepancy`: the log-likelihoods ``L_ni = log p(y_n|x_i)``
  of the observations under each particle: the forward KL
  (:class:`~cryosip.discrepancies.kl.ForwardKL`).

They never import the forward model, so each is tested on Gaussians alone.
:data:`DISCREPANCIES` maps a name (``"mmd"``, ``"kl"``) to its class; a new one is one
file with a class decorated by ``@register_discrepancy("name")``.

>>> import jax.numpy as jnp
>>> from cryosip.discrepancies import GaussianKernel
>>> mmd = DISCREPANCIES.get("mmd")(GaussianKernel(1.0))
>>> x, w = jnp.array([[0.0], [1.0]]), jnp.array([0.5, 0.5])
>>> float(mmd(x, w, x, w))
0.0
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
from jaxtyping import Array, Float

from cryosip.registry import Registry

__all__ = [
    "DISCREPANCIES",
    "AbstractDiscrepancy",
    "AbstractLikelihoodDiscrepancy",
    "AbstractSampleDiscrepancy",
    "register_discrepancy",
]


class AbstractDiscrepancy(eqx.Module):
    """A discrepancy between a particle measure's push-forward and the data."""


class AbstractSampleDiscrepancy(AbstractDiscrepancy):
    """``D(P, Q)`` between weighted samples (module docstring)."""

    @abc.abstractmethod
    def __call__(
        self,
        x: Float[Array, " n *feat"],
        wx: Float[Array, " n"],
        y: Float[Array, " m *feat"],
        wy: Float[Array, " m"],
    ) -> Float[Array, ""]:
        """The value; ``x``, ``y`` carry any trailing feature shape (images included)."""

    def first_variation(
        self,
        x: Float[Array, " n *feat"],
        wx: Float[Array, " n"],
        y: Float[Array, " m *feat"],
        wy: Float[Array, " m"],
    ) -> Float[Array, " n"]:
        """``dD/dP`` at each ``x_i``: the gradient of the value with respect to ``wx``."""
        return jax.grad(self.__call__, argnums=1)(x, wx, y, wy)


class AbstractLikelihoodDiscrepancy(AbstractDiscrepancy):
    """``D`` from log-likelihoods ``L[n, i] = log p(y_n | x_i)`` and log-weights."""

    @abc.abstractmethod
    def __call__(
        self,
        log_likelihoods: Float[Array, "n_obs n_particles"],
        log_weights: Float[Array, " n_particles"],
    ) -> Float[Array, ""]:
        """The value (a mean over the observations)."""


DISCREPANCIES: Registry[type[AbstractDiscrepancy]] = Registry("discrepancy", AbstractDiscrepancy)
"""Registered discrepancies: name -> :class:`AbstractDiscrepancy` subclass."""

register_discrepancy = DISCREPANCIES.register
"""Class decorator: ``@register_discrepancy("name")`` (``Registry.register``)."""
