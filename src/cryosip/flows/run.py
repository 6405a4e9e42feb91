"""The one flow driver: ``run_flow(solver, objective, measure, observations, key, config)``.

The loop runs jitted chunks of ``config.history_every`` steps (``lax.scan``); step ``k``
uses the step key ``split(fold_in(key, k))[1]``, never a carried key, and the minibatch
rows of step ``k`` are drawn on the host in epochs (:class:`BatchRows`: one permutation
of the rows per epoch, ``O(batch)`` per step), so a run resumed from a checkpoint at step
``k`` ends exactly where the uninterrupted run ends. After each chunk: history
(positions, weights; the loss of every step), divergence check (non-finite loss or
positions), callbacks, checkpoint, stopping rule. Checkpoints are ``.npz`` written
atomically (temporary file + ``os.replace``).

When JAX runs on several processes (:func:`cryosip.distributed.initialize`), the chunks are
data parallel (:class:`cryosip.distributed.DataParallel`): every process draws the same
rows, reads its share ``rows[p::P]``, and the objective's parts are summed in the jitted
step; particles stay replicated, and only process 0 writes checkpoints.

>>> import jax, jax.numpy as jnp
>>> from cryosip.flows.solvers import WassersteinFlow
>>> from cryosip.measures import ParticleMeasure
>>> from cryosip.operators import Observations
>>> objective = lambda x, w, batch, key: jnp.sum(w * jnp.sum((x - batch.values.mean())**2, 1))
>>> obs = Observations(jnp.full((8, 1), 2.0))
>>> res = run_flow(WassersteinFlow(0.25), objective, ParticleMeasure.uniform(jnp.zeros((4, 1))),
...                obs, jax.random.key(0), FlowConfig(max_steps=40))
>>> res.status.value, round(float(res.measure.positions[0, 0]), 3)
('max_steps', 2.0)
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from cryosip import distributed
from cryosip.distributed import DataParallel
from cryosip.flows.config import FlowConfig
from cryosip.flows.solvers import FlowState
from cryosip.measures import ParticleMeasure
from cryosip.operators import Observations
from cryosip.provenance import atomic_savez

__all__ = ["BatchRows", "Checkpointer", "FlowResult", "FlowStatus", "ObservationSource", "run_flow"]


class FlowStatus(enum.Enum):
    CONVERGED = "converged"
    MAX_STEPS = "max_steps"
    DIVERGED = "diverged"


@dataclasses.dataclass(frozen=True)
class FlowResult:
    """Outcome of :func:`run_flow`.

    ``losses [n_steps]`` (loss at the start of each step); ``positions_history
    [n_saved, n_particles, dim]`` and ``weights_history [n_saved, n_particles]`` at
    ``steps_history [n_saved]`` (0 = the initial measure); ``timings`` in seconds:
    ``total_s``, ``first_chunk_s`` (includes compilation), ``per_step_s`` (median over the
    other chunks, or the first when it is the only one). ``refinement``: the full-data
    weights phase when the caller ran one (:class:`cryosip.flows.refine.Refinement`; its
    weights are then ``measure``'s).
    """

    status: FlowStatus
    measure: ParticleMeasure
    time: float
    losses: np.ndarray
    steps_history: np.ndarray
    positions_history: np.ndarray
    weights_history: np.ndarray
    timings: dict[str, float]
    refinement: object | None = None  # the full-data weights phase (cryosip.flows.refine)

    @property
    def n_steps(self) -> int:
        return int(self.losses.shape[0])


@dataclasses.dataclass(frozen=True)
class Checkpointer:
    """Where checkpoints go (``path``, an ``.npz``); cadence is ``FlowConfig.checkpoint_every``."""

    path: Path

    def save(self, key: PRNGKeyArray, state: FlowState, history: dict[str, list]) -> None:
        atomic_savez(
            self.path,
            key_data=np.asarray(jax.random.key_data(key)),
            positions=np.asarray(state.positions),
            weights=np.asarray(state.weights),
            time=np.asarray(state.time),
            losses=np.concatenate(history["losses"]),
            steps_history=np.asarray(history["steps"]),
            positions_history=np.stack(history["positions"]),
            weights_history=np.stack(history["weights"]),
        )

    def load(self, key: PRNGKeyArray) -> tuple[FlowState, dict[str, list]]:
        with np.load(self.path) as f:
            if not np.array_equal(f["key_data"], np.asarray(jax.random.key_data(key))):
                raise ValueError(f"{self.path}: checkpoint was written with another key/seed")
            state = FlowState(jnp.asarray(f["positions"]), jnp.asarray(f["weights"]),
                              jnp.asarray(f["time"]))
            history = {
                "losses": [f["losses"]],
                "steps": list(f["steps_history"]),
                "positions": list(f["positions_history"]),
                "weights": list(f["weights_history"]),
            }
        return state, history


class ObservationSource(Protocol):
    """Observations held outside the device (e.g. a memory-mapped stack), read per minibatch.

    ``len(source)`` observations; ``source.take(rows)`` returns them as :class:`Observations`.
    The driver reads only the minibatches of the current chunk, so memory holds
    ``history_every * batch_size`` observations, never the data set.
    """

    def __len__(self) -> int: ...

    def take(self, rows: np.ndarray) -> Observations: ...


def _host_permutation(key, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` (int32 below ``2^31``) drawn on the host by numpy's
    generator seeded with ``key``'s bits (``default_rng(key_data)``: the same on every
    platform; ~20-60 ms at ``n = 10^6``, where ``jax.random.permutation``'s sorts take
    2-5 s on this CPU)."""
    words = np.asarray(jax.random.key_data(key)).ravel().tolist()
    perm = np.random.default_rng(words).permutation(n)
    return perm.astype(np.int32) if n < 2**31 else perm


class BatchRows:
    """The minibatch rows of every step of a run, drawn on the host in epochs.

    ``n`` observations, minibatch ``B < n``, ``m = n // B`` steps an epoch: step ``k`` is
    step ``j = k mod m`` of epoch ``e = k // m`` and takes the rows ``perm_e[jB:(j+1)B]``
    of the epoch's permutation ``perm_e`` (numpy's generator seeded with the minibatch half
    ``split(fold_in(key, e))[0]`` of step ``e``'s key, which no step uses otherwise).
    Within an epoch the steps see distinct rows; the ``n - mB`` rows left after the last
    full minibatch wait for a later epoch (drop-last). A permutation is computed once per
    epoch (``O(n)``) and kept, so a step costs ``O(B)``, and the rows depend only on
    ``(key, n, B, k)``: the same in memory and streamed, on every process, and after a
    resume. ``B >= n`` (or ``None``): every step takes all rows (the rows are ``None``).

    >>> import jax
    >>> rows = BatchRows(jax.random.key(0), 10, 3)
    >>> epoch = [rows(k) for k in range(3)]      # three steps of 3 distinct rows out of 10
    >>> len(set(np.concatenate(epoch).tolist()))
    9
    >>> rows.chunk(2, 2).shape                   # steps 2 and 3 (the next epoch starts at 3)
    (2, 3)
    """

    def __init__(self, key, n: int, batch_size: int | None):
        self.key, self.n = key, int(n)
        self.batch_size = None if batch_size is None or batch_size >= n else int(batch_size)
        self._epoch, self._perm = -1, np.zeros(0, np.int32)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = _host_permutation(_keys(self.key, epoch)[0], self.n)
            self._epoch = epoch
        return self._perm

    def __call__(self, step: int) -> np.ndarray | None:
        """Rows of step ``step`` (``[B]``), or ``None`` for all rows."""
        if self.batch_size is None:
            return None
        epoch, j = divmod(int(step), self.n // self.batch_size)
        return self._permutation(epoch)[j * self.batch_size:(j + 1) * self.batch_size]

    def chunk(self, start: int, n_steps: int) -> np.ndarray | None:
        """Rows of steps ``start .. start + n_steps - 1`` (``[n_steps, B]``), or ``None``."""
        if self.batch_size is None:
            return None
        return np.stack([self(step) for step in range(start, start + n_steps)])


def _minibatch(observations: Observations, rows) -> Observations:
    return observations if rows is None else observations.take(rows)


def _keys(key, step):
    return jax.random.split(jax.random.fold_in(key, step))


# PLR0913 on the chunk functions below: they are the jitted body of one chunk (or read its
# batches), whose arguments are traced (state, key, start, rows) or static (n_steps)
# one by one; a container would have to be split again for equinox's filter.
@eqx.filter_jit
def _advance(solver, objective, observations, state, key, start, rows,  # noqa: PLR0913
             n_steps):
    """Steps ``start, ...`` on in-memory ``observations``; ``rows [n_steps, B]`` (or
    ``None``: all rows) drawn on the host (:class:`BatchRows`)."""
    def body(state, inputs):
        step, step_rows = inputs
        batch = _minibatch(observations, step_rows)
        return solver.step(state, objective, batch, _keys(key, step)[1], step)

    return jax.lax.scan(body, state, (start + jnp.arange(n_steps), rows))


def _scan_batches(solver, objective, batches, state, key, start):
    """Steps ``start, start + 1, ...`` on ``batches`` (leading axis: steps)."""
    def body(state, inputs):
        step, batch = inputs
        return solver.step(state, objective, batch, _keys(key, step)[1], step)

    n_steps = jax.tree.leaves(batches)[0].shape[0]
    return jax.lax.scan(body, state, (start + jnp.arange(n_steps), batches))


_advance_batches = eqx.filter_jit(_scan_batches)


def _read_chunk(source: ObservationSource, rows: np.ndarray | None, n_steps: int,
                share: Callable | None = None) -> Observations:
    """The chunk's minibatches (``rows [n_steps, B]``, ``None``: all rows), stacked along a
    leading step axis, read from ``source`` (only the rows ``share(rows)`` of each when
    given: this process's part)."""
    batches = []
    for step in range(n_steps):
        step_rows = np.arange(len(source)) if rows is None else rows[step]
        batches.append(source.take(step_rows if share is None else share(step_rows)))
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *batches)


def _chunk(solver, objective, observations, state, key, step, n,  # noqa: PLR0913
           batch_rows: BatchRows, parallel: DataParallel | None = None):
    rows = batch_rows.chunk(step, n)
    if parallel is not None:
        return parallel.advance(_read_chunk(observations, rows, n, parallel.share), state, step)
    if isinstance(observations, Observations):
        return _advance(solver, objective, observations, state, key, jnp.asarray(step),
                        None if rows is None else jnp.asarray(rows), n)
    batches = _read_chunk(observations, rows, n)
    return _advance_batches(solver, objective, batches, state, key, jnp.asarray(step))


def _record(history, step, state):
    history["steps"].append(step)
    history["positions"].append(np.asarray(state.positions))
    history["weights"].append(np.asarray(state.weights))


def _converged(config: FlowConfig, history, step) -> bool:
    if config.tol is None or step < max(config.min_steps, 2 * config.history_every):
        return False
    previous, current = np.mean(history["losses"][-2]), np.mean(history["losses"][-1])
    return abs(previous - current) <= config.tol * max(1.0, abs(previous))


def _progress(config: FlowConfig, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=config.max_steps, initial=start, desc="flow", unit="step",
                disable=not (config.progress and distributed.is_main()))


def _data_parallel(solver, objective, observations, key, config: FlowConfig):
    """The flow's chunks over processes when JAX runs on several (else ``None``)."""
    if not distributed.is_distributed():
        return None
    parallel = DataParallel(_scan_batches, solver, objective, key)
    n = len(observations)
    parallel.check_batch(n if config.batch_size is None else min(config.batch_size, n))
    return parallel


def _start(solver, measure, key, checkpointer, resume, parallel):
    """``(state, step, history)`` of a new run, or of the checkpoint with ``resume``."""
    if resume and checkpointer is not None and Path(checkpointer.path).exists():
        state, history = checkpointer.load(key)
        step = int(history["steps"][-1])
    else:
        state, step = solver.init(measure), 0
        history = {"losses": [], "steps": [], "positions": [], "weights": []}
    if parallel is not None:
        state = parallel.broadcast(state)
        parallel.check_same(step, f"resume: the checkpoint {getattr(checkpointer, 'path', '')} "
                            "must be readable by every process (a shared file system)")
    if step == 0:
        _record(history, 0, state)
    return state, step, history


# PLR0913: six inputs of the flow; callbacks, checkpointer and resume are optional hooks of
# the loop with defaults (as in diffrax.diffeqsolve), not more numbers to pass.
def run_flow(  # noqa: PLR0913
    solver,
    objective: Callable,
    measure: ParticleMeasure,
    observations: Observations | ObservationSource,
    key: PRNGKeyArray,
    config: FlowConfig,
    callbacks: Sequence[Callable[[int, FlowState, np.ndarray], None]] = (),
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
) -> FlowResult:
    """Run ``solver`` on ``objective`` from ``measure`` for up to ``config.max_steps`` steps.

    ``observations`` are device arrays (:class:`Observations`) or an
    :class:`ObservationSource` read chunk by chunk; both draw the same minibatches from the
    same key, so the two give the same run.

    ``callbacks(step, state, chunk_losses)`` run after each chunk. With ``resume`` and an
    existing checkpoint file, the run continues from it (same key required).
    """
    t_start = time.perf_counter()
    parallel = _data_parallel(solver, objective, observations, key, config)
    state, step, history = _start(solver, measure, key, checkpointer, resume, parallel)
    batch_rows = BatchRows(key, len(observations), config.batch_size)
    status, chunk_times = FlowStatus.MAX_STEPS, []
    with _progress(config, step) as bar:
        while step < config.max_steps:
            n = min(config.history_every, config.max_steps - step)
            t0 = time.perf_counter()
            state, losses = _chunk(solver, objective, observations, state, key, step, n,
                                   batch_rows, parallel)
            losses = np.asarray(losses)
            chunk_times.append((time.perf_counter() - t0) / n)
            step += n
            history["losses"].append(losses)
            _record(history, step, state)
            bar.update(n)
            bar.set_postfix(loss=f"{losses[-1]:.5g}")
            if not (np.all(np.isfinite(losses)) and np.all(np.isfinite(history["positions"][-1]))):
                status = FlowStatus.DIVERGED
                break
            for callback in callbacks:
                callback(step, state, losses)
            if checkpointer is not None and config.checkpoint_every and (
                step % config.checkpoint_every == 0
            ) and distributed.is_main():
                checkpointer.save(key, state, history)
            if _converged(config, history, step):
                status = FlowStatus.CONVERGED
                break
    return _result(status, state, history, chunk_times, time.perf_counter() - t_start)


def _result(status, state, history, chunk_times, total_s) -> FlowResult:
    later = chunk_times[1:] or chunk_times or [float("nan")]
    timings = {
        "total_s": total_s,
        "first_chunk_s": chunk_times[0] if chunk_times else float("nan"),
        "per_step_s": float(np.median(later)),
    }
    losses = np.concatenate(history["losses"]) if history["losses"] else np.zeros(0)
    return FlowResult(
        status=status,
        measure=state.measure(),
        time=float(state.time),
        losses=losses,
        steps_history=np.asarray(history["steps"]),
        positions_history=np.stack(history["positions"]),
        weights_history=np.stack(history["weights"]),
        timings=timings,
    )
