r"""Known truths over conformations: mixtures truncated to a box, for the toy problems and
the simulated data sets alike (one implementation; ``cryosip.datasets.truth`` re-exports it).

A truth is a mixture ``p(x) = sum_k w_k p_k(x)`` (weights normalised to sum 1) of
components in product form over the ``dim`` coordinates, each restricted to the model's
box ``[lower, upper]``:

* ``gaussian`` (``mean``, ``std`` per dimension): the normal truncated to the box,
  ``p_k(x) = prod_j phi((x_j - m_j)/s_j) / (s_j Z_j)`` with ``Z_j`` the normal mass in
  ``[lower_j, upper_j]`` (sampled exactly by the inverse CDF of the truncated normal, the
  same law as rejection sampling);
* ``uniform`` (``low``, ``high``): uniform on ``[low, high]`` intersected with the box;
* ``beta`` (``a``, ``b``): ``Beta(a, b)`` on ``[0, 1]`` mapped affinely onto the box,
  ``x_j = lower_j + (upper_j - lower_j) u_j``.

The weight of a component is its mass after truncation (each component is renormalised
on the box first). In 1-D :meth:`TruthMixture.quantile` inverts the CDF (fine grid), and
:meth:`TruthMixture.reference_sample` gives the quantiles at ``(i + 1/2)/n`` (d = 1) or
an i.i.d. sample (d > 1): the reference for W1/W2 metrics.

>>> truth = TruthMixture.from_specs(
...     [{"kind": "gaussian", "weight": 0.6, "mean": [0.2], "std": [0.08]},
...      {"kind": "uniform", "weight": 0.4, "low": [0.5], "high": [1.0]}], [0.0], [1.0])
>>> x = truth.sample(np.random.default_rng(0), 1000)
>>> x.shape, bool(np.all((x >= 0) & (x <= 1)))
((1000, 1), True)
>>> round(float(truth.cdf(np.array([[0.5]]))[0]), 3)
0.6
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, TypeAdapter, model_validator
from scipy import stats

__all__ = ["BetaComponent", "Component", "GaussianComponent", "TruthMixture",
           "UniformComponent"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class _Component(BaseModel):
    """Shared part of a component: ``kind``, ``weight`` and two per-dimension lists
    (``_pair``) of the same length."""

    model_config = _FROZEN
    weight: PositiveFloat = 1.0
    _pair: ClassVar[tuple[str, str]]

    @model_validator(mode="after")
    def _lengths(self):
        first, second = (getattr(self, name) for name in self._pair)
        if len(first) != len(second):
            raise ValueError(f"{self._pair[0]} and {self._pair[1]} need the same length")
        return self


class GaussianComponent(_Component):
    """``{kind: gaussian, weight, mean: [...], std: [...]}`` (per-dimension lists)."""

    kind: Literal["gaussian"]
    mean: list[float]
    std: list[PositiveFloat]
    _pair = ("mean", "std")


class UniformComponent(_Component):
    """``{kind: uniform, weight, low: [...], high: [...]}``."""

    kind: Literal["uniform"]
    low: list[float]
    high: list[float]
    _pair = ("low", "high")

    @model_validator(mode="after")
    def _order(self):
        if any(h <= lo for lo, h in zip(self.low, self.high, strict=False)):
            raise ValueError("low < high in every dimension")
        return self


class BetaComponent(_Component):
    """``{kind: beta, weight, a: [...], b: [...]}`` on the box (mapped from [0, 1])."""

    kind: Literal["beta"]
    a: list[PositiveFloat]
    b: list[PositiveFloat]
    _pair = ("a", "b")


Component = Annotated[GaussianComponent | UniformComponent | BetaComponent,
                      Field(discriminator="kind")]
_COMPONENTS = TypeAdapter(list[Component])


def _marginals(component, lower: np.ndarray, upper: np.ndarray) -> list:
    """Frozen scipy 1-D distributions of one component, truncated to the box."""
    if isinstance(component, GaussianComponent):
        return [stats.truncnorm((lo - m) / s, (hi - m) / s, loc=m, scale=s)
                for m, s, lo, hi in zip(component.mean, component.std, lower, upper,
                                             strict=True)]
    if isinstance(component, UniformComponent):
        lows, highs = np.maximum(component.low, lower), np.minimum(component.high, upper)
        if np.any(highs <= lows):
            raise ValueError(f"uniform [{component.low}, {component.high}] misses the box")
        return [stats.uniform(lo, hi - lo) for lo, hi in zip(lows, highs, strict=True)]
    return [stats.beta(a, b, loc=lo, scale=hi - lo)
            for a, b, lo, hi in zip(component.a, component.b, lower, upper, strict=True)]


def _dims(component) -> int:
    return len(getattr(component, "mean", None) or getattr(component, "low", None)
               or component.a)


class TruthMixture:
    """A weighted mixture of product-form components on the box (module docstring)."""

    def __init__(self, components: Sequence, lower: Sequence[float], upper: Sequence[float]):
        self.lower = np.asarray(lower, dtype=float)
        self.upper = np.asarray(upper, dtype=float)
        self.components = tuple(components)
        if not self.components:
            raise ValueError("the truth needs at least one component")
        for k, c in enumerate(self.components):
            if _dims(c) != self.dim:
                raise ValueError(f"component {k} has {_dims(c)} dimensions, the model {self.dim}")
        w = np.array([c.weight for c in self.components], dtype=float)
        self.weights = w / w.sum()
        self._marginals = [_marginals(c, self.lower, self.upper) for c in self.components]

    @classmethod
    def from_specs(cls, specs: Sequence[dict], lower, upper) -> TruthMixture:
        """From plain mappings (``{kind: ..., weight: ..., ...}``), validated."""
        return cls(_COMPONENTS.validate_python(list(specs)), lower, upper)

    @classmethod
    def from_gaussians(cls, weights: Sequence[float], means: Sequence[Sequence[float]],
                       stds: Sequence[Sequence[float]], lower, upper) -> TruthMixture:
        """``sum_k w_k N(means_k, diag(stds_k^2))`` truncated to the box (``means, stds``
        of shape ``[n_components, dim]``), e.g. a toy problem's truth.

        >>> g = TruthMixture.from_gaussians([1.0], [[0.0]], [[1.0]], [-9.0], [9.0])
        >>> round(float(g.quantile(np.array([0.975]))[0]), 2)
        1.96
        """
        return cls([GaussianComponent(kind="gaussian", weight=float(w), mean=list(map(float, m)),
                                      std=list(map(float, s)))
                    for w, m, s in zip(weights, means, stds, strict=True)], lower, upper)

    @classmethod
    def from_json(cls, spec_json: str, lower, upper) -> TruthMixture:
        """From :meth:`spec_json` text (as stored in ``truth.npz``: ``truth_spec``)."""
        return cls(_COMPONENTS.validate_json(spec_json), lower, upper)

    @classmethod
    def from_npz(cls, path) -> TruthMixture:
        """The truth of a simulated data set (its ``truth.npz``)."""
        with np.load(path) as data:
            return cls.from_json(str(data["truth_spec"]), data["lower"], data["upper"])

    @property
    def dim(self) -> int:
        return int(self.lower.shape[0])

    def spec_json(self) -> str:
        """The components as a JSON list (stored with simulated data sets)."""
        return _COMPONENTS.dump_json(list(self.components)).decode()

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` i.i.d. draws, shape ``(n, dim)``."""
        which = rng.choice(len(self.components), size=n, p=self.weights)
        out = np.empty((n, self.dim))
        for k, marginals in enumerate(self._marginals):
            idx = np.flatnonzero(which == k)
            for j, dist in enumerate(marginals):
                out[idx, j] = dist.rvs(size=len(idx), random_state=rng)
        return np.clip(out, self.lower, self.upper)

    def density(self, x: np.ndarray) -> np.ndarray:
        """``p(x)`` for ``x`` of shape ``(n, dim)``; zero outside the box."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        total = np.zeros(len(x))
        for w, marginals in zip(self.weights, self._marginals, strict=True):
            total += w * np.prod([d.pdf(x[:, j]) for j, d in enumerate(marginals)], axis=0)
        inside = np.all((x >= self.lower) & (x <= self.upper), axis=1)
        return np.where(inside, total, 0.0)

    def marginal_density(self, values: np.ndarray, axis: int = 0) -> np.ndarray:
        """Density of coordinate ``axis`` at ``values`` (shape ``(n,)``)."""
        values = np.asarray(values, dtype=float)
        return sum(w * m[axis].pdf(values) for w, m in zip(self.weights, self._marginals,
                                                            strict=True))

    def cdf(self, x: np.ndarray, axis: int = 0) -> np.ndarray:
        """Marginal CDF of coordinate ``axis`` at ``x[:, axis]`` (the CDF itself when d = 1)."""
        v = np.atleast_2d(np.asarray(x, dtype=float))[:, axis]
        return sum(w * m[axis].cdf(v) for w, m in zip(self.weights, self._marginals,
                                                       strict=True))

    def quantile(self, q: np.ndarray, axis: int = 0) -> np.ndarray:
        """Marginal quantiles of coordinate ``axis``: the CDF inverted by linear interpolation
        on a grid of 2^16 + 1 points of the box (error ~ (box/2^16)^2 |p'|/p)."""
        grid = np.linspace(self.lower[axis], self.upper[axis], 2**16 + 1)
        points = np.zeros((len(grid), self.dim))
        points[:, axis] = grid
        cdf = np.maximum.accumulate(self.cdf(points, axis))
        return np.interp(np.asarray(q, dtype=float), cdf, grid)

    def reference_sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``(n, dim)``: quantiles at ``(i + 1/2)/n`` when d = 1, else ``sample(rng, n)``."""
        if self.dim == 1:
            return self.quantile((np.arange(n) + 0.5) / n)[:, None]
        return self.sample(rng, n)
