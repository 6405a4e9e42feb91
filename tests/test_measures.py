"""Particle measures and the particle scaling rule (velocities invariant under duplication)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryosip.discrepancies import GaussianKernel, mmd2, negative_log_likelihood
from cryosip.measures import ParticleMeasure, particle_velocity


def _positions(n=6, dim=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, dim))


def test_uniform_weights_and_shape():
    mu = ParticleMeasure.uniform(jnp.arange(5.0))
    assert (mu.n_particles, mu.dim) == (5, 1)
    np.testing.assert_allclose(mu.weights, 0.2, rtol=1e-6)


def test_duplicate_keeps_the_measure():
    mu = ParticleMeasure(_positions(), jax.nn.softmax(jnp.arange(6.0)))
    dup = mu.duplicate(3)
    np.testing.assert_allclose(dup.mean(), mu.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dup.covariance(), mu.covariance(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(dup.weights.sum()), 1.0, rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=8, max_size=8), st.integers(0, 1000))
def test_systematic_resampling_counts(raw, seed):
    w = np.asarray(raw) / np.sum(raw)
    mu = ParticleMeasure(jnp.arange(len(w), dtype=jnp.float32)[:, None], jnp.asarray(w))
    n = 50
    out = mu.resample(jax.random.key(seed), n)
    counts = np.bincount(np.asarray(out.positions[:, 0]).astype(int), minlength=len(w))
    assert np.all(counts >= np.floor(n * w - 1e-4) - 1e-9)
    assert np.all(counts <= np.ceil(n * w + 1e-4))
    assert counts.sum() == n


def _mmd_objective(y):
    wy = jnp.full(y.shape[0], 1.0 / y.shape[0])
    return lambda x, w: mmd2(x, w, y, wy, GaussianKernel(1.0))


def _kl_objective(y):
    def objective(x, w):
        ll = -0.5 * jnp.sum((y[:, None, :] - x[None, :, :]) ** 2, axis=2) / 0.3**2
        return negative_log_likelihood(ll, jnp.log(w))

    return objective


@pytest.mark.parametrize("make", [_mmd_objective, _kl_objective])
def test_duplicating_particles_leaves_velocities_unchanged(make):
    objective = make(_positions(20, 2, seed=1))
    mu = ParticleMeasure(_positions(), jax.nn.softmax(jnp.linspace(0, 1, 6)))
    grad = jax.jit(jax.grad(objective))
    v = particle_velocity(grad(mu.positions, mu.weights), mu.weights)
    dup = mu.duplicate(4)
    v_dup = particle_velocity(grad(dup.positions, dup.weights), dup.weights)
    np.testing.assert_allclose(v_dup, jnp.repeat(v, 4, axis=0), rtol=2e-4, atol=1e-6)


def test_velocity_is_minus_gradient_of_first_variation():
    """MMD^2 first variation: 2 sum_j w_j k(x, x_j) - 2 mean_n k(x, y_n)."""
    y = _positions(15, 2, seed=2)
    mu = ParticleMeasure(_positions(), jax.nn.softmax(jnp.linspace(0, 2, 6)))
    kernel = lambda a, b: jnp.exp(-0.5 * jnp.sum((a - b) ** 2))
    first_variation = lambda x: 2 * jnp.sum(
        mu.weights * jax.vmap(kernel, (None, 0))(x, mu.positions)
    ) - 2 * jnp.mean(jax.vmap(kernel, (None, 0))(x, y))
    expected = -jax.vmap(jax.grad(first_variation))(mu.positions)
    grad = jax.jit(jax.grad(_mmd_objective(y)))(mu.positions, mu.weights)
    np.testing.assert_allclose(particle_velocity(grad, mu.weights), expected, rtol=1e-4,
                               atol=1e-6)
