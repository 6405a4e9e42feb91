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
likelihoods in memory once, as float32 ratios to each row's best
(:class:`ShiftedLikelihood`, ``4 N M`` bytes: 256 MB at ``N = 10^6``, ``M = 64``; EM runs
on them in place, in float32 products). On several processes
(:mod:`cryosip.distributed`) each computes a contiguous share of the rows; the shares are
gathered so every process runs the same EM on the same matrix and keeps identical weights.

>>> import numpy as np
>>> L = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]]))
>>> fit = refine_from_loglik(L, np.array([0.5, 0.5]))
>>> np.round(fit.weights, 3).tolist(), fit.converged  # root of the score equation below
([0.678, 0.322], True)

(``0.8/(0.1 + 0.8 w) + 0.6/(0.2 + 0.6 w) = 0.8/(0.9 - 0.8 w)`` at ``w = 0.678``.)
"""

from __future__ import annotations

import dataclasses
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


TINY = np.float32(1e-30)
"""Floor of a row's mixture density in the float32 EM (a row no particle explains)."""


@dataclasses.dataclass(frozen=True)
class ShiftedLikelihood:
    """``L[n, j] = row_max[n] + log p[n, j]`` stored as ``p = exp(L - row_max)`` in float32
    (entries in ``[0, 1]``, each row's best exactly 1; likelihoods below ``e^-87`` of the
    row's best flush to 0, mass no mixture can see) and ``row_max`` in float64: ``4 N M``
    bytes, the only O(N) array of the full-data phase (256 MB at ``N = 10^6``, ``M = 64``).
    """

    p: np.ndarray
    row_max: np.ndarray

    @classmethod
    def from_loglik(cls, loglik: np.ndarray, *, in_place: bool = False,
                    block: int = 1 << 16) -> ShiftedLikelihood:
        """From ``L [N, M]``; ``in_place`` reuses a float32 ``L``'s memory for ``p``."""
        mine = in_place and loglik.dtype == np.float32 and loglik.flags.writeable
        p = loglik if mine else np.array(loglik, np.float32)  # (a gathered array is read-only)
        row_max = np.empty(p.shape[0], np.float64)
        for s in range(0, p.shape[0], block):
            part = p[s:s + block]
            top = part.max(axis=1)
            row_max[s:s + block] = top
            part -= top[:, None]
            np.exp(part, out=part)
        return cls(p, row_max)

    @property
    def loglik(self) -> np.ndarray:
        """``L`` as float64 (``-inf`` where flushed): for small data and tests."""
        with np.errstate(divide="ignore"):
            return self.row_max[:, None] + np.log(self.p.astype(np.float64))

    def em(self, init: np.ndarray, counts: np.ndarray | None = None, max_iter: int = 2000,
           tol: float = 1e-9) -> tuple[np.ndarray, int, bool, np.ndarray]:
        """EM for the weights, ``w_j <- w_j (1/N) sum_n c_n p_nj / (p w)_n``, from ``init``
        (``[M]``, or ``[M, b]`` for ``b`` fits at once with row counts ``counts [N, b]``,
        e.g. bootstrap resamples; ``None``: every row once). A fit stops when its mean
        log-likelihood per image changes by less than ``tol``. Returns ``(weights,
        iterations, all converged, mean log-likelihood per iteration [iters + 1, b])``;
        products in float32, sums of logs in float64."""
        n = self.p.shape[0]
        single = np.ndim(init) == 1
        w = np.array(init, np.float64).reshape(len(init), -1)
        w /= w.sum(axis=0, keepdims=True)
        c = None if counts is None else np.asarray(counts, np.float32).reshape(n, -1)
        history = [self._ell(w, c)]
        active = np.ones(w.shape[1], bool)
        iterations = 0
        while iterations < max_iter and active.any():
            cols = np.flatnonzero(active)
            pw = np.maximum(self.p @ w[:, cols].astype(np.float32), TINY)
            ratio = (1.0 / pw) if c is None else c[:, cols] / pw
            w[:, cols] *= (self.p.T @ ratio).astype(np.float64) / n
            w[:, cols] /= w[:, cols].sum(axis=0, keepdims=True)
            ell = self._ell(w, c)
            active &= ~(np.abs(ell - history[-1]) < tol)
            history.append(ell)
            iterations += 1
        w = w[:, 0] if single else w
        return w, iterations, not active.any(), np.asarray(history)

    def _ell(self, w: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        """Mean log-likelihood per image of each column of ``w`` (row counts ``c``), in
        float32 products summed in float64 (no float64 ``[N, b]`` copies)."""
        logs = np.log(np.maximum(self.p @ w.astype(np.float32), TINY))
        n = self.p.shape[0]
        if c is None:
            return logs.sum(axis=0, dtype=np.float64) / n + self.row_max.mean()
        logs *= c
        return (logs.sum(axis=0, dtype=np.float64) + self.row_max @ c) / n


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
        return {"n_images": int(self.likelihood.p.shape[0]), "em_iterations": self.n_iter,
                "converged": self.converged,
                "mean_loglik_before": self.mean_loglik_before,
                "mean_loglik_after": self.mean_loglik_after,
                "likelihood_s": self.likelihood_s, "em_s": self.em_s}


def refine_from_loglik(loglik: np.ndarray, init: np.ndarray, max_iter: int = 2000,
                       tol: float = 1e-9):
    """EM from ``init`` on ``loglik [N, M]`` (:func:`cryosip.baselines.em.em_weights`)."""
    return em_weights(np.asarray(loglik, np.float64), init=np.asarray(init, np.float64),
                      max_iter=max_iter, tol=tol)


def _pad(tree, size: int):
    def pad(a):
        a = jnp.asarray(a)
        extra = size - a.shape[0]
        return a if extra == 0 else jnp.concatenate([a, jnp.repeat(a[-1:], extra, 0)])
    return jax.tree.map(pad, tree)


def likelihood_rows(loglik_block: Callable, positions, source, rows: np.ndarray,
                    block: int = BLOCK, progress: bool = False) -> np.ndarray:
    """``[len(rows), M]`` float32: ``loglik_block(batch, positions)`` over ``source.take``
    of ``rows`` in padded blocks of ``block`` images. A ``loglik_block`` with a
    ``particle_chunk(M, block)`` method (:class:`cryosip.forward.poses.PoseMarginalRows`)
    gets the particles that many at a time, every block for one chunk before the next."""
    xs = jnp.asarray(positions)
    n_m = xs.shape[0]
    chunk = getattr(loglik_block, "particle_chunk", None)
    chunk = n_m if chunk is None else chunk(n_m, block)
    out = np.empty((len(rows), n_m), np.float32)
    jobs = [(c, s) for c in range(0, n_m, chunk) for s in range(0, len(rows), block)]
    for c, s in tqdm(jobs, desc="full-data likelihood", unit="block", leave=False,
                     disable=not (progress and distributed.is_main())):
        part = rows[s:s + block]
        batch = _pad(source.take(part), block)
        out[s:s + len(part), c:c + chunk] = np.asarray(
            loglik_block(batch, xs[c:c + chunk]))[: len(part)]
    return out


def _all_rows(loglik_block: Callable, positions, source, block: int, progress: bool):
    """``L`` over every row of ``source``; on several processes each computes a contiguous
    share and the shares are gathered (every process gets the whole matrix)."""
    n = len(source)
    if not distributed.is_distributed():
        return likelihood_rows(loglik_block, positions, source, np.arange(n), block, progress)
    from jax.experimental import multihost_utils

    count, index = jax.process_count(), jax.process_index()
    per = -(-n // count)
    mine = np.arange(index * per, min((index + 1) * per, n))
    part = np.zeros((per, np.shape(positions)[0]), np.float32)
    part[: len(mine)] = likelihood_rows(loglik_block, positions, source, mine, block,
                                        progress)
    gathered = np.asarray(multihost_utils.process_allgather(part))  # [P, per, M]
    return gathered.reshape(count * per, -1)[:n]


def known_pose_block(operator) -> Callable:
    """``(batch, xs) -> [b, M]`` with each image's own nuisance (known poses)."""
    grid = eqx.filter_jit(lambda op, ys, xs, w: op.log_likelihood_grid(ys, xs, w))
    return lambda batch, xs: grid(operator, batch.values, xs, batch.nuisance)


def refine_weights(loglik_block: Callable, positions, weights, source, *,  # noqa: PLR0913
                   block: int = BLOCK, max_iter: int = 1000, tol: float = 1e-9,
                   progress: bool = False) -> Refinement:
    """The full-data phase (module docstring): ``L`` over all of ``source``, then EM from
    ``weights``. ``loglik_block(batch, xs)`` gives a block's ``[b, M]`` log-likelihoods
    (:func:`known_pose_block` for known poses)."""
    t0 = time.perf_counter()
    likelihood = ShiftedLikelihood.from_loglik(
        _all_rows(loglik_block, positions, source, block, progress), in_place=True)
    t1 = time.perf_counter()
    w, n_iter, converged, history = likelihood.em(np.asarray(weights), max_iter=max_iter,
                                                  tol=tol)
    return Refinement(w.astype(np.float32), likelihood, n_iter, converged,
                      float(history[0, 0]), float(history[-1, 0]), t1 - t0,
                      time.perf_counter() - t1)
