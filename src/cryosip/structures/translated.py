r"""A conformation model moved rigidly by a fixed 3-D offset: ``r -> r + t`` for every atom.

Registration (:mod:`cryosip.pipeline.register`) estimates ``t`` (Å) so that the model sits in
the frame of the consensus map in which the particles' poses were determined;
:class:`TranslatedModel` applies it without touching the model: ``structure_at(x)`` is the
base model's atoms at ``x`` plus ``t``, and every other attribute (``topology``,
``named_states``, ``n_frames``, ``periodic``...) is the base model's.

>>> import jax.numpy as jnp
>>> from cryosip.structures.hinge import HingeModel
>>> base = HingeModel(n_beads=4)
>>> moved = TranslatedModel(base, jnp.array([6.0, -4.0, 3.0]))
>>> x = jnp.array([0.3])
>>> d = moved.structure_at(x).positions_angstrom - base.structure_at(x).positions_angstrom
>>> d[0].tolist(), moved.named_states == base.named_states
([6.0, -4.0, 3.0], True)
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from cryosip.structures.base import AbstractConformationModel, Atoms

__all__ = ["TranslatedModel"]


class TranslatedModel(AbstractConformationModel):
    """``base`` with every atom moved by ``offset_angstrom`` (shape (3,), Å)."""

    base: AbstractConformationModel
    offset_angstrom: Float[Array, " 3"]
    lower: Float[Array, " dim"]
    upper: Float[Array, " dim"]

    def __init__(self, base: AbstractConformationModel, offset_angstrom):
        self.base = base
        self.offset_angstrom = jnp.asarray(offset_angstrom, dtype=jnp.float32).reshape(3)
        self.lower, self.upper = base.lower, base.upper

    def structure_at(self, x: Float[Array, " dim"]) -> Atoms:
        atoms = self.base.structure_at(x)
        moved = atoms.positions_angstrom + self.offset_angstrom.astype(
            atoms.positions_angstrom.dtype)
        return eqx.tree_at(lambda a: a.positions_angstrom, atoms, moved)

    @property
    def periodic(self) -> tuple[bool, ...]:
        return self.base.periodic

    @property
    def named_states(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        return self.base.named_states

    @property
    def topology(self):
        return getattr(self.base, "topology", None)

    def __getattr__(self, name: str):
        """Anything else (``n_frames``, ``frame_x``, ``hinge_angle_rad``...) is the base's."""
        if name.startswith("_") or name in ("base", "offset_angstrom", "lower", "upper"):
            raise AttributeError(name)
        return getattr(self.base, name)
