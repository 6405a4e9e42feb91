"""Discretize-then-optimize baselines: closed forms, consistency with the true support,
the per-image-MAP bias at low SNR, the Dirichlet prior, the Gaussian mixture in x."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.optimize import brentq
from scipy.stats import wasserstein_distance

from cryosip.baselines import (
    BaselineConfig,
    GaussianMixtureX,
    PerImageMAP,
    Reweighting,
    em_weights,
    fit_baseline,
    grid_support,
    log_likelihood_matrix,
    mixture_log_likelihood,
    responsibilities,
    trajectory_support,
)
from cryosip.errors import InputError
from cryosip.operators import AbstractRandomOperator, Observations


class LinearShift(AbstractRandomOperator):
    """``y = A x + w + sigma eps`` with ``A`` a fixed (2, 1) matrix and shift ``w ~ N(0, I)``."""

    noise_std: float = 0.5

    def sample_nuisance(self, key, n_draws):
        return jax.random.normal(key, (n_draws, 2))

    def clean(self, x, nuisance):
        return jnp.array([1.0, -0.5]) * x[0] + nuisance


def _simulate(rng, op, x, nuisance=True):
    """Observations of ``x [N, 1]`` through ``op`` with known (or dropped) shifts."""
    w = rng.standard_normal((len(x), 2))
    y = np.asarray(x) * np.array([1.0, -0.5]) + w + op.noise_std * rng.standard_normal((len(x), 2))
    return Observations(jnp.asarray(y), jnp.asarray(w) if nuisance else None)


def _gauss_loglik(y, support, sigma):
    return -0.5 * (y[:, None] - support[None, :]) ** 2 / sigma**2


# ---- EM on closed forms -------------------------------------------------------------------


def test_em_two_points_solves_score_equation():
    """MLE of w in w p1 + (1-w) p2 is the root of sum_n (p1-p2)/(w p1 + (1-w) p2) = 0."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 1.0, size=(300, 2))
    p[:, 0] *= np.where(rng.random(300) < 0.6, 2.0, 0.5)
    score = lambda w: np.sum((p[:, 0] - p[:, 1]) / (w * p[:, 0] + (1 - w) * p[:, 1]))
    w_star = brentq(score, 1e-9, 1 - 1e-9)
    fit = em_weights(np.log(p), tol=1e-14, max_iter=20000)
    assert fit.converged
    np.testing.assert_allclose(fit.weights[0], w_star, atol=1e-6)


def test_em_exact_identification_gives_frequencies():
    rng = np.random.default_rng(1)
    labels = rng.choice(4, p=[0.1, 0.2, 0.3, 0.4], size=500)
    loglik = np.where(np.arange(4)[None, :] == labels[:, None], 0.0, -2000.0)
    fit = em_weights(loglik)
    np.testing.assert_allclose(fit.weights, np.bincount(labels, minlength=4) / 500, atol=1e-12)


def test_em_invariant_to_row_shifts_and_monotone():
    rng = np.random.default_rng(2)
    loglik = rng.normal(0, 3, size=(200, 6))
    shifted = loglik + rng.normal(0, 500, size=(200, 1))
    a, b = em_weights(loglik, max_iter=300, tol=0), em_weights(shifted, max_iter=300, tol=0)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-10)
    assert np.all(np.diff(a.log_likelihood_history) >= -1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 8))
def test_em_history_nondecreasing_and_on_simplex(seed, k):
    loglik = np.random.default_rng(seed).normal(0, 5, size=(40, k))
    fit = em_weights(loglik, max_iter=50, tol=0)
    assert np.all(np.diff(fit.log_likelihood_history) >= -1e-10)
    np.testing.assert_allclose(fit.weights.sum(), 1.0, atol=1e-12)
    assert np.all(fit.weights >= 0)
    np.testing.assert_allclose(
        fit.log_likelihood_history[-1], mixture_log_likelihood(loglik, fit.weights), atol=1e-12
    )


def test_underflowing_rows_use_full_logsumexp():
    """A row whose only non-negligible support point has zero weight is still finite."""
    loglik = np.array([[0.0, -1000.0], [0.0, 0.0]])
    weights = np.array([0.0, 1.0])
    np.testing.assert_allclose(mixture_log_likelihood(loglik, weights), (-1000.0 + 0.0) / 2)
    gamma = responsibilities(loglik, weights)
    np.testing.assert_allclose(gamma, [[0.0, 1.0], [0.0, 1.0]], atol=1e-300)
    fit = em_weights(loglik, init=weights, max_iter=3)
    np.testing.assert_allclose(fit.weights, [0.0, 1.0])


# ---- Dirichlet prior ----------------------------------------------------------------------


