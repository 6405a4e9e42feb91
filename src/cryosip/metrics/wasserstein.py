r"""Wasserstein distances between a recovered measure and the truth, and the sample floor.

* 1-D, exact: ``W_p^p = int_0^1 |Q_P(t) - Q_Q(t)|^p dt`` with the (piecewise constant)
  quantile functions of two weighted discrete measures, evaluated exactly on the merged
  cumulative weights (:func:`wasserstein_1d`), or against a continuous truth given by its
  quantile function on a midpoint grid of ``n_grid`` levels (:func:`wasserstein_1d_to_quantile`).
* d-D, exact optimal transport (:func:`wasserstein_nd`): the discrete transport problem
  ``W_p^p = min_P sum_ij P_ij |x_i - y_j|^p`` over couplings ``P >= 0`` with row sums
  ``a`` and column sums ``b``, solved exactly by POT's network simplex (``ot.emd2``, C++;
  Bonneel et al. 2011): on the full ``n x m`` cost matrix up to ``n m = 4e6`` (300 weighted
  particles against 10^4 samples: 1-3 s on 2 busy CPU cores), beyond that on sparse pairs
  by column generation whose result is certified optimal by the duals (10^4 against 10^4
  in 3-D: 6-21 s and 0.4 GB, where the full matrix took 92 s and 4.2 GB).
* The **finite-sample floor** (:func:`finite_sample_floor`): the mean distance between ``N``
  i.i.d. true samples and the truth, computed by the same function as the recovered
  measure's distance. A recovered measure cannot be expected to beat it from ``N`` data.

>>> import numpy as np
>>> wasserstein_1d(np.array([0.0, 1.0]), None, np.array([0.5]), None)
0.5
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree, distance

__all__ = [
    "finite_sample_floor",
    "finite_sample_floors",
    "wasserstein_1d",
    "wasserstein_1d_to_quantile",
    "wasserstein_nd",
]


def _weights(x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    w = np.full(len(x), 1.0 / len(x)) if w is None else np.asarray(w, float)
    return w / w.sum()


def _quantile_steps(x, w):
    order = np.argsort(x)
    return np.asarray(x, float)[order], np.cumsum(w[order])


def wasserstein_1d(x, wx, y, wy, p: float = 1.0) -> float:
    """Exact ``W_p`` between weighted 1-D samples ``x [n]``, ``y [m]`` (weights may be None)."""
    x, y = np.ravel(x), np.ravel(y)
    xs, cx = _quantile_steps(x, _weights(x, wx))
    ys, cy = _quantile_steps(y, _weights(y, wy))
    levels = np.unique(np.concatenate([cx, cy, [0.0]]).clip(0.0, 1.0))
    mid = 0.5 * (levels[1:] + levels[:-1])
    qx = xs[np.minimum(np.searchsorted(cx, mid), len(xs) - 1)]
    qy = ys[np.minimum(np.searchsorted(cy, mid), len(ys) - 1)]
    return float(np.sum(np.diff(levels) * np.abs(qx - qy) ** p) ** (1.0 / p))


def wasserstein_1d_to_quantile(
    x, wx, quantile: Callable[[np.ndarray], np.ndarray], p: float = 1.0, n_grid: int = 100_000
) -> float:
    """``W_p`` between weighted 1-D samples and a continuous law given by its quantile function."""
    x = np.ravel(x)
    xs, cx = _quantile_steps(x, _weights(x, wx))
    t = (np.arange(n_grid) + 0.5) / n_grid
    qx = xs[np.minimum(np.searchsorted(cx, t), len(xs) - 1)]
    return float(np.mean(np.abs(qx - quantile(t)) ** p) ** (1.0 / p))


def wasserstein_nd(x, wx, y, wy, p: float = 2.0) -> float:
    """Exact ``W_p`` between weighted samples ``x [n, d]`` and ``y [m, d]`` (Euclidean cost;
    weights may be None for uniform, and are normalised to sum 1; zero-weight points are
    dropped). Up to ``n m = 4e6`` pairs on the full cost matrix, beyond that by certified
    column generation (:func:`_sparse_transport`), the same optimum without the matrix.

    >>> round(wasserstein_nd(np.zeros((1, 3)), None, np.array([[3.0, 4.0, 0.0]]), None), 6)
    5.0
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    a, b = _weights(x, wx), _weights(y, wy)
    x, a, y, b = x[a > 0], a[a > 0], y[b > 0], b[b > 0]
    (x, a), (y, b) = _merge_duplicates(x, a), _merge_duplicates(y, b)
    if len(x) * len(y) <= _DENSE_PAIRS:
        value = _emd2(a, b, _cost(x, y, p))[0]
    else:
        value = _sparse_transport(x, a, y, b, p)
    return float(max(value, 0.0) ** (1.0 / p))


