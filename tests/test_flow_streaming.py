"""Streaming minibatches from an outside source gives the same flow as device arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cryosip.flows import FlowConfig, KLObjective, WassersteinFlow, run_flow
from cryosip.measures import ParticleMeasure
from cryosip.operators import AbstractRandomOperator, Observations


class Gain(AbstractRandomOperator):
    noise_std: float = 0.3

    def sample_nuisance(self, key, n_draws):
        return 1.0 + 0.2 * jax.random.normal(key, (n_draws, 1))

    def clean(self, x, nuisance):
        return x * nuisance


class CountingSource:
    """Host-side observations that record how many rows each read asked for."""

    def __init__(self, observations: Observations):
        self.values = np.asarray(observations.values)
        self.nuisance = np.asarray(observations.nuisance)
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.values)

    def take(self, rows):
        self.reads.append(len(rows))
        return Observations(jnp.asarray(self.values[rows]), jnp.asarray(self.nuisance[rows]))


def test_streamed_minibatches_reproduce_the_in_memory_run():
    op = Gain()
    key = jax.random.key(1)
    x = jnp.where(jax.random.uniform(key, (400, 1)) < 0.6, -1.0, 1.5)
    w = op.sample_nuisance(jax.random.key(2), 400)
    y = jax.vmap(op.sample)(jax.random.split(jax.random.key(3), 400), x, w)
    obs = Observations(y, w)
    measure = ParticleMeasure.uniform(jnp.linspace(-2, 2, 8)[:, None])
    config = FlowConfig(max_steps=12, batch_size=32, history_every=4)
    solver, objective = WassersteinFlow(0.05, max_displacement=0.2), KLObjective(op)
    memory = run_flow(solver, objective, measure, obs, jax.random.key(0), config)
    source = CountingSource(obs)
    streamed = run_flow(solver, objective, measure, source, jax.random.key(0), config)
    np.testing.assert_allclose(np.asarray(streamed.measure.positions),
                               np.asarray(memory.measure.positions), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(streamed.losses, memory.losses, rtol=1e-6)
    assert source.reads == [32] * 12  # only minibatches were ever read
