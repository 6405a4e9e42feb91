"""Toy stochastic inverse problems with known truth, their operators, and a runner."""

from cryosip.problems.operators import (
    AbsoluteValueOperator,
    RandomAffineOperator,
    RandomProjectionOperator,
)
from cryosip.problems.toys import ToyProblem, bimodal_affine, folded_1d, make_toy, projection_2d
from cryosip.problems.truth import TruthMixture

__all__ = [
    "AbsoluteValueOperator",
    "RandomAffineOperator",
    "RandomProjectionOperator",
    "ToyProblem",
    "TruthMixture",
    "bimodal_affine",
    "folded_1d",
    "make_toy",
    "projection_2d",
]
