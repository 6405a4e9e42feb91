"""Discretize-then-optimize baselines: fixed-support reweighting, per-image MAP, and a
Gaussian mixture in ``x``, all fitted through the image likelihood (scikit-learn style:
``fit(operator, observations)`` or ``fit_loglik(L)`` return ``self``; learned attributes
end in ``_``). ``fit_baseline`` is the one entry point used by ``cryosip baseline``.
"""

from cryosip.baselines.api import (
    METHODS,
    BaselineConfig,
    BaselineResult,
    fit_baseline,
    make_estimator,
)
from cryosip.baselines.em import EMFit, em_weights, mixture_log_likelihood, responsibilities
from cryosip.baselines.likelihood import log_likelihood_matrix
from cryosip.baselines.mixture import GaussianMixtureX
from cryosip.baselines.reweighting import PerImageMAP, Reweighting
from cryosip.baselines.support import grid_support, trajectory_support

__all__ = [
    "METHODS",
    "BaselineConfig",
    "BaselineResult",
    "EMFit",
    "GaussianMixtureX",
    "PerImageMAP",
    "Reweighting",
    "em_weights",
    "fit_baseline",
    "grid_support",
    "log_likelihood_matrix",
    "make_estimator",
    "mixture_log_likelihood",
    "responsibilities",
    "trajectory_support",
]
