r"""Toy stochastic inverse problems with known truth.

(a) :func:`bimodal_affine`: ``x ~ 0.35 N(-2, 0.4^2) + 0.65 N(1.5, 0.6^2)`` on ``[-5, 5]``,
    ``y = a x + b + 0.1 eps`` with random gain ``a ~ U(0.9, 1.1)`` and offset
    ``b ~ N(0, 0.1^2)`` (unknown by default, or known per observation).
(b) :func:`projection_2d`: ``x`` from a three-component 2-D Gaussian mixture on
    ``[-4, 4]^2``, ``y = <x, u_n> + 0.2 eps`` with ``u_n`` a random unit direction KNOWN per
    observation. By Cramér-Wold the laws of all 1-D projections determine ``mu``, so the
    conditional law of ``y`` given ``u`` identifies ``mu`` (with ``u`` unknown only the
    rotation average would be seen, which does not).
(c) :func:`folded_1d`: ``x ~ 0.7 N(-1.5, 0.3^2) + 0.3 N(1, 0.3^2)``, ``y = |x| + 0.2 eps``.
    Only the law of ``|x|`` is seen: any ``mu`` with the same law of ``|x|`` (mass moved
    between ``x`` and ``-x``) fits the data exactly, so the truth is not unique and only the
    push-forward (``ToyProblem.identifiable``) can be checked.

Each returns a :class:`ToyProblem`. Its true ``x`` come from the stream ``"truth"`` and its
observations (nuisances and noise) from ``"toy"`` of the given seed (:mod:`cryosip.seeds`).

>>> p = bimodal_affine(100, seed=0)
>>> p.observations.values.shape, p.operator.noise_std, p.truth.dim
((100, 1), 0.1, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cryosip.flows.domains import Domain
from cryosip.operators import AbstractRandomOperator, Observations
from cryosip.problems.operators import (
    AbsoluteValueOperator,
    RandomAffineOperator,
    RandomProjectionOperator,
)
from cryosip.problems.truth import TruthMixture
from cryosip.seeds import jax_key, numpy_rng

__all__ = ["ToyProblem", "bimodal_affine", "folded_1d", "make_toy", "projection_2d"]


@dataclasses.dataclass(frozen=True)
class ToyProblem:
    """Operator, observations and truth of a toy problem.

    ``true_x [n_obs, dim]`` are the hidden parameters of the observations; ``identifiable``
    maps samples ``[n, dim]`` to what the data determine (identity, or ``|x|`` for (c)).
    """

    name: str
    operator: AbstractRandomOperator
    observations: Observations
    truth: TruthMixture
    domain: Domain
    true_x: np.ndarray
    identifiable: Callable[[np.ndarray], np.ndarray] = lambda x: x


def _observe(operator, true_x, seed, known_nuisance):
    k_nuisance, k_noise = jax.random.split(jax_key(seed, "toy"))
    n = true_x.shape[0]
    nuisance = operator.sample_nuisance(k_nuisance, n)
    keys = jax.random.split(k_noise, n)
    values = jax.vmap(operator.sample)(keys, jnp.asarray(true_x, jnp.float32), nuisance)
    return Observations(values, nuisance if known_nuisance else None)


def _box(lo: float, hi: float, dim: int) -> Domain:
    return Domain(jnp.full((dim,), lo), jnp.full((dim,), hi))


def bimodal_affine(n_obs: int, seed: int = 0, known_nuisance: bool = False) -> ToyProblem:
    """Toy (a): a bimodal 1-D law through a random affine map."""
    truth = TruthMixture.from_gaussians([0.35, 0.65], [[-2.0], [1.5]], [[0.4], [0.6]],
                                        [-5.0], [5.0])
    true_x = truth.sample(numpy_rng(seed, "truth"), n_obs)
    operator = RandomAffineOperator()
    obs = _observe(operator, true_x, seed, known_nuisance)
    return ToyProblem("a", operator, obs, truth, _box(-5.0, 5.0, 1), true_x)


def projection_2d(n_obs: int, seed: int = 0) -> ToyProblem:
    """Toy (b): a 2-D mixture seen through random 1-D projections with known directions."""
    truth = TruthMixture.from_gaussians(
        [0.4, 0.35, 0.25], [[-1.5, -1.0], [1.5, -0.5], [0.0, 1.8]],
        [[0.4, 0.6], [0.5, 0.3], [0.6, 0.4]], [-4.0, -4.0], [4.0, 4.0])
    true_x = truth.sample(numpy_rng(seed, "truth"), n_obs)
    operator = RandomProjectionOperator()
    obs = _observe(operator, true_x, seed, known_nuisance=True)
    return ToyProblem("b", operator, obs, truth, _box(-4.0, 4.0, 2), true_x)


def folded_1d(n_obs: int, seed: int = 0) -> ToyProblem:
    """Toy (c): ``y = |x| + noise``, not identifiable (module docstring)."""
    truth = TruthMixture.from_gaussians([0.7, 0.3], [[-1.5], [1.0]], [[0.3], [0.3]],
                                        [-3.0], [3.0])
    true_x = truth.sample(numpy_rng(seed, "truth"), n_obs)
    operator = AbsoluteValueOperator()
    obs = _observe(operator, true_x, seed, known_nuisance=False)
    return ToyProblem("c", operator, obs, truth, _box(-3.0, 3.0, 1), true_x, np.abs)


_FACTORIES = {"a": bimodal_affine, "b": projection_2d, "c": folded_1d}


def make_toy(name: str, n_obs: int, seed: int = 0) -> ToyProblem:
    """Toy problem ``"a"``, ``"b"`` or ``"c"`` (defaults of each factory)."""
    if name not in _FACTORIES:
        raise ValueError(f"toy problem must be one of {sorted(_FACTORIES)}, got {name!r}")
    return _FACTORIES[name](n_obs, seed)
