r"""MMD with the polynomial kernel ``k(a, b) = (<a, b> / tau)^2``: second moments compared.

For this kernel ``E k(A, B) = <E aa^T, E bb^T>_F / tau^2`` for independent ``A, B``, so

.. math::  \mathrm{MMD}^2(P, Q) = \|M_P - M_Q\|_F^2 / \tau^2, \qquad M = E[a a^T],

the squared Frobenius distance of the second moments. For images under a uniform pose,
``M`` is Kam's pose-averaged autocorrelation: invariant to the pose, yet a function of the
structure (its 3-D autocorrelation seen through the CTF), so it still sees the
conformation where pose-averaged pixel kernels compare blurred averages
(``docs/sip-core.md`` section 3).

**Noise.** The model's images are ``c + e`` with ``e ~ N(0, s^2 Pi)``, ``Pi`` the
projection onto the noise's span (``I`` on pixels; on a whitened Fourier band the span of
the real images, ``noise_dim`` = its rank), and the clean ``c`` in that span. The model's
second moment is then ``M_c + s^2 Pi`` exactly, so with clean simulations

.. math:: \tau^2\,\mathrm{MMD}^2 = \sum_{ab} W_{ab} \big[(c_a \cdot c_b)^2
          + s^2 |c_a|^2 + s^2 |c_b|^2 + s^4 D_e\big]
          - 2 \sum_{a n} w_a q_n \big[(c_a \cdot y_n)^2 + s^2 |y_n|^2\big]
          + \sum_{nm} Q_{nm} (y_n \cdot y_m)^2,

(``D_e`` = ``noise_dim``; the bracket is ``E((c_a + e_a).(c_b + e_b))^2`` for independent
noises), which for the V-statistic is ``|| M_c - (M_y - s^2 Pi) ||_F^2 / tau^2``: the
noise's known contribution is removed from the observed moment. ``w_a = p_i / n_draws``
for draw ``a`` of particle ``i``.

* ``estimator="v"``: ``W = w w^T``, ``Q = q q^T`` (the plug-in moments, a V-statistic).
* ``estimator="u"`` (unbiased, distinct pairs): ``Q_nm = q_n q_m / (1 - sum q^2)`` for
  ``n != m`` and 0 on the diagonal; ``W_ab = w_a w_b`` for draws of different particles,
  ``p_i^2 / (n_draws (n_draws - 1))`` for two distinct draws of the same particle and 0 on
  the diagonal (the draws of one particle are i.i.d. poses, so the expectation of the
  ``i = j`` term is ``||M(x_i)||^2`` and not that plus a variance). With one draw per
  particle, ``W`` is ``Q``'s form on ``p`` (i.i.d. samples).

Both are linear in the observation weights and quadratic in the particle weights, as every
MMD; the first variation is the gradient with respect to ``p``. Everything is done with
Gram matrices (``(n_draws n_particles)^2 D`` and ``n_draws n_particles B D`` flops).

>>> import jax, jax.numpy as jnp
>>> c = jax.random.normal(jax.random.key(0), (4, 3, 5))  # 4 particles, 3 draws, D = 5
>>> p = jnp.full(4, 0.25)
>>> y = c.reshape(12, 5)
>>> q = jnp.full(12, 1 / 12)
>>> round(float(second_moment_mmd2(c, p, y, q, estimator="v")), 4)
0.0
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from cryosip.discrepancies.base import AbstractSampleDiscrepancy

__all__ = ["SecondMomentMMD", "linear_feature_mmd2", "second_moment_mmd2"]


def _sim_pair_weights(p: Float[Array, " n_p"], n_draws: int, estimator: str) -> Array:
    """``W`` of the module docstring, ``(n_p n_draws, n_p n_draws)``; with one draw per
    particle and ``"u"``, the i.i.d.-sample U-statistic (diagonal dropped, renormalised)."""
    w = jnp.repeat(p / n_draws, n_draws)
    if estimator == "v":
        return w[:, None] * w[None, :]
    if n_draws == 1:
        return _obs_pair_weights(p, "u")
    same = jnp.kron(jnp.eye(p.shape[0], dtype=p.dtype), jnp.ones((n_draws, n_draws), p.dtype))
    within = jnp.repeat(p**2 / (n_draws * (n_draws - 1)), n_draws)[:, None]
    within = within * (1.0 - jnp.eye(w.shape[0], dtype=p.dtype))
    return jnp.where(same > 0, within, w[:, None] * w[None, :])


def _obs_pair_weights(q: Float[Array, " m"], estimator: str) -> Array:
    full = q[:, None] * q[None, :]
    if estimator == "v":
        return full
    off = full * (1.0 - jnp.eye(q.shape[0], dtype=q.dtype))
    return off / (1.0 - jnp.sum(q**2))


def second_moment_mmd2(  # noqa: PLR0913 (two weighted samples and the noise; the rest options)
    sims: Float[Array, "n_particles n_draws *feat"],
    p: Float[Array, " n_particles"],
    obs: Float[Array, " m *feat"],
    q: Float[Array, " m"],
    noise_var: float | Float[Array, ""] = 0.0,
    noise_dim: int | None = None,
    scale: float | Float[Array, ""] = 1.0,
    estimator: str = "u",
) -> Float[Array, ""]:
    """``||M_c + s^2 Pi - M_y||_F^2 / tau^2`` (module docstring) for clean ``sims``.

    ``sims[i, b]`` is draw ``b`` (a nuisance from the prior) of particle ``i`` with weight
    ``p_i`` (weights summing to 1); ``obs`` the observed samples with weights ``q``;
    ``noise_var = s^2`` the noise variance per dimension of the simulations' noise (0:
    ``sims`` are compared as given); ``noise_dim`` its rank (default: the feature size);
    ``scale = tau``.
    """
    if estimator not in ("u", "v"):
        raise ValueError(f"estimator must be 'u' or 'v', got {estimator!r}")
    n_p, n_d = sims.shape[:2]
    c = jnp.reshape(sims, (n_p * n_d, -1)) / jnp.sqrt(scale)
    y = jnp.reshape(obs, (obs.shape[0], -1)) / jnp.sqrt(scale)
    nu = noise_var / scale
    dim = c.shape[1] if noise_dim is None else noise_dim
    w = jnp.repeat(p / n_d, n_d)
    pairs = _sim_pair_weights(p, n_d, estimator)
    ss = jnp.sum(pairs * (c @ c.T) ** 2)
    ss = ss + 2.0 * nu * (jnp.sum(pairs, axis=1) @ jnp.sum(c**2, axis=1))
    ss = ss + nu**2 * dim * jnp.sum(pairs)
    sy = w @ (c @ y.T) ** 2 @ q + nu * (q @ jnp.sum(y**2, axis=1))
    yy = jnp.sum(_obs_pair_weights(q, estimator) * (y @ y.T) ** 2)
    return ss - 2.0 * sy + yy


def linear_feature_mmd2(
    sims: Float[Array, "n_particles n_draws k"],
    p: Float[Array, " n_particles"],
    obs: Float[Array, "m k"],
    q: Float[Array, " m"],
    estimator: str = "u",
) -> Float[Array, ""]:
    """MMD^2 with the linear kernel ``<a, b>`` on feature vectors: ``||E phi_sim - E phi_obs||^2``
    with the pair weights of :func:`second_moment_mmd2` (``"u"``: distinct pairs on both
    sides; two draws of one particle paired only when distinct)."""
    if estimator not in ("u", "v"):
        raise ValueError(f"estimator must be 'u' or 'v', got {estimator!r}")
    n_p, n_d = sims.shape[:2]
    c = jnp.reshape(sims, (n_p * n_d, -1))
    w = jnp.repeat(p / n_d, n_d)
    ss = jnp.sum(_sim_pair_weights(p, n_d, estimator) * (c @ c.T))
    sy = w @ (c @ obs.T) @ q
    yy = jnp.sum(_obs_pair_weights(q, estimator) * (obs @ obs.T))
    return ss - 2.0 * sy + yy


class SecondMomentMMD(AbstractSampleDiscrepancy):
    """:func:`second_moment_mmd2` between flat weighted samples (one draw per sample;
    ``"u"`` then drops the diagonal of both within-sample sums and renormalises)."""

    noise_var: float | Float[Array, ""] = 0.0
    noise_dim: int | None = eqx.field(static=True, default=None)
    scale: float | Float[Array, ""] = 1.0
    estimator: str = eqx.field(static=True, default="u")

    def __call__(self, x, wx, y, wy):
        return second_moment_mmd2(x[:, None], wx, y, wy, self.noise_var, self.noise_dim,
                                  self.scale, self.estimator)
