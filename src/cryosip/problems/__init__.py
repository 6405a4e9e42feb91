"""Toy stochastic inverse problems with known truth, their operators, and a runner."""

from cryosip.problems.operators import (
    AbsoluteValueOperator,
    RandomAffineOperator,
    RandomProjectionOperator,
)
from cryosip.problems.toys import ToyProblem, bimodal_affine, folded_1d, make_toy, projection_2d
from cryosip.problems.truth import GaussianMixture

__all__ = [
    "AbsoluteValueOperator",
    "GaussianMixture",
    "RandomAffineOperator",
    "RandomProjectionOperator",
    "ToyProblem",
    "bimodal_affine",
    "folded_1d",
    "make_toy",
    "projection_2d",
]
