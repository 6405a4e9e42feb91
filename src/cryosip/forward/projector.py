r"""Analytic projection of Gaussian atoms: a separable image, i.e. one matrix product.

An atom of integrated amplitude ``a``, centre ``c`` and width (std) ``s`` projects along
``z`` to ``a g_s(x - c_x) g_s(y - c_y)`` with ``g_s`` the 1-D normal density. Averaging
over each pixel (side ``p``) gives, per axis, the profile

.. math::  P_{ij} = \frac{1}{2p}\Big[\mathrm{erf}\frac{e_{i+1} - c_j}{\sqrt2 s_j}
                   - \mathrm{erf}\frac{e_i - c_j}{\sqrt2 s_j}\Big]

(``e_i`` the ``box + 1`` pixel edges: one erf per edge, not two per pixel), and the image
``I = P_y \,\mathrm{diag}(a)\, P_x^T``: a ``(box x n_atoms) @ (n_atoms x box)`` product.
The value of a pixel is the projected density averaged over it (units of amplitude / Å²),
as in cryojax's ``GaussianMixtureProjection(sampling_mode="average")``. With
``sampling="point"`` the profile is the density at the pixel centre.

>>> import jax.numpy as jnp
>>> from cryosip.forward.config import ImageConfig
>>> img = GaussianProjector().project(jnp.zeros((1, 2)), jnp.ones(1), jnp.ones(1),
...                                   ImageConfig(32, 1.0))
>>> round(float(img.sum()), 4)   # the projection integrates to the amplitude (per pixel area)
1.0
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.special import erf
from jaxtyping import Array, Float

from cryosip.forward.config import ImageConfig

__all__ = ["GaussianProjector", "axis_profiles"]


def axis_profiles(
    centres_angstrom: Float[Array, " n_atoms"],
    widths_angstrom: Float[Array, " n_atoms"],
    config: ImageConfig,
    sampling: Literal["average", "point"] = "average",
) -> Float[Array, "box n_atoms"]:
    """Per-axis profiles ``P[i, j]`` of every atom ``j`` on pixel ``i`` (density per Å)."""
    p = config.pixel_size_angstrom
    if sampling == "point":
        r = (config.pixel_centres_angstrom[:, None] - centres_angstrom) / widths_angstrom
        return jnp.exp(-0.5 * r**2) / (math.sqrt(2 * math.pi) * widths_angstrom)
    z = (config.pixel_edges_angstrom[:, None] - centres_angstrom) / (
        math.sqrt(2.0) * widths_angstrom
    )
    cdf = erf(z)
    return (cdf[1:] - cdf[:-1]) / (2.0 * p)


class GaussianProjector(eqx.Module):
    """Projects Gaussian atoms along ``z`` onto the pixel grid (one matmul per image)."""

    sampling: Literal["average", "point"] = eqx.field(default="average", static=True)

    def project(
        self,
        positions_xy_angstrom: Float[Array, "n_atoms 2"],
        amplitudes: Float[Array, " n_atoms"],
        widths_angstrom: Float[Array, " n_atoms"],
        config: ImageConfig,
    ) -> Float[Array, "box box"]:
        """The projected image ``img[y, x]`` of atoms at in-plane positions (Å)."""
        px = axis_profiles(positions_xy_angstrom[:, 0], widths_angstrom, config, self.sampling)
        py = axis_profiles(positions_xy_angstrom[:, 1], widths_angstrom, config, self.sampling)
        return (py * amplitudes) @ px.T
