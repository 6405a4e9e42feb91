"""Wasserstein metrics: exact 1-D, exact OT in d-D, closed forms, floor rate."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from cryosip.metrics import (
    finite_sample_floor,
    wasserstein_1d,
    wasserstein_1d_to_quantile,
    wasserstein_nd,
)

floats = st.floats(-10, 10, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(floats, min_size=1, max_size=9), st.lists(floats, min_size=1, max_size=9),
       st.integers(0, 10_000))
def test_w1_1d_matches_scipy_for_weighted_samples(x, y, seed):
    rng = np.random.default_rng(seed)
    wx, wy = rng.uniform(0.1, 1, len(x)), rng.uniform(0.1, 1, len(y))
    want = stats.wasserstein_distance(x, y, wx, wy)
    np.testing.assert_allclose(wasserstein_1d(np.array(x), wx, np.array(y), wy), want,
                               rtol=1e-9, atol=1e-9)


def test_w2_between_gaussians_via_quantiles_is_closed_form():
    """W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2."""
    x = 1.0 + 2.0 * stats.norm.ppf((np.arange(20_000) + 0.5) / 20_000)
    got = wasserstein_1d_to_quantile(x, None, stats.norm.ppf, p=2)
    np.testing.assert_allclose(got, np.sqrt(1.0 + 1.0), rtol=2e-3)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_nd_exact_ot_agrees_with_1d_exact(p):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 1)), rng.normal(1.0, 1.5, size=(30, 1))
    np.testing.assert_allclose(wasserstein_nd(x, None, y, None, p),
                               wasserstein_1d(x, None, y, None, p), rtol=1e-8)
    wx, wy = rng.uniform(0.2, 1, 30), rng.uniform(0.2, 1, 17)
    np.testing.assert_allclose(wasserstein_nd(x, wx, y[:17], wy, p),
                               wasserstein_1d(x, wx, y[:17], wy, p), rtol=1e-6)


def test_nd_translation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    np.testing.assert_allclose(wasserstein_nd(x, None, x + [3.0, 4.0, 0.0], None, 2), 5.0,
                               rtol=1e-9)


def test_floor_decays_like_inverse_square_root():
    rng = np.random.default_rng(2)
    sample = lambda r, n: r.standard_normal((n, 1))
    dist = lambda s: wasserstein_1d_to_quantile(s, None, stats.norm.ppf, n_grid=20_000)
    ns = np.array([100, 400, 1600, 6400])
    floors = [finite_sample_floor(sample, dist, int(n), rng, n_repeats=12)[0] for n in ns]
    slope = np.polyfit(np.log(ns), np.log(floors), 1)[0]
    np.testing.assert_allclose(slope, -0.5, atol=0.12)
