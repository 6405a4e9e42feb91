r"""Analytic projection of Gaussian atoms: a separable image, i.e. one matrix product.

An atom of integrated amplitude ``a``, centre ``c`` and width (std) ``s`` projects along
``z`` to ``a g_s(x - c_x) g_s(y - c_y)`` with ``g_s`` the 1-D normal density. Averaging
over each pixel (side ``p``) gives, per axis, the profile

.. math::  P_{ij} = \frac{1}{2p}\Big[\mathrm{erf}\frac{e_{i+1} - c_j}{\sqrt2 s_j}
                   - \mathrm{erf}\frac{e_i - c_j}{\sqrt2 s_j}\Big]

(``e_i`` the ``box + 1`` pixel edges: one erf per edge, not two per pixel), and the image
``I = P_y \,\mathrm{diag}(a)\, P_x^T``: a ``(box x n_atoms) @ (n_atoms x box)`` product.
It is computed as the second difference of ``M = C_y diag(a) C_x^T`` with ``C`` the
erf at the edges (``I_{ij} = (M_{i+1,j+1} - M_{i,j+1} - M_{i+1,j} + M_{ij}) / 4p^2``):
differencing the small ``(box+1)^2`` matrix instead of the ``n_atoms``-long profiles.
The value of a pixel is the projected density averaged over it (units of amplitude / Å²),
as in cryojax's ``GaussianMixtureProjection(sampling_mode="average")``. With
``sampling="point"`` the profile is the density at the pixel centre.

**Window.** A particle covers only part of the box. With ``window_pixels = W`` the
profiles are evaluated on a ``W x W`` window centred (to the pixel) on the projected
centroid of the atoms and the product is placed into the zero box: ``W^2 n`` instead of
``box^2 n`` multiply-adds. It is exact as long as every atom lies ``4 s`` inside the
window; :func:`window_pixels_for` gives a safe ``W`` from the structure's radius about
its centroid (rotation invariant) and the widths; shifts need no margin, since the window
follows the shifted centroid.

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
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf
from jaxtyping import Array, Float, Int

from cryosip.forward.base import AbstractProjector, register_projector
from cryosip.forward.config import ImageConfig
from cryosip.structures.base import Atoms

__all__ = [
    "GaussianProjector",
    "axis_profiles",
    "footprint_pixels_for",
    "window_pixels_for",
]


def axis_profiles(
    centres_angstrom: Float[Array, " n_atoms"],
    widths_angstrom: Float[Array, " n_atoms"],
    config: ImageConfig,
    sampling: Literal["average", "point"] = "average",
    first_pixel: int | Int[Array, ""] = 0,
    n_pixels: int | None = None,
) -> Float[Array, "n_pixels n_atoms"]:
    """Profiles ``P[i, j]`` of atom ``j`` on pixels ``first_pixel + i`` (density per Å)."""
    p = config.pixel_size_angstrom
    n_pixels = config.box_size if n_pixels is None else n_pixels
    offset = (first_pixel - config.box_size // 2) * p
    if sampling == "point":
        centres = offset + p * jnp.arange(n_pixels)
        r = (centres[:, None] - centres_angstrom) / widths_angstrom
        return jnp.exp(-0.5 * r**2) / (math.sqrt(2 * math.pi) * widths_angstrom)
    cdf = axis_cdf(centres_angstrom, widths_angstrom, config, first_pixel, n_pixels)
    return (cdf[1:] - cdf[:-1]) / (2.0 * p)


def axis_cdf(
    centres_angstrom: Float[Array, " n_atoms"],
    widths_angstrom: Float[Array, " n_atoms"],
    config: ImageConfig,
    first_pixel: int | Int[Array, ""] = 0,
    n_pixels: int | None = None,
) -> Float[Array, "n_pixels+1 n_atoms"]:
    """``erf((e_i - c_j) / (sqrt2 s_j))`` at the edges ``e_i`` of pixels ``first_pixel + i``."""
    p = config.pixel_size_angstrom
    n_pixels = config.box_size if n_pixels is None else n_pixels
    edges = (first_pixel - config.box_size // 2 - 0.5 + jnp.arange(n_pixels + 1)) * p
    return erf((edges[:, None] - centres_angstrom) / (math.sqrt(2.0) * widths_angstrom))


def _edges(config: ImageConfig, first: int | Int[Array, ""], n_pixels: int) -> Float[Array, " e"]:
    """The ``n_pixels + 1`` pixel edges (Å) from pixel ``first`` on."""
    start = first - config.box_size // 2 - 0.5
    steps = jnp.arange(n_pixels + 1, dtype=jnp.result_type(float))
    return (start + steps) * config.pixel_size_angstrom


@jax.custom_vjp
def cdf_product(
    x: Float[Array, " n_atoms"],
    y: Float[Array, " n_atoms"],
    amplitudes: Float[Array, " n_atoms"],
    widths: Float[Array, " n_atoms"],
    edges_x: Float[Array, " ex"],
    edges_y: Float[Array, " ey"],
) -> Float[Array, "ey ex"]:
    r"""``M = C_y diag(a) C_x^T`` with ``C[i, j] = erf((e_i - c_j) / (sqrt2 s_j))``.

    A hand-written VJP: with ``U = dM C_x`` and ``V = dM^T C_y diag(a)`` (two products of
    the forward's shape) every cotangent is a sum over edges of ``U`` or ``V`` times
    ``erf'``; autodiff instead stores and re-reads several ``n_atoms``-long temporaries
    and runs about twice as slow on CPU. ``edges_*`` get no gradient (they come from
    integer pixel indices).
    """
    return _cdf_product_fwd(x, y, amplitudes, widths, edges_x, edges_y)[0]


def _cdfs(x, y, widths, edges_x, edges_y):
    scale = math.sqrt(2.0) * widths
    zx = (edges_x[:, None] - x) / scale
    zy = (edges_y[:, None] - y) / scale
    return zx, zy, erf(zx), erf(zy)


def _cdf_product_fwd(x, y, amplitudes, widths, edges_x, edges_y):
    _, _, cx, cy = _cdfs(x, y, widths, edges_x, edges_y)
    return (cy * amplitudes) @ cx.T, (x, y, amplitudes, widths, edges_x, edges_y)


def _cdf_product_bwd(res, dm):
    # The (edges x n_atoms) arrays are recomputed, not saved: under a scan over image
    # chunks saved ones would be stacked for the whole batch and stream through memory.
    x, y, amplitudes, widths, edges_x, edges_y = res
    zx, zy, cx, cy = _cdfs(x, y, widths, edges_x, edges_y)
    u = dm @ cx  # dM/d(cy a): rows of y edges
    v = dm.T @ (cy * amplitudes)  # dM/dcx: rows of x edges
    # d erf(z)/dz = 2/sqrt(pi) exp(-z^2); dz/dc = -1/(sqrt2 s); dz/ds = -z/s
    gx = v * jnp.exp(-(zx**2))
    gy = (u * amplitudes) * jnp.exp(-(zy**2))
    k = 2.0 / math.sqrt(math.pi)
    dc = -k / (math.sqrt(2.0) * widths)
    dx = dc * gx.sum(0)
    dy = dc * gy.sum(0)
    ds = -k / widths * ((gx * zx).sum(0) + (gy * zy).sum(0))
    da = (cy * u).sum(0)
    return dx, dy, da, ds, jnp.zeros_like(edges_x), jnp.zeros_like(edges_y)


cdf_product.defvjp(_cdf_product_fwd, _cdf_product_bwd)


def window_pixels_for(atoms: Atoms, config: ImageConfig, *, margin_sigmas: float = 4.0) -> int:
    """A safe window size (pixels) for :class:`GaussianProjector` (eager, not traced).

    ``W = 2 ceil((R + margin * s_max) / p) + 2`` with ``R`` the largest distance of an
    atom from the centroid; returns ``box`` when that is not smaller. Image shifts need no
    margin: the window is centred on the projected centroid after the shift.
    """
    pos = np.asarray(atoms.positions_angstrom)
    radius = np.linalg.norm(pos - pos.mean(0), axis=1).max()
    reach = radius + margin_sigmas * float(np.max(atoms.widths_angstrom))
    w = 2 * math.ceil(reach / config.pixel_size_angstrom) + 2
    return int(min(w, config.box_size))


@register_projector("gaussian")
class GaussianProjector(AbstractProjector):
    """Projects Gaussian atoms along ``z`` onto the pixel grid (one matmul per image).

    ``window_pixels=None`` evaluates the whole box (always exact).

    ``footprint_pixels=k`` (``average`` sampling only) evaluates each atom on its own
    ``k x k`` footprint around its pixel and scatter-adds the footprints into the window,
    instead of the dense product: ``2 (k+1)`` erf and ``k^2`` updates per atom instead of
    ``2 (W+1)`` erf and ``(W+1)^2`` multiply-adds. It is exact to the truncation of each
    atom at ``margin * s`` (see :func:`footprint_pixels_for`). It is opt-in: on XLA:CPU the
    scatter made whole renders 1.1-2.4x *slower* than the dense product, all-atom AdK
    included (``benchmarks/sparse_projection_trials.py``); it is kept for backends where
    scatters are cheap, and as the measured alternative.
    """

    sampling: Literal["average", "point"] = eqx.field(default="average", static=True)
    window_pixels: int | None = eqx.field(default=None, static=True)
    footprint_pixels: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.footprint_pixels is not None and self.sampling != "average":
            raise ValueError("footprint_pixels needs sampling='average'")

    def window_size(self, config: ImageConfig) -> int:
        """The side of :meth:`project_window`'s output: ``window_pixels`` or the box."""
        return min(self.window_pixels or config.box_size, config.box_size)

    def project(
        self,
        positions_xy_angstrom: Float[Array, "n_atoms 2"],
        amplitudes: Float[Array, " n_atoms"],
        widths_angstrom: Float[Array, " n_atoms"],
        config: ImageConfig,
    ) -> Float[Array, "box box"]:
        """The projected image ``img[y, x]`` of atoms at in-plane positions (Å)."""
        crop, first = self.project_window(
            positions_xy_angstrom, amplitudes, widths_angstrom, config
        )
        box, w = config.box_size, crop.shape[0]
        if w == box:
            return crop
        return _place(crop, first[1], box) @ _place(jnp.eye(w, dtype=crop.dtype), first[0], box).T

    def project_window(
        self,
        positions_xy_angstrom: Float[Array, "n_atoms 2"],
        amplitudes: Float[Array, " n_atoms"],
        widths_angstrom: Float[Array, " n_atoms"],
        config: ImageConfig,
    ) -> tuple[Float[Array, "w w"], Int[Array, " xy"]]:
        """The projection on the window only, and the window's first pixel ``(x, y)``.

        The zero box with the window placed at ``first`` is :meth:`project`;
        :func:`~cryosip.forward.ctf.apply_ctf` places it by a Fourier shift instead.
        """
        box, w = config.box_size, self.window_pixels
        if w is None or w >= box:
            crop = self._project_block(positions_xy_angstrom, amplitudes, widths_angstrom, config)
            return crop, jnp.zeros(2, dtype=int)
        centroid = jax.lax.stop_gradient(positions_xy_angstrom.mean(0))
        first = jnp.round(centroid / config.pixel_size_angstrom).astype(int) + box // 2 - w // 2
        first = jnp.clip(first, 0, box - w)
        crop = self._project_block(
            positions_xy_angstrom, amplitudes, widths_angstrom, config, first, w
        )
        return crop, first

    def _project_block(self, xy, amplitudes, widths, config, first=(0, 0), n_pixels=None):
        """Pixels ``first + [0, n_pixels)`` per axis.

        ``average``: the pixel integrals are second differences of the edge-CDF product
        ``M = C_y diag(a) C_x^T`` (``(n+1) x (n+1)``), so the ``n_atoms``-long arrays are
        never differenced (that halves the erf cost on CPU).
        """
        if self.sampling == "point":
            prof = lambda c, f: axis_profiles(c, widths, config, "point", f, n_pixels)
            return (prof(xy[:, 1], first[1]) * amplitudes) @ prof(xy[:, 0], first[0]).T
        n_pixels = config.box_size if n_pixels is None else n_pixels
        if self.footprint_pixels is not None:
            k = self.footprint_pixels
            return _footprints(xy, amplitudes, widths, config, first, n_pixels, k)
        ex, ey = (_edges(config, f, n_pixels) for f in first)
        m = cdf_product(xy[:, 0], xy[:, 1], amplitudes, widths, ex, ey)
        diff = m[1:, 1:] - m[:-1, 1:] - m[1:, :-1] + m[:-1, :-1]
        return diff / (4.0 * config.pixel_size_angstrom**2)


def _footprints(xy, amplitudes, widths, config, first, n_pixels: int, k: int):  # noqa: PLR0913 - the projector's arguments plus the footprint geometry, on the hot path
    """Pixels ``first + [0, n_pixels)`` per axis as a scatter-add of per-atom footprints.

    Atom ``j``'s footprint starts ``k // 2`` pixels before the pixel holding it. Footprints
    go into the window padded by ``k`` on each side; positions are clipped so that atoms
    far outside the window land wholly in the padding, which is cut away.
    """
    p = config.pixel_size_angstrom
    start = jnp.floor(xy / p + 0.5).astype(int) + config.box_size // 2 - k // 2  # (n, 2)
    start = jax.lax.stop_gradient(start)
    steps = jnp.arange(k + 1, dtype=xy.dtype)
    edges = (start[:, :, None] - config.box_size // 2 - 0.5 + steps) * p  # (n, 2, k+1)
    cdf = erf((edges - xy[:, :, None]) / (math.sqrt(2.0) * widths[:, None, None]))
    prof = (cdf[..., 1:] - cdf[..., :-1]) / (2.0 * p)  # (n, 2, k): x then y
    blocks = (amplitudes[:, None, None] * prof[:, 1, :, None]) * prof[:, 0, None, :]
    corner = jnp.clip(start - jnp.asarray(first) + k, 0, n_pixels + k)[:, ::-1]  # (row, col)
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2), inserted_window_dims=(), scatter_dims_to_operand_dims=(0, 1)
    )
    padded = jnp.zeros((n_pixels + 2 * k, n_pixels + 2 * k), blocks.dtype)
    padded = jax.lax.scatter_add(
        padded, corner, blocks, dims
    )
    return padded[k : k + n_pixels, k : k + n_pixels]


def footprint_pixels_for(atoms: Atoms, config: ImageConfig, margin_sigmas: float = 4.0) -> int:
    """Footprint side ``k = 2 ceil(margin s_max / p) + 2``: at least ``margin * s`` on each
    side of every atom, wherever it sits in its pixel (eager, not traced)."""
    s_max = float(np.max(atoms.widths_angstrom))
    return 2 * math.ceil(margin_sigmas * s_max / config.pixel_size_angstrom) + 2


def _place(block: Float[Array, "w m"], first: Int[Array, ""], box: int) -> Float[Array, "box m"]:
    """Rows of ``block`` moved to rows ``first..first+w`` of a zero ``box``-row array.

    A one-hot matrix product: under ``vmap`` a dynamic slice update becomes a scatter,
    which is an order of magnitude slower on CPU (and so is its transpose).
    """
    w = block.shape[0]
    onehot = jnp.arange(box)[:, None] == first + jnp.arange(w)[None, :]
    return onehot.astype(block.dtype) @ block
