"""Synthetic data sets with known truth: truth mixtures, the simulate config and pipeline."""

from cryosip.datasets.config import (
    OpticsConfig,
    SimulateConfig,
    load_simulate_config,
    parse_simulate_config,
)
from cryosip.datasets.simulate import SimulationResult, simulate_dataset, simulation_operator
from cryosip.problems.truth import (
    BetaComponent,
    GaussianComponent,
    TruthMixture,
    UniformComponent,
)

__all__ = [
    "BetaComponent",
    "GaussianComponent",
    "OpticsConfig",
    "SimulateConfig",
    "SimulationResult",
    "TruthMixture",
    "UniformComponent",
    "simulation_operator",
    "load_simulate_config",
    "parse_simulate_config",
    "simulate_dataset",
]
