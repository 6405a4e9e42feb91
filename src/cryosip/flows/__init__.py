"""Particle Wasserstein (and Wasserstein-Fisher-Rao) gradient flows: objectives, solvers, loop."""

from cryosip.flows.config import FlowConfig, SolverConfig
from cryosip.flows.domains import Domain
from cryosip.flows.objectives import KLObjective, MMDObjective, full_gradient
from cryosip.flows.run import Checkpointer, FlowResult, FlowStatus, run_flow
from cryosip.flows.solvers import FlowState, WassersteinFisherRao, WassersteinFlow, make_solver

__all__ = [
    "Checkpointer",
    "Domain",
    "FlowConfig",
    "FlowResult",
    "FlowState",
    "FlowStatus",
    "KLObjective",
    "MMDObjective",
    "SolverConfig",
    "WassersteinFisherRao",
    "WassersteinFlow",
    "full_gradient",
    "make_solver",
    "run_flow",
]
