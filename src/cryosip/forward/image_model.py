r"""The image model: wires pose, projector and CTF into clean images.

For atoms ``r_j`` (Å, about the rotation centre = model origin), nuisance ``w`` =
(``A`` from the Euler angles, shift ``o``, CTF parameters):

.. math::  G(w) = \mathcal F^{-1}\big[\mathrm{CTF}_w\,\mathcal F[\Pi(\{(A r_j)_{xy} - o\})]\big]

with ``Pi`` the pixel-averaged Gaussian projection (:mod:`cryosip.forward.projector`). The
shift is applied to the atom positions (exact, no wrap-around). ``render_images`` is
batched over nuisances with ``vmap`` and differentiable in the atom positions.

>>> import jax, jax.numpy as jnp
>>> from cryosip.structures.base import Atoms
>>> atoms = Atoms(jnp.zeros((1, 3)), jnp.ones(1), jnp.full(1, 2.0))
>>> w = ImageNuisance.create(jnp.zeros((3, 3)))
>>> render_images(atoms, w, ImageConfig(16, 2.0), Optics()).shape
(3, 16, 16)
"""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import Array, Float

from cryosip.forward.config import ImageConfig
from cryosip.forward.ctf import Optics, apply_ctf, ctf_rfft
from cryosip.forward.pose import ImageNuisance
from cryosip.forward.projector import GaussianProjector
from cryosip.rotations import euler_to_matrix
from cryosip.structures.base import Atoms

__all__ = ["ImageModel", "render_images", "rotate_and_shift"]


def rotate_and_shift(
    positions_angstrom: Float[Array, "n_atoms 3"], nuisance: ImageNuisance
) -> Float[Array, "n_atoms 2"]:
    """In-plane image coordinates ``(A r)_{xy} - o`` (Å from the image centre)."""
    a = euler_to_matrix(nuisance.euler_deg)
    return positions_angstrom @ a[:2].T - nuisance.shift_angstrom


class ImageModel(eqx.Module):
    """Composes the physical parts: projector, optics (CTF) and image geometry.

    ``apply_ctf=False`` gives the bare (shifted, rotated) projection.
    """

    config: ImageConfig
    optics: Optics = Optics()
    projector: GaussianProjector = GaussianProjector()
    apply_ctf: bool = eqx.field(default=True, static=True)

    def render(self, atoms: Atoms, nuisance: ImageNuisance) -> Float[Array, "box box"]:
        """One clean image for one (unbatched) nuisance."""
        xy = rotate_and_shift(atoms.positions_angstrom, nuisance)
        proj = self.projector.project(xy, atoms.amplitudes, atoms.widths_angstrom, self.config)
        if not self.apply_ctf:
            return proj
        return apply_ctf(proj, ctf_rfft(self.optics, nuisance, self.config))

    def render_batch(self, atoms: Atoms, nuisance: ImageNuisance) -> Float[Array, "n box box"]:
        """Clean images for a batch of nuisances (leading axis ``n``), one structure."""
        return jax.vmap(self.render, in_axes=(None, 0))(atoms, nuisance)


def render_images(
    atoms: Atoms,
    nuisance: ImageNuisance,
    image_config: ImageConfig,
    optics: Optics,
    window_pixels: int | None = None,
) -> Float[Array, "n box box"]:
    """Clean images of ``atoms`` under each of a batch of nuisances (CTF applied).

    ``window_pixels`` (static): projection window, see :mod:`cryosip.forward.projector`
    (``None``: whole box; :func:`~cryosip.forward.projector.window_pixels_for` is safe).
    """
    projector = GaussianProjector(window_pixels=window_pixels)
    return ImageModel(image_config, optics, projector).render_batch(atoms, nuisance)
