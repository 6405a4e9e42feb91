r"""The hinge toy: two rigid Gaussian blobs of beads joined at a hinge (fast, for tests).

Arm A is fixed along ``+e_x``; arm B is the same kind of blob rotated about ``e_z`` by the
hinge angle ``alpha = alpha_min + x (alpha_max - alpha_min)`` (the angle between the
arms), ``x`` in ``[0, 1]``. Each blob is ``n_beads`` beads with fixed random offsets
(std ``blob_radius_angstrom``, drawn once from ``seed``) around a centre at distance
``arm_length_angstrom`` from the hinge. The structure is centred on its amplitude-weighted
centroid at every ``x``. Named states: ``closed`` ``x < 0.5``, ``open`` ``x >= 0.5``.

>>> import jax.numpy as jnp
>>> model = HingeModel()
>>> atoms = model.structure_at(jnp.array([0.5]))
>>> atoms.positions_angstrom.shape
(48, 3)
>>> abs(float(atoms.positions_angstrom.mean(axis=0)[0])) < 1e-4
True
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cryosip.structures.base import AbstractConformationModel, Atoms

__all__ = ["HingeModel"]


class HingeModel(AbstractConformationModel):
    """Two blobs at a hinge; ``x[0]`` in ``[0, 1]`` maps linearly to the hinge angle."""

    arm_a: Float[Array, "n_beads 3"]
    arm_b: Float[Array, "n_beads 3"]
    amplitudes: Float[Array, " n_atoms"]
    widths_angstrom: Float[Array, " n_atoms"]
    angle_range_rad: Float[Array, " 2"]
    lower: Float[Array, " dim"]
    upper: Float[Array, " dim"]

    def __init__(  # noqa: PLR0913 - the toy's geometric parameters, each with a default
        self, n_beads: int = 24, arm_length_angstrom: float = 20.0,
        blob_radius_angstrom: float = 5.0, width_angstrom: float = 2.0,
        angle_min_deg: float = 40.0, angle_max_deg: float = 160.0, seed: int = 0,
    ):
        rng = np.random.default_rng(seed)
        offsets = rng.normal(0.0, blob_radius_angstrom, (2, n_beads, 3))
        offsets -= offsets.mean(axis=1, keepdims=True)
        centre = np.array([arm_length_angstrom, 0.0, 0.0])
        self.arm_a = jnp.asarray(offsets[0] + centre, dtype=jnp.float32)
        self.arm_b = jnp.asarray(offsets[1] + centre, dtype=jnp.float32)
        self.amplitudes = jnp.ones(2 * n_beads, dtype=jnp.float32)
        self.widths_angstrom = jnp.full(2 * n_beads, width_angstrom, dtype=jnp.float32)
        self.angle_range_rad = jnp.deg2rad(jnp.array([angle_min_deg, angle_max_deg]))
        self.lower, self.upper = jnp.zeros(1), jnp.ones(1)

    def hinge_angle_rad(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        """``alpha_min + x[0] (alpha_max - alpha_min)`` in radians."""
        lo, hi = self.angle_range_rad[0], self.angle_range_rad[1]
        return lo + x[0] * (hi - lo)

    def structure_at(self, x: Float[Array, " dim"]) -> Atoms:
        alpha = self.hinge_angle_rad(x)
        c, s = jnp.cos(alpha), jnp.sin(alpha)
        rot = jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=self.arm_b.dtype)
        positions = jnp.concatenate([self.arm_a, self.arm_b @ rot.T])
        w = self.amplitudes / jnp.sum(self.amplitudes)
        return Atoms(positions - w @ positions, self.amplitudes, self.widths_angstrom)

    @property
    def named_states(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        return {"closed": ((0.0,), (0.5,)), "open": ((0.5,), (1.0,))}
