r"""Registration: the model's global 3-D offset ``t`` (Å) in the frame of the particles' poses.

A user's model is given in the frame of a consensus map, but nothing guarantees that this
frame is exactly the one in which RELION determined the poses (a re-centred map, a model
fitted with its own origin...). Moving every atom by ``t`` (``r -> r + t``) changes the
image of particle ``n`` (pose ``A_n``, shift ``o_n``) only through its in-plane shift:

.. math:: (A_n (r + t))_{xy} - o_n = (A_n r)_{xy} - (o_n - s_n), \qquad s_n = (A_n t)_{xy},

so the clean image moves by ``s_n`` (Å): in Fourier space
``G_{nk}(t)(f) = G_{nk}(0)(f) e^{-2 pi i f . s_n}``, CTF included (it commutes with shifts).
With ``x`` on a grid ``x_k`` (weights ``pi_k``), contrast ``a``, offset ``b`` and noise
``sigma`` (:mod:`cryosip.pipeline.estimate`), the log-likelihood of the images is

.. math::
   \ell(t, a, \pi) = \sum_n \log \sum_k \pi_k
       \exp\Big(\frac{a\, c_{nk}(t) - a^2 P_{nk}/2}{\sigma^2}\Big) + \mathrm{const},\qquad
   c_{nk}(t) = \frac1D \sum_f \mathrm{Re}\big[\overline{Y_n(f)}\, G_{nk}(0)(f)\,
       e^{-2\pi i f\cdot s_n}\big],

``Y_n`` the spectrum of ``y_n - b``, ``P_{nk} = |G_{nk}|^2`` (independent of ``t``, up to
wrap-around), ``D`` the number of pixels. It is maximised in two stages:

1. **coarse**: ``c_{nk}`` for every integer in-plane shift is one inverse FFT (the
   cross-correlation map); ``t`` on a cube of ``+-search_pixels`` (step
   ``coarse_step_pixels``, flow pixels) reads ``c_{nk}(t)`` by bilinear interpolation at
   ``s_n``, with ``a`` from three EM steps and uniform ``pi``;
2. **refine**: EM updates of ``(a, pi)`` alternating with Newton steps on ``t`` using the
   exact Fourier-phase form of ``c_{nk}(t)`` and its analytic gradient and Hessian
   (checked against finite differences in ``tests/test_register.py``), each step capped at
   one flow pixel.

A second start at ``-centroid`` is tried when the model's centroid lies more than
``search_pixels`` from the origin (coordinates in the map's corner-origin frame, say).
"""

from __future__ import annotations

import dataclasses
import logging

import jax.numpy as jnp
import numpy as np

from cryosip import conventions
from cryosip.baselines.support import tensor_grid
from cryosip.forward import CryoEMOperator, NuisancePrior
from cryosip.pipeline.data import PreparedData, _grid, _reference_images
from cryosip.pipeline.estimate import contrast_em, contrast_loglik
from cryosip.rotations import euler_to_matrix
from cryosip.seeds import numpy_rng
from cryosip.structures.base import AbstractConformationModel
from cryosip.structures.translated import TranslatedModel

__all__ = ["Registration", "boundary_weight_fraction", "mixture_loglik",
           "register_translation", "shift_correlations"]

log = logging.getLogger("cryosip")

OFFSET_WARN_PIXELS = 2.0
"""Warn when ``|t|`` exceeds this many pixels of the stack."""
BOUNDARY_WARN_FRACTION, BOUNDARY_MARGIN = 0.30, 0.02
"""Warn when more than 30% of the weight lies within 2% of the box's edge (non-periodic axes)."""


@dataclasses.dataclass(frozen=True)
class Registration:
    """The estimated offset and what it was estimated from (``record()`` for provenance)."""

    offset_angstrom: tuple[float, float, float]
    pixel_size_angstrom: float
    method: str
    contrast: float
    loglik_gain: float
    n_images: int
    warnings: tuple[str, ...] = ()

    @property
    def offset_pixels(self) -> tuple[float, float, float]:
        return tuple(float(v) / self.pixel_size_angstrom for v in self.offset_angstrom)

    def record(self) -> dict:
        return {"offset_angstrom": list(self.offset_angstrom),
                "offset_pixels": list(self.offset_pixels), "method": self.method,
                "contrast": self.contrast, "loglik_gain": self.loglik_gain,
                "n_images": self.n_images, "warnings": list(self.warnings)}


