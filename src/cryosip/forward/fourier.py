r"""Likelihoods in Fourier space: Gaussian atoms projected straight onto the flow's band.

The flow needs log-likelihoods of observed images under simulated ones, not images. With
the observed images transformed once (:meth:`FourierBand.prepare`), nothing in the loop
needs an FFT: the projection of Gaussian atoms is analytic in Fourier space, the CTF
multiplies it, the shift is a phase, and the Gaussian likelihood is a sum over frequencies
(Parseval).

**The model.** An atom of amplitude ``a``, width ``s`` at in-plane position ``c`` (Å from
the image centre) has the continuous transform ``a exp(-2 pi^2 s^2 |k|^2 - 2 pi i k.c)``.
Averaging over the pixels of the *native* grid (pixel ``p0``, as the simulator and the
detector do) multiplies it by ``sinc(pi k_x p0) sinc(pi k_y p0)``; sampling on that grid
folds in the aliases ``k + m / p0``. A Fourier crop to the flow's box (pixel ``p``, see
:func:`cryosip.pipeline.data.fourier_crop`) keeps the frequencies ``k = j / (box p)``
unchanged and divides by ``p^2``, so the flow box's ``rfft2`` coefficient is

.. math:: M(k) = \frac{(-1)^{j_x + j_y}}{p^2} \sum_a a_a\, e_y(k_y, a)\, e_x(k_x, a),\qquad
          e(k, a) = \sum_{|m| \le m_{max}} g_a(k + m/p_0)\,
                    e^{-2\pi i (k + m/p_0) c_a}

with ``g_a(k) = exp(-2 pi^2 s_a^2 k^2) sinc(pi k p0)`` and ``(-1)^j`` from the origin at
pixel ``box // 2``. The sum is separable in ``k_x, k_y`` for every atom, whatever its width,
so per-atom widths are exact at no cost: one complex ``(K+1) x n_atoms x (K+1)`` product
per image (``K = box / 2``), with the ``k_y < 0`` half from the same four real products
(``e(-k) = conj e(k)``). At the Nyquist row and column the cropped data hold the average of
``+-k``, ``Re e``. With ``p0 = p`` and ``aliases >= 1`` this is the ``rfft2`` of the
real-space renderer's image (:class:`~cryosip.forward.projector.GaussianProjector`, pixel
averages) to the aliases left out; with ``p0 < p`` it is the Fourier crop of the native
image, which the real-space renderer at the coarse pixel only approximates (its pixel
average at ``p`` damps frequencies near the flow's Nyquist by up to ``2 / pi``).

**The layout.** A *band* array has shape ``(2, K+1, K+1)`` (``[half, j_y, j_x]``): half 0
holds ``k_y = +j_y``, half 1 ``k_y = -j_y``; the rows of half 1 at ``j_y = 0`` and ``K``
repeat half 0 and get weight 0. Each entry ``k`` has the weight ``w_k`` of Parseval's sum
over the full plane (:func:`cryosip.conventions.rfft_column_weights`). Observations are
whitened, ``Y~ = Y sqrt(w) / (box sigma)``, and stored as real arrays ``(2, 2, K+1, K+1)``
(``[half, re/im, j_y, j_x]``), so that squared distances between band arrays equal squared
pixel distances divided by ``sigma^2``:

.. math:: \log p(y | x, w) = -\tfrac12 \|\tilde Y\|^2 + \mathrm{Re}\sum_k \tilde C_k
          \overline{\tilde Y_k} M_k - \tfrac12 \sum_k \tilde C_k^2 |M_k|^2
          - \tfrac{box^2}{2} \log(2 \pi \sigma^2)

with ``C~ = CTF sqrt(w) / (box sigma)``.

>>> band = FourierBand(8, 2.0)
>>> band.shape, float(band.weights.sum())  # the 64 frequencies of the 8 x 8 plane
((2, 5, 5), 64.0)
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from cryosip import conventions
from cryosip.forward.config import ImageConfig
from cryosip.forward.ctf import Optics, ctf_rfft, sin_fast
from cryosip.forward.image_model import _chunked_map, rotate_and_shift
from cryosip.forward.pose import ImageNuisance, NuisancePrior
from cryosip.forward.projector import GaussianProjector
from cryosip.operators import AbstractRandomOperator
from cryosip.structures.base import AbstractConformationModel, Atoms

__all__ = ["FourierBand", "FourierOperator", "band_log_likelihood", "project_band"]


class FourierBand(eqx.Module):
    """The flow box's ``rfft2`` frequencies in the band layout (module docstring).

    ``box`` and ``pixel_size_angstrom`` (``p``) are the flow's; ``native_pixel_angstrom``
    (``p0``, default ``p``) is the pixel the images were recorded or rendered at, before
    any Fourier crop; ``aliases`` the ``m_max`` of the alias sum at ``1 / p0``.
    """

    box: int = eqx.field(static=True)
    pixel_size_angstrom: float = eqx.field(static=True)
    native_pixel_angstrom: float = eqx.field(static=True, default=0.0)
    aliases: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if self.box < 4 or self.box % 2:
            raise ValueError(f"FourierBand needs an even box >= 4, got {self.box}")
        if self.native_pixel_angstrom > self.pixel_size_angstrom * (1 + 1e-6):
            raise ValueError("the native pixel cannot be larger than the flow's pixel")

    @property
    def half(self) -> int:
        return self.box // 2

    @property
    def shape(self) -> tuple[int, int, int]:
        return (2, self.half + 1, self.half + 1)

    @property
    def p0(self) -> float:
        return self.native_pixel_angstrom or self.pixel_size_angstrom

    @property
    def image_config(self) -> ImageConfig:
        return ImageConfig(self.box, self.pixel_size_angstrom)

    def _rows(self) -> np.ndarray:
        """``rfft2`` row of each ``[half, j_y]`` (half 1: ``box - j``; its ``j = 0, K`` rows
        point at half 0's and carry weight 0)."""
        k = self.half
        j = np.arange(k + 1)
        minus = np.where((j == 0) | (j == k), j, self.box - j)
        return np.stack([j, minus])

    @property
    def weights(self) -> np.ndarray:
        """Parseval weight of every band entry, ``(2, K+1, K+1)`` (sums to ``box^2``)."""
        k = self.half
        cols = conventions.rfft_column_weights(self.box)
        rows = np.ones((2, k + 1))
        rows[1, [0, k]] = 0.0
        return rows[:, :, None] * cols[None, None, :]

    def gather(self, rfft_grid: Array) -> Array:
        """``(..., box, K+1)`` ``rfft2``-grid array -> ``(..., 2, K+1, K+1)`` band layout."""
        return rfft_grid[..., self._rows(), :]

    def whitening(self, noise_std: float | Array) -> np.ndarray | Array:
        """``sqrt(w) / (box sigma)``: band values times this have unit-variance noise."""
        return np.sqrt(self.weights) / self.box / noise_std

    def prepare(self, images: Float[Array, "n box box"], noise_std: float) -> np.ndarray:
        """Real images (model units, flow box) -> whitened band ``(n, 2, 2, K+1, K+1)`` float32.

        Done once per image when the data are prepared (numpy, float64 inside)."""
        spec = np.fft.rfft2(np.asarray(images, np.float64))
        band = spec[..., self._rows(), :] * self.whitening(noise_std)
        return np.stack([band.real, band.imag], axis=-3).astype(np.float32)

    def ctf(self, optics: Optics, nuisance: ImageNuisance) -> Float[Array, "2 k1 k1"]:
        """One image's CTF on the band (the same function as the real-space renderer's)."""
        return self.gather(ctf_rfft(optics, nuisance, self.image_config))

    def envelope(self, widths: Float[Array, " n"]) -> Float[Array, "m k1 n"]:
        """``(-1)^j g(k_j + m / p0)`` for ``m = -m_max..m_max`` (``(2 m_max + 1, K+1, n)``)."""
        k = np.arange(self.half + 1) / (self.box * self.pixel_size_angstrom)
        m = np.arange(-self.aliases, self.aliases + 1) / self.p0
        f = (k[None, :] + m[:, None])  # (m, K+1) numpy float64
        sign = (-1.0) ** np.arange(self.half + 1)
        sinc = np.sinc(f * self.p0) * sign  # np.sinc(x) = sin(pi x) / (pi x)
        f2 = jnp.asarray(f**2, widths.dtype)
        gauss = jnp.exp(-2.0 * math.pi**2 * f2[:, :, None] * widths[None, None, :] ** 2)
        return gauss * jnp.asarray(sinc, widths.dtype)[:, :, None]

    def axis_factors(self, c: Float[Array, " n"], envelope: Float[Array, "m k1 n"]
                     ) -> Float[Array, "2 k1 n"]:
        """``[Re e; Im e]`` of one axis for atom coordinates ``c`` (Å), Nyquist row real.

        Written without concatenations: XLA:CPU evaluates a fused concatenate element by
        element with a branch, which made the whole projection 4-7x slower."""
        theta = (2.0 * math.pi / (self.box * self.pixel_size_angstrom)) * c  # (n,)
        # exp(-i j theta) for j = 0..K as exp(-i s l theta) exp(-i r theta), j = s l + r: a
        # table of s + L sines per atom and one complex product per entry, instead of a
        # sine per entry (the sines dominated the projection). The barrier materialises
        # the tables once: XLA would otherwise fuse the polynomial into every consumer.
        k1 = self.half + 1
        small = max(1, math.isqrt(k1))
        large = -(-k1 // small)
        steps = np.concatenate([np.arange(small), small * np.arange(large)])
        quarter = np.array([0.5 * math.pi, 0.0])[:, None, None]
        angle = jnp.asarray(steps, c.dtype)[None, :, None] * theta[None, None, :]
        cs = _materialise(sin_fast(angle + jnp.asarray(quarter, c.dtype)))  # [cos; sin]
        sc, ss = cs[0, :small], cs[1, :small]  # (small, n)
        lc, ls = cs[0, small:], cs[1, small:]  # (large, n)
        # cos(a + b), sin(a + b) on the (large, small) grid -> rows j = small * l + r
        cos = (lc[:, None] * sc[None] - ls[:, None] * ss[None]).reshape(large * small, -1)[:k1]
        sin = (ls[:, None] * sc[None] + lc[:, None] * ss[None]).reshape(large * small, -1)[:k1]
        cs = jnp.stack([cos, sin])
        # alias factor h = sum_m g_m exp(-2 pi i m c / p0), one complex number per (k, atom)
        mid = self.aliases
        hr, hi = envelope[mid], jnp.zeros_like(envelope[mid])
        psi = (2.0 * math.pi / self.p0) * c
        for m in range(1, self.aliases + 1):  # unrolled: elementwise, no small products
            cm, sm = _materialise((sin_fast(m * psi + 0.5 * math.pi), sin_fast(m * psi)))
            plus, minus = envelope[mid + m], envelope[mid - m]
            hr = hr + (plus + minus) * cm
            hi = hi + (minus - plus) * sm
        # e = (cos - i sin)(hr + i hi) = [cos hr + sin hi] + i [cos hi - sin hr]; at the
        # Nyquist row the data hold the average of +k and -k: Re e only
        keep = np.ones((2, self.half + 1, 1), np.float32)
        keep[1, -1] = 0.0
        h = jnp.stack([hr, hi])
        h_turned = jnp.stack([hi, -hr])
        return (cs[0] * h + cs[1] * h_turned) * jnp.asarray(keep, c.dtype)


def _materialise(x):
    return jax.lax.optimization_barrier(x)


def project_band(xy: Float[Array, "n 2"], amplitudes: Float[Array, " n"],
                 envelope: Float[Array, "m k1 n"], band: FourierBand) -> Float[Array, "2 2 k1 k1"]:
    """``M`` on the band, ``[half, re/im, j_y, j_x]``, for atoms at in-plane ``xy`` (Å).

    One real product ``[Re e_y; Im e_y] diag(a) [Re e_x; Im e_x]^T`` gives the four blocks
    that make both halves.
    """
    ex = band.axis_factors(xy[:, 0], envelope)
    ey = band.axis_factors(xy[:, 1], envelope)
    k1 = band.half + 1
    a = amplitudes / band.pixel_size_angstrom**2
    p = (ey.reshape(2 * k1, -1) * a) @ ex.reshape(2 * k1, -1).T
    rr, ri, ir, ii = p[:k1, :k1], p[:k1, k1:], p[k1:, :k1], p[k1:, k1:]
    plus = jnp.stack([rr - ii, ri + ir])
    minus = jnp.stack([rr + ii, ri - ir])
    return jnp.stack([plus, minus])


def band_log_likelihood(model: Float[Array, "2 2 k1 k1"], data: Float[Array, "2 2 k1 k1"],
                        ctf: Float[Array, "2 k1 k1"]) -> Float[Array, ""]:
    """``-||Y~ - C~ M||^2 / 2`` for whitened ``data`` and ``ctf`` (``C~``), no constant."""
    resid = data - ctf[:, None] * model
    return -0.5 * jnp.sum(resid**2)


def window_dft(band: FourierBand, window: int) -> np.ndarray:
    """``[cos; -sin](2 pi j r / box)``, ``(2(K+1), window)``: the real and imaginary parts
    of ``exp(-2 pi i j r / box)`` for rows ``j = 0..K`` and window pixels ``r``."""
    angle = 2.0 * np.pi * np.outer(np.arange(band.half + 1), np.arange(window)) / band.box
    return np.concatenate([np.cos(angle), -np.sin(angle)]).astype(np.float32)


def _halves(blocks: Float[Array, "... k2 k2"], k1: int) -> Float[Array, "... 2 2 k1 k1"]:
    """Products of ``[Re; Im]`` row and column factors -> both halves (module docstring)."""
    rr, ri = blocks[..., :k1, :k1], blocks[..., :k1, k1:]
    ir, ii = blocks[..., k1:, :k1], blocks[..., k1:, k1:]
    plus = jnp.stack([rr - ii, ri + ir], axis=-3)
    minus = jnp.stack([rr + ii, ri - ir], axis=-3)
    return jnp.stack([plus, minus], axis=-4)


def _shift_phase(band: FourierBand, first: Int[Array, "*b 2"]) -> Float[Array, "*b 2 2 k1 k1"]:
    """``exp(-2 pi i (k_y f_y + k_x f_x) / box)`` on both halves for window corners ``f``."""
    j = jnp.arange(band.half + 1, dtype=jnp.float32)
    ang = (2.0 * math.pi / band.box) * first[..., None].astype(jnp.float32) * j  # (*b, 2, K+1)
    cs = sin_fast(ang[..., None, :, :] + jnp.asarray([0.5 * math.pi, 0.0])[:, None, None])
    cx, sx = cs[..., 0, 0, None, :], cs[..., 1, 0, None, :]  # x: columns
    cy, sy = cs[..., 0, 1, :, None], cs[..., 1, 1, :, None]  # y: rows
    # (cy -+ i sy)(cx - i sx) for k_y = +-j
    plus = jnp.stack([cy * cx - sy * sx, -(sy * cx + cy * sx)], axis=-3)
    minus = jnp.stack([cy * cx + sy * sx, sy * cx - cy * sx], axis=-3)
    return jnp.stack([plus, minus], axis=-4)


def _complex_mul(a, b):
    """Complex product of ``[..., re/im, :, :]`` arrays."""
    ar, ai, br, bi = a[..., 0, :, :], a[..., 1, :, :], b[..., 0, :, :], b[..., 1, :, :]
    return jnp.stack([ar * br - ai * bi, ar * bi + ai * br], axis=-3)


class FourierOperator(AbstractRandomOperator):
    """The cryo-EM random operator whose observations are whitened bands (module docstring).

    ``noise_std`` is 1 (whitened units); ``pixel_noise_std`` is the images' noise in model
    units at the flow box, which whitening divided out. ``clean(x, w)`` is ``C~ M`` as a
    ``(2, 2, K+1, K+1)`` real array; squared distances between such arrays are squared
    pixel distances over ``pixel_noise_std^2``, so MMD kernels and Gaussian likelihoods
    keep their meaning (with ``noise_dim = box^2`` noise dimensions).

    ``projection``:

    * ``"window"`` (default, the flow's): the real-space renderer's pixel-averaged
      projection on its ``window`` (:class:`~cryosip.forward.projector.GaussianProjector`,
      one erf-CDF product per image) and its DFT onto the band by two products with a
      constant ``(2(K+1) x window)`` matrix, the window's place a phase. It is the
      ``rfft2`` of the real-space image, to rounding.
    * ``"analytic"``: the closed form of the module docstring, with the native pixel's
      ``sinc`` and no aliasing of the flow pixel (the Fourier crop's own model). Exact
      for any widths, but its ``(K+1) x n_atoms`` phase factors per image and axis are
      elementwise work that XLA:CPU runs far below matmul speed: several times the window
      path's time here (``benchmarks/fourier_paths.py``). Kept as the independent
      reference, and for Fourier-cropped data whose atoms are narrower than the flow's
      pixel, where the window path's coarse-pixel model is off near the flow's Nyquist
      (``tests/test_fourier.py``).
    """

    model: AbstractConformationModel
    band: FourierBand
    optics: Optics
    prior: NuisancePrior
    pixel_noise_std: float | Float[Array, ""]
    noise_std: float = eqx.field(static=True)
    window: int = eqx.field(static=True)
    projection: str = eqx.field(static=True)
    cache_bytes: int = eqx.field(static=True)

    def __init__(self, model: AbstractConformationModel, band: FourierBand,  # noqa: PLR0913
                 optics: Optics, prior: NuisancePrior, pixel_noise_std: float | Array, *,
                 window: int | None = None, projection: str = "window",
                 cache_bytes: int = 2**23):
        if projection not in ("window", "analytic"):
            raise ValueError(f"projection must be 'window' or 'analytic', got {projection!r}")
        self.model, self.band, self.optics, self.prior = model, band, optics, prior
        self.pixel_noise_std, self.cache_bytes = pixel_noise_std, cache_bytes
        self.window = min(window or band.box, band.box)
        self.projection = projection
        self.noise_std = 1.0  # the observations are whitened

    @classmethod
    def from_operator(cls, operator, native_pixel_angstrom: float = 0.0, **options
                      ) -> FourierOperator:
        """The band operator of a real-space :class:`~cryosip.forward.CryoEMOperator`
        (same model, geometry, optics, prior, window; its ``noise_std`` as the pixel noise)."""
        config = operator.image_config
        band = FourierBand(config.box_size, config.pixel_size_angstrom,
                           native_pixel_angstrom, options.pop("aliases", 0))
        return cls(operator.model, band, operator.optics, operator.prior, operator.noise_std,
                   window=operator.window_pixels, **options)

    @property
    def image_config(self) -> ImageConfig:
        return self.band.image_config

    @property
    def noise_dim(self) -> int:
        return self.band.box**2

    def whitened_ctf(self, nuisance: ImageNuisance) -> Float[Array, "2 k1 k1"]:
        return self.band.ctf(self.optics, nuisance) * self.band.whitening(self.pixel_noise_std)

    def sample_nuisance(self, key: PRNGKeyArray, n_draws: int) -> ImageNuisance:
        return self.prior.sample(key, n_draws)

    def _structures(self, xs) -> tuple[Atoms, Array | None]:
        """Atoms of every ``x`` and, for the analytic path, their envelopes."""
        atoms = jax.vmap(self.model.structure_at)(xs)
        if self.projection == "window":
            return atoms, None
        return atoms, jax.vmap(self.band.envelope)(atoms.widths_angstrom)

    def _bands(self, atoms: Atoms, env, nuisance: ImageNuisance) -> Float[Array, "p 2 2 k1 k1"]:
        """``M`` (no CTF) of every structure of ``atoms`` under one nuisance."""
        if self.projection == "analytic":
            def one(a, e):
                xy = rotate_and_shift(a.positions_angstrom, nuisance)
                return project_band(xy, a.amplitudes, e, self.band)
            return jax.vmap(one)(atoms, env)
        projector = GaussianProjector(window_pixels=self.window)
        config = self.image_config

        def crop(a):
            xy = rotate_and_shift(a.positions_angstrom, nuisance)
            return projector.project_window(xy, a.amplitudes, a.widths_angstrom, config)

        crops, firsts = jax.vmap(crop)(atoms)  # (p, w, w), (p, 2)
        dft = jnp.asarray(window_dft(self.band, crops.shape[-1]), crops.dtype)
        blocks = jnp.einsum("kr,prc,lc->pkl", dft, crops, dft)
        m = _halves(blocks, self.band.half + 1)
        return _complex_mul(m, _shift_phase(self.band, firsts).astype(m.dtype))

    def clean(self, x, nuisance: ImageNuisance) -> Float[Array, "2 2 k1 k1"]:
        atoms, env = self._structures(x[None])
        return self.whitened_ctf(nuisance)[:, None] * self._bands(atoms, env, nuisance)[0]

    def add_noise(self, key: PRNGKeyArray, clean: Array) -> Array:
        """Whitened white pixel noise: ``rfft2`` of unit pixel noise, in the band layout."""
        lead = clean.shape[:-4]
        box = self.band.box
        eps = jax.random.normal(key, (*lead, box, box), clean.dtype)
        spec = self.band.gather(jnp.fft.rfft2(eps)) * self.band.whitening(1.0)
        return clean + jnp.stack([spec.real, spec.imag], axis=-3).astype(clean.dtype)

    def chunk_size(self, n_particles: int, n_atoms: int) -> int:
        """Images per ``lax.map`` chunk: the projections' ``(window + 1) x n_atoms`` CDF
        tables (two per pair) of all particles within ``cache_bytes``, at least one."""
        if jax.default_backend() != "cpu":  # sized for a CPU's cache; a GPU wants one batch
            return 2**30
        rows = self.window + 1 if self.projection == "window" else 2 * (self.band.half + 1)
        return max(1, self.cache_bytes // (2 * 4 * rows * n_atoms * n_particles))

    def _pairs(self, xs, nuisance, fn):
        """``fn(bands, n)`` for every image ``n``, with ``bands`` the ``M`` of all particles
        under nuisance ``n``; stacked as ``(n_particles, n_obs, ...)``.

        Images are the outer, chunked loop and particles the inner ``vmap``: the atoms of
        every particle are a closed-over constant of the loop, so the gradient sums their
        cotangents in the loop's carry instead of scattering them pair by pair."""
        atoms, env = self._structures(xs)
        n_w = nuisance.euler_deg.shape[0]

        def one(n):
            return fn(self._bands(atoms, env, nuisance.take(n)), n)

        size = self.chunk_size(xs.shape[0], atoms.positions_angstrom.shape[-2])
        out = _chunked_map(one, jnp.arange(n_w), size)  # (n_obs, n_particles, ...)
        return jnp.swapaxes(out, 0, 1)

    def clean_grid(self, xs, nuisance: ImageNuisance):
        ctf = jax.vmap(self.whitened_ctf)(nuisance)
        return self._pairs(xs, nuisance, lambda m, n: ctf[n][:, None] * m)

    def clean_paired(self, xs, nuisance: ImageNuisance):
        return jax.vmap(self.clean)(xs, nuisance)

    def log_likelihood_grid(self, ys, xs, nuisance: ImageNuisance) -> Float[Array, "n_obs n_p"]:
        """``log p(y_n | x_i, w_n)`` with the constant of the pixel-space Gaussian."""
        ctf = jax.vmap(self.whitened_ctf)(nuisance)
        ll = self._pairs(xs, nuisance, lambda m, n: jax.vmap(band_log_likelihood, (0, None, None))(
            m, ys[n], ctf[n]))
        const = -0.5 * self.noise_dim * jnp.log(2.0 * jnp.pi * self.pixel_noise_std**2)
        return ll.T + const

    def log_marginal_likelihood_grid(self, ys, xs, key, n_draws):
        ll = super().log_marginal_likelihood_grid(ys, xs, key, n_draws)
        # the parent's Gaussian constant counts band entries, not pixels: replace it
        size = math.prod(ys.shape[1:])
        return ll + 0.5 * size * jnp.log(2.0 * jnp.pi) - 0.5 * self.noise_dim * jnp.log(
            2.0 * jnp.pi * self.pixel_noise_std**2)
