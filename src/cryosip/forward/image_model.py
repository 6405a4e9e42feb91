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
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from cryosip.forward.base import AbstractCTF, AbstractPose, AbstractProjector
from cryosip.forward.config import ImageConfig
from cryosip.forward.ctf import Optics, apply_ctf
from cryosip.forward.pose import ImageNuisance
from cryosip.forward.projector import GaussianProjector
from cryosip.structures.base import Atoms

__all__ = ["ImageModel", "render_images", "rotate_and_shift"]


def rotate_and_shift(
    positions_angstrom: Float[Array, "n_atoms 3"], nuisance: AbstractPose
) -> Float[Array, "n_atoms 2"]:
    """In-plane image coordinates ``(A r)_{xy} - o`` (Å from the image centre)."""
    return nuisance.image_coordinates(positions_angstrom)


class ImageModel(eqx.Module):
    """Composes the physical parts: projector, optics (CTF) and image geometry.

    ``projector`` is any :class:`~cryosip.forward.base.AbstractProjector`, ``optics`` any
    :class:`~cryosip.forward.base.AbstractCTF` and the nuisances any
    :class:`~cryosip.forward.base.AbstractPose` that the CTF reads its parameters from.

    ``apply_ctf=False`` gives the bare (shifted, rotated) projection. ``cache_bytes`` sizes
    the chunks in which batches are projected (:meth:`render_indexed`).
    """

    config: ImageConfig
    optics: AbstractCTF = Optics()
    projector: AbstractProjector = GaussianProjector()
    apply_ctf: bool = eqx.field(default=True, static=True)
    cache_bytes: int = eqx.field(default=2**23, static=True)

    def render(self, atoms: Atoms, nuisance: ImageNuisance) -> Float[Array, "box box"]:
        """One clean image for one (unbatched) nuisance."""
        xy = rotate_and_shift(atoms.positions_angstrom, nuisance)
        args = (xy, atoms.amplitudes, atoms.widths_angstrom, self.config)
        if not self.apply_ctf:
            return self.projector.project(*args)
        crop, first = self.projector.project_window(*args)
        return apply_ctf(crop, self.optics.transfer(nuisance, self.config), first)

    def render_batch(self, atoms: Atoms, nuisance: ImageNuisance) -> Float[Array, "n box box"]:
        """Clean images for a batch of nuisances (leading axis ``n``), one structure."""
        n = nuisance.euler_deg.shape[0]
        stacked = jax.tree.map(lambda a: a[None], atoms)
        index = jnp.zeros(n, dtype=int)
        return self.render_indexed(stacked, index, nuisance, jnp.arange(n))

    def render_indexed(
        self,
        atoms: Atoms,
        atom_index: Int[Array, " n"],
        nuisance: ImageNuisance,
        nuisance_index: Int[Array, " n"],
    ) -> Float[Array, "n box box"]:
        """Image ``k`` renders structure ``atom_index[k]`` under nuisance ``nuisance_index[k]``.

        ``atoms`` carries a leading structure axis (``vmap(model.structure_at)`` output),
        ``nuisance`` a leading axis of its own. The projections run in chunks of
        :meth:`chunk_size` images (``lax.map``) so that their ``(window + 1) x n_atoms``
        temporaries stay in cache: one vmap over a whole large batch is memory-bound and
        ~3x slower for all-atom structures. The CTF and FFTs run in chunks of
        :meth:`fft_chunk_size` images.
        """

        def project(args):
            i, j = args
            a = jax.tree.map(lambda t: t[i], atoms)
            xy = rotate_and_shift(a.positions_angstrom, nuisance.take(j))
            xy_args = (xy, a.amplitudes, a.widths_angstrom, self.config)
            if not self.apply_ctf:
                return self.projector.project(*xy_args), jnp.zeros(2, dtype=int)
            return self.projector.project_window(*xy_args)

        def transfer(args):
            crop, first, j = args
            return apply_ctf(crop, self.optics.transfer(nuisance.take(j), self.config), first)

        n_atoms = atoms.positions_angstrom.shape[-2]
        pairs = (atom_index, nuisance_index)
        crops, firsts = _chunked_map(project, pairs, self.chunk_size(n_atoms))
        if not self.apply_ctf:
            return crops
        return _chunked_map(transfer, (crops, firsts, nuisance_index), self.fft_chunk_size())

    def chunk_size(self, n_atoms: int) -> int:
        """Largest number of images per projection chunk: two ``(window + 1) x n_atoms``
        float32 temporaries per image within ``cache_bytes``, at least one. The default,
        8 MiB (a quarter of this machine's L3), was the fastest of 0.5-8 MiB and unchunked
        for AdK all-atom and beads at box 64 and 128, batches 16 and 128, forward and
        gradient (see ``docs/performance.md``).
        """
        if jax.default_backend() != "cpu":  # sized for a CPU's cache; a GPU wants one batch
            return 2**30
        w = self.projector.window_size(self.config)
        return max(1, self.cache_bytes // (2 * 4 * (w + 1) * n_atoms))

    def fft_chunk_size(self) -> int:
        """Images per CTF/FFT chunk: three ``box x (box/2 + 1)`` complex64 arrays per image
        within ``cache_bytes`` (no chunking at box 64 and batch 128; chunks of 32 at box 128,
        where that was 1.3-1.5x faster than one batched FFT)."""
        if jax.default_backend() != "cpu":
            return 2**30
        box = self.config.box_size
        return max(1, self.cache_bytes // (3 * 8 * box * (box // 2 + 1)))


def _chunked_map(fn, xs, max_chunk: int):
    """``vmap(fn)(xs)`` in ``lax.map`` chunks of at most ``max_chunk``, balanced in size."""
    n = jax.tree.leaves(xs)[0].shape[0]
    chunk = -(-n // -(-n // max_chunk))
    if chunk >= n:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=chunk)


def render_images(
    atoms: Atoms,
    nuisance: ImageNuisance,
    image_config: ImageConfig,
    optics: Optics,
    window_pixels: int | None = None,
    footprint_pixels: int | None = None,
) -> Float[Array, "n box box"]:
    """Clean images of ``atoms`` under each of a batch of nuisances (CTF applied).

    ``window_pixels`` (static): projection window, see :mod:`cryosip.forward.projector`
    (``None``: whole box; :func:`~cryosip.forward.projector.window_pixels_for` is safe).
    ``footprint_pixels`` (static): per-atom footprints instead of the dense product
    (:func:`~cryosip.forward.projector.footprint_pixels_for` is safe).
    """
    projector = GaussianProjector(window_pixels=window_pixels, footprint_pixels=footprint_pixels)
    return ImageModel(image_config, optics, projector).render_batch(atoms, nuisance)
