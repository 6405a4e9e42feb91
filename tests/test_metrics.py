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


# --- d-D exact transport (POT's network simplex) against closed forms and the old LP ---


def _linprog_w(x, wx, y, wy, p):
    """The transport linear program cryosip solved before POT (scipy HiGHS), kept here only
    as an independent check: min <C, P> s.t. P 1 = a, P^T 1 = b, P >= 0."""
    from scipy import optimize, sparse

    a, b = wx / wx.sum(), wy / wy.sum()
    cost = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=2) ** p
    n, m = cost.shape
    a_eq = sparse.vstack([sparse.kron(sparse.eye(n), np.ones((1, m))),
                          sparse.kron(np.ones((1, n)), sparse.eye(m))]).tocsr()
    res = optimize.linprog(cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([a, b]),
                           bounds=(0, None), method="highs")
    assert res.success
    return res.fun ** (1.0 / p)


@pytest.mark.parametrize(("p", "d"), [(1.0, 2), (2.0, 3)])
def test_nd_agrees_with_the_old_linear_program(p, d):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(23, d)), rng.normal(0.5, 1.3, size=(31, d))
    wx, wy = rng.uniform(0.1, 1, 23), rng.uniform(0.1, 1, 31)
    np.testing.assert_allclose(wasserstein_nd(x, wx, y, wy, p), _linprog_w(x, wx, y, wy, p),
                               rtol=1e-7)


def test_nd_equal_uniform_samples_is_an_assignment():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(4)
    x, y = rng.uniform(size=(200, 3)), rng.normal(size=(200, 3))
    cost = np.sum((x[:, None] - y[None]) ** 2, axis=-1)
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_allclose(wasserstein_nd(x, None, y, None, 2.0),
                               np.sqrt(cost[rows, cols].mean()), rtol=1e-9)


def test_nd_point_masses_and_two_point_closed_forms():
    a, b = np.array([[1.0, 2.0, 3.0]]), np.array([[-1.0, 0.0, 2.0]])
    np.testing.assert_allclose(wasserstein_nd(a, None, b, None, 2.0), 3.0, rtol=1e-12)
    # mass 1/4 at 0 and 3/4 at e1 against all of it at 0: W_p^p = 3/4 |e1|^p
    x = np.array([[0.0, 0.0], [1.0, 0.0]])
    for p in (1.0, 2.0):
        got = wasserstein_nd(x, np.array([0.25, 0.75]), np.zeros((1, 2)), None, p)
        np.testing.assert_allclose(got, 0.75 ** (1 / p), rtol=1e-12)


def test_nd_gaussian_monge_map_is_exact_on_samples():
    """Pairing x_i with T(x_i), T = gradient of a convex function (the Gaussian Monge map
    T(x) = m2 + A (x - m1), A symmetric positive definite), is an optimal coupling of the two
    empirical measures (cyclical monotonicity), so W2^2 = mean |x_i - T(x_i)|^2 exactly; and
    both approach the Bures-Wasserstein closed form between the Gaussians."""
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(5)
    m1, m2 = np.zeros(3), np.array([1.0, -0.5, 0.3])
    s1 = np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]])
    s2 = np.array([[0.6, -0.2, 0.1], [-0.2, 1.2, 0.0], [0.1, 0.0, 0.9]])
    r1 = np.real(sqrtm(s1))
    r1_inv = np.linalg.inv(r1)
    a = r1_inv @ np.real(sqrtm(r1 @ s2 @ r1)) @ r1_inv
    x = rng.multivariate_normal(m1, s1, size=400)
    y = m2 + (x - m1) @ a.T
    exact = np.sqrt(np.mean(np.sum((x - y) ** 2, axis=1)))
    np.testing.assert_allclose(wasserstein_nd(x, None, y, None, 2.0), exact, rtol=1e-9)
    bures = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(r1 @ s2 @ r1)))
    np.testing.assert_allclose(exact, np.sqrt(bures), rtol=0.05)


def test_nd_hundreds_of_weighted_particles_against_ten_thousand_samples():
    """300 weighted particles against 10^4 samples that are copies of them (counts
    proportional to the weights) moved by t: W2 = |t| (the size `evaluate` meets)."""
    rng = np.random.default_rng(6)
    x = rng.uniform(-3, 3, size=(300, 3))
    counts = rng.multinomial(10_000 - 300, np.full(300, 1 / 300)) + 1
    t = np.array([0.2, -0.1, 0.05])
    y = np.repeat(x, counts, axis=0) + t
    np.testing.assert_allclose(wasserstein_nd(x, counts / 10_000, y, None, 2.0),
                               np.linalg.norm(t), rtol=1e-8)


def test_nd_raises_when_the_simplex_stops_early(monkeypatch):
    from cryosip.metrics import wasserstein

    monkeypatch.setattr(wasserstein, "_MAX_ITER", 3)
    rng = np.random.default_rng(7)
    with pytest.raises(RuntimeError, match="optimal transport"):
        wasserstein_nd(rng.normal(size=(60, 2)), None, rng.normal(size=(70, 2)), None)


