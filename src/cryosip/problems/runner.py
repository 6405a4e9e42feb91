"""Run one toy problem end to end and measure the recovered measure against the truth.

``run_toy(ToyRunConfig(...)) -> ToyRun``: builds the problem, the objective (MMD with a
multi-bandwidth Gaussian kernel at ``median * (1/8, 1/4, 1/2, 1)`` of the observations, noise
integrated out; or KL), the solver (Wasserstein, or Wasserstein-Fisher-Rao with
``wfr=True``), runs :func:`cryosip.flows.run_flow` and reports W1/W2 to the truth (of the
identifiable part: ``|x|`` for toy (c)) beside the finite-sample floor (the same distance
for ``n_obs`` true samples, mean over repeats; :func:`cryosip.metrics.finite_sample_floor`
computes the same for any sampler).

Initialisations: ``"moments"`` places the particles at the quantiles of the Gaussian with
the observations' mean and covariance (per axis); ``"wrong_mode"`` (toy a) puts 90% of the
particles (and mass) in the minor mode.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import stats

from cryosip.discrepancies import MultiGaussianKernel, median_bandwidth
from cryosip.flows import (
    FlowConfig,
    FlowProblem,
    FlowResult,
    KLObjective,
    MMDObjective,
    SolverConfig,
    fit_measure,
)
from cryosip.measures import ParticleMeasure
from cryosip.metrics import finite_sample_floors, wasserstein_1d_to_quantile, wasserstein_nd
from cryosip.problems.toys import ToyProblem, make_toy
from cryosip.seeds import jax_key, numpy_rng

__all__ = ["DEFAULT_N_DRAWS", "ToyRun", "ToyRunConfig", "default_solver_config",
           "initial_measure", "run_toy"]

DEFAULT_N_DRAWS = {"mmd": 800, "kl": 64}
"""Nuisance draws per step when ``n_draws`` is not given: MMD 800 (8 per particle for the
default 100 particles), KL 64 (shared by all particles), the toys' numbers before
``n_draws`` meant per step (issue 10)."""


class ToyRunConfig(BaseModel):
    """One toy run; ``solver=None`` takes :func:`default_solver_config`.

    ``n_draws`` is nuisance draws per step, as reconstruct's ``objective.n_draws``: KL's
    importance sampling uses them all, shared by every particle; MMD shares them out as
    ``max(1, n_draws // n_particles)`` per particle. Not given: :data:`DEFAULT_N_DRAWS` of
    the discrepancy.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    problem: Literal["a", "b", "c"] = "a"
    discrepancy: Literal["mmd", "kl"] = "mmd"
    wfr: bool = False
    n_obs: int = Field(5000, ge=2)
    n_particles: int = Field(100, ge=2)
    steps: int = Field(300, ge=1)
    seed: int = 0
    init: Literal["moments", "wrong_mode"] = "moments"
    batch_size: int | None = Field(1000, ge=1)
    n_draws: int = Field(None, ge=1)  # None: DEFAULT_N_DRAWS[discrepancy] (filled below)
    floor_repeats: int = Field(30, ge=2)
    solver: SolverConfig | None = None
    progress: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_draws(cls, data):
        if isinstance(data, dict) and data.get("n_draws") is None:
            kind = str(data.get("discrepancy", "mmd"))
            data = {**data, "n_draws": DEFAULT_N_DRAWS.get(kind, DEFAULT_N_DRAWS["mmd"])}
        return data


def default_solver_config(discrepancy: str, wfr: bool, steps: int) -> SolverConfig:
    """The toys' numbers for the one step-size rule of :mod:`cryosip.flows.solvers`, chosen by
    measurement on toy (a) (docs/sip-core.md, benchmarks/toy_flows.py): ``h_0 = 1`` so the
    cap of 0.05 (units of ``x``, domain [-5, 5]) binds, decay ``4 / steps``."""
    weight_rate = (0.1 if discrepancy == "mmd" else 0.3) if wfr else 0.0
    return SolverConfig(
        step_size=1.0,
        max_displacement=0.05,
        step_decay=4.0 / steps,
        temperature=0.01 if discrepancy == "kl" else 0.0,
        weight_rate=weight_rate,
        resample_ess_fraction=0.5 if wfr else 0.0,
        resample_jitter=0.05,
    )


@dataclasses.dataclass(frozen=True)
class ToyRun:
    """A finished toy run: W1/W2 of the recovered measure and their floors (mean, sd)."""

    config: ToyRunConfig
    problem: ToyProblem
    result: FlowResult
    w1: float
    w2: float
    w1_init: float
    w2_init: float
    floor_w1: tuple[float, float]
    floor_w2: tuple[float, float]

    def summary(self) -> dict:
        return {
            "problem": self.config.problem, "discrepancy": self.config.discrepancy,
            "wfr": self.config.wfr, "init": self.config.init, "status": self.result.status.value,
            "w1": self.w1, "w2": self.w2, "w1_init": self.w1_init, "w2_init": self.w2_init,
            "floor_w1": self.floor_w1[0], "floor_w1_sd": self.floor_w1[1],
            "floor_w2": self.floor_w2[0], "floor_w2_sd": self.floor_w2[1],
            "steps": self.result.n_steps, "wall_s": self.result.timings["total_s"],
        }


def initial_measure(problem: ToyProblem, n_particles: int, init: str,
                    seed: int = 0) -> ParticleMeasure:
    """Particles at Gaussian quantiles matching the observations (``"moments"``), or 90% of
    them in the minor mode of toy (a) (``"wrong_mode"``)."""
    levels = (np.arange(n_particles) + 0.5) / n_particles
    dim = problem.truth.dim
    if init == "wrong_mode":
        n_wrong = int(round(0.9 * n_particles))
        minor, major = (problem.truth.components[k] for k in np.argsort(problem.truth.weights)[:2])
        x = np.concatenate([
            minor.mean[0] + minor.std[0] * stats.norm.ppf((np.arange(n_wrong) + 0.5) / n_wrong),
            major.mean[0] + major.std[0]
            * stats.norm.ppf((np.arange(n_particles - n_wrong) + 0.5) / (n_particles - n_wrong)),
        ])[:, None]
    elif dim == 1:
        y = np.asarray(problem.observations.values[:, 0])
        x = (y.mean() + y.std() * stats.norm.ppf(levels))[:, None]
    else:
        rng = numpy_rng(seed, "init")
        scale = np.sqrt(2.0) * np.std(np.asarray(problem.observations.values))
        x = scale * rng.standard_normal((n_particles, dim))
    x = problem.domain.project(jnp.asarray(x, jnp.float32))
    return ParticleMeasure.uniform(x)


def _objective(problem: ToyProblem, config: ToyRunConfig):
    if config.discrepancy == "kl":
        return KLObjective(problem.operator, n_draws=config.n_draws)
    h = float(median_bandwidth(problem.observations.values))
    kernel = MultiGaussianKernel(h * jnp.array([0.125, 0.25, 0.5, 1.0]))
    per_particle = max(1, config.n_draws // config.n_particles)  # n_draws is per step
    return MMDObjective(problem.operator, kernel, n_draws=per_particle)


def _reference(problem: ToyProblem, seed: int) -> np.ndarray:
    """The truth as a large sample of its identifiable part: 400 000 sorted values in 1-D
    (its quantile function), 1000 points in d-D (exact OT by assignment)."""
    rng = numpy_rng(seed, "evaluate")
    if problem.truth.dim == 1:
        return np.sort(problem.identifiable(problem.truth.sample(rng, 400_000))[:, 0])
    return problem.identifiable(problem.truth.sample(rng, 1000))


def _distances(problem: ToyProblem, positions, weights, ref) -> tuple[float, float]:
    """(W1, W2) between the identifiable part of a measure and of the truth."""
    x = problem.identifiable(np.asarray(positions))
    if problem.truth.dim == 1:
        quantile = lambda t: ref[np.clip(np.ceil(t * ref.size).astype(int) - 1, 0, ref.size - 1)]
        return (wasserstein_1d_to_quantile(x, weights, quantile, 1),
                wasserstein_1d_to_quantile(x, weights, quantile, 2))
    x = _equal_mass_copies(x, weights, ref.shape[0])
    return wasserstein_nd(x, None, ref, None, 1), wasserstein_nd(x, None, ref, None, 2)


def _equal_mass_copies(x: np.ndarray, weights, n: int) -> np.ndarray:
    """``n`` uniform points approximating ``sum_i w_i delta_{x_i}`` (largest-remainder
    rounding of ``n w_i`` copies; error at most ``1/n`` of mass per particle), so d-D exact OT
    is an assignment problem."""
    w = np.full(len(x), 1.0 / len(x)) if weights is None else np.asarray(weights) / np.sum(weights)
    counts = np.floor(n * w).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(n * w - counts)[::-1][:rest]] += 1
    return np.repeat(x, counts, axis=0)


def _floors(problem, config, ref, rng):
    """Mean and sd of (W1, W2) of ``n_obs`` true samples (d-D: ``min(n_obs, 1000)``, the
    reference size, so the d-D floor is that of 1000 samples when ``n_obs`` is larger)."""
    one_d = problem.truth.dim == 1
    n = config.n_obs if one_d else min(config.n_obs, ref.shape[0])
    repeats = config.floor_repeats if one_d else min(config.floor_repeats, 5)
    return tuple(finite_sample_floors(problem.truth.sample,
                                      lambda s: _distances(problem, s, None, ref), n, rng,
                                      repeats))


def run_toy(config: ToyRunConfig) -> ToyRun:
    """Run the flow on one toy problem and measure it (module docstring)."""
    problem = make_toy(config.problem, config.n_obs, config.seed)
    solver_cfg = config.solver or default_solver_config(
        config.discrepancy, config.wfr, config.steps)
    init = initial_measure(problem, config.n_particles, config.init, config.seed)
    flow_cfg = FlowConfig(max_steps=config.steps, batch_size=config.batch_size,
                          history_every=max(1, config.steps // 30), progress=config.progress)
    flow = FlowProblem(_objective(problem, config), init, problem.observations, problem.domain)
    result = fit_measure(flow, solver_cfg, flow_cfg, jax_key(config.seed, "flow"))
    ref = _reference(problem, config.seed)
    w1, w2 = _distances(problem, *result.measure.to_numpy(), ref)
    w1_init, w2_init = _distances(problem, *init.to_numpy(), ref)
    floor_w1, floor_w2 = _floors(problem, config, ref, numpy_rng(config.seed, "floor"))
    return ToyRun(config, problem, result, w1, w2, w1_init, w2_init, floor_w1, floor_w2)
