r"""Noise level and image scale of a particle stack, estimated from the images alone.

Real stacks are normalised (RELION scales each particle's background to mean 0, std 1), so
the observed image is ``y = a * G(x, w) + b + sigma * eps`` with an unknown contrast
``a`` (sign included), offset ``b`` and noise ``sigma``. Estimates:

* ``b`` and ``sigma`` from the **background**: pixels outside a disc of radius
  ``mask_radius_fraction * box/2`` around the centre, where the particle contributes
  little (the mean and standard deviation of those pixels, pooled over images);
* ``a``, with known poses, by joint maximum likelihood with weights on a grid of
  conformations (:func:`contrast_mixture_em`): a least-squares fit to one reference
  conformation is biased when the images vary with ``x`` (0.71 instead of 1 on the hinge
  toy). With unknown poses the pairing is lost and ``|a|`` comes from the power:
  ``a^2 = (E|y-b|^2 - D sigma^2) / E|g|^2``, its sign from the mean over the central disc
  compared with the model's.

The data are then mapped to model units, ``y' = (y - b) / a``, with noise ``sigma / |a|``.
"""

from __future__ import annotations

import numpy as np

from cryosip import conventions
from cryosip.baselines.em import log_responsibilities, weight_update

__all__ = ["background_mask", "background_stats", "contrast_em", "contrast_from_power",
           "contrast_loglik", "contrast_mixture_em"]


def background_mask(box_size: int, mask_radius_fraction: float = 0.8) -> np.ndarray:
    """Boolean ``[box, box]`` mask of pixels farther than ``fraction * box/2`` from the centre.

    >>> int(background_mask(8, 0.5).sum())
    51
    """
    r = np.asarray(conventions.pixel_centres_angstrom(box_size, 1.0), np.float64)
    return np.hypot(r[:, None], r[None, :]) > mask_radius_fraction * box_size / 2


def background_stats(images: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(offset b, noise sigma)``: mean and std of the background pixels of ``images``."""
    pixels = np.asarray(images, np.float64)[:, mask]
    return float(pixels.mean()), float(pixels.std())


def contrast_from_power(images: np.ndarray, model_images: np.ndarray, offset: float,
                        noise_std: float, mask: np.ndarray) -> float:
    """``|a|`` from excess power over the noise, signed by the central mean vs the model's."""
    y = np.asarray(images, np.float64) - offset
    g = np.asarray(model_images, np.float64)
    n_pix = y.shape[1] * y.shape[2]
    excess = np.mean(np.sum(y**2, axis=(1, 2))) - n_pix * noise_std**2
    power = np.mean(np.sum(g**2, axis=(1, 2)))
    magnitude = np.sqrt(max(excess, 0.0) / power)
    sign = np.sign(np.mean(y[:, ~mask]) * np.mean(g[:, ~mask])) or 1.0
    return float(sign * magnitude)


def contrast_loglik(c: np.ndarray, power: np.ndarray, a, sigma: float, log_pi: np.ndarray):
    r"""``(ell, gamma)`` of ``y_n ~ sum_k pi_k N(a G_nk + b, sigma^2 I)`` from
    ``c_nk = <y_n - b, G_nk>`` and ``P_nk = |G_nk|^2``: ``ell = sum_n log sum_k pi_k e^{u_nk}``
    (up to a constant) with ``u_nk = (a c_nk - a^2 P_nk / 2) / sigma^2``. ``c`` may be batched
    ``[..., n, K]`` with ``a`` of shape ``[...]``."""
    a = np.asarray(a, float)[..., None, None]
    log_norm, gamma = log_responsibilities((a * c - 0.5 * a**2 * power) / sigma**2 + log_pi)
    return log_norm.sum(-1), gamma


def contrast_em(c: np.ndarray, power: np.ndarray, sigma: float, log_pi: np.ndarray, a,  # noqa: PLR0913 (data c, P; noise; EM state pi, a; iterations)
                n_iter: int, update_pi: bool = True):
    """``n_iter`` EM updates of ``(a, log pi)`` at fixed ``c``: responsibilities, then
    ``a = sum gamma c / sum gamma P`` and (if ``update_pi``) ``pi = mean_n gamma``."""
    for _ in range(n_iter):
        _, gamma = contrast_loglik(c, power, a, sigma, log_pi)
        a = np.sum(gamma * c, axis=(-2, -1)) / np.sum(gamma * power, axis=(-2, -1))
        if update_pi:
            log_pi = np.log(np.maximum(weight_update(gamma.sum(axis=-2)), 1e-300))
    return a, log_pi


def contrast_mixture_em(images: np.ndarray, model_images: np.ndarray, offset: float,
                        noise_std: float, n_iter: int = 50) -> tuple[float, np.ndarray]:
    r"""Joint maximum likelihood of the contrast ``a`` and grid weights ``pi_k`` (known poses).

    ``model_images [n, K, box, box]`` are ``G(x_k, w_n)`` on a grid of ``K`` conformations.
    The model ``y_n ~ sum_k pi_k N(a G_nk + b, sigma^2 I)`` is fitted by EM
    (:func:`contrast_em`): responsibilities ``gamma_nk``, then ``pi_k = mean_n gamma_nk``
    and the weighted least squares ``a = sum_nk gamma_nk <y_n - b, G_nk> / sum_nk gamma_nk
    |G_nk|^2``, starting from the unweighted one. Unlike a fit to one reference
    conformation, it is not biased when the images vary with ``x``. Returns ``(a, pi)``.
    """
    y = np.asarray(images, np.float64).reshape(len(images), -1) - offset
    g = np.asarray(model_images, np.float64).reshape(*model_images.shape[:2], -1)
    cross = np.einsum("np,nkp->nk", y, g)
    power = np.einsum("nkp,nkp->nk", g, g)
    a0 = float(np.sum(cross) / np.sum(power))
    log_pi = np.full(g.shape[1], -np.log(g.shape[1]))
    a, log_pi = contrast_em(cross, power, noise_std, log_pi, a0, n_iter)
    return float(a), np.exp(log_pi)