def test_dirichlet_closed_form_and_direction():
    labels = np.repeat([0, 1, 2], [70, 25, 5])
    loglik = np.where(np.arange(3)[None, :] == labels[:, None], 0.0, -2000.0)
    counts = np.array([70.0, 25.0, 5.0])
    mle = Reweighting(np.arange(3.0)).fit_loglik(loglik).weights_
    for alpha in (3.0, 0.5):
        w = Reweighting(np.arange(3.0), prior_concentration=alpha).fit_loglik(loglik).weights_
        expected = (counts + alpha - 1) / (100 + 3 * (alpha - 1))
        np.testing.assert_allclose(w, expected, atol=1e-10)
    uniform = np.full(3, 1 / 3)
    smooth = Reweighting(np.arange(3.0), prior_concentration=20.0).fit_loglik(loglik).weights_
    assert np.abs(smooth - uniform).sum() < np.abs(mle - uniform).sum() - 0.1
    sparse = Reweighting(np.arange(3.0), prior_concentration=1e-3).fit_loglik(loglik).weights_
    assert sparse[2] < mle[2]


def test_dirichlet_sparse_prior_can_zero_a_weight():
    """99 images identify point 0, one leans to point 1: the MLE keeps w_1 ~ 1e-2, but
    there S_1 < 1 - alpha, so the sparse MAP sets w_1 = 0."""
    loglik = np.vstack([np.tile([0.0, -2000.0], (99, 1)), [[-6.0, 0.0]]])
    w = Reweighting([0.0, 1.0], prior_concentration=1e-3).fit_loglik(loglik).weights_
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-12)
    mle = Reweighting([0.0, 1.0], max_iter=2000).fit_loglik(loglik).weights_
    assert mle[1] > 1e-3


# ---- reweighting with the true support, through an operator -------------------------------


def _fisher_std(loglik, w):
    """Asymptotic standard errors of the weight MLE from the observed information."""
    p = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    score = (p[:, :-1] - p[:, -1:]) / (p @ w)[:, None]
    cov = np.linalg.inv(score.T @ score)
    se_free = np.sqrt(np.diag(cov))
    se_last = np.sqrt(np.ones(len(w) - 1) @ cov @ np.ones(len(w) - 1))
    return np.append(se_free, se_last)


def test_reweighting_true_support_recovers_weights_within_standard_error():
    rng = np.random.default_rng(3)
    op = LinearShift(noise_std=0.5)
    support = np.array([[-1.0], [0.0], [1.5]])
    true_w = np.array([0.2, 0.5, 0.3])
    x = support[rng.choice(3, p=true_w, size=3000)]
    obs = _simulate(rng, op, x)
    rw = Reweighting(support, tol=1e-12, max_iter=5000).fit(op, obs)
    assert rw.converged_
    loglik = log_likelihood_matrix(op, obs, support)
    se = _fisher_std(loglik, rw.weights_)
    assert np.all(se < 0.03)
    np.testing.assert_array_less(np.abs(rw.weights_ - true_w), 4 * se)


def test_log_likelihood_matrix_matches_formula_and_ignores_block_sizes():
    rng = np.random.default_rng(4)
    op = LinearShift(noise_std=0.7)
    obs = _simulate(rng, op, rng.uniform(-1, 1, size=(37, 1)))
    support = np.linspace(-1, 1, 9)[:, None]
    mean = support[None, :, :] * np.array([1.0, -0.5]) + np.asarray(obs.nuisance)[:, None, :]
    resid = np.sum((np.asarray(obs.values)[:, None, :] - mean) ** 2, axis=-1)
    expected = -0.5 * resid / 0.49 - np.log(2 * np.pi * 0.49)
    a = log_likelihood_matrix(op, obs, support)
    b = log_likelihood_matrix(op, obs, support, batch_size=5, support_batch_size=4)
    np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


