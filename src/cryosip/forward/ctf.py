r"""The microscope optics and the contrast transfer function (RELION / CTFFIND convention).

.. math::
   \mathrm{CTF}(k) = s\,\sin\!\big(\pi\lambda\Delta z(\alpha) k^2 - \tfrac{\pi}{2}C_s\lambda^3k^4
                     + \varphi + \arctan\tfrac{w}{\sqrt{1-w^2}}\big)\,e^{-Bk^2/4},

with ``Delta z(alpha) = (d_U + d_V)/2 + (d_U - d_V)/2 cos 2(alpha - alpha_ast)``,
``alpha = atan2(k_y, k_x)``, ``k`` in 1/Å, ``lambda`` the relativistic wavelength,
``C_s`` in Å, ``phi`` the phase shift, ``w`` the amplitude contrast and ``s`` the contrast
sign (+1: RELION, white particles; -1: cryojax/cryoDRGN). Reference: RELION ``src/ctf.h``
``CTF::getCTF``; Mindell & Grigorieff (2003) for the defocus convention.

Several optics groups: ``Optics.stack([o1, o2, ...])`` holds each field as an array of
shape ``(groups,)``; :func:`ctf_rfft` takes the image's own group,
``optics.select(nuisance.optics_group)`` (a gather of five scalars per image; a scalar
``Optics`` ignores the group).

>>> import jax.numpy as jnp
>>> from cryosip.forward.config import ImageConfig
>>> from cryosip.forward.pose import ImageNuisance
>>> c = ctf_rfft(Optics(), ImageNuisance.create(jnp.zeros(3)), ImageConfig(8, 2.0))
>>> round(float(c[0, 0]), 6)   # +w at k = 0
0.1
>>> two = Optics.stack([Optics(), Optics(voltage_kv=200.0, cs_mm=1.4)])
>>> two.n_groups, float(two.select(1).voltage_kv)
(2, 200.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from cryosip import conventions
from cryosip.forward.base import AbstractCTF
from cryosip.forward.config import ImageConfig
from cryosip.forward.pose import ImageNuisance

__all__ = ["Optics", "apply_ctf", "ctf_rfft", "sin_fast"]


class Optics(AbstractCTF):
    """Microscope optics shared by all images of an optics group.

    Scalar fields: one group for every image. Built by :meth:`stack`: each field an array
    of shape ``(groups,)``, indexed by ``ImageNuisance.optics_group`` (0-based).
    """

    voltage_kv: float | Float[Array, " groups"] = 300.0
    cs_mm: float | Float[Array, " groups"] = 2.7
    amplitude_contrast: float | Float[Array, " groups"] = 0.1
    b_factor_angstrom2: float | Float[Array, " groups"] = 0.0
    contrast_sign: float | Float[Array, " groups"] = conventions.RELION_CONTRAST_SIGN

    @property
    def wavelength_angstrom(self) -> Float[Array, "*groups"]:
        return conventions.electron_wavelength_angstrom(self.voltage_kv)

    @property
    def n_groups(self) -> int | None:
        """Number of stacked groups, ``None`` for a scalar ``Optics``."""
        return None if jnp.ndim(self.voltage_kv) == 0 else int(jnp.shape(self.voltage_kv)[0])

    @classmethod
    def stack(cls, groups: Sequence[Optics]) -> Optics:
        """One ``Optics`` whose fields are arrays of shape ``(len(groups),)``, in order."""
        if not groups or any(g.n_groups is not None for g in groups):
            raise ValueError("Optics.stack takes a non-empty sequence of scalar Optics")
        return jax.tree.map(lambda *v: jnp.asarray(np.array(v, dtype=float)), *groups)

    def select(self, group: Int[Array, ""] | int) -> Optics:
        """The scalar ``Optics`` of ``group`` (0-based); a scalar ``Optics`` is returned as is."""
        if self.n_groups is None:
            return self
        return jax.tree.map(lambda a: a[group], self)

    def transfer(self, nuisance: ImageNuisance, config: ImageConfig) -> Float[Array, "box half"]:
        """:func:`ctf_rfft` (the :class:`~cryosip.forward.base.AbstractCTF` interface)."""
        return ctf_rfft(self, nuisance, config)


def ctf_rfft(
    optics: Optics, nuisance: ImageNuisance, config: ImageConfig
) -> Float[Array, "box half"]:
    """The CTF of one image on the ``rfft2`` grid (see the module docstring), with the
    optics of the image's own group (``optics.select(nuisance.optics_group)``).

    The astigmatic term is expanded without angles: with ``theta = 2 alpha_ast``,
    ``k^2 Delta z = dbar k^2 + (d_U - d_V)/2 [cos theta (k_x^2 - k_y^2) + sin theta 2 k_x k_y]``
    (``cos 2 alpha = (k_x^2 - k_y^2)/k^2``, ``sin 2 alpha = 2 k_x k_y / k^2``), so each image
    costs one ``sin`` per frequency and the ``k`` grids are compile-time constants.
    """
    optics = optics.select(nuisance.optics_group)
    ky, kx = conventions.rfft_frequencies(config.box_size, config.pixel_size_angstrom)
    k2, dxy, cross = kx**2 + ky**2, kx**2 - ky**2, 2.0 * kx * ky
    lam = optics.wavelength_angstrom
    cs = optics.cs_mm * 1e7
    theta = 2.0 * jnp.deg2rad(nuisance.astigmatism_angle_deg)
    du, dv = nuisance.defocus_u_angstrom, nuisance.defocus_v_angstrom
    k2dz = 0.5 * (du + dv) * k2 + 0.5 * (du - dv) * (jnp.cos(theta) * dxy + jnp.sin(theta) * cross)
    chi = jnp.pi * lam * k2dz - 0.5 * jnp.pi * cs * lam**3 * k2**2
    chi = chi + jnp.deg2rad(nuisance.phase_shift_deg)
    chi = chi + conventions.amplitude_contrast_phase(optics.amplitude_contrast)
    envelope = jnp.exp(-0.25 * optics.b_factor_angstrom2 * k2)
    return optics.contrast_sign * sin_fast(chi) * envelope


def sin_fast(x: Float[Array, " *shape"]) -> Float[Array, " *shape"]:
    """``sin`` for float32 by reduction to ``|r| <= pi/2`` and a degree-11 Taylor polynomial.

    XLA:CPU's ``sin`` is not vectorised: 13x slower on this machine than this, and it was
    the most expensive step of the CTF. Error below 3e-7 for ``|x| < 1e4`` (the CTF phase
    stays below ~1e3 rad); float64 input goes to ``jnp.sin``.
    """
    x = jnp.asarray(x)
    if x.dtype == jnp.float64:
        return jnp.sin(x)
    k = jnp.round(x * (1.0 / np.pi))
    # pi split in three (Cody-Waite) so that k * pi is exact to float32 rounding
    r = x - k * 3.140625 - k * 9.67502593994140625e-4 - k * 1.509957990978376432e-7
    r2 = r * r
    poly = 1.0 / 362880.0 - r2 / 39916800.0
    poly = -1.0 / 5040.0 + r2 * poly
    poly = 1.0 / 120.0 + r2 * poly
    poly = -1.0 / 6.0 + r2 * poly
    odd = k.astype(jnp.int32) & 1
    return r * (1.0 + r2 * poly) * (1 - 2 * odd).astype(x.dtype)


def apply_ctf(
    image: Float[Array, "h h"],
    ctf: Float[Array, "box half"],
    offset: Int[Array, " xy"] | None = None,
) -> Float[Array, "box box"]:
    """``irfft2(ctf * rfft2(image))`` (unnormalised forward FFT, ``1/box^2`` inverse).

    ``image`` may be a ``h x h`` window (``h <= box``) whose top-left pixel sits at
    ``offset = (x, y)`` of the zero ``box x box`` image: it is zero-padded at the end and
    moved by the Fourier shift ``exp(-2 pi i (k_x x + k_y y) / box)`` (exact for whole
    pixels; no wrap-around while the window stays inside the box). This replaces placing
    the window with a scatter, which XLA:CPU runs an order of magnitude slower under vmap.
    """
    box = ctf.shape[0]
    f = jnp.fft.rfft2(image, s=(box, box))  # zero-pads; XLA's 2-D FFT beats two 1-D passes
    if offset is not None:
        angle = lambda o, n: (-2.0 * np.pi / box) * (o * jnp.arange(n) % box)
        phase = angle(offset[1], box)[:, None] + angle(offset[0], ctf.shape[1])[None, :]
        f = f * jax.lax.complex(sin_fast(phase + 0.5 * np.pi), sin_fast(phase))
    return jnp.fft.irfft2(ctf * f, s=(box, box))
