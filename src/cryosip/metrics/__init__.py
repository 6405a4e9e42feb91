"""Distances between recovered and true measures over conformations, and their floors."""

from cryosip.metrics.wasserstein import (
    finite_sample_floor,
    finite_sample_floors,
    wasserstein_1d,
    wasserstein_1d_to_quantile,
    wasserstein_nd,
)

__all__ = [
    "finite_sample_floor",
    "finite_sample_floors",
    "wasserstein_1d",
    "wasserstein_1d_to_quantile",
    "wasserstein_nd",
]