# --- evaluate's d-D scores (W2 to the images' true x, and the floor) for d = 2 and 3 ---


@pytest.mark.parametrize("d", [2, 3])
def test_evaluate_scores_w2_and_its_floor_in_d_dimensions(d, tmp_path):
    from pathlib import Path

    from cryosip.datasets.truth import TruthMixture
    from cryosip.pipeline.evaluate import distances_to_truth
    from cryosip.seeds import numpy_rng

    truth = TruthMixture.from_gaussians([0.6, 0.4], [[-1.0] * d, [1.0] * d], [[0.4] * d] * 2,
                                        [-3.0] * d, [3.0] * d)
    x = truth.sample(np.random.default_rng(8), 150)
    path = Path(tmp_path) / "truth.npz"
    np.savez(path, x=x, truth_spec=truth.spec_json(), lower=truth.lower, upper=truth.upper)
    t = np.full(d, 0.1)
    got = distances_to_truth(x + t, np.full(150, 1 / 150), path, seed=0)
    # every true x is scored (n_sub = N), so the recovered copy moved by t is at W2 = |t|
    assert got["n_subsample"] == 150
    np.testing.assert_allclose(got["w2"], np.linalg.norm(t), rtol=1e-9)
    # the floor: W2 between 150 fresh truth samples (stream 'floor') and the true x, here by
    # the linear program
    fresh = truth.sample(numpy_rng(0, "floor"), 150)
    np.testing.assert_allclose(got["floor"], _linprog_w(fresh, np.ones(150), x, np.ones(150), 2.0),
                               rtol=1e-6)
    capped = distances_to_truth(x, None, path, seed=0, n_subsample=100)
    assert capped["n_subsample"] == 100 and capped["w2"] > 0


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_nd_sparse_certified_path_equals_the_full_matrix(p, monkeypatch):
    """Column generation on nearest-neighbour pairs, certified by the duals, gives the
    full-matrix optimum: weighted, unequal sizes, zero-cost pairs (points in both sets) and
    zero weights; for equal uniform sizes it is also an assignment's cost."""
    from scipy.optimize import linear_sum_assignment

    from cryosip.metrics import wasserstein

    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(500, 3)), rng.normal(0.4, 1.3, size=(650, 3))
    y[:50] = x[:50]
    wx, wy = rng.uniform(0.1, 1, 500), rng.uniform(0.1, 1, 650)
    wx[:20] = 0.0
    dense = wasserstein_nd(x, wx, y, wy, p)
    u, v = rng.uniform(size=(400, 2)), rng.uniform(size=(400, 2))
    cost = np.sum((u[:, None] - v[None]) ** 2, axis=-1) ** (p / 2)
    rows, cols = linear_sum_assignment(cost)
    monkeypatch.setattr(wasserstein, "_DENSE_PAIRS", 0)
    np.testing.assert_allclose(wasserstein_nd(x, wx, y, wy, p), dense, rtol=1e-10)
    np.testing.assert_allclose(wasserstein_nd(u, None, v, None, p),
                               cost[rows, cols].mean() ** (1 / p), rtol=1e-10)
    # one neighbour each way: the first sparse optimum is not the full one, and the pairs
    # that violate the duals are added round after round until it is
    monkeypatch.setattr(wasserstein, "_NEIGHBOURS", 1)
    np.testing.assert_allclose(wasserstein_nd(x, wx, y, wy, p), dense, rtol=1e-10)


def test_nd_repeated_points_are_merged_and_give_the_assignment_cost(monkeypatch):
    """Draws from a particle measure repeat each particle many times: W2 of 3000 such draws
    against 3000 other points is the optimal assignment's cost (scipy's Hungarian method on
    the expanded points), on the sparse path too, and the solver sees the merged points."""
    from scipy.optimize import linear_sum_assignment

    from cryosip.metrics import wasserstein

    rng = np.random.default_rng(4)
    x = rng.uniform(size=(40, 2))[rng.integers(0, 40, 3000)]
    y = rng.uniform(size=(3000, 2))
    cost = np.sum((x[:, None] - y[None]) ** 2, axis=-1)
    rows, cols = linear_sum_assignment(cost)
    expected = np.sqrt(cost[rows, cols].mean())
    seen = []
    emd2 = wasserstein._emd2
    monkeypatch.setattr(wasserstein, "_emd2", lambda a, b, c: seen.append(len(a)) or emd2(a, b, c))
    np.testing.assert_allclose(wasserstein_nd(x, None, y, None, 2.0), expected, rtol=1e-9)
    assert seen == [len(np.unique(x, axis=0))]
    monkeypatch.setattr(wasserstein, "_DENSE_PAIRS", 0)
    np.testing.assert_allclose(wasserstein_nd(x, None, y, None, 2.0), expected, rtol=1e-9)
