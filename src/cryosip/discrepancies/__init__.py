"""Discrepancies between a model push-forward and the data: MMD (kernels) and forward KL.

Generic: these modules see arrays of samples or log-likelihoods, never an operator.
"""

from cryosip.discrepancies.kernels import (
    AbstractKernel,
    EnergyKernel,
    GaussianKernel,
    InverseMultiquadricKernel,
    MultiGaussianKernel,
    median_bandwidth,
)
from cryosip.discrepancies.kl import gaussian_kl, negative_log_likelihood, responsibilities
from cryosip.discrepancies.mmd import (
    conditional_mmd2,
    gaussian_mmd2_closed_form,
    kernel_sum,
    mmd2,
    noise_marginalised_mmd2,
    squared_distances,
)

__all__ = [
    "AbstractKernel",
    "EnergyKernel",
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
    "responsibilities",
    "squared_distances",
]
