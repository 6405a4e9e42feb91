r"""Two rigid domains at a hinge that bends and twists: a new conformation model in one file.

Each domain is a ``3 x 3 x 3`` lattice of beads (spacing ``spacing_angstrom``, width
``width_angstrom``, amplitude 1). Domain A is centred at ``-L e_x``; domain B is the
lattice twisted by ``tau = x[1] * max_twist_deg`` about the arm axis ``e_x``, centred at
``+L e_x`` and bent about ``e_z`` through the hinge (the origin) by
``beta = x[0] * max_bend_deg``. So the domain centres are ``2 L cos(beta / 2)`` apart.
The structure is centred on its centroid; ``x`` lies in ``[0, 1]^2``.

Importing this file registers the model as ``"two-domain"`` for ``load_model`` and
every command that takes a model spec:

>>> from cryosip.structures.factory import load_model
>>> model = load_model({"name": "two-domain", "max_bend_deg": 90.0})
>>> model.dim, model.structure_at(model.lower).n_atoms
(2, 54)
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
from jaxtyping import Array, Float
from pydantic import PositiveFloat

from cryosip.structures.base import AbstractConformationModel, Atoms
from cryosip.structures.factory import ModelOptions, register_model

__all__ = ["TwoDomainModel", "TwoDomainOptions"]


def _rotation(axis: int, angle_rad: Float[Array, ""]) -> Float[Array, "3 3"]:
    """Rotation by ``angle_rad`` about coordinate axis ``axis`` (right-handed)."""
    i, j = [k for k in range(3) if k != axis]
    c, s = jnp.cos(angle_rad), jnp.sin(angle_rad)
    return jnp.eye(3).at[i, i].set(c).at[j, j].set(c).at[i, j].set(-s).at[j, i].set(s)


class TwoDomainModel(AbstractConformationModel):
    """``x[0]``: bend, ``x[1]``: twist, each in ``[0, 1]`` (module docstring)."""

    lattice: Float[Array, "27 3"]
    arm_length_angstrom: float
    max_angles_rad: Float[Array, " 2"]
    widths_angstrom: Float[Array, " n_atoms"]
    lower: Float[Array, " dim"]
    upper: Float[Array, " dim"]

    def __init__(self, arm_length_angstrom=12.0, max_bend_deg=120.0, max_twist_deg=90.0,
                 spacing_angstrom=3.0, width_angstrom=1.5):
        grid = list(itertools.product((-1.0, 0.0, 1.0), repeat=3))
        self.lattice = spacing_angstrom * jnp.array(grid)
        self.arm_length_angstrom = arm_length_angstrom
        self.max_angles_rad = jnp.deg2rad(jnp.array([max_bend_deg, max_twist_deg]))
        self.widths_angstrom = jnp.full(54, width_angstrom)
        self.lower, self.upper = jnp.zeros(2), jnp.ones(2)

    def structure_at(self, x: Float[Array, " dim"]) -> Atoms:
        bend, twist = x * self.max_angles_rad
        arm = jnp.array([self.arm_length_angstrom, 0.0, 0.0])
        a = self.lattice - arm
        b = (self.lattice @ _rotation(0, twist).T + arm) @ _rotation(2, bend).T
        positions = jnp.concatenate([a, b])
        return Atoms(positions - positions.mean(0), jnp.ones(54), self.widths_angstrom)


@register_model("two-domain")
class TwoDomainOptions(ModelOptions):
    """The options a model spec may give: ``{name: two-domain, max_bend_deg: 90}``."""

    arm_length_angstrom: PositiveFloat = 12.0
    max_bend_deg: float = 120.0
    max_twist_deg: float = 90.0

    def build(self) -> TwoDomainModel:
        return TwoDomainModel(self.arm_length_angstrom, self.max_bend_deg, self.max_twist_deg)
