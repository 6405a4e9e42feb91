r"""Structure files in: multi-frame trajectories (MDAnalysis) and multi-model PDB/mmCIF (gemmi).

Both readers return ``(frames, amplitudes, widths_angstrom, topology)``: coordinates in Å
as given in the file (``(n_frames, n_atoms, 3)``, no centring or superposition),
amplitudes ``Z * occupancy`` (``Z`` from the element, or from the mass when the topology
has no elements), widths from B-factors (:func:`~cryosip.structures.topology.widths_or_default`)
and a :class:`~cryosip.structures.topology.Topology` of atom names for writing PDB files.
Conformation models (:mod:`cryosip.structures.path`, :mod:`cryosip.structures.modes`,
:mod:`cryosip.structures.adk`) build on them.

**Layering.** ``structures`` (conformation models, atoms) < ``forward`` (images of atoms)
< ``io`` (files of images, poses and structures). This module imports from ``structures``
only the leaf :mod:`cryosip.structures.topology` (per-atom data and element tables). The
models that read files (``PathModel.from_files``, ``LinearModeModel.from_files``, AdK)
import these readers inside those constructors, when a file is read, so importing
``cryosip.structures`` never imports ``cryosip.io``.

>>> import gemmi, tempfile, os
>>> st = gemmi.Structure()
>>> for k in range(2):  # doctest: +ELLIPSIS
...     model = gemmi.Model(str(k + 1)); chain = gemmi.Chain("A"); res = gemmi.Residue()
...     res.name, res.seqid = "GLY", gemmi.SeqId(1, " ")
...     atom = gemmi.Atom(); atom.name, atom.element = "CA", gemmi.Element("C")
...     atom.pos, atom.occ = gemmi.Position(float(k), 0.0, 0.0), 1.0
...     res.add_atom(atom); chain.add_residue(res); model.add_chain(chain); st.add_model(model)
<...>
>>> path = os.path.join(tempfile.mkdtemp(), "two.pdb"); st.write_pdb(path)
>>> frames, amps, widths, topo = read_multimodel(path)
>>> frames.shape, amps.tolist(), topo.atom_names.tolist()
((2, 1, 3), [6.0], ['CA'])
"""

from __future__ import annotations

import warnings

import numpy as np

from cryosip.errors import InputError
from cryosip.structures.topology import (
    Topology,
    atomic_numbers_from_masses,
    atomic_numbers_from_symbols,
    widths_or_default,
)

__all__ = ["read_multimodel", "read_trajectory"]


def _universe_topology(atoms) -> tuple[Topology, np.ndarray]:
    """Topology and atomic numbers of an MDAnalysis AtomGroup."""
    try:
        elements = np.asarray(atoms.elements, dtype=str)
        z = atomic_numbers_from_symbols(elements)
        if np.any(z == 0):
            raise ValueError("unknown element")
    except (AttributeError, ValueError):
        z = atomic_numbers_from_masses(atoms.masses)
        elements = np.array([_SYMBOLS.get(int(k), "X") for k in z])
    segids = np.asarray(getattr(atoms, "segids", np.full(len(atoms), "")), dtype=str)
    letters = {s: chr(ord("A") + k % 26) for k, s in enumerate(dict.fromkeys(segids.tolist()))}
    chains = np.array([letters[s] for s in segids.tolist()])
    topo = Topology(np.asarray(atoms.names, dtype=str), np.asarray(atoms.resnames, dtype=str),
                    np.asarray(atoms.resids), elements, chains)
    return topo, z


_SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 11: "NA", 12: "MG", 15: "P", 16: "S", 17: "CL",
            19: "K", 20: "CA", 25: "MN", 26: "FE", 29: "CU", 30: "ZN", 34: "SE"}


def read_trajectory(topology: str, trajectory: str, select: str = "all", hydrogens: bool = True):
    """``(frames, amplitudes, widths_angstrom, Topology)`` of an MDAnalysis trajectory."""
    import MDAnalysis as mda

    with warnings.catch_warnings():  # MDAnalysis 2.x DCDReader deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        universe = mda.Universe(topology, trajectory)
        atoms = universe.select_atoms(select)
        keep = np.ones(len(atoms), bool)
        frames = np.stack([atoms.positions.astype(np.float64) for _ in universe.trajectory])
    topo, z = _universe_topology(atoms)
    if not hydrogens:
        keep = z > 1
        frames = frames[:, keep]
    bfac = getattr(atoms, "tempfactors", None)
    widths = widths_or_default(None if bfac is None else np.asarray(bfac)[keep], int(keep.sum()))
    return frames, z[keep].astype(float), widths, topo.take(np.flatnonzero(keep))


def read_multimodel(path: str, hydrogens: bool = True):
    """``(frames, amplitudes, widths_angstrom, Topology)`` of a multi-model PDB/mmCIF."""
    import gemmi

    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise InputError(str(path), None, "a PDB or mmCIF file gemmi reads",
                         str(err).splitlines()[0] if str(err) else repr(err)) from None
    if not hydrogens:
        structure.remove_hydrogens()
    records = [[(ch.name, r.name, r.seqid.num, a) for ch in m for r in ch for a in r]
               for m in structure]
    if len(records) < 2 or len({len(m) for m in records}) != 1:
        raise InputError(str(path), "models", "at least 2 models (frames) with equal atom "
                         "counts", f"atom counts {[len(m) for m in records]}")
    first = records[0]
    topo = Topology(np.array([a.name for *_, a in first]), np.array([r for _, r, _, _ in first]),
                    np.array([n for _, _, n, _ in first]),
                    np.array([a.element.name.upper() for *_, a in first]),
                    np.array([c for c, *_ in first]))
    frames = np.array([[a.pos.tolist() for *_, a in m] for m in records])
    amps = np.array([a.element.atomic_number * a.occ for *_, a in first], dtype=float)
    widths = widths_or_default(np.array([a.b_iso for *_, a in first]), len(first))
    return frames, amps, widths, topo