def _merge_duplicates(x: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identical points as one point carrying their summed weight: the same transport
    problem (identical rows of the cost are interchangeable), smaller, and without the ties
    that slow the certified sparse path (samples drawn from a particle measure repeat each
    particle thousands of times)."""
    unique, inverse = np.unique(x, axis=0, return_inverse=True)
    if len(unique) == len(x):
        return x, a
    return unique, np.bincount(inverse.ravel(), weights=a, minlength=len(unique))


_DENSE_PAIRS = 4_000_000
"""Largest ``n m`` solved on the full cost matrix (32 MB); larger problems go sparse."""

_MAX_ITER = 2_000_000_000
"""Network-simplex iteration cap: POT's default 1e5 stops short of the optimum on 5000 x 5000
uniform points in 3-D (1e6 reaches it); a run that hits the cap raises."""

_NEIGHBOURS = 24
"""Nearest neighbours each way that seed the sparse pairs of :func:`_sparse_transport`."""


def _cost(x: np.ndarray, y: np.ndarray, p: float) -> np.ndarray:
    """``|x_i - y_j|^p`` from differences (not ``|x|^2 + |y|^2 - 2 x.y``, which cancels)."""
    cost = distance.cdist(x, y, "sqeuclidean")
    if p != 2.0:
        cost **= p / 2.0
    return cost


def _emd2(a: np.ndarray, b: np.ndarray, cost) -> tuple[float, np.ndarray, np.ndarray]:
    """POT's network simplex on a dense or sparse (``scipy.sparse``) cost: the optimal cost
    and the dual potentials ``u [n]``, ``v [m]`` (``u_i + v_j <= c_ij`` on every pair given)."""
    import ot  # POT (~1 s to import): only d-D scores need it

    with warnings.catch_warnings():  # POT warns before returning its code; we raise instead
        warnings.filterwarnings("ignore", "numItermax reached", UserWarning)
        value, log = ot.emd2(a, b, cost, numItermax=_MAX_ITER, log=True)
    if log["warning"] is not None:
        raise RuntimeError(f"optimal transport (ot.emd2) failed: {log['warning']}")
    return float(value), np.asarray(log["u"], float), np.asarray(log["v"], float)


def _sparse_transport(x, a, y, b, p: float, max_rounds: int = 30) -> float:
    r"""Exact ``W_p^p`` without the ``n x m`` matrix: column generation on the transport LP.

    Solve on a sparse set of pairs: the :data:`_NEIGHBOURS` nearest ``y`` of each ``x`` and
    nearest ``x`` of each ``y``, plus the pairs of the north-west-corner plan (so a feasible
    plan exists). The solver's duals ``u, v`` satisfy ``u_i + v_j <= c_ij`` on those pairs;
    if they do on *every* pair (checked in blocks of rows), they are feasible for the full
    problem and, by LP duality, the sparse optimum is the full optimum. Otherwise the most
    violated pairs of each row join and the problem is solved again. Costs are shifted by 1
    (every plan carries mass 1, so the optimum moves by exactly 1) to keep zero-cost pairs
    from reading as absent entries.
    """
    n, m = len(x), len(y)
    k = min(_NEIGHBOURS, n, m)
    _, near_y = cKDTree(y).query(x, k)
    _, near_x = cKDTree(x).query(y, k)
    keys = np.concatenate([np.arange(n).repeat(k) * m + np.ravel(near_y),
                           np.ravel(near_x) * m + np.arange(m).repeat(k),
                           _northwest_corner(a, b) @ np.array([m, 1])])
    for _ in range(max_rounds):
        keys = np.unique(keys)
        rows, cols = np.divmod(keys, m)
        shifted = np.sum((x[rows] - y[cols]) ** 2, axis=1) ** (p / 2.0) + 1.0
        value, u, v = _emd2(a, b, sparse.coo_array((shifted, (rows, cols)), shape=(n, m)))
        extra = _violated_pairs(x, y, p, u, v, k)
        if len(extra) == 0:
            return value - 1.0
        keys = np.concatenate([keys, extra])
    raise RuntimeError(f"sparse optimal transport not certified after {max_rounds} rounds")


def _violated_pairs(x, y, p: float, u, v, per_row: int) -> np.ndarray:
    """Keys ``i m + j`` of up to ``per_row`` pairs per row with ``u_i + v_j > 1 + c_ij``
    (beyond a relative 1e-9), rows taken :data:`_BLOCK` at a time."""
    m, found = len(y), []
    for start in range(0, len(x), _BLOCK):
        reduced = _cost(x[start:start + _BLOCK], y, p) + 1.0 - u[start:start + _BLOCK, None] - v
        tol = 1e-9 * (1.0 + np.max(np.abs(reduced)))
        bad = np.flatnonzero(np.min(reduced, axis=1) < -tol)
        if len(bad) == 0:
            continue
        worst = np.argpartition(reduced[bad], per_row - 1, axis=1)[:, :per_row]
        keep = np.take_along_axis(reduced[bad], worst, axis=1) < -tol
        found.append(((start + bad)[:, None] * m + worst)[keep])
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


_BLOCK = 512
"""Rows per block of the dual check (a ``512 x m`` float64 block: 41 MB at m = 10^4)."""


def _northwest_corner(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The ``(i, j)`` pairs (``[n + m - 1, 2]`` at most) of the north-west-corner plan: a
    feasible transport plan between ``a`` and ``b``."""
    pairs, i, j, ra, rb = [], 0, 0, a[0], b[0]
    while i < len(a) and j < len(b):
        pairs.append((i, j))
        if ra < rb:
            rb -= ra
            i += 1
            ra = a[i] if i < len(a) else 0.0
        else:
            ra -= rb
            j += 1
            rb = b[j] if j < len(b) else 0.0
    return np.array(pairs, dtype=np.int64)


def finite_sample_floors(
    sample: Callable[[np.random.Generator, int], np.ndarray],
    distances_to_truth: Callable[[np.ndarray], Sequence[float]],
    n: int,
    rng: np.random.Generator,
    n_repeats: int = 10,
) -> list[tuple[float, float]]:
    """Mean and standard deviation (``ddof=1``; 0 for one repeat) of each of several
    distances ``distances_to_truth(sample(rng, n))`` (e.g. W1 and W2), over ``n_repeats``
    i.i.d. samples of size ``n``: the one implementation of the floor.

    >>> rng = np.random.default_rng(0)
    >>> floors = finite_sample_floors(lambda r, k: r.normal(size=(k, 1)),
    ...                               lambda s: (abs(s.mean()), s.std()), 100, rng)
    >>> len(floors), floors[0][0] < 0.3, abs(floors[1][0] - 1) < 0.2
    (2, True, True)
    """
    values = np.array([np.atleast_1d(distances_to_truth(sample(rng, n)))
                       for _ in range(n_repeats)], dtype=float)
    sd = values.std(0, ddof=1) if n_repeats > 1 else np.zeros(values.shape[1])
    return [(float(m), float(s)) for m, s in zip(values.mean(0), sd, strict=True)]


def finite_sample_floor(
    sample: Callable[[np.random.Generator, int], np.ndarray],
    distance_to_truth: Callable[[np.ndarray], float],
    n: int,
    rng: np.random.Generator,
    n_repeats: int = 10,
) -> tuple[float, float]:
    """Mean and standard deviation of ``distance_to_truth(sample(rng, n))`` over repeats
    (:func:`finite_sample_floors` of one distance)."""
    return finite_sample_floors(sample, lambda s: (distance_to_truth(s),), n, rng, n_repeats)[0]
