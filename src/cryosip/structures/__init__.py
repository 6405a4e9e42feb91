"""Conformation models: a point ``x`` of a low-dimensional conformation space to atoms."""

from cryosip.structures.adk import AdkDomains, AdkPath
from cryosip.structures.adk_modes import AdkModes
from cryosip.structures.base import AbstractConformationModel, Atoms
from cryosip.structures.factory import load_model
from cryosip.structures.hinge import HingeModel
from cryosip.structures.modes import LinearModeModel
from cryosip.structures.path import PathModel
from cryosip.structures.pdb import write_pdb
from cryosip.structures.topology import DEFAULT_WIDTH_ANGSTROM, Topology

__all__ = [
    "DEFAULT_WIDTH_ANGSTROM",
    "AbstractConformationModel",
    "AdkDomains",
    "AdkModes",
    "AdkPath",
    "Atoms",
    "HingeModel",
    "LinearModeModel",
    "PathModel",
    "Topology",
    "load_model",
    "write_pdb",
]
