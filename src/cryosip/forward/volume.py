r"""Density maps of Gaussian atoms, and a filtered backprojection for convention checks.

``render_volume`` averages each atom's 3-D Gaussian over every voxel (separable erf
profiles, as the projector): ``V[z, y, x] = sum_j a_j Pz[z, j] Py[y, j] Px[x, j]`` in
amplitude / Å³, voxel ``i`` at ``(i - box // 2) * voxel size`` (MRC array order).

``backproject`` inverts the projection model of :mod:`cryosip.forward.image_model` up to a
scale: each image is (optionally) phase-flipped with the sign of its CTF, ramp-filtered
by ``|k|`` (the 3-D weight of a central slice), and smeared back along ``z`` in the frame
of its pose: ``V(r) += img_f((A r)_{xy} - o)`` (bilinear interpolation). The result is
compared to the true map with :func:`map_correlation`; transposed poses, a wrong shift
sign or a wrong contrast sign all destroy the correlation (tests).

>>> import jax.numpy as jnp
>>> from cryosip.structures.base import Atoms
>>> v = render_volume(Atoms(jnp.zeros((1, 3)), jnp.ones(1), jnp.ones(1)), 16, 1.0)
>>> v.shape, round(float(v.sum()), 4)
((16, 16, 16), 1.0)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates
from jaxtyping import Array, Float

from cryosip import conventions
from cryosip.forward.config import ImageConfig
from cryosip.forward.ctf import Optics, ctf_rfft
from cryosip.forward.pose import ImageNuisance
from cryosip.forward.projector import axis_profiles
from cryosip.rotations import euler_to_matrix
from cryosip.structures.base import Atoms

__all__ = ["backproject", "map_correlation", "render_volume"]


def render_volume(
    atoms: Atoms, box_size: int, pixel_size_angstrom: float
) -> Float[Array, "box box box"]:
    """Voxel-averaged density map ``vol[z, y, x]`` of Gaussian atoms (amplitude / Å³)."""
    cfg = ImageConfig(box_size, pixel_size_angstrom)
    pos, w = atoms.positions_angstrom, atoms.widths_angstrom
    px, py, pz = (axis_profiles(pos[:, i], w, cfg) for i in range(3))
    pz = pz * atoms.amplitudes
    # one z-slice at a time: a (box x n_atoms) temporary instead of (box^2 x n_atoms)
    return jax.lax.map(lambda row: (py * row) @ px.T, pz)


def _filter_images(
    images: Float[Array, "n box box"],
    nuisance: ImageNuisance,
    config: ImageConfig,
    optics: Optics | None,
) -> Float[Array, "n box box"]:
    ky, kx = config.rfft_frequencies()
    weight = jnp.sqrt(kx**2 + ky**2)[None]
    if optics is not None:
        ctf = jax.vmap(ctf_rfft, in_axes=(None, 0, None))(optics, nuisance, config)
        weight = weight * jnp.sign(ctf)
    return jnp.fft.irfft2(weight * jnp.fft.rfft2(images), s=config.shape)


def backproject(
    images: Float[Array, "n box box"],
    nuisance: ImageNuisance,
    image_config: ImageConfig,
    optics: Optics | None = None,
) -> Float[Array, "box box box"]:
    """Ramp-filtered real-space backprojection ``vol[z, y, x]`` (phase-flipped if ``optics``).

    Pass ``optics`` when the images carry a CTF (its ``contrast_sign`` included).
    """
    cfg = image_config
    filtered = _filter_images(images, nuisance, cfg, optics)
    c = cfg.pixel_centres_angstrom
    zz, yy, xx = jnp.meshgrid(c, c, c, indexing="ij")
    voxels = jnp.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=-1)
    centre = conventions.image_centre_index(cfg.box_size)

    def add_one(vol, item):
        img, w = item
        xy = voxels @ euler_to_matrix(w.euler_deg)[:2].T - w.shift_angstrom
        idx = xy / cfg.pixel_size_angstrom + centre
        vals = map_coordinates(img, [idx[:, 1], idx[:, 0]], order=1, mode="constant", cval=0.0)
        return vol + vals, None

    vol, _ = jax.lax.scan(add_one, jnp.zeros(voxels.shape[0], images.dtype), (filtered, nuisance))
    return vol.reshape(cfg.box_size, cfg.box_size, cfg.box_size) / images.shape[0]


def map_correlation(a: Float[Array, "*shape"], b: Float[Array, "*shape"]) -> Float[Array, ""]:
    """Pearson correlation of two maps over all voxels."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