def test_marginal_likelihood_monte_carlo_matches_analytic():
    """Unknown shift w ~ N(0, I): p(y|x) = N(y; A x, (1 + s^2) I) (MC with many draws)."""
    rng = np.random.default_rng(5)
    op = LinearShift(noise_std=0.5)
    obs = _simulate(rng, op, rng.uniform(-1, 1, size=(20, 1)), nuisance=False)
    support = np.linspace(-1, 1, 5)[:, None]
    var = 1.0 + 0.25
    resid = np.sum((np.asarray(obs.values)[:, None, :] - support * np.array([1.0, -0.5])) ** 2, -1)
    expected = -0.5 * resid / var - np.log(2 * np.pi * var)
    n_draws = 4096
    got = log_likelihood_matrix(op, obs, support, key=jax.random.key(0), n_draws=n_draws)
    # Monte Carlo error of log mean_b p(y|x, w_b): sd ~ sqrt(v / B) with the relative variance
    # v = E p^2 / (E p)^2 - 1 of p = N(y; A x + w, s^2), w ~ N(0, I); per axis
    # E p^2 = N(r; 0, 1 + s^2/2) / (2 sqrt(pi) s) (as N(z; 0, s^2)^2 = N(z; 0, s^2/2) / (2
    # sqrt(pi) s)) and E p = N(r; 0, 1 + s^2), r the residual. Bound: 5 sd + the bias v/(2B)
    # + float32 rounding.
    s2 = 0.25
    r = np.asarray(obs.values)[:, None, :] - support * np.array([1.0, -0.5])
    ratio = (stats.norm.pdf(r, 0, np.sqrt(1 + s2 / 2)) / (2 * np.sqrt(np.pi * s2))
             / stats.norm.pdf(r, 0, np.sqrt(1 + s2)) ** 2)
    v = np.prod(ratio, axis=-1) - 1
    bound = 5 * np.sqrt(v / n_draws) + v / (2 * n_draws) + 1e-4
    assert np.all(np.abs(got - expected) <= bound), np.max(np.abs(got - expected) / bound)
    assert np.mean(np.abs(got - expected)) < 0.05
    with pytest.raises(ValueError, match="key"):
        log_likelihood_matrix(op, obs, support)


def test_unknown_nuisance_uses_the_operators_marginal_and_recovers_weights():
    """RandomAffineOperator (gain and offset unknown) has its own quadrature marginal."""
    from cryosip.problems.operators import RandomAffineOperator

    op = RandomAffineOperator(noise_std=0.2)
    rng = np.random.default_rng(9)
    x = rng.choice([-1.0, 1.0], p=[0.3, 0.7], size=2000)
    a = rng.uniform(op.gain_low, op.gain_high, 2000)
    y = a * x + op.offset_std * rng.standard_normal(2000) + 0.2 * rng.standard_normal(2000)
    obs = Observations(jnp.asarray(y[:, None]))
    support = np.array([[-1.0], [0.0], [1.0]])
    got = log_likelihood_matrix(op, obs, support, batch_size=300, key=jax.random.key(1))
    direct = op.log_marginal_likelihood_grid(obs.values, jnp.asarray(support), None, 0)
    np.testing.assert_allclose(got, np.asarray(direct), rtol=1e-5, atol=1e-5)
    rw = Reweighting(support, random_state=0).fit(op, obs)
    np.testing.assert_allclose(rw.weights_, [0.3, 0.0, 0.7], atol=0.03)


# ---- per-image MAP: biased at low SNR, consistent at high SNR ----------------------------


def _two_point_case(sigma, n=4000, seed=6):
    rng = np.random.default_rng(seed)
    x = rng.choice([0.0, 1.0], p=[0.7, 0.3], size=n)
    y = x + sigma * rng.standard_normal(n)
    support = grid_support(0.0, 1.0, 21)[:, 0]
    loglik = _gauss_loglik(y, support, sigma)
    rw = Reweighting(support, tol=1e-10, max_iter=3000).fit_loglik(loglik)
    mp = PerImageMAP(support).fit_loglik(loglik)
    empirical = [np.mean(x == 0.0), np.mean(x == 1.0)]
    w1 = lambda w: wasserstein_distance(support, [0.0, 1.0], w, empirical)
    return w1(rw.weights_), w1(mp.weights_), mp


def test_per_image_map_biased_at_low_snr_but_reweighting_is_not():
    w1_rw, w1_map, mp = _two_point_case(sigma=0.5)
    assert w1_map > 0.1
    assert w1_rw < 0.03
    assert w1_map > 4 * w1_rw
    # over-dispersed: MAP mass piles on the box edges and in between the two states
    assert mp.weights_[1:-1].sum() > 0.3


def test_per_image_map_and_reweighting_agree_at_high_snr():
    """W1 here is to the empirical measure of the true x (no sampling floor)."""
    w1_rw, w1_map, mp = _two_point_case(sigma=0.01)
    assert w1_map < 0.002
    assert w1_rw < 0.002
    np.testing.assert_allclose(mp.weights_[[0, -1]], [0.7, 0.3], atol=0.03)


