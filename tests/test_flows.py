"""Solvers and the flow driver: OU closed form, autodiff vs finite differences, minibatch
sums, checkpoint resume, statuses, constraints, configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryosip.discrepancies import GaussianKernel
from cryosip.flows import (
    Checkpointer,
    Domain,
    FlowConfig,
    FlowStatus,
    KLObjective,
    MMDObjective,
    SolverConfig,
    WassersteinFisherRao,
    WassersteinFlow,
    full_gradient,
    make_solver,
    run_flow,
)
from cryosip.measures import ParticleMeasure
from cryosip.operators import Observations
from cryosip.problems import RandomAffineOperator, RandomProjectionOperator

ZERO = lambda x, w, batch, key: 0.0 * jnp.sum(x)


def _gaussian_particles(n, mean, var, seed=0):
    x = mean + np.sqrt(var) * np.random.default_rng(seed).standard_normal((n, len(mean)))
    return ParticleMeasure.uniform(jnp.asarray(x, jnp.float32))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_flow_of_kl_to_a_gaussian_is_ornstein_uhlenbeck(temperature):
    """KL(mu || N(m, diag(1/a))) = int V dmu + int mu log mu (+const): its Wasserstein flow
    is Fokker-Planck, i.e. OU: mean m + e^{-a t}(m0 - m), variance 1/a + (v0 - 1/a) e^{-2at}
    (with T = 1); without the entropy (T = 0), variance v0 e^{-2at}."""
    a, m = jnp.array([1.0, 4.0]), jnp.array([1.0, -0.5])
    prior = lambda x: 0.5 * jnp.sum(a * (x - m) ** 2)
    solver = WassersteinFlow(step_size=0.002, temperature=temperature, prior=prior)
    mu0 = _gaussian_particles(4000, np.array([-1.0, 1.0]), 0.25)
    result = run_flow(solver, ZERO, mu0, Observations(jnp.zeros((1, 1))), jax.random.key(1),
                      FlowConfig(max_steps=250, history_every=250))
    t = result.time
    np.testing.assert_allclose(t, 0.5, rtol=1e-5)
    a_np, m_np = np.asarray(a), np.asarray(m)
    mean_t = m_np + np.exp(-a_np * t) * (np.array([-1.0, 1.0]) - m_np)
    var_t = temperature / a_np + (0.25 - temperature / a_np) * np.exp(-2 * a_np * t)
    x = np.asarray(result.measure.positions)
    np.testing.assert_allclose(x.mean(0), mean_t, atol=0.03)
    np.testing.assert_allclose(x.var(0), var_t, rtol=0.06)


def _affine_problem(n_obs, known, dtype):
    op = RandomAffineOperator()
    key = jax.random.key(3)
    nuisance = op.sample_nuisance(key, n_obs).astype(dtype)
    x = jax.random.normal(jax.random.key(4), (n_obs, 1), dtype)
    y = jax.vmap(op.clean)(x, nuisance) + 0.1 * jax.random.normal(key, (n_obs, 1), dtype)
    return op, Observations(y, nuisance if known else None)


def _objectives(op):
    return [KLObjective(op), MMDObjective(op, GaussianKernel(0.7), n_draws=3),
            MMDObjective(op, GaussianKernel(0.7), n_draws=3, marginalise_noise=False)]


@pytest.mark.parametrize("known", [False, True])
def test_autodiff_velocity_matches_finite_differences_in_float64(known):
    with jax.enable_x64(True):
        op, obs = _affine_problem(12, known, jnp.float64)
        x = jnp.array([[-1.0], [0.3], [1.2]])
        w = jnp.array([0.2, 0.5, 0.3])
        key = jax.random.key(5)
        for objective in _objectives(op):
            f = jax.jit(lambda p, objective=objective: objective(p, w, obs, key))
            grad = np.asarray(jax.grad(f)(x))
            eps = 1e-6
            fd = np.array([[(f(x.at[i, 0].add(eps)) - f(x.at[i, 0].add(-eps))) / (2 * eps)]
                           for i in range(3)])
            np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("known", [False, True])
def test_gradient_is_a_sum_over_minibatches(known):
    op, obs = _affine_problem(30, known, jnp.float32)
    x, w = jnp.array([[-1.0], [0.3], [1.2]]), jnp.array([0.2, 0.5, 0.3])
    key = jax.random.key(6)
    for objective in _objectives(op)[:2]:
        full = jax.grad(objective, argnums=(0, 1))(x, w, obs, key)
        summed = full_gradient(objective, x, w, obs, key, batch_size=10)
        for a, b in zip(full, summed, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _small_run(config, checkpointer=None, resume=False):
    op, obs = _affine_problem(40, False, jnp.float32)
    objective = MMDObjective(op, GaussianKernel(0.7), n_draws=2)
    solver = make_solver(SolverConfig(step_size=0.2, max_displacement=0.1, temperature=0.01,
                                      weight_rate=0.1), Domain(jnp.array([-3.0]),
                                                               jnp.array([3.0])))
    mu0 = ParticleMeasure.uniform(jnp.linspace(-2, 2, 8)[:, None])
    return run_flow(solver, objective, mu0, obs, jax.random.key(7), config,
                    checkpointer=checkpointer, resume=resume)


def test_resume_from_checkpoint_ends_where_the_uninterrupted_run_ends(tmp_path):
    straight = _small_run(FlowConfig(max_steps=20, history_every=5, batch_size=16))
    ck = Checkpointer(tmp_path / "ck.npz")
    _small_run(FlowConfig(max_steps=10, history_every=5, batch_size=16, checkpoint_every=10), ck)
    assert ck.path.exists() and not list(tmp_path.glob("*.tmp"))
    resumed = _small_run(FlowConfig(max_steps=20, history_every=5, batch_size=16), ck, True)
    np.testing.assert_allclose(resumed.measure.positions, straight.measure.positions,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(resumed.measure.weights, straight.measure.weights, rtol=1e-6)
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-6)
    assert resumed.positions_history.shape == straight.positions_history.shape == (5, 8, 1)


def test_statuses_diverged_and_converged():
    obs = Observations(jnp.zeros((3, 1)))
    mu0 = ParticleMeasure.uniform(jnp.ones((4, 1)))
    nan = lambda x, w, b, k: jnp.sum(x) * jnp.nan
    res = run_flow(WassersteinFlow(0.1), nan, mu0, obs, jax.random.key(0),
                   FlowConfig(max_steps=50, history_every=5))
    assert res.status is FlowStatus.DIVERGED and res.n_steps == 5
    quad = lambda x, w, b, k: jnp.sum(w * jnp.sum(x**2, 1))
    res = run_flow(WassersteinFlow(0.2), quad, mu0, obs, jax.random.key(0),
                   FlowConfig(max_steps=500, history_every=10, tol=1e-4))
    assert res.status is FlowStatus.CONVERGED and res.n_steps < 500
    np.testing.assert_allclose(res.measure.positions, 0.0, atol=1e-3)


def test_displacement_cap_bounds_each_step():
    steep = lambda x, w, b, k: 1e3 * jnp.sum(w * jnp.sum(x**2, 1))
    solver = WassersteinFlow(step_size=1.0, max_displacement=0.05)
    state = solver.init(ParticleMeasure.uniform(jnp.array([[1.0], [0.5]])))
    new, _ = solver.step(state, steep, None, jax.random.key(0), 0)
    np.testing.assert_allclose(new.positions[:, 0], [0.95, 0.475], rtol=1e-5)


def test_fisher_rao_moves_mass_towards_lower_first_variation():
    """D = sum_i w_i c_i (first variation c): weights flow towards the smallest c."""
    c = jnp.array([1.0, 0.0, 2.0])
    linear = lambda x, w, b, k: jnp.sum(w * c) + 0.0 * jnp.sum(x)
    solver = WassersteinFisherRao(WassersteinFlow(0.1), weight_rate=0.5)
    state = solver.init(ParticleMeasure.uniform(jnp.zeros((3, 1))))
    for k in range(40):
        state, _ = solver.step(state, linear, None, jax.random.key(k), k)
    np.testing.assert_allclose(float(state.weights.sum()), 1.0, rtol=1e-6)
    assert float(state.weights[1]) > 0.99


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=2, max_size=2), st.booleans())
def test_domain_keeps_particles_in_the_box(x, periodic):
    box = Domain(jnp.array([-1.0, 0.0]), jnp.array([2.0, 0.5]), periodic=(periodic, False))
    y = np.asarray(box.project(jnp.asarray([x], jnp.float32)))[0]
    assert -1.0 - 1e-4 <= y[0] <= 2.0 + 1e-4 and -1e-4 <= y[1] <= 0.5 + 1e-4


def test_configs_are_frozen_and_strict():
    with pytest.raises(pydantic.ValidationError):
        SolverConfig(step_size=0.1, stepsize=0.2)
    with pytest.raises(pydantic.ValidationError):
        FlowConfig(max_steps=10, history_every=4, checkpoint_every=6)
    cfg = FlowConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.max_steps = 3  # type: ignore[misc]


def test_known_nuisance_mmd_objective_matches_its_closed_form_on_projections():
    """Conditional MMD^2 with the noise integrated out, written here from Gaussian integrals:
    for g_in = <x_i, u_n>, noise s and a Gaussian kernel of bandwidth h,
    E k(g + s e, g' + s e') = sqrt(h^2/(h^2+2s^2)) exp(-(g-g')^2 / (2(h^2+2s^2))) and
    E k(g + s e, y) = sqrt(h^2/(h^2+s^2)) exp(-(g-y)^2 / (2(h^2+s^2)))."""
    op = RandomProjectionOperator()
    u = op.sample_nuisance(jax.random.key(0), 10)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(3, 2)), rng.normal(size=(10, 1))
    w = np.array([0.2, 0.3, 0.5])
    value = MMDObjective(op, GaussianKernel(1.0))(jnp.asarray(x, jnp.float32), jnp.asarray(
        w, jnp.float32), Observations(jnp.asarray(y, jnp.float32), u), jax.random.key(1))
    h2, s2 = 1.0, op.noise_std**2
    g = x @ np.asarray(u, np.float64).T  # [particle, observation]
    ss = np.sqrt(h2 / (h2 + 2 * s2)) * np.exp(-(g[:, None] - g[None]) ** 2 / (2 * (h2 + 2 * s2)))
    sy = np.sqrt(h2 / (h2 + s2)) * np.exp(-(g - y[:, 0]) ** 2 / (2 * (h2 + s2)))
    expected = np.mean(np.einsum("i,ijn,j->n", w, ss, w) - 2 * w @ sy + 1.0)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
