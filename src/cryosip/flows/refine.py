r"""The flow's last phase: the weights' Fisher-Rao flow on the full data, run to its limit.

The minibatch Wasserstein-Fisher-Rao flow (:mod:`cryosip.flows.solvers`) moves particles to
where the mass is, but it ends with weights that carry the noise of its last minibatches:
each Fisher-Rao step uses ``B`` of the ``N`` images, and with a per-step rate that does not
vanish the weights keep fluctuating at the level of that noise (on the AdK path, N = 3000,
the flow's W1 was 3x that of reweighting on a 51-point grid at SNR 0.1, with its particles
already where the mass is: ``docs/sip-core.md`` section 7).

For KL the weights' part of the flow at fixed positions has a closed limit. With
``L[n, j] = log p(y_n | x_j)`` the objective in the weights is

.. math::  D(w) = -\frac1N \sum_n \log \sum_j w_j e^{L_{nj}} + \text{const},

convex on the simplex, with first variation ``g_j = -(1/N) sum_n e^{L_nj} / p_w(y_n)``. The
Fisher-Rao flow ``d log w_j / dt = -(g_j - sum_k w_k g_k)`` discretised by mirror descent
with unit step is ``w_j <- w_j * (-g_j)``: the EM iteration
(:func:`cryosip.baselines.em.em_weights`), which increases the likelihood at every step and
converges to the flow's stationary point, the maximum-likelihood weights on the particles'
support (unique where ``D`` is strictly convex). :func:`refine_weights` computes ``L`` once
over all ``N`` images (one forward pass against the ``M`` particles, in blocks, streaming
from the source) and runs EM from the flow's weights to convergence, so every image counts
in the result: this is also what makes the defaults gain from more data, where a fixed
budget of minibatches would see only ``steps x B`` of them.

The cost is one likelihood pass, ``N x M`` forward evaluations (no gradient), and the
likelihoods stored once, as float32 ratios to each row's best (:class:`ShiftedLikelihood`,
``4 N M`` bytes: 256 MB at ``N = 10^6``, ``M = 64``), in memory up to
:data:`MEMORY_BYTES` and in a scratch file above, read back a chunk at a time: the phase's
memory does not grow with ``N`` beyond ``row_max`` (``8 N`` bytes). EM makes one pass over
them an iteration (float32 products, float64 sums). On several processes
(:mod:`cryosip.distributed`) each span of rows is computed in equal contiguous shares that
are gathered, so every process stores the same matrix, runs the same EM and keeps
identical weights.

>>> import numpy as np
>>> L = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]]))
>>> fit = refine_from_loglik(L, np.array([0.5, 0.5]))
>>> np.round(fit.weights, 3).tolist(), fit.converged  # root of the score equation below
([0.678, 0.322], True)

(``0.8/(0.1 + 0.8 w) + 0.6/(0.2 + 0.6 w) = 0.8/(0.9 - 0.8 w)`` at ``w = 0.678``.)
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from cryosip import distributed
from cryosip.baselines.em import em_weights

__all__ = ["Refinement", "ShiftedLikelihood", "known_pose_block", "likelihood_rows",
           "refine_from_loglik", "refine_weights"]

BLOCK = 256
"""Images per likelihood block (padded, so one compilation)."""


MEMORY_BYTES = 64 << 20
"""Largest ``p`` (bytes) :class:`ShiftedLikelihood` keeps in memory; above, a scratch file."""

CHUNK_ROWS = 1 << 15
"""Rows of ``p`` read at a time (8 MB at ``M = 64``)."""

SPAN_ROWS = 1 << 16
"""Rows of one span of the likelihood pass: computed (on several processes, gathered),
then stored, before the next; the pass holds one span's ``[rows, M]``."""

TINY = np.float32(1e-30)
"""Floor of a row's mixture density in the float32 EM (a row no particle explains)."""


