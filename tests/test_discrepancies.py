"""Kernels, MMD and KL: closed forms, properties, blocked = direct, large feature dimension."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryosip.discrepancies import (
    EnergyKernel,
    GaussianKernel,
    InverseMultiquadricKernel,
    MultiGaussianKernel,
    conditional_mmd2,
    gaussian_kl,
    gaussian_mmd2_closed_form,
    kernel_sum,
    median_bandwidth,
    mmd2,
    negative_log_likelihood,
    noise_marginalised_mmd2,
    responsibilities,
)

KERNELS = [GaussianKernel(1.3), MultiGaussianKernel(jnp.array([0.5, 2.0])),
           InverseMultiquadricKernel(1.0), EnergyKernel()]


def _uniform(n):
    return jnp.full((n,), 1.0 / n)


def test_mmd2_between_gaussians_matches_closed_form():
    n, h = 3000, 1.5
    kx, ky = jax.random.split(jax.random.key(0))
    cov_q = jnp.array([[1.0, 0.3], [0.3, 0.5]])
    x = jax.random.normal(kx, (n, 2))
    y = jnp.array([0.7, -0.2]) + jax.random.normal(ky, (n, 2)) @ jnp.linalg.cholesky(cov_q).T
    exact = gaussian_mmd2_closed_form(jnp.zeros(2), jnp.eye(2), jnp.array([0.7, -0.2]),
                                      cov_q, h)
    estimate = mmd2(x, _uniform(n), y, _uniform(n), GaussianKernel(h), estimator="u",
                    block_size=512)
    np.testing.assert_allclose(estimate, exact, rtol=0.1)
    assert 0.05 < float(exact) < 0.3


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(range(len(KERNELS))))
def test_mmd2_properties(seed, which):
    kernel = KERNELS[which]
    kx, ky = jax.random.split(jax.random.key(seed))
    x, y = jax.random.normal(kx, (9, 3)), 0.5 + jax.random.normal(ky, (7, 3))
    wx, wy = _uniform(9), _uniform(7)
    d = jax.jit(mmd2)
    np.testing.assert_allclose(d(x, wx, x, wx, kernel), 0.0, atol=1e-5)
    np.testing.assert_allclose(d(x, wx, y, wy, kernel), d(y, wy, x, wx, kernel),
                               rtol=1e-5, atol=1e-6)
    assert float(d(x, wx, y, wy, kernel)) >= -1e-6


def test_u_statistic_is_v_without_diagonal():
    x = jax.random.normal(jax.random.key(1), (10, 2))
    y = jax.random.normal(jax.random.key(2), (12, 2))
    kernel = GaussianKernel(1.0)
    k = lambda a, b: np.exp(-0.5 * np.sum((a[:, None] - b[None]) ** 2, -1))
    kxx, kyy, kxy = k(np.asarray(x), np.asarray(x)), k(np.asarray(y), np.asarray(y)), None
    kxy = k(np.asarray(x), np.asarray(y))
    u = ((kxx.sum() - 10) / 90 + (kyy.sum() - 12) / 132 - 2 * kxy.mean())
    got = mmd2(x, _uniform(10), y, _uniform(12), kernel, estimator="u")
    np.testing.assert_allclose(got, u, rtol=1e-4)


def test_blocked_kernel_sum_and_gradient_equal_direct():
    x = jax.random.normal(jax.random.key(3), (53, 3))
    y = jax.random.normal(jax.random.key(4), (31, 3))
    wx, wy = jax.nn.softmax(x[:, 0]), _uniform(31)
    kernel = MultiGaussianKernel(jnp.array([0.5, 1.0]))
    f = lambda a, block: kernel_sum(a, wx, y, wy, kernel, block)
    value = jax.jit(f, static_argnums=1)
    grad = jax.jit(jax.grad(f), static_argnums=1)
    np.testing.assert_allclose(value(x, 8), value(x, 1024), rtol=1e-5)
    np.testing.assert_allclose(grad(x, 8), grad(x, 1024), rtol=1e-4, atol=1e-7)


def test_large_feature_dimension_matches_float64_differences():
    """4096 pixels: |a|^2+|b|^2-2ab in float32 agrees with explicit differences in float64."""
    kx, ky = jax.random.split(jax.random.key(5))
    x = jax.random.normal(kx, (16, 64, 64))
    y = 0.2 + jax.random.normal(ky, (20, 64, 64))
    h = float(median_bandwidth(jnp.reshape(y, (20, -1))))
    got = mmd2(x, _uniform(16), y, _uniform(20), GaussianKernel(h))
    a, b = np.asarray(x, np.float64).reshape(16, -1), np.asarray(y, np.float64).reshape(20, -1)
    k = lambda p, q: np.exp(-0.5 * np.sum((p[:, None] - q[None]) ** 2, -1) / h**2)
    want = k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()
    np.testing.assert_allclose(got, want, rtol=2e-3)


def test_noise_marginalised_kernel_matches_monte_carlo():
    a, h, s, dim = jnp.array([0.4, -0.3, 0.8]), 0.9, 0.5, 3
    e = s * jax.random.normal(jax.random.key(6), (200_000, dim))
    mc = jnp.mean(jnp.exp(-0.5 * jnp.sum((a + e) ** 2, 1) / h**2))
    exact = GaussianKernel(h).noise_marginalised(s**2, dim)(jnp.sum(a**2))
    np.testing.assert_allclose(mc, exact, rtol=5e-3)


def test_noise_marginalised_mmd_is_the_average_over_simulated_noise():
    kx, ky, kn = jax.random.split(jax.random.key(7), 3)
    clean, y = jax.random.normal(kx, (6, 2)), jax.random.normal(ky, (8, 2))
    s, kernel, copies = 0.4, GaussianKernel(1.0), 3000
    noisy = jnp.repeat(clean, copies, 0) + s * jax.random.normal(kn, (6 * copies, 2))
    exact = noise_marginalised_mmd2(clean, _uniform(6), y, _uniform(8), kernel, s**2)
    mc = mmd2(noisy, _uniform(6 * copies), y, _uniform(8), kernel, block_size=2048)
    np.testing.assert_allclose(mc, exact, rtol=0.03, atol=2e-3)


def test_conditional_mmd_equals_its_formula():
    sim = jax.random.normal(jax.random.key(8), (4, 5, 3))
    obs = jax.random.normal(jax.random.key(9), (5, 3))
    w = jax.nn.softmax(jnp.arange(4.0))
    k = lambda a, b: np.exp(-0.5 * np.sum((a - b) ** 2))
    s, o, wn = np.asarray(sim), np.asarray(obs), np.asarray(w)
    want = np.mean([sum(wn[i] * wn[j] * k(s[i, n], s[j, n]) for i in range(4) for j in range(4))
                    - 2 * sum(wn[i] * k(s[i, n], o[n]) for i in range(4)) + 1.0
                    for n in range(5)])
    np.testing.assert_allclose(conditional_mmd2(sim, w, obs, GaussianKernel(1.0)), want,
                               rtol=1e-5)
    exact_fit = conditional_mmd2(obs[None], jnp.ones(1), obs, GaussianKernel(1.0))
    np.testing.assert_allclose(exact_fit, 0.0, atol=1e-6)


def test_energy_kernel_gives_energy_distance_and_finite_gradients():
    x = jnp.array([[0.0], [1.0], [1.0]])
    y = jnp.array([[0.5], [2.0]])
    d = lambda a, b: np.abs(np.asarray(a)[:, None, 0] - np.asarray(b)[None, :, 0]).mean()
    want = 2 * d(x, y) - d(x, x) - d(y, y)
    got = mmd2(x, _uniform(3), y, _uniform(2), EnergyKernel())
    np.testing.assert_allclose(got, want, rtol=1e-5)
    grad = jax.grad(lambda a: mmd2(a, _uniform(3), y, _uniform(2), EnergyKernel()))(x)
    # d/dx_i: (2 / nm) sum_j sign(x_i - y_j) - (2 / n^2) sum_k sign(x_i - x_k), with
    # sign(0) = 0 where two points coincide (x_1 = x_2): finite, and the subgradient 0
    xs, ys = np.asarray(x)[:, 0], np.asarray(y)[:, 0]
    want_grad = (2 / 6 * np.sign(xs[:, None] - ys[None, :]).sum(1)
                 - 2 / 9 * np.sign(xs[:, None] - xs[None, :]).sum(1))
    np.testing.assert_allclose(np.asarray(grad)[:, 0], want_grad, atol=1e-6)


def test_negative_log_likelihood_and_responsibilities():
    ll = jax.random.normal(jax.random.key(10), (7, 4))
    w = jax.nn.softmax(jnp.arange(4.0))
    want = -np.mean(np.log(np.exp(np.asarray(ll)) @ np.asarray(w)))
    np.testing.assert_allclose(negative_log_likelihood(ll, jnp.log(w)), want, rtol=1e-5)
    gamma = responsibilities(ll, jnp.log(w))
    np.testing.assert_allclose(gamma.sum(1), 1.0, rtol=1e-5)
    first_variation = jax.grad(negative_log_likelihood, argnums=1)(ll, jnp.log(w)) / w
    np.testing.assert_allclose(
        jax.grad(lambda v: negative_log_likelihood(ll, jnp.log(v)))(w),
        first_variation, rtol=1e-5)


def test_mixture_nll_between_gaussians_is_cross_entropy():
    """Data N(0, 1); model mu = N(m, t^2) (Gauss-Hermite particles) with noise s:
    NLL -> H(N(0,1)) + KL(N(0,1) || N(m, t^2 + s^2))."""
    with jax.enable_x64(True):
        m, t, s = 0.4, 0.6, 0.5
        nodes, gw = np.polynomial.hermite_e.hermegauss(40)
        x, w = m + t * jnp.asarray(nodes), jnp.asarray(gw / gw.sum())
        y = jnp.asarray(np.random.default_rng(0).standard_normal(20_000))
        ll = -0.5 * (y[:, None] - x[None]) ** 2 / s**2 - 0.5 * jnp.log(2 * jnp.pi * s**2)
        got = negative_log_likelihood(ll, jnp.log(w))
        kl = gaussian_kl(jnp.zeros(1), jnp.eye(1), jnp.array([m]),
                         jnp.array([[t**2 + s**2]]))
        entropy = 0.5 * np.log(2 * np.pi * np.e)
        np.testing.assert_allclose(got, entropy + kl, atol=0.02)
        np.testing.assert_allclose(gaussian_kl(jnp.ones(2), 2 * jnp.eye(2), jnp.ones(2),
                                               2 * jnp.eye(2)), 0.0, atol=1e-12)


def test_median_bandwidth():
    a = jnp.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(median_bandwidth(a), np.sqrt(12.5), rtol=1e-6)


def test_imq_and_multi_kernel_values():
    r2 = jnp.array([0.0, 3.0])
    np.testing.assert_allclose(InverseMultiquadricKernel(1.0)(r2), [1.0, 0.5], rtol=1e-6)
    multi = MultiGaussianKernel(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(multi(r2), GaussianKernel(1.0)(r2) + GaussianKernel(2.0)(r2),
                               rtol=1e-6)
    with pytest.raises(NotImplementedError):
        EnergyKernel().noise_marginalised(1.0, 2)
