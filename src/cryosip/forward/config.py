"""The image geometry: a square box of ``box_size`` pixels of ``pixel_size_angstrom``.

Pixel ``i`` sits at ``(i - box_size // 2) * pixel_size_angstrom`` (centre ``box // 2``, see
:mod:`cryosip.conventions`).

>>> cfg = ImageConfig(box_size=4, pixel_size_angstrom=2.0)
>>> [float(v) for v in cfg.pixel_centres_angstrom]
[-4.0, -2.0, 0.0, 2.0]
"""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Float

from cryosip import conventions

__all__ = ["ImageConfig"]


class ImageConfig(eqx.Module):
    """A ``box_size x box_size`` image with square pixels of ``pixel_size_angstrom`` Å."""

    box_size: int = eqx.field(static=True)
    pixel_size_angstrom: float = eqx.field(static=True)

    def __check_init__(self):
        if self.box_size < 2 or self.pixel_size_angstrom <= 0:
            raise ValueError(f"bad image geometry {self.box_size=}, {self.pixel_size_angstrom=}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.box_size, self.box_size)

    @property
    def pixel_centres_angstrom(self) -> Float[Array, " box"]:
        return conventions.pixel_centres_angstrom(self.box_size, self.pixel_size_angstrom)

    @property
    def pixel_edges_angstrom(self) -> Float[Array, " box+1"]:
        return conventions.pixel_edges_angstrom(self.box_size, self.pixel_size_angstrom)

    def rfft_frequencies(self) -> tuple[Float[Array, "box 1"], Float[Array, "1 half"]]:
        """``(k_y, k_x)`` in 1/Å on the ``rfft2`` grid."""
        return conventions.rfft_frequencies(self.box_size, self.pixel_size_angstrom)
