"""The contract between conformation models and the forward model.

Particles of the flow are points ``x`` in a conformation space ``X`` (a box
``[lower, upper]`` in ``R^dim``, optionally periodic per axis). A conformation model turns
``x`` into :class:`Atoms`; only atoms reach the projector.

Units: positions and widths in Å. ``widths_angstrom`` is the standard deviation ``s`` of
each atom's isotropic 3-D Gaussian density ``amp * (2 pi s^2)^(-3/2) exp(-|r-r_a|^2/(2 s^2))``,
so ``amplitudes`` is the integrated density (the projection of an atom integrates to its
amplitude). A crystallographic B-factor gives ``s^2 = B / (8 pi^2)``.

A new model subclasses :class:`AbstractConformationModel` and is registered by name with
an options class (:func:`cryosip.structures.factory.register_model`), in one file:
``docs/extending.md`` works one through.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["AbstractConformationModel", "Atoms"]


class Atoms(eqx.Module):
    """Gaussian atoms (or beads): centres in Å, integrated amplitudes, widths (std) in Å."""

    positions_angstrom: Float[Array, "n_atoms 3"]
    amplitudes: Float[Array, " n_atoms"]
    widths_angstrom: Float[Array, " n_atoms"]

    @property
    def n_atoms(self) -> int:
        return int(self.positions_angstrom.shape[0])


class AbstractConformationModel(eqx.Module):
    """Maps ``x`` (shape ``(dim,)``) in the box ``[lower, upper]`` to :class:`Atoms`.

    ``structure_at`` must be differentiable in ``x`` and traceable by ``jax.jit``; the
    number of atoms is fixed across ``x``. ``named_states`` maps a state name to its
    ``(lower, upper)`` box in ``X`` (e.g. ``{"closed": ([0.0], [0.5])}``) for reporting
    populations.
    """

    lower: eqx.AbstractVar[Float[Array, " dim"]]
    upper: eqx.AbstractVar[Float[Array, " dim"]]

    @abc.abstractmethod
    def structure_at(self, x: Float[Array, " dim"]) -> Atoms:
        """The atoms of conformation ``x``."""

    @property
    def dim(self) -> int:
        return int(jnp.shape(self.lower)[0])

    @property
    def periodic(self) -> tuple[bool, ...]:
        return (False,) * self.dim

    @property
    def named_states(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        return {}
