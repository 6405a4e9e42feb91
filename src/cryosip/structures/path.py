r"""User conformation models along a path of frames: ``x`` in ``[0, 1]`` = progress.

:class:`PathModel` interpolates frames (see :class:`~cryosip.structures.interp.FramePath`):
frame ``f`` of ``F`` is at ``x = f/(F-1)``. Build it from any MDAnalysis topology +
trajectory (:meth:`PathModel.from_files`) or a multi-model PDB/mmCIF
(:meth:`PathModel.from_structure_file`, read with gemmi); the readers are in
:mod:`cryosip.io.structures` (imported when a file is read: ``io`` sits above ``structures``).

**Frame.** By default the coordinates are kept as given: a user's model sits in the frame
of their consensus map, which is the frame of the poses in the STAR file, and moving it
(superposing, re-centring) shifts every projection away from the particles (see
``docs/data.md``, "Frames"). ``align=True`` superposes the frames on the first one (on CA
atoms when there are any) and centres each on its amplitude-weighted centroid, so ``x``
changes conformation only and the frame is cryosip's own (the built-in models do this).

>>> import jax.numpy as jnp
>>> frames = np.zeros((3, 2, 3)); frames[:, 1, 0] = [1.0, 2.0, 3.0]
>>> model = PathModel.from_frames(frames, np.ones(2), np.ones(2), align=False)
>>> float(model.structure_at(jnp.array([0.5])).positions_angstrom[1, 0])
2.0
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cryosip.structures.base import AbstractConformationModel, Atoms
from cryosip.structures.interp import FramePath, Interpolation, superpose_frames
from cryosip.structures.topology import Topology, coarse_grain_residues

__all__ = ["PathModel", "prepare_frames"]


def prepare_frames(
    frames: np.ndarray, amplitudes: np.ndarray, fit_index: np.ndarray | None = None
) -> np.ndarray:
    """Superpose frames on frame 0 (atoms ``fit_index``, default all) and centre each one."""
    frames = np.asarray(frames, dtype=np.float64)
    fit = np.arange(frames.shape[1]) if fit_index is None else np.asarray(fit_index)
    aligned = superpose_frames(frames, fit, np.ones(len(fit)))
    w = np.asarray(amplitudes, dtype=float) / np.sum(amplitudes)
    return aligned - np.einsum("a,fad->fd", w, aligned)[:, None, :]


class PathModel(AbstractConformationModel):
    """Structures along an interpolated path of frames; ``x`` (shape (1,)) in ``[0, 1]``."""

    path: FramePath
    amplitudes: Float[Array, " n_atoms"]
    widths_angstrom: Float[Array, " n_atoms"]
    lower: Float[Array, " dim"]
    upper: Float[Array, " dim"]
    topology: Topology | None = eqx.field(static=True, default=None)

    def structure_at(self, x: Float[Array, " dim"]) -> Atoms:
        return Atoms(self.path(x[0]), self.amplitudes, self.widths_angstrom)

    @property
    def n_frames(self) -> int:
        return self.path.n_frames

    def frame_x(self, frame: int) -> float:
        """The ``x`` of frame ``frame`` (``frame / (F - 1)``)."""
        return frame / (self.n_frames - 1)

    @classmethod
    def from_frames(  # noqa: PLR0913 - frames, per-atom arrays, then keyword-only options
        cls,
        frames: Float[np.ndarray, "n_frames n_atoms 3"],
        amplitudes: Float[np.ndarray, " n_atoms"],
        widths_angstrom: Float[np.ndarray, " n_atoms"],
        topology: Topology | None = None,
        *,
        interpolation: Interpolation = "cubic",
        align: bool = False,
        coarse: str | None = None,
    ) -> PathModel:
        """From coordinates (Å), kept as given unless ``align`` (module docstring);
        ``coarse="residue"`` keeps one bead per residue."""
        if coarse == "residue":
            topology = topology or Topology.generic(frames.shape[1])
            frames, amplitudes, widths_angstrom, topology = coarse_grain_residues(
                np.asarray(frames), np.asarray(amplitudes), np.asarray(widths_angstrom), topology
            )
        elif coarse is not None:
            raise ValueError(f"coarse must be None or 'residue', got {coarse!r}")
        if align:
            fit = None
            if topology is not None and np.any(topology.atom_names == "CA"):
                fit = np.flatnonzero(topology.atom_names == "CA")
            frames = prepare_frames(frames, amplitudes, fit)
        return cls._build(frames, amplitudes, widths_angstrom, topology, interpolation)

    @classmethod
    def _build(cls, frames, amplitudes, widths, topology, interpolation) -> PathModel:
        return cls(
            path=FramePath.from_frames(frames, interpolation),
            amplitudes=jnp.asarray(amplitudes, dtype=jnp.float32),
            widths_angstrom=jnp.asarray(widths, dtype=jnp.float32),
            lower=jnp.zeros(1),
            upper=jnp.ones(1),
            topology=topology,
        )

    @classmethod
    def from_files(  # noqa: PLR0913 - two files, then the model spec's keyword-only options
        cls, topology: str, trajectory: str, *, select: str = "all", hydrogens: bool = True,
        interpolation: Interpolation = "cubic", coarse: str | None = None, align: bool = False,
    ) -> PathModel:
        """From an MDAnalysis topology (PSF, PDB, GRO...) and trajectory (DCD, XTC...)."""
        from cryosip.io.structures import read_trajectory  # io sits above structures

        frames, amps, widths, topo = read_trajectory(topology, trajectory, select, hydrogens)
        return cls.from_frames(frames, amps, widths, topo, interpolation=interpolation,
                               coarse=coarse, align=align)

    @classmethod
    def from_structure_file(
        cls, path: str, *, hydrogens: bool = True, interpolation: Interpolation = "cubic",
        coarse: str | None = None, align: bool = False,
    ) -> PathModel:
        """From a multi-model PDB or mmCIF (every model has the same atoms in order)."""
        from cryosip.io.structures import read_multimodel  # io sits above structures

        frames, amps, widths, topo = read_multimodel(path, hydrogens)
        return cls.from_frames(frames, amps, widths, topo, interpolation=interpolation,
                               coarse=coarse, align=align)