# ------------------------------------------------------------------ the likelihood in t


_rfft_weights = conventions.rfft_column_weights


def _frequencies(box: int, pixel: float) -> np.ndarray:
    """``[F, 2]`` frequencies ``(k_x, k_y)`` in 1/Å of the flattened ``rfft2`` grid."""
    ky, kx = np.broadcast_arrays(*conventions.rfft_frequencies(box, pixel))
    return np.stack([kx.ravel(), ky.ravel()], axis=1)


@dataclasses.dataclass(frozen=True)
class ShiftCorrelations:
    """``c_nk(t)`` and its derivatives in ``t`` (module docstring); ``P_nk``, rotations."""

    cross: np.ndarray       # [n, K, F] complex: w_f conj(Y_n) G_nk / D
    power: np.ndarray       # [n, K]
    freq: np.ndarray        # [F, 2] 1/Å
    rot_xy: np.ndarray      # [n, 2, 3] rows x, y of A_n
    maps: np.ndarray        # [n, K, box, box] c_nk at integer pixel shifts (wrapped)
    pixel: float

    def value(self, t: np.ndarray, order: int = 0):
        """``c [n, K]`` (and gradient ``[n, K, 3]``, Hessian ``[n, K, 3, 3]`` if ``order``)."""
        s = self.rot_xy @ np.asarray(t, float)                     # [n, 2] Å
        phase = np.exp(-2j * np.pi * (s @ self.freq.T))            # [n, F]
        terms = self.cross * phase[:, None, :]
        c = terms.sum(-1).real
        if not order:
            return c
        k_t = np.einsum("fj,nji->nfi", self.freq, self.rot_xy)     # [n, F, 3]: R_n^T k_f
        grad = (np.einsum("nkf,nfi->nki", terms, k_t) * (-2j * np.pi)).real
        hess = -4 * np.pi**2 * np.einsum("nkf,nfi,nfj->nkij", terms, k_t, k_t).real
        return c, grad, hess

    def coarse(self, ts: np.ndarray) -> np.ndarray:
        """``c [T, n, K]`` at offsets ``ts [T, 3]`` by bilinear reading of the maps."""
        n, k, box, _ = self.maps.shape
        u = np.einsum("nij,tj->tni", self.rot_xy, ts) / self.pixel  # [T, n, 2] pixels (x, y)
        lo = np.floor(u).astype(int)
        frac = u - lo
        out = 0.0
        rows, cols = np.arange(n)[None, :, None], np.arange(k)[None, None, :]
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            wx = frac[..., 0] if dx else 1 - frac[..., 0]
            wy = frac[..., 1] if dy else 1 - frac[..., 1]
            ix, iy = (lo[..., 0] + dx) % box, (lo[..., 1] + dy) % box
            out = out + (wx * wy)[..., None] * self.maps[rows, cols, iy[..., None], ix[..., None]]
        return out


def shift_correlations(images: np.ndarray, refs: np.ndarray, euler_deg: np.ndarray,
                       pixel: float) -> ShiftCorrelations:
    """Precompute the cross-spectra of ``images [n, box, box]`` (offset removed) with
    ``refs [n, K, box, box]`` rendered at ``t = 0`` (model units)."""
    box = images.shape[-1]
    y_hat = np.fft.rfft2(np.asarray(images, np.float64))
    g_hat = np.fft.rfft2(np.asarray(refs, np.float64))
    maps = np.fft.irfft2(y_hat[:, None] * np.conj(g_hat), s=(box, box))
    cross = (_rfft_weights(box) * np.conj(y_hat)[:, None] * g_hat / box**2)
    n, k = refs.shape[:2]
    rot = np.asarray(euler_to_matrix(jnp.asarray(euler_deg, jnp.float32)), np.float64)[:, :2]
    power = np.einsum("nkij,nkij->nk", np.asarray(refs, np.float64), refs)
    return ShiftCorrelations(cross.reshape(n, k, -1), power, _frequencies(box, pixel), rot,
                             maps, pixel)


