"""Conformation models: a point ``x`` of a low-dimensional conformation space to atoms."""

from cryosip.structures.base import AbstractConformationModel, Atoms

__all__ = ["AbstractConformationModel", "Atoms"]
