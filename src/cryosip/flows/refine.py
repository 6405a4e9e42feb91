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

The cost is one likelihood pass, ``N x M`` forward evaluations (no gradient), and ``L``
in memory (``4 N M`` bytes: 128 MB at ``N = 10^6``, ``M = 32``). On several processes
(:mod:`cryosip.distributed`) each computes a contiguous share of the rows; the shares are
gathered so every process runs the same EM on the same matrix and keeps identical weights.

>>> import numpy as np
>>> L = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]]))
>>> fit = refine_from_loglik(L, np.array([0.5, 0.5]))
>>> np.round(fit.weights, 3).tolist(), fit.converged
([0.648, 0.352], True)
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

__all__ = ["Refinement", "known_pose_block", "likelihood_rows", "refine_from_loglik",
           "refine_weights"]

BLOCK = 256
"""Images per likelihood block (padded, so one compilation)."""


@dataclasses.dataclass(frozen=True)
class Refinement:
    """Result of the full-data phase: ``weights [M]`` (the EM limit), ``loglik [N, M]``
    (float32, the images' log-likelihoods under each particle; kept for the bootstrap and
    per-image posteriors), EM ``n_iter`` and ``converged``, the mean log-likelihood per
    image before and after, and the seconds of the likelihood pass and of EM."""

    weights: np.ndarray
    loglik: np.ndarray
    n_iter: int
    converged: bool
    mean_loglik_before: float
    mean_loglik_after: float
    likelihood_s: float
    em_s: float

    def record(self) -> dict:
        """Numbers for ``summary.json`` (no arrays)."""
        return {"n_images": int(self.loglik.shape[0]), "em_iterations": self.n_iter,
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
    of ``rows`` in padded blocks of ``block`` images."""
    xs = jnp.asarray(positions)
    out = np.empty((len(rows), xs.shape[0]), np.float32)
    starts = range(0, len(rows), block)
    for s in tqdm(starts, desc="full-data likelihood", unit="block", leave=False,
                  disable=not (progress and distributed.is_main())):
        part = rows[s:s + block]
        batch = _pad(source.take(part), block)
        out[s:s + len(part)] = np.asarray(loglik_block(batch, xs))[: len(part)]
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
                   block: int = BLOCK, max_iter: int = 2000, tol: float = 1e-9,
                   progress: bool = False) -> Refinement:
    """The full-data phase (module docstring): ``L`` over all of ``source``, then EM from
    ``weights``. ``loglik_block(batch, xs)`` gives a block's ``[b, M]`` log-likelihoods
    (:func:`known_pose_block` for known poses)."""
    t0 = time.perf_counter()
    loglik = _all_rows(loglik_block, positions, source, block, progress)
    t1 = time.perf_counter()
    fit = refine_from_loglik(loglik, np.asarray(weights), max_iter, tol)
    history = fit.log_likelihood_history
    return Refinement(fit.weights.astype(np.float32), loglik, fit.n_iter, fit.converged,
                      float(history[0]), float(history[-1]), t1 - t0,
                      time.perf_counter() - t1)
