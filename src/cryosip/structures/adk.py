r"""Adenylate kinase (AdK) closed -> open: the 98-frame DIMS trajectory of MDAnalysisTests.

The files ``adk.psf`` + ``adk_dims.dcd`` (3341 atoms, 214 residues, hydrogens included)
are read at run time from the installed ``MDAnalysisTests`` package (never copied) and
cached in memory. Amplitudes are atomic numbers (elements from the PSF masses); the PSF
has no B-factors, so widths are :data:`~cryosip.structures.topology.DEFAULT_WIDTH_ANGSTROM`.

* :class:`AdkPath` (``dim = 1``): frames superposed on frame 0 by their CA atoms and
  centred on their amplitude-weighted centroid; ``x = f / 97`` is frame ``f``, natural
  cubic spline between frames (``interpolation="linear"`` for straight segments). The
  all-atom RMSD to frame 0 rises from 0 to 6.9 Å along ``x`` (non-decreasing up to
  0.03 Å wobbles near the open end, where the path plateaus). Named states: ``closed``
  ``x < 0.5``, ``open`` ``x >= 0.5``.
* :class:`AdkDomains` (``dim = 2``): frames superposed on the CORE domain (residues
  1-29, 60-121, 160-214) of frame 0; the LID atoms (122-159) take their path positions
  at progress ``x[0]``, the NMP atoms (30-59) at ``x[1]``, the CORE atoms at
  ``(x[0] + x[1]) / 2``. On the diagonal ``x[0] = x[1]`` it is the path (in the CORE
  frame). Limits: off the diagonal the structure is a chimera: bonds at the domain
  boundaries stretch and domain interfaces can clash, since no such structure was
  simulated; use it as a 2-D test geometry, not as physics.

``coarse="residue"`` gives one bead per residue at the residue's amplitude-weighted
centroid (214 beads, amplitude = sum of the residue's atomic numbers, second-moment-matched
width); ``hydrogens=False`` drops H.

>>> import jax.numpy as jnp
>>> model = AdkPath(coarse="residue")
>>> model.structure_at(jnp.array([0.3])).positions_angstrom.shape
(214, 3)
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from cryosip.structures.base import AbstractConformationModel, Atoms
from cryosip.structures.interp import FramePath, Interpolation, superpose_frames
from cryosip.structures.path import PathModel
from cryosip.structures.topology import Topology, coarse_grain_residues

__all__ = ["ADK_DOMAINS", "AdkDomains", "AdkPath", "load_adk_frames"]

ADK_DOMAINS: dict[str, tuple[tuple[int, int], ...]] = {
    "CORE": ((1, 29), (60, 121), (160, 214)),
    "NMP": ((30, 59),),
    "LID": ((122, 159),),
}
"""AdK domains as inclusive residue-id ranges."""


@functools.lru_cache(maxsize=2)
def _load(hydrogens: bool):
    from MDAnalysisTests.datafiles import DCD, PSF

    from cryosip.io.structures import read_trajectory  # io sits above structures

    return read_trajectory(PSF, DCD, "all", hydrogens)


def load_adk_frames(
    hydrogens: bool = True, coarse: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Topology]:
    """Raw (unaligned) AdK DIMS ``(frames (98, n, 3), amplitudes, widths, Topology)``."""
    frames, amps, widths, topo = _load(hydrogens)
    if coarse == "residue":
        return coarse_grain_residues(frames, amps, widths, topo)
    if coarse is not None:
        raise ValueError(f"coarse must be None or 'residue', got {coarse!r}")
    return frames.copy(), amps.copy(), widths.copy(), topo


def domain_mask(topology: Topology, domain: str) -> np.ndarray:
    """Boolean mask of the atoms whose residue id is in ``ADK_DOMAINS[domain]``."""
    rid = topology.residue_ids
    return np.any([(rid >= a) & (rid <= b) for a, b in ADK_DOMAINS[domain]], axis=0)


class AdkPath(PathModel):
    """AdK closed (``x = 0``) -> open (``x = 1``) along the DIMS path (see module doc)."""

    def __init__(
        self, coarse: str | None = None, hydrogens: bool = True,
        interpolation: Interpolation = "cubic",
    ):
        frames, amps, widths, topo = load_adk_frames(hydrogens, coarse)
        base = PathModel.from_frames(frames, amps, widths, topo, interpolation=interpolation,
                                     align=True)
        self.path, self.amplitudes = base.path, base.amplitudes
        self.widths_angstrom = base.widths_angstrom
        self.lower, self.upper, self.topology = base.lower, base.upper, topo

    @property
    def named_states(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        return {"closed": ((0.0,), (0.5,)), "open": ((0.5,), (1.0,))}


class AdkDomains(AbstractConformationModel):
    """AdK with LID closure ``x[0]`` and NMP closure ``x[1]`` in ``[0, 1]^2`` (module doc)."""

    core: FramePath
    lid: FramePath
    nmp: FramePath
    order: Int[Array, " n_atoms"]
    amplitudes: Float[Array, " n_atoms"]
    widths_angstrom: Float[Array, " n_atoms"]
    lower: Float[Array, " dim"]
    upper: Float[Array, " dim"]
    topology: Topology = eqx.field(static=True)

    def __init__(
        self, coarse: str | None = None, hydrogens: bool = True,
        interpolation: Interpolation = "cubic",
    ):
        frames, amps, widths, topo = load_adk_frames(hydrogens, coarse)
        core = domain_mask(topo, "CORE")
        fit = np.flatnonzero(core & (topo.atom_names == "CA"))
        frames = superpose_frames(frames, fit, np.ones(len(fit)))
        frames = frames - (amps / amps.sum()) @ frames[0]
        groups = [np.flatnonzero(domain_mask(topo, d)) for d in ("CORE", "LID", "NMP")]
        self.core, self.lid, self.nmp = (
            FramePath.from_frames(frames[:, g], interpolation) for g in groups
        )
        self.order = jnp.asarray(np.argsort(np.concatenate(groups)))
        self.amplitudes = jnp.asarray(amps, dtype=jnp.float32)
        self.widths_angstrom = jnp.asarray(widths, dtype=jnp.float32)
        self.lower, self.upper, self.topology = jnp.zeros(2), jnp.ones(2), topo

    def structure_at(self, x: Float[Array, " dim"]) -> Atoms:
        parts = [self.core(0.5 * (x[0] + x[1])), self.lid(x[0]), self.nmp(x[1])]
        positions = jnp.concatenate(parts)[self.order]
        return Atoms(positions, self.amplitudes, self.widths_angstrom)

    @property
    def named_states(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        return {
            "closed": ((0.0, 0.0), (0.5, 0.5)),
            "open": ((0.5, 0.5), (1.0, 1.0)),
            "lid_open_nmp_closed": ((0.5, 0.0), (1.0, 0.5)),
            "lid_closed_nmp_open": ((0.0, 0.5), (0.5, 1.0)),
        }