class ShiftedLikelihood:
    """``L[n, j] = row_max[n] + log p[n, j]`` stored as ``p = exp(L - row_max)`` in float32
    (entries in ``[0, 1]``, each row's best exactly 1; likelihoods below ``e^-87`` of the
    row's best flush to 0, mass no mixture can see) and ``row_max`` in float64.

    ``p`` is ``4 N M`` bytes (256 MB at ``N = 10^6``, ``M = 64``). Up to ``memory_bytes``
    (default :data:`MEMORY_BYTES`) it is one array in memory; above, a scratch file
    (``tempfile.TemporaryFile`` in ``scratch``, default the system's temporary folder,
    ``TMPDIR``: unnamed on Linux, so a killed run leaves nothing behind; freed when this
    object is closed or collected) written with ``pwrite`` and read back :data:`CHUNK_ROWS`
    rows at a time with ``preadv`` into one buffer. No memory map: mapped pages count in the
    process's resident memory, read pages of a plain file stay in the kernel's page cache.
    Everything that reads ``p`` (EM, the bootstrap's EM, the per-image posteriors) goes
    through :meth:`chunks`, so the full-data phase holds ``O(chunk)`` of it whatever ``N``;
    ``row_max`` (``8 N`` bytes) stays in memory.

    Fill it with :meth:`put` (rows of ``L``, in any order of row blocks) or build it with
    :meth:`from_loglik`.
    """

    def __init__(self, n: int, m: int, *, memory_bytes: int | None = None,
                 scratch: str | None = None):
        self.shape = (int(n), int(m))
        self.row_max = np.zeros(n, np.float64)
        limit = MEMORY_BYTES if memory_bytes is None else memory_bytes
        self._file = None
        self._mem = None
        if 4 * n * m <= limit:
            self._mem = np.zeros((n, m), np.float32)
        else:
            self._file = tempfile.TemporaryFile(prefix="cryosip-likelihood-", dir=scratch)
            os.ftruncate(self._file.fileno(), 4 * n * m)

    @property
    def n(self) -> int:
        """Rows (images)."""
        return self.shape[0]

    @property
    def on_disk(self) -> bool:
        """Whether ``p`` lives in a scratch file."""
        return self._file is not None

    def close(self) -> None:
        """Delete the scratch file (if any)."""
        if self._file is not None:
            self._file.close()

    def put(self, start: int, loglik: np.ndarray) -> None:
        """Rows ``start : start + len(loglik)`` from their log-likelihoods ``[rows, M]``
        (overwritten: a float32 array is used as the work space)."""
        part = np.asarray(loglik, np.float32)
        if part is loglik and not part.flags.writeable:
            part = part.copy()
        stop = start + part.shape[0]
        if part.shape[1:] != self.shape[1:] or start < 0 or stop > self.n:
            raise ValueError(f"rows {start}:{stop} of shape {part.shape} do not fit a "
                             f"likelihood of shape {self.shape}")
        top = part.max(axis=1)
        self.row_max[start:stop] = top
        part -= top[:, None]
        np.exp(part, out=part)
        if self._mem is not None:
            self._mem[start:stop] = part
        else:
            os.pwrite(self._file.fileno(), np.ascontiguousarray(part).data,
                      4 * self.shape[1] * start)

    @classmethod
    def from_loglik(cls, loglik: np.ndarray, *, in_place: bool = False,
                    block: int = 1 << 16, memory_bytes: int | None = None,
                    scratch: str | None = None) -> ShiftedLikelihood:
        """From ``L [N, M]``; ``in_place`` lets a float32 ``L``'s memory be overwritten
        (and kept as ``p`` when it stays in memory)."""
        n, m = np.shape(loglik)
        mine = in_place and loglik.dtype == np.float32 and loglik.flags.writeable
        out = cls(n, m, memory_bytes=memory_bytes, scratch=scratch)
        if mine and out._mem is not None:
            out._mem = loglik
        for s in range(0, n, block):
            out.put(s, loglik[s:s + block] if mine else np.array(loglik[s:s + block],
                                                                  np.float32))
        return out

    def chunks(self, rows: int | None = None):
        """``(start, p[start : start + rows])`` over all rows in order: views of the array
        in memory, or one reused buffer filled from the scratch file (copy what you keep)."""
        rows = CHUNK_ROWS if rows is None else int(rows)
        if self._mem is not None:
            for s in range(0, self.n, rows):
                yield s, self._mem[s:s + rows]
            return
        buf = np.empty((min(rows, self.n), self.shape[1]), np.float32)
        fd = self._file.fileno()
        for s in range(0, self.n, rows):
            part = buf[: min(rows, self.n - s)]
            view = memoryview(part).cast("B")
            got = 0
            while got < len(view):
                got += os.preadv(fd, [view[got:]], 4 * self.shape[1] * s + got)
            yield s, part

    @property
    def p(self) -> np.ndarray:
        """The whole ``p [N, M]`` as one array (a copy when on disk): small data, tests."""
        if self._mem is not None:
            return self._mem
        return np.concatenate([c.copy() for _, c in self.chunks()]) if self.n else \
            np.zeros(self.shape, np.float32)

    @property
    def loglik(self) -> np.ndarray:
        """``L`` as float64 (``-inf`` where flushed): for small data and tests."""
        with np.errstate(divide="ignore"):
            return self.row_max[:, None] + np.log(self.p.astype(np.float64))

    def em(self, init: np.ndarray, counts: np.ndarray | None = None, max_iter: int = 2000,
           tol: float = 1e-9) -> tuple[np.ndarray, int, bool, np.ndarray]:
        """EM for the weights, ``w_j <- w_j (1/N) sum_n c_n p_nj / (p w)_n``, from ``init``
        (``[M]``, or ``[M, b]`` for ``b`` fits at once with row counts ``counts [N, b]``
        (any numeric dtype, e.g. uint8), e.g. bootstrap resamples; ``None``: every row
        once). A fit stops when its mean log-likelihood per image changes by less than
        ``tol``. Returns ``(weights, iterations, all converged, mean log-likelihood per
        iteration [iters + 1, b])``. One pass over ``p`` an iteration gives both the
        log-likelihood of the current weights and the next update; products in float32,
        sums in float64."""
        single = np.ndim(init) == 1
        w = np.array(init, np.float64).reshape(len(init), -1)
        w /= w.sum(axis=0, keepdims=True)
        if counts is not None:
            counts = np.asarray(counts).reshape(self.n, -1)
        cols = np.arange(w.shape[1])
        ell, grad = self._pass(w, counts, cols)
        history = [ell]
        active = np.ones(w.shape[1], bool)
        iterations = 0
        while iterations < max_iter and active.any():
            cols = np.flatnonzero(active)
            w[:, cols] *= grad[:, cols]
            w[:, cols] /= w[:, cols].sum(axis=0, keepdims=True)
            ell_new, grad_new = self._pass(w, counts, cols)
            ell = history[-1].copy()
            ell[cols] = ell_new[cols]
            grad[:, cols] = grad_new[:, cols]
            active[cols] &= ~(np.abs(ell[cols] - history[-1][cols]) < tol)
            history.append(ell)
            iterations += 1
        w = w[:, 0] if single else w
        return w, iterations, not active.any(), np.asarray(history)

    def _pass(self, w: np.ndarray, counts: np.ndarray | None, cols: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """For the columns ``cols`` of ``w``: the mean log-likelihood per image ``[b]`` and
        the EM factor ``(1/N) sum_n c_n p_nj / (p w)_n`` ``[M, b]`` (other columns: 0)."""
        b = w.shape[1]
        ell = np.zeros(b, np.float64)
        grad = np.zeros((self.shape[1], b), np.float64)
        wc = w[:, cols].astype(np.float32)
        for s, part in self.chunks():
            pw = np.maximum(part @ wc, TINY)
            rows = slice(s, s + part.shape[0])
            if counts is None:
                ell[cols] += np.log(pw).sum(axis=0, dtype=np.float64) + self.row_max[rows].sum()
                np.reciprocal(pw, out=pw)
            else:
                c = counts[rows][:, cols].astype(np.float32)
                ell[cols] += ((np.log(pw) * c).sum(axis=0, dtype=np.float64)
                              + self.row_max[rows] @ c)
                np.divide(c, pw, out=pw)
            grad[:, cols] += part.T @ pw
        return ell / self.n, grad / self.n


@dataclasses.dataclass(frozen=True)
class Refinement:
    """Result of the full-data phase: ``weights [M]`` (the EM limit), ``likelihood`` (the
    images' likelihoods under each particle, :class:`ShiftedLikelihood`; kept for the
    bootstrap), EM ``n_iter`` and ``converged``, the mean log-likelihood per image before
    and after, and the seconds of the likelihood pass and of EM."""

    weights: np.ndarray
    likelihood: ShiftedLikelihood
    n_iter: int
    converged: bool
    mean_loglik_before: float
    mean_loglik_after: float
    likelihood_s: float
    em_s: float

    @property
    def loglik(self) -> np.ndarray:
        """``L [N, M]`` (float64, computed from :attr:`likelihood`)."""
        return self.likelihood.loglik

    def record(self) -> dict:
        """Numbers for ``summary.json`` (no arrays)."""
        return {"n_images": self.likelihood.n, "em_iterations": self.n_iter,
                "converged": self.converged,
                "mean_loglik_before": self.mean_loglik_before,
                "mean_loglik_after": self.mean_loglik_after,
                "likelihood_s": self.likelihood_s, "em_s": self.em_s}


def refine_from_loglik(loglik: np.ndarray, init: np.ndarray, max_iter: int = 2000,
                       tol: float = 1e-9):
    """EM from ``init`` on ``loglik [N, M]`` (:func:`cryosip.baselines.em.em_weights`)."""
    return em_weights(np.asarray(loglik, np.float64), init=np.asarray(init, np.float64),
                      max_iter=max_iter, tol=tol)


def likelihood_rows(loglik_block: Callable, positions, source, rows: np.ndarray,  # noqa: PLR0913
                    block: int = BLOCK, progress: bool = False, bar=None) -> np.ndarray:
    """``[len(rows), M]`` float32: ``loglik_block(batch, positions)`` over ``source.take``
    of ``rows`` in padded blocks of ``block`` images. A ``loglik_block`` with a
    ``particle_chunk(M, block)`` method (:class:`cryosip.forward.poses.PoseMarginalRows`)
    gets the particles that many at a time, every block for one chunk before the next.
    ``bar``: a ``tqdm`` to advance by one a block (else one of its own when ``progress``)."""
    xs = jnp.asarray(positions)
    n_m = xs.shape[0]
    jobs = _jobs(loglik_block, n_m, len(rows), block)
    chunk = jobs[0][2] if jobs else n_m
    out = np.empty((len(rows), n_m), np.float32)
    own = bar is None
    if own:
        bar = tqdm(total=len(jobs), desc="full-data likelihood", unit="block", leave=False,
                   disable=not (progress and distributed.is_main()))
    for c, s, _ in jobs:
        part = rows[s:s + block]  # padded with the last row's copies: one shape
        batch = source.take(np.concatenate([part, np.repeat(part[-1:], block - len(part))]))
        out[s:s + len(part), c:c + chunk] = np.asarray(
            loglik_block(batch, xs[c:c + chunk]))[: len(part)]
        bar.update()
    if own:
        bar.close()
    return out


def _jobs(loglik_block: Callable, n_m: int, n_rows: int, block: int):
    """``(first particle, first row, particles)`` of each call of ``loglik_block``."""
    chunk = getattr(loglik_block, "particle_chunk", None)
    chunk = n_m if chunk is None else chunk(n_m, block)
    return [(c, s, chunk) for c in range(0, n_m, chunk) for s in range(0, n_rows, block)]


def _all_rows(loglik_block: Callable, positions, source, block: int, progress: bool,
              scratch: str | None = None) -> ShiftedLikelihood:
    """``L`` over every row of ``source``, :data:`SPAN_ROWS` rows at a time into a
    :class:`ShiftedLikelihood`. On several processes each span is cut in equal contiguous
    shares, one a process, and the shares are gathered, so every process stores the whole
    matrix (and runs the same EM on it) while holding one span at a time."""
    n, n_m = len(source), int(np.shape(positions)[0])
    store = ShiftedLikelihood(n, n_m, scratch=scratch)
    count, index = ((jax.process_count(), jax.process_index())
                    if distributed.is_distributed() else (1, 0))
    span = max(SPAN_ROWS, count * block)
    per = -(-span // count)
    shares = [np.arange(min(s + index * per, n), min(s + (index + 1) * per, n))
              for s in range(0, n, count * per)]
    total = sum(len(_jobs(loglik_block, n_m, len(r), block)) for r in shares)
    with tqdm(total=total, desc="full-data likelihood", unit="block", leave=False,
              disable=not (progress and distributed.is_main())) as bar:
        for k, mine in enumerate(shares):
            start = k * count * per
            rows = likelihood_rows(loglik_block, positions, source, mine, block, bar=bar)
            if count > 1:
                from jax.experimental import multihost_utils

                part = np.zeros((per, n_m), np.float32)
                part[: len(rows)] = rows
                rows = np.asarray(multihost_utils.process_allgather(part)).reshape(-1, n_m)
                rows = rows[: min(count * per, n - start)]
            store.put(start, rows)
    return store


def known_pose_block(operator) -> Callable:
    """``(batch, xs) -> [b, M]`` with each image's own nuisance (known poses)."""
    grid = eqx.filter_jit(lambda op, ys, xs, w: op.log_likelihood_grid(ys, xs, w))
    return lambda batch, xs: grid(operator, batch.values, xs, batch.nuisance)


def refine_weights(loglik_block: Callable, positions, weights, source, *,  # noqa: PLR0913
                   block: int = BLOCK, max_iter: int = 1000, tol: float = 1e-9,
                   progress: bool = False, scratch: str | None = None) -> Refinement:
    """The full-data phase (module docstring): ``L`` over all of ``source``, then EM from
    ``weights``. ``loglik_block(batch, xs)`` gives a block's ``[b, M]`` log-likelihoods
    (:func:`known_pose_block` for known poses)."""
    t0 = time.perf_counter()
    likelihood = _all_rows(loglik_block, positions, source, block, progress, scratch)
    t1 = time.perf_counter()
    w, n_iter, converged, history = likelihood.em(np.asarray(weights), max_iter=max_iter,
                                                  tol=tol)
    return Refinement(w.astype(np.float32), likelihood, n_iter, converged,
                      float(history[0, 0]), float(history[-1, 0]), t1 - t0,
                      time.perf_counter() - t1)
