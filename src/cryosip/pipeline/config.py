"""Typed, frozen configuration of ``cryosip reconstruct`` (unknown keys are rejected).

Defaults were chosen by measurement on the AdK path (``docs/tutorial.md`` has the runs):
known poses, KL, 32 particles, 300 steps of minibatches of 128 images at a flow box of 32
pixels (Fourier crop from 64), displacement cap 0.02 of the unit interval per step.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ReconstructConfig"]


class ReconstructConfig(BaseModel):
    """Every number of a reconstruction; ``particles`` and ``model`` say what to fit.

    ``particles`` is a RELION STAR or a cryoSPARC ``.cs`` file; ``datadir`` is searched
    first for its stacks and ``pixel_size_angstrom`` overrides the file's pixel size
    (:func:`cryosip.io.read_particles`).

    ``registration="translation"`` (known poses) first estimates the model's global 3-D offset
    from the images and moves the model by it (:mod:`cryosip.pipeline.register`).

    ``batch_size=None`` takes 128 images per minibatch for KL and 256 for MMD, whose
    minibatch gradients are noisier (AdK, N = 10000, SNR 0.01, known poses: MMD W1 0.043
    at 128, 0.038 at 256).

    ``step_size=None`` sets the time step from the first gradient so that the fastest
    particle moves ``max_displacement`` (in units of ``x``) at step 0; ``step_decay``
    then shrinks it as ``h_k = h_0 / (1 + step_decay * k)``. ``flow_box`` Fourier-crops
    the images (and renders the model) at that box: faster, and the fine detail it drops
    carries little signal at low SNR. ``mmd_bandwidth`` is relative: on pixels the Gaussian
    kernel has ``h^2 = mmd_bandwidth * D * sigma^2`` (``D`` pixels, ``sigma`` the noise);
    on ``mmd_features="power-spectrum"`` (:mod:`cryosip.measures.features`) ``h`` is
    ``mmd_bandwidth`` times the median distance between features of prior simulations.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    particles: str
    datadir: str | None = None
    pixel_size_angstrom: float | None = Field(None, gt=0)
    model: str | dict = "adk-path"
    poses: Literal["known", "unknown"] = "known"
    registration: Literal["none", "translation"] = "translation"
    discrepancy: Literal["kl", "mmd"] = "kl"
    n_particles: int = Field(32, ge=1)
    steps: int = Field(300, ge=1)
    step_size: float | None = Field(None, gt=0)
    max_displacement: float = Field(0.02, gt=0)
    step_decay: float = Field(0.01, ge=0)
    temperature: float = Field(0.0, ge=0)
    batch_size: int | None = Field(None, ge=1)
    n_draws: int = Field(256, ge=1)
    mmd_bandwidth: float = Field(1.0, gt=0)
    mmd_features: Literal["pixels", "power-spectrum"] = "pixels"
    wfr: bool = True
    weight_rate: float = Field(1.0, gt=0)
    flow_box: int | None = Field(32, ge=8)
    heldout_fraction: float = Field(0.05, ge=0, lt=1)
    noise_std: float | None = Field(None, gt=0)
    contrast: float | None = None
    offset: float | None = None
    seed: int = 0
    history_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    progress: bool = True

    @property
    def minibatch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 128 if self.discrepancy == "kl" else 256
