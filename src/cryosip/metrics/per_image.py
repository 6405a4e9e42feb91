r"""Scores of per-image estimates against the truth: correlations and rotation errors.

* :func:`pearson`: ``r = sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2
  sum (b - mean b)^2)``; ``nan`` when either is constant.
* :func:`spearman`: Pearson's ``r`` of the ranks (ties get the average of their ranks),
  as :func:`scipy.stats.spearmanr` defines it.
* :func:`rotation_angle_deg`: the geodesic distance on SO(3) between rotations ``R`` and
  ``Q``, the angle of ``R^T Q``, ``theta = atan2(|v|, (tr(R^T Q) - 1) / 2)`` with ``v`` the
  axial vector of the antisymmetric part (``|v| = sin theta``): accurate at small angles,
  where ``arccos`` of the trace loses half the digits. No symmetry group is divided out
  (``C1``): a symmetric particle's equivalent poses count as errors.

>>> float(pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])))  # doctest: +ELLIPSIS
0.99339...
>>> float(spearman(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])))
1.0
>>> r = np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # 90° about z
>>> rotation_angle_deg(np.eye(3)[None], r).round(6).tolist()
[90.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["pearson", "ranks", "rotation_angle_deg", "spearman"]


def pearson(a, b) -> float:
    """Pearson's correlation of two 1-D arrays (module docstring)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.sum(da**2) * np.sum(db**2))
    return float(np.sum(da * db) / denom) if denom > 0 else float("nan")


def ranks(a) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span.

    >>> ranks(np.array([10.0, 30.0, 20.0, 20.0])).tolist()
    [1.0, 4.0, 2.5, 2.5]
    """
    values, inverse, counts = np.unique(np.asarray(a), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of each distinct value's last copy
    return ((last - (counts - 1) / 2.0)[inverse.ravel()]).astype(np.float64)


def spearman(a, b) -> float:
    """Spearman's rank correlation of two 1-D arrays (module docstring)."""
    return pearson(ranks(a), ranks(b))


def rotation_angle_deg(r, q) -> np.ndarray:
    """Geodesic angle in degrees between rotations ``r [n, 3, 3]`` and ``q [n, 3, 3]``."""
    rel = np.einsum("nji,njk->nik", np.asarray(r, np.float64), np.asarray(q, np.float64))
    v = np.stack([rel[:, 2, 1] - rel[:, 1, 2], rel[:, 0, 2] - rel[:, 2, 0],
                  rel[:, 1, 0] - rel[:, 0, 1]], axis=1) / 2.0
    cos = (np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0
    return np.rad2deg(np.arctan2(np.linalg.norm(v, axis=1), cos))
