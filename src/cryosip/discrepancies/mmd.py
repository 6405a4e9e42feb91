r"""Maximum mean discrepancy between weighted samples, blocked so memory stays bounded.

For weighted samples ``P = sum_i p_i delta_{x_i}``, ``Q = sum_j q_j delta_{y_j}`` and a kernel
``k`` (on features ``phi(.)`` when a feature map is given),

.. math::  \mathrm{MMD}^2_V = \sum_{ij} p_i p_j k(x_i,x_j) - 2\sum_{ij} p_i q_j k(x_i,y_j)
           + \sum_{ij} q_i q_j k(y_i,y_j).

The U-statistic drops the diagonal of the two within-sample sums and renormalises them by
``1 - sum_i p_i^2`` (``n(n-1)`` for uniform weights), which makes it unbiased.

**First variation.** With weights entering linearly (V-statistic),
``dMMD^2/dmu (x) = 2 sum_j p_j k(x, x_j) - 2 sum_j q_j k(x, y_j)`` = the gradient of the
value with respect to ``p_i`` at ``x = x_i``; by the particle scaling rule
(:mod:`cryosip.measures`) the velocity is ``-grad_{x_i} MMD^2 / p_i``.

**Conditional MMD** (known nuisance ``w_n`` per observation). With clean simulations
``G_in = G(x_i, w_n)`` for every particle ``i``,

.. math::  \frac1B\sum_n\Big[\sum_{ij} p_ip_j k(G_{in},G_{jn}) - 2\sum_i p_i k(G_{in},y_n)
           + k(0)\Big],

the MMD on the joint ``(w, y)`` space with a delta kernel on ``w`` (see docs/sip-core.md).

Squared distances use ``|a|^2 + |b|^2 - 2 a.b`` (one matmul, clipped at 0), so feature
dimensions of thousands (64x64 images) cost a matmul. Sums over ``x`` and ``y`` are taken
block by block (``lax.map`` over blocks of ``block_size``, each block rematerialised in the
backward pass), so memory is ``O(block_size^2)`` for any sample count.

>>> import jax, jax.numpy as jnp
>>> from cryosip.discrepancies.kernels import GaussianKernel
>>> x = jax.random.normal(jax.random.key(0), (50, 2))
>>> w = jnp.full(50, 1 / 50)
>>> float(mmd2(x, w, x, w, GaussianKernel(1.0)))
0.0
>>> float(MMD(GaussianKernel(1.0))(x, w, x + 1.0, w)) > 0.0
True
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from cryosip.discrepancies.base import AbstractSampleDiscrepancy, register_discrepancy
from cryosip.discrepancies.kernels import AbstractKernel

__all__ = [
    "MMD",
    "conditional_mmd2",
    "gaussian_mmd2_closed_form",
    "kernel_sum",
    "mmd2",
    "noise_marginalised_mmd2",
    "squared_distances",
]

FeatureMap = Callable[[Array], Array]


def squared_distances(
    a: Float[Array, "n feat"], b: Float[Array, "m feat"]
) -> Float[Array, "n m"]:
    """``|a_i - b_j|^2`` as ``|a_i|^2 + |b_j|^2 - 2 a_i.b_j``, clipped at 0."""
    sq_a = jnp.sum(a**2, axis=1)
    sq_b = jnp.sum(b**2, axis=1)
    return jnp.clip(sq_a[:, None] + sq_b[None, :] - 2.0 * a @ b.T, 0.0)


def _as_blocks(a, w, block_size):
    n = a.shape[0]
    n_blocks = -(-n // block_size)
    pad = n_blocks * block_size - n
    a = jnp.pad(a, ((0, pad), (0, 0)))
    w = jnp.pad(w, (0, pad))
    return a.reshape(n_blocks, block_size, a.shape[1]), w.reshape(n_blocks, block_size)


def kernel_sum(
    x: Float[Array, "n feat"],
    wx: Float[Array, " n"],
    y: Float[Array, "m feat"],
    wy: Float[Array, " m"],
    kernel: AbstractKernel,
    block_size: int = 1024,
) -> Float[Array, ""]:
    """``sum_ij wx_i wy_j k(x_i, y_j)`` with memory ``O(block_size^2)``."""
    if x.shape[0] <= block_size and y.shape[0] <= block_size:
        return wx @ kernel(squared_distances(x, y)) @ wy

    @jax.checkpoint
    def block(xb, wxb, yb, wyb):
        return wxb @ kernel(squared_distances(xb, yb)) @ wyb

    xs, wxs = _as_blocks(x, wx, min(block_size, x.shape[0]))
    ys, wys = _as_blocks(y, wy, min(block_size, y.shape[0]))

    def row(args):
        xb, wxb = args
        return jnp.sum(jax.lax.map(lambda a: block(xb, wxb, *a), (ys, wys)))

    return jnp.sum(jax.lax.map(row, (xs, wxs)))


def _features(a, feature_map):
    a = a if feature_map is None else jax.vmap(feature_map)(a)
    return jnp.reshape(a, (a.shape[0], -1))


def _within(a, w, kernel, estimator, block_size):
    total = kernel_sum(a, w, a, w, kernel, block_size)
    if estimator == "v":
        return total
    sum_w2 = jnp.sum(w**2)
    return (total - sum_w2 * kernel(jnp.zeros((), a.dtype))) / (1.0 - sum_w2)


def _check_estimator(estimator):
    if estimator not in ("v", "u"):
        raise ValueError(f"estimator must be 'v' or 'u', got {estimator!r}")


def _mmd2_from_kernels(p, q, kernels, estimator, block_size):
    """``<x,x>_{k_xx} + <y,y>_{k_yy} - 2 <x,y>_{k_xy}`` on flattened features, for
    ``p = (fx, wx)``, ``q = (fy, wy)`` and ``kernels = (k_xx, k_xy, k_yy)``."""
    (fx, wx), (fy, wy), (k_xx, k_xy, k_yy) = p, q, kernels
    xx = _within(fx, wx, k_xx, estimator, block_size)
    yy = _within(fy, wy, k_yy, estimator, block_size)
    return xx + yy - 2.0 * kernel_sum(fx, wx, fy, wy, k_xy, block_size)


def mmd2(  # noqa: PLR0913 (two weighted samples and a kernel; the rest are options)
    x: Float[Array, " n *feat"],
    wx: Float[Array, " n"],
    y: Float[Array, " m *feat"],
    wy: Float[Array, " m"],
    kernel: AbstractKernel,
    estimator: str = "v",
    feature_map: FeatureMap | None = None,
    block_size: int = 1024,
) -> Float[Array, ""]:
    """MMD^2 between weighted samples (weights each summing to 1); see the module docstring."""
    _check_estimator(estimator)
    fx, fy = _features(x, feature_map), _features(y, feature_map)
    return _mmd2_from_kernels((fx, wx), (fy, wy), (kernel,) * 3, estimator, block_size)


def noise_marginalised_mmd2(  # noqa: PLR0913 (as mmd2, plus the noise variance)
    x_clean: Float[Array, " n *feat"],
    wx: Float[Array, " n"],
    y: Float[Array, " m *feat"],
    wy: Float[Array, " m"],
    kernel: AbstractKernel,
    noise_var: float | Float[Array, ""],
    estimator: str = "v",
    block_size: int = 1024,
    noise_dim: int | None = None,
) -> Float[Array, ""]:
    """MMD^2 between ``sum_i wx_i N(x_i, noise_var I)`` and the observed ``y``, exactly.

    Uses the noise-marginalised kernel (variance ``2 noise_var`` within simulations,
    ``noise_var`` between a simulation and an observation), so simulation noise adds no
    Monte Carlo variance. The features are the raw (flattened) samples; ``noise_dim`` is
    the dimension of the noise's span (default: the feature size).
    """
    _check_estimator(estimator)
    fx, fy = _features(x_clean, None), _features(y, None)
    dim = fx.shape[1] if noise_dim is None else noise_dim
    k_xx = kernel.noise_marginalised(2.0 * noise_var, dim)
    k_xy = kernel.noise_marginalised(noise_var, dim)
    return _mmd2_from_kernels((fx, wx), (fy, wy), (k_xx, k_xy, kernel), estimator, block_size)


def conditional_mmd2(  # noqa: PLR0913 (as the MMD, plus how the noise enters)
    sim: Float[Array, " n_particles batch *feat"],
    weights: Float[Array, " n_particles"],
    obs: Float[Array, " batch *feat"],
    kernel: AbstractKernel,
    noise_var: float | Float[Array, ""] = 0.0,
    feature_map: FeatureMap | None = None,
    noise_dim: int | None = None,
) -> Float[Array, ""]:
    """Conditional MMD^2 for known per-observation nuisance (module docstring formula).

    ``sim[i, n]`` is the simulation of particle ``i`` with the nuisance of observation ``n``.
    With ``noise_var > 0`` the simulations are clean and the noise is integrated out
    (Gaussian kernels only; no feature map).
    """
    n_particles, batch = sim.shape[:2]
    fs = _features(jnp.reshape(sim, (n_particles * batch, *sim.shape[2:])), feature_map)
    fs = jnp.reshape(fs, (n_particles, batch, -1))
    fy = _features(obs, feature_map)
    k_ss, k_sy = kernel, kernel
    if feature_map is None and not (isinstance(noise_var, float) and noise_var == 0.0):
        dim = fy.shape[1] if noise_dim is None else noise_dim
        k_ss = kernel.noise_marginalised(2.0 * noise_var, dim)
        k_sy = kernel.noise_marginalised(noise_var, dim)
    k0 = kernel(jnp.zeros((), fy.dtype))

    def one(s, y):
        ss = weights @ k_ss(squared_distances(s, s)) @ weights
        sy = weights @ k_sy(squared_distances(s, y[None, :]))[:, 0]
        return ss - 2.0 * sy + k0

    return jnp.mean(jax.vmap(one, in_axes=(1, 0))(fs, fy))


def gaussian_mmd2_closed_form(
    mean_p: Float[Array, " dim"],
    cov_p: Float[Array, "dim dim"],
    mean_q: Float[Array, " dim"],
    cov_q: Float[Array, "dim dim"],
    bandwidth: float,
) -> Float[Array, ""]:
    r"""Population MMD^2 between ``N(m_p, S_p)`` and ``N(m_q, S_q)``, Gaussian kernel ``h``.

    ``E k(X, Y) = det(I + (S_X + S_Y)/h^2)^(-1/2) exp(-(m_X-m_Y)^T (h^2 I + S_X + S_Y)^(-1)
    (m_X-m_Y)/2)`` for independent ``X, Y``; MMD^2 = E k(P,P') + E k(Q,Q') - 2 E k(P,Q).
    """
    eye = jnp.eye(mean_p.shape[0])

    def cross(ma, sa, mb, sb):
        s = sa + sb
        d = ma - mb
        quad = d @ jnp.linalg.solve(bandwidth**2 * eye + s, d)
        return jnp.linalg.det(eye + s / bandwidth**2) ** -0.5 * jnp.exp(-0.5 * quad)

    pp = cross(mean_p, cov_p, mean_p, cov_p)
    qq = cross(mean_q, cov_q, mean_q, cov_q)
    return pp + qq - 2.0 * cross(mean_p, cov_p, mean_q, cov_q)


@register_discrepancy("mmd")
class MMD(AbstractSampleDiscrepancy):
    """:func:`mmd2` as a member of the discrepancy family (registered as ``"mmd"``)."""

    kernel: AbstractKernel
    estimator: str = eqx.field(static=True, default="v")
    feature_map: FeatureMap | None = eqx.field(static=True, default=None)
    block_size: int = eqx.field(static=True, default=1024)

    def __check_init__(self):
        _check_estimator(self.estimator)

    def __call__(self, x, wx, y, wy):
        return mmd2(x, wx, y, wy, self.kernel, self.estimator, self.feature_map, self.block_size)
