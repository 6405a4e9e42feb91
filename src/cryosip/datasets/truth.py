"""Ground-truth mixtures of simulated data sets: :mod:`cryosip.problems.truth`, the one
implementation the toy problems use too, re-exported under its data-set name."""

from cryosip.problems.truth import (
    BetaComponent,
    Component,
    GaussianComponent,
    TruthMixture,
    UniformComponent,
)

__all__ = ["BetaComponent", "Component", "GaussianComponent", "TruthMixture",
           "UniformComponent"]
