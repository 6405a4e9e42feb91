r"""Atom names, elements, amplitudes and widths: what a structure file says about its atoms.

Amplitudes are atomic numbers ``Z`` times occupancy (a standard low-resolution proxy for
the projected scattering potential). Widths are the standard deviation ``s`` (Å) of each
atom's isotropic 3-D Gaussian: from a B-factor ``B = 8 pi^2 s^2`` when the source has
non-zero B-factors, else :data:`DEFAULT_WIDTH_ANGSTROM`.

Coarse-graining to one bead per residue (:func:`coarse_grain_residues`) puts the bead at
the residue's amplitude-weighted centroid ``r_c = sum_a Z_a r_a / sum_a Z_a`` (in every
frame), with amplitude ``sum_a Z_a`` and the width that matches the residue's
amplitude-weighted second moment about the bead:

.. math:: s_{bead}^2 = \overline{s_a^2} + \frac{1}{3}\frac{\sum_a Z_a |r_a - r_c|^2}{\sum_a Z_a}

(computed on the first frame; the 1/3 turns the 3-D mean square into a per-axis variance;
the bar is the mean over the residue's atoms). The bead keeps the name of the residue's CA
(its first atom if it has no CA), not its position.

>>> atomic_numbers_from_masses(np.array([1.008, 12.011, 32.06])).tolist()
[1, 6, 16]
>>> round(float(width_from_bfactor(8 * np.pi**2)), 6)
1.0
"""

from __future__ import annotations

import dataclasses

import gemmi
import numpy as np
from jaxtyping import Float, Int

__all__ = [
    "DEFAULT_WIDTH_ANGSTROM",
    "Topology",
    "atomic_numbers_from_masses",
    "atomic_numbers_from_symbols",
    "coarse_grain_residues",
    "width_from_bfactor",
]

DEFAULT_WIDTH_ANGSTROM = 1.5
"""Atom width (std, Å) when the source has no B-factors (B = 8 pi^2 1.5^2 ≈ 178 Å^2)."""

_MASS_TABLE = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999, 11: 22.99, 12: 24.305, 15: 30.974,
               16: 32.06, 17: 35.45, 19: 39.098, 20: 40.078, 25: 54.938, 26: 55.845,
               29: 63.546, 30: 65.38, 34: 78.971}


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """Per-atom names for writing PDB files (arrays of length ``n_atoms``).

    Compared and hashed by identity, so a model holding it as a static field stays cheap
    to pass through ``jax.jit``.
    """

    atom_names: np.ndarray
    residue_names: np.ndarray
    residue_ids: np.ndarray
    elements: np.ndarray
    chain_ids: np.ndarray

    @property
    def n_atoms(self) -> int:
        return int(len(self.atom_names))

    def take(self, index: np.ndarray) -> Topology:
        """The topology of the atoms at ``index`` (in that order)."""
        return Topology(*(np.asarray(getattr(self, f.name))[index]
                          for f in dataclasses.fields(self)))

    @classmethod
    def generic(cls, n_atoms: int, element: str = "C") -> Topology:
        """Placeholder names (one ``BEAD`` residue per atom) for models without a topology."""
        return cls(np.full(n_atoms, element), np.full(n_atoms, "BEA"), np.arange(1, n_atoms + 1),
                   np.full(n_atoms, element), np.full(n_atoms, "A"))


def atomic_numbers_from_masses(
    masses: Float[np.ndarray, " n_atoms"],
) -> Int[np.ndarray, " n_atoms"]:
    """Atomic numbers of the common biological elements nearest each mass (Da)."""
    zs = np.array(list(_MASS_TABLE))
    ms = np.array(list(_MASS_TABLE.values()))
    return zs[np.argmin(np.abs(np.asarray(masses)[:, None] - ms[None, :]), axis=1)]


def atomic_numbers_from_symbols(symbols: np.ndarray) -> Int[np.ndarray, " n_atoms"]:
    """Atomic numbers from element symbols (``"C"``, ``"FE"``...); 0 for unknown symbols."""
    return np.array([gemmi.Element(str(s).strip().capitalize()).atomic_number for s in symbols])


def width_from_bfactor(bfactor: Float[np.ndarray, ...]) -> Float[np.ndarray, ...]:
    """Gaussian std (Å) from a B-factor (Å^2): ``s = sqrt(B / (8 pi^2))``."""
    return np.sqrt(np.asarray(bfactor, dtype=float) / (8.0 * np.pi**2))


def widths_or_default(bfactors: np.ndarray | None, n_atoms: int) -> np.ndarray:
    """Widths from B-factors if any is non-zero, else :data:`DEFAULT_WIDTH_ANGSTROM`."""
    if bfactors is None or not np.any(np.asarray(bfactors) > 0):
        return np.full(n_atoms, DEFAULT_WIDTH_ANGSTROM)
    b = np.asarray(bfactors, dtype=float)
    return np.where(b > 0, width_from_bfactor(np.maximum(b, 1e-12)), DEFAULT_WIDTH_ANGSTROM)


def _residue_groups(topology: Topology) -> list[np.ndarray]:
    """Atom indices of each residue, in order of first appearance (by chain and residue id)."""
    keys = list(zip(topology.chain_ids.tolist(), topology.residue_ids.tolist(), strict=True))
    starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]] + [len(keys)]
    return [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def coarse_grain_residues(
    frames: Float[np.ndarray, "n_frames n_atoms 3"],
    amplitudes: Float[np.ndarray, " n_atoms"],
    widths_angstrom: Float[np.ndarray, " n_atoms"],
    topology: Topology,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Topology]:
    """One bead per residue: ``(bead_frames, amplitudes, widths_angstrom, bead_topology)``.

    A bead sits at its residue's amplitude-weighted centroid (in every frame), carries the
    residue's total amplitude and has the width that matches the residue's second moment,
    ``s^2 = mean(s_atom^2) + msd/3`` about the centroid (moment matching: the bead's image
    agrees with the residue's at low resolution). The topology keeps the CA's name.
    """
    groups = _residue_groups(topology)
    names = topology.atom_names
    label = np.array([g[np.flatnonzero(names[g] == "CA")[0]] if np.any(names[g] == "CA")
                      else g[0] for g in groups])
    amps = np.array([amplitudes[g].sum() for g in groups])
    beads = np.stack([np.einsum("fac,a->fc", frames[:, g], amplitudes[g] / amplitudes[g].sum())
                      for g in groups], axis=1)
    widths = np.empty(len(groups))
    for k, g in enumerate(groups):
        d2 = np.sum((frames[0, g] - beads[0, k]) ** 2, axis=-1)
        msd = np.sum(amplitudes[g] * d2) / max(amplitudes[g].sum(), 1e-12)
        widths[k] = np.sqrt(np.mean(widths_angstrom[g] ** 2) + msd / 3.0)
    return beads, amps, widths, topology.take(label)
