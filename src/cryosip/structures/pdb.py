"""Write the structure of a conformation as a PDB file (gemmi).

Atom, residue and chain names come from the model's ``topology`` when it has one (AdK
and file-based models), else every bead is a carbon in its own ``BEA`` residue (HETATM
records). Force-field histidine names (HSD, HSE...) are written as HIS. The B-factor
column holds ``8 pi^2 s^2`` of each atom's width ``s`` and the occupancy is 1.

>>> import tempfile, os, jax.numpy as jnp
>>> from cryosip.structures.hinge import HingeModel
>>> path = os.path.join(tempfile.mkdtemp(), "hinge.pdb")
>>> write_pdb(HingeModel(), jnp.array([0.5]), path)
>>> sum(line.startswith(("ATOM", "HETATM")) for line in open(path))
48
"""

from __future__ import annotations

import os

import gemmi
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cryosip.structures.base import AbstractConformationModel
from cryosip.structures.topology import Topology

__all__ = ["write_pdb"]


def write_pdb(
    model: AbstractConformationModel, x: Float[Array, " dim"], path: str | os.PathLike
) -> None:
    """Write ``model.structure_at(x)`` to ``path`` as PDB (coordinates in Å)."""
    atoms = model.structure_at(jnp.asarray(x, dtype=jnp.float32))
    positions = np.asarray(atoms.positions_angstrom, dtype=float)
    bfactors = 8.0 * np.pi**2 * np.asarray(atoms.widths_angstrom, dtype=float) ** 2
    topology = getattr(model, "topology", None) or Topology.generic(len(positions))
    structure = _structure(topology, positions, bfactors)
    structure.setup_entities()
    structure.write_pdb(str(path), gemmi.PdbWriteOptions(cryst1_record=False))


def _runs(values: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the runs of equal consecutive values."""
    cuts = np.flatnonzero(np.asarray(values[1:]) != np.asarray(values[:-1])) + 1
    return np.split(np.arange(len(values)), cuts)


def _structure(topology: Topology, positions: np.ndarray, bfactors: np.ndarray) -> gemmi.Structure:
    gmodel = gemmi.Model(1)
    for index in _runs(topology.chain_ids):
        chain = gemmi.Chain(str(topology.chain_ids[index[0]]))
        for run in _runs(topology.residue_ids[index]):
            residue = _residue(topology, index[run[0]])
            for i in index[run]:
                residue.add_atom(_atom(topology, i, positions[i], bfactors[i]))
            chain.add_residue(residue)
        gmodel.add_chain(chain)
    structure = gemmi.Structure()
    structure.add_model(gmodel)
    return structure


_PDB_RESIDUE_NAMES = {"HSD": "HIS", "HSE": "HIS", "HSP": "HIS", "HIE": "HIS", "HID": "HIS"}
"""Force-field residue names (CHARMM/AMBER histidines) written under their PDB names."""


def _residue(topology: Topology, i: int) -> gemmi.Residue:
    residue = gemmi.Residue()
    name = str(topology.residue_names[i])
    residue.name = _PDB_RESIDUE_NAMES.get(name, name)
    residue.seqid = gemmi.SeqId(int(topology.residue_ids[i]), " ")
    return residue


def _atom(topology: Topology, i: int, position: np.ndarray, bfactor: float) -> gemmi.Atom:
    atom = gemmi.Atom()
    atom.name = str(topology.atom_names[i])
    atom.element = gemmi.Element(str(topology.elements[i]).capitalize())
    atom.pos = gemmi.Position(*map(float, position))
    atom.occ, atom.b_iso = 1.0, float(bfactor)
    return atom
