r"""Explicit-Euler particle solvers with explicit state: ``init(measure)``, ``step(...)``.

**Wasserstein flow** (:class:`WassersteinFlow`). One step of the flow of
``D(mu) + int V dmu + T int mu log mu`` (discrepancy, prior potential ``V``, entropy at
temperature ``T``): with the particle velocity ``v_i = -grad_{x_i} D / w_i - grad V(x_i)``
(the scaling rule, :func:`cryosip.measures.particle_velocity`),

.. math::  x_i \leftarrow \Pi\big(x_i + h\, v_i + \sqrt{2 T h}\, \xi_i\big),\qquad
           h = \frac{1}{1 + c k}\min\Big(h_0,\ \frac{\delta_{\max}}{\max_j |v_j|}\Big),

``xi_i ~ N(0, I)`` (Euler-Maruyama for the Fokker-Planck term) and ``Pi`` the reflection or
wrap of :class:`~cryosip.flows.domains.Domain`. Step-size control: the displacement cap
``delta_max`` (units of ``x``) bounds the largest drift per step by shrinking the common time
step (all particles keep their relative speeds, so it is a change of time variable, not a
distortion of the flow). It is needed because velocity scales differ by orders of
magnitude between MMD and KL (KL velocities scale like ``1/sigma^2``) and along a run
(a particle far from the data can move fast); a cap keeps particles from jumping over
modes. ``h_0`` is given, or (``step_size=None``, :func:`initial_step_size`) set from the
first velocity as ``h_0 = delta_max / max_j |v_j(0)|``, so the first step moves the fastest
particle by ``delta_max`` and later steps never exceed it in time. This is the only
step-size rule: every caller (``reconstruct``, the toys, the benchmarks) goes through it
(:mod:`cryosip.flows.builder`). The decay ``c`` (default 0) shrinks the controlled step
like ``1/k`` (Robbins-Monro) so that the noise of minibatches and nuisance draws averages
out instead of leaving the particles jittering at the noise level.

**Wasserstein-Fisher-Rao** (:class:`WassersteinFisherRao`): positions move as above; weights
follow the Fisher-Rao (birth-death) flow with the first variation
``g_i = dD/dmu(x_i) = dD/dw_i`` (autodiff gradient with respect to weights),

.. math::  \log w_i \leftarrow \log w_i - \tau_w \big(g_i - \textstyle\sum_j w_j g_j\big),

clipped to ``max_log_weight_change`` per step and renormalised (optionally followed by
systematic resampling with a small jitter when the effective sample size drops below a
fraction of ``M``, so that heavy particles split and light ones are recycled), so mass moves between
separated modes without transport. ``tau_w`` is the Fisher-Rao step per iteration, kept
separate from the transport step ``h`` because ``h`` is shrunk by the displacement cap
(a transport-stability rule that says nothing about the weights); its scale follows the
scale of the first variation (``O(1)`` for KL, ``O(k(0))`` for MMD).

>>> import jax, jax.numpy as jnp
>>> from cryosip.measures import ParticleMeasure
>>> solver = WassersteinFlow(step_size=0.5)
>>> objective = lambda x, w, batch, key: jnp.sum(w * jnp.sum(x**2, axis=1)) / 2
>>> state = solver.init(ParticleMeasure.uniform(jnp.ones((3, 1))))
>>> state, loss = solver.step(state, objective, None, jax.random.key(0), 0)
>>> state.positions[:, 0].tolist(), float(state.time)
([0.5, 0.5, 0.5], 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from cryosip.flows.config import SolverConfig
from cryosip.flows.domains import Domain
from cryosip.measures import ParticleMeasure, particle_velocity

__all__ = ["FlowState", "WassersteinFisherRao", "WassersteinFlow", "initial_step_size",
           "make_solver"]

#: Floor on log-weights in the Fisher-Rao step: a weight that underflows to 0 would make the
#: velocity ``-grad/w`` undefined (0/0); ``e^-30 ~ 1e-13`` is mass no metric can see.
MIN_LOG_WEIGHT = -30.0

Potential = Callable[[Float[Array, " dim"]], Float[Array, ""]]


class FlowState(eqx.Module):
    """Particles and the flow time ``time`` reached (sum of the effective steps)."""

    positions: Float[Array, "n_particles dim"]
    weights: Float[Array, " n_particles"]
    time: Float[Array, ""]

    def measure(self) -> ParticleMeasure:
        return ParticleMeasure(self.positions, self.weights)


def _init(measure: ParticleMeasure) -> FlowState:
    positions = jnp.asarray(measure.positions)
    return FlowState(positions, jnp.asarray(measure.weights), jnp.zeros((), positions.dtype))


class WassersteinFlow(eqx.Module):
    """Explicit Euler(-Maruyama) Wasserstein gradient flow (module docstring)."""

    step_size: float
    max_displacement: float = float("inf")
    step_decay: float = 0.0
    temperature: float = 0.0
    prior: Potential | None = eqx.field(static=True, default=None)
    domain: Domain | None = None

    def init(self, measure: ParticleMeasure) -> FlowState:
        return _init(measure)

    def drift(self, positions, weights, grad_positions):
        """``v_i = -grad_{x_i} D / w_i - grad V(x_i)``."""
        v = particle_velocity(grad_positions, weights)
        if self.prior is not None:
            v = v - jax.vmap(jax.grad(self.prior))(positions)
        return v

    def move(
        self,
        positions: Float[Array, "n_particles dim"],
        velocity: Float[Array, "n_particles dim"],
        key: PRNGKeyArray,
        step_index: Int[Array, ""] | int,
    ) -> tuple[Float[Array, "n_particles dim"], Float[Array, ""]]:
        """One transport step with step-size control; returns ``(positions, h)``."""
        speed = jnp.max(jnp.linalg.norm(velocity, axis=1))
        h = jnp.minimum(self.step_size, self.max_displacement / jnp.maximum(speed, 1e-30))
        h = h / (1.0 + self.step_decay * step_index)
        new = positions + h * velocity
        if self.temperature > 0:
            noise = jax.random.normal(key, positions.shape, positions.dtype)
            new = new + jnp.sqrt(2.0 * self.temperature * h) * noise
        if self.domain is not None:
            new = self.domain.project(new)
        return new, h

    def step(self, state: FlowState, objective: Callable, batch, key, step_index):
        """One step; returns ``(new_state, loss)`` (loss at the start of the step)."""
        k_obj, k_move = jax.random.split(key)
        loss, grad = jax.value_and_grad(objective)(state.positions, state.weights, batch, k_obj)
        velocity = self.drift(state.positions, state.weights, grad)
        positions, h = self.move(state.positions, velocity, k_move, step_index)
        return FlowState(positions, state.weights, state.time + h), loss


class WassersteinFisherRao(eqx.Module):
    """Transport by ``transport`` plus a Fisher-Rao (birth-death) step on the weights."""

    transport: WassersteinFlow
    weight_rate: float
    max_log_weight_change: float = 1.0
    resample_ess_fraction: float = 0.0
    resample_jitter: float = 0.0

    def init(self, measure: ParticleMeasure) -> FlowState:
        return _init(measure)

    def reweight(self, weights, first_variation):
        """``log w_i -= tau (g_i - sum_j w_j g_j)``, clipped, renormalised."""
        centred = first_variation - jnp.sum(weights * first_variation)
        change = jnp.clip(-self.weight_rate * centred, -self.max_log_weight_change,
                          self.max_log_weight_change)
        log_w = jax.nn.log_softmax(jnp.log(weights) + change)
        return jax.nn.softmax(jnp.maximum(log_w, MIN_LOG_WEIGHT))

    def maybe_resample(self, positions, weights, key):
        """Systematic resampling (plus ``N(0, jitter^2)`` so copies separate) when the
        effective sample size ``1 / sum w^2`` falls below ``resample_ess_fraction * M``."""
        n = weights.shape[0]
        k_pick, k_jitter = jax.random.split(key)
        resampled = ParticleMeasure(positions, weights).resample(k_pick).positions
        resampled = resampled + self.resample_jitter * jax.random.normal(
            k_jitter, positions.shape, positions.dtype
        )
        if self.transport.domain is not None:
            resampled = self.transport.domain.project(resampled)
        low = 1.0 / jnp.sum(weights**2) < self.resample_ess_fraction * n
        uniform = jnp.full_like(weights, 1.0 / n)
        return jnp.where(low, resampled, positions), jnp.where(low, uniform, weights)

    def step(self, state: FlowState, objective: Callable, batch, key, step_index):
        k_obj, k_move, k_resample = jax.random.split(key, 3)
        loss, (g_x, g_w) = jax.value_and_grad(objective, argnums=(0, 1))(
            state.positions, state.weights, batch, k_obj
        )
        velocity = self.transport.drift(state.positions, state.weights, g_x)
        positions, h = self.transport.move(state.positions, velocity, k_move, step_index)
        weights = self.reweight(state.weights, g_w)
        if self.resample_ess_fraction > 0:
            positions, weights = self.maybe_resample(positions, weights, k_resample)
        return FlowState(positions, weights, state.time + h), loss


def initial_step_size(config: SolverConfig, objective: Callable, measure: ParticleMeasure,
                      batch, key: PRNGKeyArray, prior: Potential | None = None) -> float:
    """``h_0`` of ``config``: ``step_size`` if given, else ``max_displacement / max_j |v_j|``
    for the velocity at ``measure`` on ``batch`` (1.0 if that speed is 0 or not finite)."""
    if config.step_size is not None:
        return float(config.step_size)
    grad = jax.jit(jax.grad(objective))(measure.positions, measure.weights, batch, key)
    velocity = WassersteinFlow(1.0, prior=prior).drift(measure.positions, measure.weights, grad)
    speed = float(jnp.max(jnp.linalg.norm(velocity, axis=1)))
    if not math.isfinite(speed) or speed == 0:
        return 1.0
    return config.max_displacement / speed


def make_solver(
    config: SolverConfig, domain: Domain | None = None, prior: Potential | None = None
) -> WassersteinFlow | WassersteinFisherRao:
    """The solver a config describes (Fisher-Rao when ``weight_rate > 0``); ``step_size``
    must be set (:func:`initial_step_size` resolves ``None``)."""
    if config.step_size is None:
        raise ValueError("make_solver needs a step_size; resolve None with initial_step_size")
    transport = WassersteinFlow(
        config.step_size, config.max_displacement, config.step_decay, config.temperature,
        prior, domain,
    )
    if config.weight_rate == 0:
        return transport
    return WassersteinFisherRao(
        transport, config.weight_rate, config.max_log_weight_change,
        config.resample_ess_fraction, config.resample_jitter,
    )