# the contrast-and-weights EM is the one of the scale estimate (``pipeline.estimate``)
mixture_loglik, _em = contrast_loglik, contrast_em


# ------------------------------------------------------------------ the search


def _coarse(corr: ShiftCorrelations, sigma, centre, search_px, step_px, chunk=256):
    """Best ``t`` of the cube around ``centre`` (uniform ``pi``, ``a`` by 3 EM steps)."""
    axis = np.arange(-search_px, search_px + 1e-9, step_px) * corr.pixel
    ts = centre + tensor_grid([axis, axis, axis])
    log_pi = np.full(corr.power.shape[1], -np.log(corr.power.shape[1]))
    best = (-np.inf, None)
    for start in range(0, len(ts), chunk):
        c = corr.coarse(ts[start:start + chunk])
        a0 = c.sum(axis=(1, 2)) / corr.power.sum()
        a, _ = _em(c, corr.power, sigma, log_pi, a0, 3, update_pi=False)
        ell, _ = mixture_loglik(c, corr.power, a, sigma, log_pi)
        i = int(np.argmax(ell))
        if ell[i] > best[0]:
            best = (float(ell[i]), ts[start + i])
    return best[1]


def _newton_step(corr: ShiftCorrelations, t, a, sigma, log_pi) -> np.ndarray:
    """One Newton step on ``ell(t)`` at fixed ``(a, pi)``, capped at one pixel."""
    c, dc, d2c = corr.value(t, order=2)
    _, gamma = mixture_loglik(c, corr.power, a, sigma, log_pi)
    du, d2u = a * dc / sigma**2, a * d2c / sigma**2
    mean_du = np.einsum("nk,nki->ni", gamma, du)
    grad = mean_du.sum(0)
    hess = (np.einsum("nk,nkij->ij", gamma, d2u + du[..., :, None] * du[..., None, :])
            - np.einsum("ni,nj->ij", mean_du, mean_du))
    if np.all(np.linalg.eigvalsh(hess) < 0):
        step = -np.linalg.solve(hess, grad)
    else:
        step = grad * corr.pixel / max(np.linalg.norm(grad), 1e-300)
    norm = np.linalg.norm(step)
    return step if norm <= corr.pixel else step * corr.pixel / norm


def refine(  # noqa: PLR0913 - the starting point (t, a, pi) and the two stopping numbers
        corr: ShiftCorrelations, t0, sigma: float, a0: float, log_pi0=None,
           n_iter: int = 30, tol_angstrom: float = 1e-3):
    """EM on ``(a, pi)`` alternating with Newton steps on ``t``: ``(t, a, log_pi, ell)``."""
    k = corr.power.shape[1]
    log_pi = np.full(k, -np.log(k)) if log_pi0 is None else log_pi0
    t, a = np.asarray(t0, float).copy(), float(a0)
    for _ in range(n_iter):
        a, log_pi = _em(corr.value(t), corr.power, sigma, log_pi, a, 5)
        step = _newton_step(corr, t, a, sigma, log_pi)
        t = t + step
        if np.linalg.norm(step) < tol_angstrom:
            break
    a, log_pi = _em(corr.value(t), corr.power, sigma, log_pi, a, 5)
    ell, _ = mixture_loglik(corr.value(t), corr.power, a, sigma, log_pi)
    return t, float(a), log_pi, float(ell)


def _loglik_at(corr: ShiftCorrelations, t, sigma: float, a0: float) -> float:
    """``max_{a, pi} ell(t, a, pi)`` by EM at a fixed ``t``."""
    k = corr.power.shape[1]
    c = corr.value(t)
    a, log_pi = _em(c, corr.power, sigma, np.full(k, -np.log(k)), a0, 20)
    return float(mixture_loglik(c, corr.power, a, sigma, log_pi)[0])


def _n_per_axis(dim: int, n_total: int = 12) -> int:
    return max(3, int(round(n_total ** (1.0 / dim))))


