r"""Energy distance between weighted samples: a new discrepancy in one file.

.. math::  D(P, Q) = 2\sum_{ij} p_i q_j |x_i - y_j| - \sum_{ij} p_i p_j |x_i - x_j|
           - \sum_{ij} q_i q_j |y_i - y_j|

for ``P = sum_i p_i delta_{x_i}``, ``Q = sum_j q_j delta_{y_j}`` (Székely & Rizzo 2013,
"Energy statistics"): ``D >= 0``, and ``D = 0`` only when ``P = Q``. It is the MMD^2 of
the kernel ``-|a - b|`` (:class:`cryosip.discrepancies.EnergyKernel`). The weights enter
each term linearly, so the inherited ``first_variation`` (the gradient over ``wx``) is
``2 sum_j q_j |x - y_j| - 2 sum_j p_j |x - x_j|`` at each ``x_i``.

Importing this file registers the class as ``"energy"``:

>>> import jax.numpy as jnp
>>> from cryosip.discrepancies import DISCREPANCIES
>>> energy = DISCREPANCIES.get("energy")()
>>> x, w = jnp.array([[0.0], [2.0]]), jnp.array([0.5, 0.5])
>>> float(energy(x, w, x + 1.0, w))   # 2 * 1.5 - 1 - 1
1.0
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from cryosip.discrepancies import AbstractSampleDiscrepancy, register_discrepancy

__all__ = ["EnergyDistance", "mean_distance"]


def mean_distance(
    a: Float[Array, " n *feat"],
    wa: Float[Array, " n"],
    b: Float[Array, " m *feat"],
    wb: Float[Array, " m"],
) -> Float[Array, ""]:
    """``sum_ij wa_i wb_j |a_i - b_j|`` (its gradient is 0, not NaN, where ``a_i = b_j``).

    Differences are taken directly (``O(n m feat)`` memory), so ``|a_i - a_i|`` is exactly
    0; :func:`~cryosip.discrepancies.squared_distances` is the matmul form for big samples.
    """
    diff = a.reshape(a.shape[0], 1, -1) - b.reshape(1, b.shape[0], -1)
    d2 = jnp.sum(diff**2, axis=-1)
    positive = d2 > 0
    return wa @ jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0) @ wb


@register_discrepancy("energy")
class EnergyDistance(AbstractSampleDiscrepancy):
    """The energy distance (module docstring); no parameters."""

    def __call__(self, x, wx, y, wy):
        cross = mean_distance(x, wx, y, wy)
        return 2.0 * cross - mean_distance(x, wx, x, wx) - mean_distance(y, wy, y, wy)
