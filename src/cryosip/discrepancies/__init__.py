"""Discrepancies between a model push-forward and the data: MMD (kernels) and forward KL.

Generic: these modules see arrays of samples or log-likelihoods, never an operator. One
interface (:mod:`cryosip.discrepancies.base`) and one registry, :data:`DISCREPANCIES`
(``"kl"``: :class:`ForwardKL`, ``"mmd"``: :class:`MMD`); ``docs/extending.md`` adds one.
"""

from cryosip.discrepancies.base import (
    DISCREPANCIES,
    AbstractDiscrepancy,
    AbstractLikelihoodDiscrepancy,
    AbstractSampleDiscrepancy,
    register_discrepancy,
)
from cryosip.discrepancies.kernels import (
    AbstractKernel,
    EnergyKernel,
    GaussianKernel,
    InverseMultiquadricKernel,
    MultiGaussianKernel,
    median_bandwidth,
)
from cryosip.discrepancies.kl import (
    ForwardKL,
    gaussian_kl,
    negative_log_likelihood,
    responsibilities,
)
from cryosip.discrepancies.mmd import (
    MMD,
    conditional_mmd2,
    gaussian_mmd2_closed_form,
    kernel_sum,
    mmd2,
    noise_marginalised_mmd2,
    squared_distances,
)

__all__ = [
    "DISCREPANCIES",
    "MMD",
    "AbstractDiscrepancy",
    "AbstractKernel",
    "AbstractLikelihoodDiscrepancy",
    "AbstractSampleDiscrepancy",
    "EnergyKernel",
    "ForwardKL",
    "GaussianKernel",
    "InverseMultiquadricKernel",
    "MultiGaussianKernel",
    "conditional_mmd2",
    "gaussian_kl",
    "gaussian_mmd2_closed_form",
    "kernel_sum",
    "median_bandwidth",
    "mmd2",
    "negative_log_likelihood",
    "noise_marginalised_mmd2",
    "register_discrepancy",
    "responsibilities",
    "squared_distances",
]
