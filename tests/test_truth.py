"""Truth mixtures: normalisation, truncation, sampling law, weights, quantiles, product form."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from cryosip.datasets.truth import TruthMixture

GAUSS = {"kind": "gaussian", "weight": 0.6, "mean": [0.2], "std": [0.08]}
UNIF = {"kind": "uniform", "weight": 0.1, "low": [0.0], "high": [1.0]}
BETA = {"kind": "beta", "weight": 0.3, "a": [8.0], "b": [2.0]}


@pytest.fixture
def issue_truth():
    return TruthMixture.from_specs([GAUSS, UNIF, BETA], [0.0], [1.0])


def test_density_integrates_to_one_and_vanishes_outside(issue_truth):
    grid = np.linspace(-0.2, 1.2, 140_001)
    p = issue_truth.density(grid[:, None])
    np.testing.assert_allclose(np.trapezoid(p, grid), 1.0, atol=1e-4)
    assert np.all(p[(grid < 0) | (grid > 1)] == 0.0)


def test_samples_follow_the_cdf(issue_truth):
    """Kolmogorov-Smirnov distance below the 0.1% critical value."""
    x = issue_truth.sample(np.random.default_rng(0), 20_000)[:, 0]
    ks = stats.kstest(x, lambda v: issue_truth.cdf(v[:, None]))
    assert ks.statistic < 1.95 / np.sqrt(len(x))


def test_truncated_gaussian_moments():
    """A normal centred at the edge, truncated to [0, 1]: half-normal mean s sqrt(2/pi)."""
    truth = TruthMixture.from_specs([{"kind": "gaussian", "mean": [0.0], "std": [0.1]}],
                                    [0.0], [1.0])
    x = truth.sample(np.random.default_rng(1), 40_000)[:, 0]
    assert x.min() >= 0.0
    se = 0.1 * np.sqrt(1 - 2 / np.pi) / np.sqrt(len(x))
    np.testing.assert_allclose(x.mean(), 0.1 * np.sqrt(2 / np.pi), atol=4 * se)


def test_weights_are_normalised_after_truncation():
    """Two disjoint uniforms with weights 3 and 1: fractions 0.75 / 0.25 (4 SE)."""
    truth = TruthMixture.from_specs(
        [{"kind": "uniform", "weight": 3.0, "low": [-5.0], "high": [0.5]},  # cut to [0, 0.5]
         {"kind": "uniform", "weight": 1.0, "low": [0.5], "high": [1.0]}], [0.0], [1.0])
    np.testing.assert_allclose(truth.weights, [0.75, 0.25])
    x = truth.sample(np.random.default_rng(2), 10_000)[:, 0]
    np.testing.assert_allclose(np.mean(x < 0.5), 0.75, atol=4 * np.sqrt(0.75 * 0.25 / 1e4))
    np.testing.assert_allclose(truth.density(np.array([[0.25], [0.75]])), [1.5, 0.5])


def test_quantile_inverts_cdf(issue_truth):
    q = np.linspace(0.001, 0.999, 41)
    np.testing.assert_allclose(issue_truth.cdf(issue_truth.quantile(q)[:, None]), q, atol=1e-6)
    ref = issue_truth.reference_sample(None, 1000)
    assert ref.shape == (1000, 1) and np.all(np.diff(ref[:, 0]) >= 0)


def test_beta_maps_onto_the_box():
    truth = TruthMixture.from_specs([{"kind": "beta", "a": [2.0], "b": [6.0]}], [-3.0], [3.0])
    x = truth.sample(np.random.default_rng(3), 20_000)[:, 0]
    mean = -3.0 + 6.0 * 2.0 / 8.0
    sd = 6.0 * np.sqrt(2.0 * 6.0 / (64.0 * 9.0))
    np.testing.assert_allclose(x.mean(), mean, atol=4 * sd / np.sqrt(len(x)))


def test_two_dimensional_product_form():
    truth = TruthMixture.from_specs(
        [{"kind": "gaussian", "weight": 1, "mean": [0.3, 0.7], "std": [0.1, 0.2]},
         {"kind": "beta", "weight": 1, "a": [2.0, 3.0], "b": [5.0, 1.5]}], [0, 0], [1, 1])
    g = np.linspace(0, 1, 801)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    p = truth.density(np.stack([xx.ravel(), yy.ravel()], 1)).reshape(xx.shape)
    np.testing.assert_allclose(np.trapezoid(np.trapezoid(p, g, axis=1), g), 1.0, atol=2e-3)
    marg = np.trapezoid(p, g, axis=1)
    np.testing.assert_allclose(marg[100:700], truth.marginal_density(g[100:700], 0), rtol=1e-3)
    x = truth.sample(np.random.default_rng(4), 5000)
    assert x.shape == (5000, 2) and np.all((x >= 0) & (x <= 1))


def test_bad_specs():
    with pytest.raises(ValidationError):
        TruthMixture.from_specs([{"kind": "gaussian", "mean": [0.1], "std": [-1.0]}], [0], [1])
    with pytest.raises(ValidationError):
        TruthMixture.from_specs([{"kind": "cauchy", "loc": [0.1]}], [0], [1])
    with pytest.raises(ValueError, match="dimensions"):
        TruthMixture.from_specs([GAUSS], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="misses the box"):
        TruthMixture.from_specs([{"kind": "uniform", "low": [2.0], "high": [3.0]}], [0], [1])
