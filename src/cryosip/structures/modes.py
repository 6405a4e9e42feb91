r"""Linear mode spaces: ``r(x) = mean + sum_k x_k m_k`` from a PCA of frames.

The frames are kept as given (the consensus map's frame) unless ``align=True``, which
superposes and centres them as for :class:`~cryosip.structures.path.PathModel`;
``m_k = sqrt(lambda_k) v_k`` where ``v_k`` is the k-th principal direction of the
flattened coordinates (unit norm in ``R^{3 n_atoms}``) and ``lambda_k`` its variance over
the frames (divisor ``F - 1``). So ``x_k`` is in standard deviations of mode ``k`` and the
box is ``[-3, 3]`` per mode (``x_k = +-3`` is 3 std along the mode).

>>> import jax.numpy as jnp
>>> rng = np.random.default_rng(0)
>>> frames = rng.normal(size=(10, 5, 3))
>>> model = LinearModeModel.from_frames(frames, np.ones(5), np.ones(5), n_modes=2, align=False)
>>> model.dim, model.structure_at(jnp.zeros(2)).positions_angstrom.shape
(2, (5, 3))
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cryosip.structures.base import AbstractConformationModel, Atoms
from cryosip.structures.path import prepare_frames
from cryosip.structures.topology import Topology

__all__ = ["LinearModeModel"]

BOX_STD = 3.0
"""Half-width of the conformation box, in standard deviations per mode."""


class LinearModeModel(AbstractConformationModel):
    """``mean + sum_k x_k modes[k]``; ``x`` in ``[-3, 3]^n_modes`` (units: std per mode)."""

    mean_angstrom: Float[Array, "n_atoms 3"]
    modes_angstrom: Float[Array, "n_modes n_atoms 3"]
    amplitudes: Float[Array, " n_atoms"]
    widths_angstrom: Float[Array, " n_atoms"]
    lower: Float[Array, " dim"]
    upper: Float[Array, " dim"]
    topology: Topology | None = eqx.field(static=True, default=None)

    def structure_at(self, x: Float[Array, " dim"]) -> Atoms:
        positions = self.mean_angstrom + jnp.tensordot(x, self.modes_angstrom, axes=1)
        return Atoms(positions, self.amplitudes, self.widths_angstrom)

    @classmethod
    def from_frames(
        cls, frames: Float[np.ndarray, "n_frames n_atoms 3"], amplitudes: np.ndarray,
        widths_angstrom: np.ndarray, topology: Topology | None = None, *, n_modes: int = 2,
        align: bool = False,
    ) -> LinearModeModel:
        frames = np.asarray(frames, dtype=np.float64)
        if align:
            ca = None if topology is None else np.flatnonzero(topology.atom_names == "CA")
            frames = prepare_frames(frames, amplitudes, ca if ca is not None and len(ca) else None)
        n_frames, n_atoms, _ = frames.shape
        if not 1 <= n_modes < n_frames:
            raise ValueError(f"n_modes must be in [1, {n_frames - 1}], got {n_modes}")
        mean = frames.mean(axis=0)
        _, sing, vt = np.linalg.svd((frames - mean).reshape(n_frames, -1), full_matrices=False)
        std = sing[:n_modes] / np.sqrt(n_frames - 1)
        modes = (std[:, None] * vt[:n_modes]).reshape(n_modes, n_atoms, 3)
        f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
        return cls(mean_angstrom=f32(mean), modes_angstrom=f32(modes),
                   amplitudes=f32(amplitudes), widths_angstrom=f32(widths_angstrom),
                   lower=jnp.full(n_modes, -BOX_STD), upper=jnp.full(n_modes, BOX_STD),
                   topology=topology)

    @classmethod
    def from_files(
        cls, topology: str, trajectory: str, *, select: str = "all", hydrogens: bool = True,
        n_modes: int = 2, align: bool = False,
    ) -> LinearModeModel:
        """PCA of an MDAnalysis topology + trajectory."""
        from cryosip.io.structures import read_trajectory  # io sits above structures

        frames, amps, widths, topo = read_trajectory(topology, trajectory, select, hydrogens)
        return cls.from_frames(frames, amps, widths, topo, n_modes=n_modes, align=align)

    @classmethod
    def from_structure_file(
        cls, path: str, *, hydrogens: bool = True, n_modes: int = 2, align: bool = False,
    ) -> LinearModeModel:
        """PCA of the models of a multi-model PDB/mmCIF."""
        from cryosip.io.structures import read_multimodel  # io sits above structures

        frames, amps, widths, topo = read_multimodel(path, hydrogens)
        return cls.from_frames(frames, amps, widths, topo, n_modes=n_modes, align=align)
