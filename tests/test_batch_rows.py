"""Minibatch rows drawn on the host in epochs (issue 14): one permutation per epoch, the
same rows whatever the order of the calls, every row equally often, and the flow builder's
first batch is the driver's step 0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cryosip.flows import FlowConfig, FlowProblem, WassersteinFlow, builder, run, run_flow
from cryosip.flows.run import BatchRows
from cryosip.measures import ParticleMeasure
from cryosip.operators import Observations


def _epoch_permutation(key, epoch, n):
    """Written out from the definition: numpy's generator seeded with the bits of the
    minibatch half of step ``epoch``'s key."""
    k_batch, _ = jax.random.split(jax.random.fold_in(key, epoch))
    seed = [int(word) for word in np.asarray(jax.random.key_data(k_batch))]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed))).permutation(n)


def test_steps_slice_one_permutation_per_epoch():
    key, n, b = jax.random.key(3), 23, 5  # 4 steps an epoch, 3 rows left out each epoch
    rows = BatchRows(key, n, b)
    for step in range(13):
        epoch, j = divmod(step, n // b)
        expected = _epoch_permutation(key, epoch, n)[j * b:(j + 1) * b]
        np.testing.assert_array_equal(rows(step), expected)
    epoch = np.concatenate([rows(k) for k in range(4, 8)])
    assert len(np.unique(epoch)) == 20 and epoch.min() >= 0 and epoch.max() < n


def test_rows_do_not_depend_on_the_order_of_the_calls():
    """A resumed run (a fresh object at step k, steps out of order) draws the same rows."""
    key, n, b = jax.random.key(0), 50, 8
    straight = BatchRows(key, n, b).chunk(0, 30)
    fresh = BatchRows(key, n, b)
    for step in np.random.default_rng(0).permutation(30):
        np.testing.assert_array_equal(fresh(int(step)), straight[step])
    np.testing.assert_array_equal(BatchRows(key, n, b).chunk(17, 9), straight[17:26])


def test_one_permutation_per_epoch_not_per_step(monkeypatch):
    calls = []
    original = run._host_permutation
    monkeypatch.setattr(run, "_host_permutation",
                        lambda key, n: calls.append(n) or original(key, n))
    rows = BatchRows(jax.random.key(1), 100_000, 256)  # 390 steps an epoch
    chunk = rows.chunk(0, 400)
    assert chunk.shape == (400, 256) and calls == [100_000, 100_000]
    assert len(np.unique(chunk[:390])) == 390 * 256


def test_every_row_is_drawn_equally_often():
    """Over E epochs each row is in ``m B / n`` of them on average (binomial, 5 sd)."""
    n, b, epochs = 10, 3, 300
    rows = BatchRows(jax.random.key(5), n, b).chunk(0, 3 * epochs)
    counts = np.bincount(rows.ravel(), minlength=n)
    p = 9 / 10
    np.testing.assert_allclose(counts, epochs * p, atol=5 * np.sqrt(epochs * p * (1 - p)))


def test_full_batch_takes_every_row():
    assert BatchRows(jax.random.key(0), 10, None)(3) is None
    assert BatchRows(jax.random.key(0), 10, 10).chunk(0, 4) is None


class RecordingSource:
    def __init__(self, values):
        self.values, self.rows = np.asarray(values), []

    def __len__(self):
        return len(self.values)

    def take(self, rows):
        self.rows.append(np.asarray(rows))
        return Observations(jnp.asarray(self.values[rows]))


def test_builder_measures_the_step_size_on_the_drivers_first_batch():
    values = np.arange(40, dtype=np.float32)[:, None]
    objective = lambda x, w, batch, key: jnp.sum(w * jnp.sum((x - batch.values.mean()) ** 2, 1))
    measure = ParticleMeasure.uniform(jnp.zeros((4, 1)))
    key = jax.random.key(9)
    source = RecordingSource(values)
    run_flow(WassersteinFlow(0.1), objective, measure, source, key,
             FlowConfig(max_steps=3, batch_size=6, history_every=3))
    first = RecordingSource(values)
    builder._first_batch(FlowProblem(objective, measure, first), key, 6)
    np.testing.assert_array_equal(first.rows[0], source.rows[0])
    assert len(np.unique(np.concatenate(source.rows))) == 18  # one epoch: distinct rows