def register_translation(data: PreparedData, model: AbstractConformationModel, *,
                         n_images: int = 500, seed: int = 0, search_pixels: float = 4.0,
                         coarse_step_pixels: float = 0.5) -> Registration:
    """Maximum-likelihood offset ``t`` (Å) of ``model`` from the training images (known
    poses), ``x`` on a grid, beside the contrast (module docstring)."""
    rng = numpy_rng(seed, "registration")
    index = np.sort(rng.choice(data.train_index, min(n_images, len(data.train_index)),
                               replace=False))
    images = data.raw_images(index).astype(np.float64) - data.scale.offset
    nuisance = data.stack.nuisance_at(index)
    grid = _grid(model, _n_per_axis(model.dim))
    sigma, pixel = data.scale.noise_std, data.flow_pixel_size_angstrom
    starts = [np.zeros(3)]
    mid = 0.5 * (jnp.asarray(model.lower) + jnp.asarray(model.upper))
    centroid = np.asarray(model.structure_at(mid).positions_angstrom, float).mean(0)
    if np.linalg.norm(centroid) > search_pixels * pixel:
        starts.append(-centroid)
    best = None
    for start in starts:
        moved = model if not np.any(start) else TranslatedModel(model, start)
        op = CryoEMOperator(moved, data.image_config, data.optics, NuisancePrior(), 1.0)
        corr = shift_correlations(images, _reference_images(op, nuisance, grid),
                                  np.asarray(nuisance.euler_deg), pixel)
        t_c = _coarse(corr, sigma, np.zeros(3), search_pixels, coarse_step_pixels)
        a0 = float(np.sum(corr.coarse(t_c[None])[0]) / np.sum(corr.power))
        t, a, _, ell = refine(corr, t_c, sigma, a0)
        if best is None or ell > best[3]:
            best = (start + t, a, ell - _loglik_at(corr, -start, sigma, a), ell)
    offset, contrast, gain, _ = best
    return _with_warnings(Registration(
        tuple(float(v) for v in offset), data.stack.pixel_size_angstrom,
        f"translation: maximum likelihood, x on a grid of {len(grid)}, {len(index)} images, "
        f"coarse cube +-{search_pixels:g} flow px then Newton", contrast, gain, len(index)))


def _with_warnings(reg: Registration) -> Registration:
    size = float(np.linalg.norm(reg.offset_pixels))
    warnings = ()
    if size > OFFSET_WARN_PIXELS:
        warnings = (f"registration moved the model by {size:.2f} pixels "
                    f"({np.linalg.norm(reg.offset_angstrom):.2f} A): the model may not be in "
                    "the consensus map's frame",)
    msg = (f"registration: offset {np.round(reg.offset_angstrom, 2).tolist()} A "
           f"({np.round(reg.offset_pixels, 2).tolist()} px)")
    log.info(msg)
    for w in warnings:
        log.warning(w)
    return dataclasses.replace(reg, warnings=warnings)


def boundary_weight_fraction(model: AbstractConformationModel, positions: np.ndarray,
                             weights: np.ndarray, margin: float = BOUNDARY_MARGIN) -> float:
    """Weight of particles within ``margin * (upper - lower)`` of the box's edge (any
    non-periodic axis)."""
    lo, hi = np.asarray(model.lower, float), np.asarray(model.upper, float)
    x = np.asarray(positions, float)
    near = (x - lo < margin * (hi - lo)) | (hi - x < margin * (hi - lo))
    near &= ~np.asarray(model.periodic, bool)
    w = np.asarray(weights, float)
    return float(np.sum(w[np.any(near, axis=1)]) / np.sum(w))


def boundary_warning(model, positions, weights) -> str | None:
    """The warning (also logged) when too much weight sits at the box's edge, else ``None``."""
    frac = boundary_weight_fraction(model, positions, weights)
    if frac <= BOUNDARY_WARN_FRACTION:
        return None
    msg = (f"{100 * frac:.0f}% of the recovered weight lies within "
           f"{100 * BOUNDARY_MARGIN:.0f}% of the conformation box's edge: the model's range may "
           "not cover the data")
    log.warning(msg)
    return msg
