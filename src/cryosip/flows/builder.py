"""The one flow builder: a problem (objective, initial measure, data, domain) and two
configs (the solver's numbers, the loop's settings) in, a :class:`FlowResult` out.

``reconstruct`` (:func:`cryosip.pipeline.reconstruct.fit_flow`), the toys
(:func:`cryosip.problems.runner.run_toy`) and the benchmarks all assemble their flow here,
so the solver is built, and its step size resolved
(:func:`~cryosip.flows.solvers.initial_step_size`), in one place. The first step size is
measured on the minibatch the loop itself draws at step 0 (:class:`~cryosip.flows.run.BatchRows`
of the same key), so ``step_size=None`` depends only on the key.

>>> import jax, jax.numpy as jnp
>>> from cryosip.measures import ParticleMeasure
>>> from cryosip.operators import Observations
>>> objective = lambda x, w, batch, key: jnp.sum(w * jnp.sum((x - 2.0) ** 2, 1)) / 2
>>> problem = FlowProblem(objective, ParticleMeasure.uniform(jnp.zeros((4, 1))),
...                       Observations(jnp.zeros((8, 1))))
>>> solver = SolverConfig(step_size=None, max_displacement=0.5)
>>> res = fit_measure(problem, solver, FlowConfig(max_steps=10), jax.random.key(0))
>>> round(res.time / 10, 6)  # h_0 = 0.5 / |v(0)| = 0.5 / 2; later steps never exceed it
0.25
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from cryosip.flows.config import FlowConfig, SolverConfig
from cryosip.flows.domains import Domain
from cryosip.flows.run import BatchRows, Checkpointer, FlowResult, run_flow
from cryosip.flows.solvers import Potential, initial_step_size, make_solver
from cryosip.measures import ParticleMeasure

__all__ = ["FlowProblem", "build_solver", "fit_measure"]


@dataclasses.dataclass(frozen=True)
class FlowProblem:
    """What a flow minimises and where: ``objective(x, w, batch, key)``, the initial
    ``measure``, the ``observations`` (an :class:`~cryosip.operators.Observations` or a
    source with ``len`` and ``take(rows)``), the ``domain`` and an optional prior potential."""

    objective: Callable
    measure: ParticleMeasure
    observations: object
    domain: Domain | None = None
    prior: Potential | None = None


def _first_batch(problem: FlowProblem, key: PRNGKeyArray, batch_size: int | None):
    """The minibatch :func:`run_flow` draws at step 0 (the same :class:`BatchRows`)."""
    n = len(problem.observations)
    rows = BatchRows(key, n, batch_size)(0)
    return problem.observations.take(np.arange(n) if rows is None else rows)


def _step_key(key: PRNGKeyArray, step: int) -> PRNGKeyArray:
    return jax.random.split(jax.random.fold_in(key, step))[1]


def build_solver(config: SolverConfig, problem: FlowProblem, key: PRNGKeyArray,
                 batch_size: int | None = None):
    """``(solver, resolved config)``: ``step_size=None`` replaced by the measured ``h_0``."""
    if config.step_size is None:
        batch = _first_batch(problem, key, batch_size)
        k_objective = jax.random.split(_step_key(key, 0))[0]  # the objective's key at step 0
        h0 = initial_step_size(config, problem.objective, problem.measure, batch, k_objective,
                               problem.prior)
        config = config.model_copy(update={"step_size": h0})
    return make_solver(config, problem.domain, problem.prior), config


def fit_measure(problem: FlowProblem, solver: SolverConfig, loop: FlowConfig,
                key: PRNGKeyArray, checkpointer: Checkpointer | None = None,
                resume: bool = False) -> FlowResult:
    """Build the solver of ``solver`` and run :func:`run_flow` with ``loop``."""
    built, _ = build_solver(solver, problem, key, loop.batch_size)
    return run_flow(built, problem.objective, problem.measure, problem.observations, key, loop,
                    checkpointer=checkpointer, resume=resume)
