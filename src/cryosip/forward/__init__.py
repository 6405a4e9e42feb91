"""The cryo-EM forward model: Gaussian atoms -> rotated, shifted, CTF-filtered images.

Physical parts are separate small objects: :class:`ImageConfig` (geometry),
:class:`ImageNuisance` / :class:`NuisancePrior` (pose, shift, CTF parameters),
:class:`GaussianProjector` (analytic projection), :class:`Optics` (CTF), composed by
:class:`ImageModel`; :class:`CryoEMOperator` is the random forward operator of the SIP.
All conventions live in :mod:`cryosip.conventions` (``docs/conventions.md``).

Extension points (:mod:`cryosip.forward.base`): :class:`AbstractPose`,
:class:`AbstractProjector` (registered by name in :data:`PROJECTORS`) and
:class:`AbstractCTF`; ``ImageModel`` takes any implementation. Image feature maps for
MMD kernels: :class:`RadialPowerSpectrum` (:mod:`cryosip.forward.features`).
"""

from cryosip.forward.base import (
    PROJECTORS,
    AbstractCTF,
    AbstractPose,
    AbstractProjector,
    register_projector,
)
from cryosip.forward.config import ImageConfig
from cryosip.forward.ctf import Optics, apply_ctf, ctf_rfft, sin_fast
from cryosip.forward.features import RadialPowerSpectrum
from cryosip.forward.image_model import ImageModel, render_images, rotate_and_shift
from cryosip.forward.noise import add_noise, noise_std_for_snr
from cryosip.forward.operator import CryoEMOperator
from cryosip.forward.pose import ImageNuisance, NuisancePrior
from cryosip.forward.projector import (
    GaussianProjector,
    axis_profiles,
    footprint_pixels_for,
    window_pixels_for,
)
from cryosip.forward.volume import backproject, map_correlation, render_volume

__all__ = [
    "PROJECTORS",
    "AbstractCTF",
    "AbstractPose",
    "AbstractProjector",
    "CryoEMOperator",
    "GaussianProjector",
    "ImageConfig",
    "ImageModel",
    "ImageNuisance",
    "NuisancePrior",
    "Optics",
    "RadialPowerSpectrum",
    "add_noise",
    "apply_ctf",
    "axis_profiles",
    "footprint_pixels_for",
    "backproject",
    "ctf_rfft",
    "sin_fast",
    "map_correlation",
    "noise_std_for_snr",
    "render_images",
    "register_projector",
    "render_volume",
    "rotate_and_shift",
    "window_pixels_for",
]
