"""One entry point for the baselines: ``fit_baseline(method, operator, observations, config)``.

Methods: ``"reweight"`` (:class:`Reweighting`), ``"map"`` (:class:`PerImageMAP`), ``"gmm"``
(:class:`GaussianMixtureX`). The support of ``reweight``/``map`` is ``config.support``:
``"grid"`` (``n_support`` equispaced points per axis on the box) or ``"frames"`` (the frames
of a path model, e.g. the 98 AdK frames); ``gmm`` uses an ``n_grid`` quadrature grid. The
box is the model's ``[lower, upper]`` if a model is given, else ``config.lower/upper``.

The result is what the pipeline writes to ``RUN/ensemble.npz``: ``positions`` ``[M, dim]``,
``weights`` ``[M]``, ``method``.

>>> import numpy as np, jax.numpy as jnp
>>> from cryosip.operators import AbstractRandomOperator, Observations
>>> class Shift(AbstractRandomOperator):
...     noise_std: float = 0.1
...     def sample_nuisance(self, key, n_draws):
...         return jnp.zeros((n_draws, 1))
...     def clean(self, x, nuisance):
...         return x + nuisance
>>> obs = Observations(jnp.full((50, 1), 0.5), jnp.zeros((50, 1)))
>>> cfg = {"lower": [0.0], "upper": [1.0], "n_support": 11}
>>> res = fit_baseline("map", Shift(), obs, cfg)
>>> res.positions.shape, float(res.weights[5])
((11, 1), 1.0)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pydantic
from jaxtyping import Float

from cryosip.baselines.mixture import GaussianMixtureX
from cryosip.baselines.reweighting import PerImageMAP, Reweighting
from cryosip.baselines.support import grid_support, trajectory_support
from cryosip.errors import InputError, from_validation
from cryosip.operators import AbstractRandomOperator, Observations

__all__ = ["METHODS", "BaselineConfig", "BaselineResult", "fit_baseline", "make_estimator"]

METHODS: tuple[str, ...] = ("reweight", "map", "gmm")


class BaselineConfig(pydantic.BaseModel):
    """Settings of the baselines (unknown keys are rejected)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    support: Literal["grid", "frames"] = "grid"
    n_support: int = pydantic.Field(100, ge=1, description="grid points per axis")
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None
    prior_concentration: float | None = pydantic.Field(None, gt=0)
    max_iter: int = pydantic.Field(1000, ge=1)
    tol: float = pydantic.Field(1e-9, ge=0)
    n_components: int = pydantic.Field(2, ge=1)
    n_grid: int = pydantic.Field(201, ge=2, description="GMM quadrature points per axis")
    batch_size: int | None = pydantic.Field(None, ge=1)
    n_draws: int = pydantic.Field(64, ge=1, description="nuisance draws if poses unknown")
    seed: int = 0


@dataclass(frozen=True)
class BaselineResult:
    """A recovered measure ``sum_m weights[m] delta(positions[m])`` and how it was found.

    ``info`` holds ``converged`` (bool), ``n_iter``, ``log_likelihood`` (final mean per
    image) where the method iterates, ``n_support`` and ``n_obs``.
    """

    method: str
    positions: Float[np.ndarray, "n_support dim"]
    weights: Float[np.ndarray, " n_support"]
    wall_time_s: float
    info: dict[str, Any] = field(default_factory=dict)


def _config(config: BaselineConfig | Mapping | None) -> BaselineConfig:
    if isinstance(config, BaselineConfig):
        return config
    try:
        return BaselineConfig(**dict(config or {}))
    except pydantic.ValidationError as err:
        raise from_validation(err, "baseline config") from None


def _box(cfg: BaselineConfig, model) -> tuple[np.ndarray, np.ndarray]:
    if model is not None:
        return np.asarray(model.lower, float), np.asarray(model.upper, float)
    if cfg.lower is None or cfg.upper is None:
        raise InputError("baseline config", "lower/upper", "the box of X (or a model)", "none")
    return np.asarray(cfg.lower, float), np.asarray(cfg.upper, float)


def _support(cfg: BaselineConfig, model) -> np.ndarray:
    if cfg.support == "frames":
        if model is None:
            raise InputError("baseline config", "support", "a path model for 'frames'", "none")
        return trajectory_support(model)
    return grid_support(*_box(cfg, model), cfg.n_support)


def make_estimator(method: str, config: BaselineConfig | Mapping | None = None, model=None):
    """The unfitted estimator of ``method`` built from the config (and model, for the box)."""
    cfg = _config(config)
    common = {"batch_size": cfg.batch_size, "n_draws": cfg.n_draws, "random_state": cfg.seed}
    if method == "reweight":
        return Reweighting(
            _support(cfg, model), cfg.prior_concentration, cfg.max_iter, cfg.tol, **common
        )
    if method == "map":
        return PerImageMAP(_support(cfg, model), **common)
    if method == "gmm":
        lo, hi = _box(cfg, model)
        return GaussianMixtureX(
            cfg.n_components, lower=lo, upper=hi, n_grid=cfg.n_grid,
            max_iter=cfg.max_iter, tol=cfg.tol, **common,
        )
    raise InputError("baseline", "method", f"one of {', '.join(METHODS)}", repr(method))


def _measure(estimator) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(estimator, GaussianMixtureX):
        return estimator.measure_()
    return estimator.support_, estimator.weights_


def _info(estimator, n_obs: int, n_support: int) -> dict[str, Any]:
    info: dict[str, Any] = {"n_obs": n_obs, "n_support": n_support, "converged": True}
    if hasattr(estimator, "n_iter_"):
        info["converged"] = bool(estimator.converged_)
        info["n_iter"] = int(estimator.n_iter_)
        info["log_likelihood"] = float(estimator.log_likelihood_history_[-1])
    if isinstance(estimator, GaussianMixtureX):
        info["means"] = estimator.means_.tolist()
        info["covariances"] = estimator.covariances_.tolist()
        info["component_weights"] = estimator.weights_.tolist()
    return info


def fit_baseline(
    method: str,
    operator: AbstractRandomOperator,
    observations: Observations,
    config: BaselineConfig | Mapping | None = None,
    model=None,
) -> BaselineResult:
    """Fit baseline ``method`` (``reweight``, ``map`` or ``gmm``) to the observations.

    ``config`` is a :class:`BaselineConfig` or a mapping of its fields; ``model`` (a
    conformation model) gives the box and, for ``support="frames"``, the frames.
    """
    estimator = make_estimator(method, config, model)
    start = time.perf_counter()
    estimator.fit(operator, observations)
    wall = time.perf_counter() - start
    positions, weights = _measure(estimator)
    info = _info(estimator, len(observations), len(weights))
    return BaselineResult(method, np.asarray(positions), np.asarray(weights), wall, info)
