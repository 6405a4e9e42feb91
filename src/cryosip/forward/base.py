r"""The abstract parts of the forward model: pose, projector and CTF.

:class:`~cryosip.forward.image_model.ImageModel` wires any implementation of each:

* :class:`AbstractPose`: a rotation ``A`` and an in-plane shift ``o`` (Å) per image; atoms
  at ``r`` (Å, about the model origin) land at ``(A r)_{xy} - o`` in the image
  (:meth:`AbstractPose.image_coordinates`). Implemented by
  :class:`~cryosip.forward.pose.ImageNuisance` (RELION Euler angles, which also carries
  the CTF parameters of its image).
* :class:`AbstractProjector`: in-plane atom positions, amplitudes and widths to a
  ``box x box`` image (or to a window of it and the window's first pixel). Implemented by
  :class:`~cryosip.forward.projector.GaussianProjector`; registered by name in
  :data:`PROJECTORS`.
* :class:`AbstractCTF`: the transfer function of one image on the ``rfft2`` grid
  (:func:`cryosip.conventions.rfft_frequencies`) from the image's nuisance. Implemented by
  :class:`~cryosip.forward.ctf.Optics` (RELION convention).

Methods are resolved when ``jax.jit`` traces, so the abstraction costs nothing at run
time. Conventions (Euler axes, image centre, FFT sign) are :mod:`cryosip.conventions`'.

>>> issubclass(PROJECTORS.get("gaussian"), AbstractProjector)
True
"""

from __future__ import annotations

import abc

import equinox as eqx
from jaxtyping import Array, Float, Int

from cryosip.forward.config import ImageConfig
from cryosip.registry import Registry

__all__ = ["PROJECTORS", "AbstractCTF", "AbstractPose", "AbstractProjector", "register_projector"]


class AbstractPose(eqx.Module):
    """A rotation and an in-plane shift (one image, or a batch along leading axes)."""

    @abc.abstractmethod
    def rotation_matrix(self) -> Float[Array, "*batch 3 3"]:
        """``A`` such that atom ``r`` sits at ``A r`` before projection along ``z``."""

    @abc.abstractmethod
    def in_plane_shift_angstrom(self) -> Float[Array, "*batch 2"]:
        """``o``: the model origin appears at ``image_centre - o`` (Å)."""

    def image_coordinates(
        self, positions_angstrom: Float[Array, "n_atoms 3"]
    ) -> Float[Array, "n_atoms 2"]:
        """In-plane image coordinates ``(A r)_{xy} - o`` (Å from the image centre)."""
        a = self.rotation_matrix()
        return positions_angstrom @ a[:2].T - self.in_plane_shift_angstrom()


class AbstractProjector(eqx.Module):
    """Projects atoms at in-plane positions (Å) onto the pixel grid of ``config``."""

    @abc.abstractmethod
    def project(
        self,
        positions_xy_angstrom: Float[Array, "n_atoms 2"],
        amplitudes: Float[Array, " n_atoms"],
        widths_angstrom: Float[Array, " n_atoms"],
        config: ImageConfig,
    ) -> Float[Array, "box box"]:
        """The projected image ``img[y, x]`` (amplitude per Å²)."""

    @abc.abstractmethod
    def project_window(
        self,
        positions_xy_angstrom: Float[Array, "n_atoms 2"],
        amplitudes: Float[Array, " n_atoms"],
        widths_angstrom: Float[Array, " n_atoms"],
        config: ImageConfig,
    ) -> tuple[Float[Array, "w w"], Int[Array, " xy"]]:
        """The projection on a ``w x w`` window and its first pixel ``(x, y)`` in the box
        (a projector without windows returns the whole image and ``(0, 0)``)."""

    def window_size(self, config: ImageConfig) -> int:
        """``w``, the side of what :meth:`project_window` returns (sizes the chunks in which
        :class:`~cryosip.forward.image_model.ImageModel` renders a batch)."""
        return config.box_size


class AbstractCTF(eqx.Module):
    """The contrast transfer function of the microscope."""

    @abc.abstractmethod
    def transfer(self, nuisance, config: ImageConfig) -> Float[Array, "box half"]:
        """The CTF of one image with per-image parameters ``nuisance`` (unbatched) on the
        ``rfft2`` grid of ``config``: the image is ``irfft2(transfer * rfft2(projection))``."""


PROJECTORS: Registry[type[AbstractProjector]] = Registry("projector", AbstractProjector)
"""Registered projectors: name -> :class:`AbstractProjector` subclass."""

register_projector = PROJECTORS.register
"""Class decorator: ``@register_projector("name")`` (:meth:`cryosip.registry.Registry.register`)."""