def test_per_image_map_assignments_are_argmax():
    loglik = np.array([[0.0, 1.0, -1.0], [2.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    mp = PerImageMAP(np.arange(3.0)).fit_loglik(loglik)
    np.testing.assert_array_equal(mp.assignments_, [1, 0, 2])
    np.testing.assert_allclose(mp.weights_, [1 / 3, 1 / 3, 1 / 3])


# ---- Gaussian mixture in x ----------------------------------------------------------------


def test_gmm_recovers_two_components_through_noise():
    """Truth 0.35 N(0.3, 0.05^2) + 0.65 N(0.7, 0.07^2); images y = x + N(0, 0.1^2)."""
    rng = np.random.default_rng(7)
    n = 4000
    first = rng.random(n) < 0.35
    x = np.where(first, rng.normal(0.3, 0.05, n), rng.normal(0.7, 0.07, n))
    y = x + 0.1 * rng.standard_normal(n)
    grid = np.linspace(-0.2, 1.2, 71)[:, None]
    gm = GaussianMixtureX(2, grid=grid, random_state=0, tol=1e-9).fit_loglik(
        _gauss_loglik(y, grid[:, 0], 0.1)
    )
    order = np.argsort(gm.means_[:, 0])
    np.testing.assert_allclose(gm.means_[order, 0], [0.3, 0.7], atol=0.02)
    np.testing.assert_allclose(gm.weights_[order], [0.35, 0.65], atol=0.04)
    np.testing.assert_allclose(np.sqrt(gm.covariances_[order, 0, 0]), [0.05, 0.07], atol=0.02)
    positions, weights = gm.measure_()
    assert positions.shape == (71, 1)
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-12)
    assert np.all(np.diff(gm.log_likelihood_history_) >= -1e-6)


# ---- supports, entry point ----------------------------------------------------------------


def test_grid_and_trajectory_support():
    g = grid_support([0.0, -1.0], [1.0, 1.0], 3)
    assert g.shape == (9, 2)
    np.testing.assert_allclose(g[:3], [[0.0, -1.0], [0.0, 0.0], [0.0, 1.0]])

    class FakePath:
        lower, upper, n_frames = np.array([0.0]), np.array([1.0]), 98

    frames = trajectory_support(FakePath())
    assert frames.shape == (98, 1)
    np.testing.assert_allclose(frames[[0, 1, -1], 0], [0.0, 1 / 97, 1.0])
    class FakeModes:  # a model that carries its frames' coordinates (adk-modes)
        frames_x = np.arange(6.0).reshape(3, 2)

    np.testing.assert_array_equal(trajectory_support(FakeModes()), FakeModes.frames_x)
    with pytest.raises(InputError, match="frames"):
        trajectory_support(object())


def test_trajectory_support_of_a_path_model_hits_its_frames():
    from cryosip.structures.path import PathModel

    frames = np.zeros((5, 2, 3))
    frames[:, 1, 0] = np.arange(5.0) ** 2
    model = PathModel.from_frames(frames, np.ones(2), np.ones(2), align=False)
    xs = trajectory_support(model)
    np.testing.assert_allclose(xs[:, 0], np.linspace(0, 1, 5))
    got = [float(model.structure_at(jnp.asarray(x)).positions_angstrom[1, 0]) for x in xs]
    np.testing.assert_allclose(got, np.arange(5.0) ** 2, atol=1e-5)


@pytest.mark.parametrize("method", ["reweight", "map", "gmm"])
def test_fit_baseline_all_methods(method):
    rng = np.random.default_rng(8)
    op = LinearShift(noise_std=0.3)
    obs = _simulate(rng, op, rng.choice([0.25, 0.75], size=(400, 1)))
    cfg = {"lower": [0.0], "upper": [1.0], "n_support": 21, "n_grid": 51, "max_iter": 300}
    start = time.perf_counter()
    res = fit_baseline(method, op, obs, cfg)
    elapsed = time.perf_counter() - start
    # seconds of the fit itself: positive and within the time this call took
    assert res.method == method and 0 < res.wall_time_s <= elapsed
    assert res.positions.shape[1] == 1 and res.positions.shape[0] == res.weights.shape[0]
    np.testing.assert_allclose(res.weights.sum(), 1.0, atol=1e-9)
    mean = float(res.weights @ res.positions[:, 0])
    np.testing.assert_allclose(mean, 0.5, atol=0.08)
    assert res.info["n_obs"] == 400


def test_fit_baseline_rejects_bad_input():
    op, obs = LinearShift(), Observations(jnp.zeros((3, 2)), jnp.zeros((3, 2)))
    with pytest.raises(InputError, match="method"):
        fit_baseline("bogus", op, obs, {"lower": [0.0], "upper": [1.0]})
    with pytest.raises(InputError, match="n_suport"):
        fit_baseline("map", op, obs, {"n_suport": 3})
    with pytest.raises(InputError, match="lower"):
        fit_baseline("map", op, obs, BaselineConfig())
    with pytest.raises(InputError, match="frames"):
        fit_baseline("reweight", op, obs, {"support": "frames"})
