"""Particle Wasserstein (and Wasserstein-Fisher-Rao) gradient flows: objectives, solvers, loop."""

from cryosip.flows.builder import FlowProblem, build_solver, fit_measure
from cryosip.flows.config import FlowConfig, SolverConfig
from cryosip.flows.domains import Domain
from cryosip.flows.objectives import KLObjective, MMDObjective, SampleObjective, full_gradient
from cryosip.flows.run import Checkpointer, FlowResult, FlowStatus, run_flow
from cryosip.flows.solvers import (
    FlowState,
    WassersteinFisherRao,
    WassersteinFlow,
    initial_step_size,
    make_solver,
)

__all__ = [
    "Checkpointer",
    "Domain",
    "FlowConfig",
    "FlowProblem",
    "FlowResult",
    "FlowState",
    "FlowStatus",
    "KLObjective",
    "MMDObjective",
    "SampleObjective",
    "SolverConfig",
    "WassersteinFisherRao",
    "WassersteinFlow",
    "build_solver",
    "fit_measure",
    "full_gradient",
    "initial_step_size",
    "make_solver",
    "run_flow",
]
