"""Order of the flow's time stepping (issue 10): the error of explicit Euler against the
closed form falls like the step size, fitted in log-log; and the one step-size rule of
``cryosip.flows`` (``step_size=None``: the first step moves the fastest particle by the cap).

The closed form: the Wasserstein flow of ``int V dmu`` with ``V = a/2 |x - m|^2`` (the KL
flow to ``N(m, 1/a)`` without its entropy, tests/test_flows.py) moves each particle as
``x(t) = m + e^{-a t} (x_0 - m)``. Explicit Euler gives ``m + (1 - a h)^{t/h} (x_0 - m)``,
whose error is ``e^{-a t} a^2 t h / 2 |x_0 - m| + O(h^2)``: slope 1 and that constant. A
second-order scheme would show slope 2, a time variable that drifts from the sum of steps
slope 0, so the tolerances below reject both.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cryosip.flows import FlowConfig, FlowProblem, SolverConfig, build_solver, fit_measure
from cryosip.measures import ParticleMeasure
from cryosip.operators import Observations

A, M, T_END = 1.5, 0.5, 1.0
ZERO = lambda x, w, batch, key: 0.0 * jnp.sum(x)
PRIOR = lambda x: 0.5 * A * jnp.sum((x - M) ** 2)
X0 = np.array([[-1.0], [0.0], [2.0]])


def _euler_error(h: float) -> float:
    n = round(T_END / h)
    problem = FlowProblem(ZERO, ParticleMeasure.uniform(jnp.asarray(X0, jnp.float32)),
                          Observations(jnp.zeros((1, 1))), prior=PRIOR)
    result = fit_measure(problem, SolverConfig(step_size=h), FlowConfig(max_steps=n,
                         history_every=n), jax.random.key(0))
    np.testing.assert_allclose(result.time, T_END, rtol=1e-5)
    exact = M + np.exp(-A * T_END) * (X0 - M)
    return float(np.max(np.abs(np.asarray(result.measure.positions) - exact)))


def test_explicit_euler_error_falls_like_the_step_size():
    steps = np.array([0.1, 0.05, 0.025, 0.0125])
    errors = np.array([_euler_error(h) for h in steps])
    slope, intercept = np.polyfit(np.log(steps), np.log(errors), 1)
    np.testing.assert_allclose(slope, 1.0, atol=0.1)
    # leading constant of the global error, written from the expansion in the docstring
    constant = np.exp(-A * T_END) * A**2 * T_END / 2 * np.max(np.abs(X0 - M))
    np.testing.assert_allclose(errors[-1] / steps[-1], constant, rtol=0.05)


def test_first_step_moves_the_fastest_particle_by_the_cap():
    """``step_size=None``: ``h_0 = delta / max |v(0)|``; v = -a (x - m), fastest at x = 2."""
    problem = FlowProblem(ZERO, ParticleMeasure.uniform(jnp.asarray(X0, jnp.float32)),
                          Observations(jnp.zeros((1, 1))), prior=PRIOR)
    solver, resolved = build_solver(SolverConfig(step_size=None, max_displacement=0.03),
                                    problem, jax.random.key(0))
    np.testing.assert_allclose(resolved.step_size, 0.03 / (A * 1.5), rtol=1e-6)
    state = solver.init(problem.measure)
    new, _ = solver.step(state, ZERO, None, jax.random.key(1), 0)
    moves = np.abs(np.asarray(new.positions - state.positions))[:, 0]
    np.testing.assert_allclose(moves, 0.03 * np.abs(X0[:, 0] - M) / 1.5, rtol=1e-5)


def test_auto_step_needs_a_finite_cap():
    with pytest.raises(ValueError, match="max_displacement"):
        SolverConfig(step_size=None)
