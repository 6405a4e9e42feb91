r"""MMD on pose-marginal posterior features: unknown poses, likelihood-free on both sides.

The feature of an image ``y`` (whitened band, its own CTF ``c``) is its posterior over a
fixed bank of ``K`` reference conformations ``xi_1..xi_K`` with the pose and shift
integrated out on the grid of :mod:`cryosip.forward.poses`,

.. math:: \phi_k(y) = \mathrm{softmax}_k\Big(\tfrac1T \log \sum_{r,t} q_r q_t\,
          p(y \mid \xi_k, R_r, t)\Big),

and the discrepancy is the MMD with the linear kernel ``k(a, b) = <phi(a), phi(b)>``:
``|| E_{F#mu} phi - E_nu phi ||^2``, the squared distance between the mean soft
assignments of simulated and observed images. ``phi`` is a fixed function (the bank, the
grid and ``T`` never change during a run), invariant to the pose by construction and
informative about the conformation: it is the per-image posterior the pose-grid KL uses,
read through ``K`` templates instead of the particles. Simulations carry noise (``phi`` is
not linear in the image, so the noise cannot be removed analytically), a pose and shift
from the prior and the CTF of a random image of the minibatch; the gradient in the
particles' positions is the reparameterised one (noise and nuisance held fixed, the
simulation's pixels differentiated through ``phi``). Both sides go through the same
``phi``, so its quadrature error (a coarse grid, few references) costs information, never
consistency: the model's mean feature ``sum_i w_i h(x_i)``, ``h(x) = E phi(G(x, w) + e)``,
equals the data's at the truth whatever ``phi`` is. Compared with the second moment
(:mod:`cryosip.flows.moment_objective`), the feature is not linear in the image's second
moment, so it keeps what a single image says about its conformation, which is what the
population's second moment averages away.

The estimator is the U-statistic of :mod:`cryosip.discrepancies.moments` with the linear
kernel (distinct pairs only; two draws of one particle paired only when distinct), so its
expectation is the population MMD up to a constant of the data.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from cryosip.discrepancies.moments import linear_feature_mmd2
from cryosip.flows.moment_objective import prior_pose_nuisance
from cryosip.forward.fourier import FourierOperator
from cryosip.forward.poses import GridSettings, PoseGrid, _data_terms, _spacing, _table, templates

__all__ = ["PosteriorFeatureObjective"]


class PosteriorFeatureObjective(eqx.Module):
    """Linear-kernel MMD on pose-marginal posterior features (module docstring).

    Build with :meth:`build`; the templates of the bank are rendered once there."""

    operator: FourierOperator
    reference: Float[Array, "k dim"]
    bank: Float[Array, "k r 2 2 k1 k1"]
    grid: PoseGrid
    temperature: float = eqx.field(static=True, default=1.0)
    n_draws: int = eqx.field(static=True, default=8)

    @classmethod
    def build(cls, operator: FourierOperator, reference, settings: GridSettings,
              temperature: float = 1.0, n_draws: int = 8) -> PosteriorFeatureObjective:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        reference = jnp.asarray(reference, jnp.float32)
        grid = PoseGrid.build(settings.level, settings.shift_std_angstrom,
                              _spacing(operator, settings))
        bank = eqx.filter_jit(templates)(operator, reference, grid.matrices)
        return cls(operator, reference, bank, grid, float(temperature), int(n_draws))

    def features(self, values, nuisance) -> Float[Array, "b k"]:
        """``phi`` of whitened bands ``values`` with CTF parameters ``nuisance``."""
        z, c2, y2 = _data_terms(self.operator, values, nuisance, self.grid.shifts_angstrom)
        ll = _table(z, c2, y2, self.bank, 0.0)  # (B, K, T, R); constants cancel below
        log_q = self.grid.log_q_shift[:, None] + self.grid.log_q_rot[None]
        marginal = jax.nn.logsumexp(ll + log_q[None, None], axis=(2, 3))
        return jax.nn.softmax(marginal / self.temperature, axis=1)

    def __call__(
        self,
        positions: Float[Array, "n_particles dim"],
        weights: Float[Array, " n_particles"],
        batch,
        key: PRNGKeyArray,
    ) -> Float[Array, ""]:
        n_p = positions.shape[0]
        k_nuis, k_noise = jax.random.split(key)
        nuisance = prior_pose_nuisance(self.operator, batch, k_nuis, n_p * self.n_draws)
        clean = self.operator.clean_paired(jnp.repeat(positions, self.n_draws, 0), nuisance)
        sims = self.operator.add_noise(k_noise, clean)
        phi_sim = self.features(sims, nuisance).reshape(n_p, self.n_draws, -1)
        phi_obs = jax.lax.stop_gradient(self.features(batch.values, batch.nuisance))
        q = jnp.full((phi_obs.shape[0],), 1.0 / phi_obs.shape[0], phi_obs.dtype)
        return linear_feature_mmd2(phi_sim, weights, phi_obs, q)
