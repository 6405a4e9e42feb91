"""Validated configuration of a flow: the solver's numbers and the driver's loop settings.

Both are pydantic models, frozen, rejecting unknown keys.

>>> SolverConfig(step_size=0.1).temperature
0.0
>>> FlowConfig(max_steps=20, history_every=5).checkpoint_every is None
True
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FlowConfig", "SolverConfig"]


class SolverConfig(BaseModel):
    """Numbers of one explicit-Euler step (see :mod:`cryosip.flows.solvers`).

    The one step-size rule (:mod:`cryosip.flows.solvers`): ``h_k = min(h_0, max_displacement
    / max_j |v_j|) / (1 + step_decay * k)``. ``max_displacement`` caps the largest particle
    drift per step, in units of ``x`` (all particles share the reduced step, so it is a
    time-step rule, not a per-particle clip). ``step_size`` is ``h_0``; ``None`` sets it from
    the first velocity, ``h_0 = max_displacement / max_j |v_j(0)|``, so that the fastest
    particle moves ``max_displacement`` at step 0 (needs a finite ``max_displacement``;
    :func:`cryosip.flows.builder.build_solver` resolves it).
    ``weight_rate > 0`` selects the Wasserstein-Fisher-Rao solver (Fisher-Rao step per
    iteration; resampling with jitter, in units of ``x``, when the effective sample size is
    below ``resample_ess_fraction * n_particles``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_size: float | None = Field(0.1, gt=0)
    max_displacement: float = Field(float("inf"), gt=0)
    step_decay: float = Field(0.0, ge=0)
    temperature: float = Field(0.0, ge=0)
    weight_rate: float = Field(0.0, ge=0)
    max_log_weight_change: float = Field(1.0, gt=0)
    resample_ess_fraction: float = Field(0.0, ge=0, le=1)
    resample_jitter: float = Field(0.0, ge=0)


    @model_validator(mode="after")
    def _auto_step_needs_a_cap(self) -> SolverConfig:
        if self.step_size is None and self.max_displacement == float("inf"):
            raise ValueError("step_size=None (set from the first velocity) needs a finite "
                             "max_displacement")
        return self


class FlowConfig(BaseModel):
    """Settings of :func:`cryosip.flows.run_flow` (the loop, not the numerics of a step).

    ``batch_size`` observations are drawn without replacement at each step (``None``: all).
    The loop runs in chunks of ``history_every`` jitted steps; positions/weights are saved
    at chunk ends and the loss at every step. Convergence (``tol`` set): the mean loss of a
    chunk changed by at most ``tol * max(1, |previous mean|)`` after ``min_steps``.
    ``checkpoint_every`` must be a multiple of ``history_every``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int = Field(500, ge=1)
    batch_size: int | None = Field(None, ge=1)
    history_every: int = Field(10, ge=1)
    tol: float | None = Field(None, gt=0)
    min_steps: int = Field(0, ge=0)
    checkpoint_every: int | None = Field(None, ge=1)
    progress: bool = False

    @model_validator(mode="after")
    def _checkpoint_on_chunk(self) -> FlowConfig:
        if self.checkpoint_every is not None and self.checkpoint_every % self.history_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"history_every ({self.history_every})"
            )
        return self
