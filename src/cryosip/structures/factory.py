"""Build a conformation model from a config/CLI spec: :func:`load_model`.

Accepted specs (YAML form):

* ``adk-path`` | ``adk-domains`` | ``hinge``: built-in models with default options;
* ``{name: adk-path, coarse: residue, hydrogens: false, interpolation: linear}``;
* ``{topology: adk.psf, trajectory: adk.dcd, select: "protein", n_modes: 2}``: a user path
  (MDAnalysis) or, with ``n_modes``, a :class:`~cryosip.structures.modes.LinearModeModel`;
* ``frames.pdb`` / ``frames.cif`` or ``{structure: frames.cif}``: a multi-model PDB/mmCIF.

File models keep their coordinates as given (the frame of the consensus map, in which the
poses live); ``align: true`` superposes the frames on the first and centres each one
(``docs/data.md``, "Frames"). Built-in models keep their own (centred) frame.

Relative file names are resolved against ``base_dir`` (the config file's folder).

>>> load_model("hinge").dim
1
>>> import jax.numpy as jnp
>>> load_model({"name": "hinge", "n_beads": 8}).structure_at(jnp.zeros(1)).n_atoms
16
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cryosip.errors import InputError
from cryosip.structures.adk import AdkDomains, AdkPath
from cryosip.structures.base import AbstractConformationModel
from cryosip.structures.hinge import HingeModel
from cryosip.structures.modes import LinearModeModel
from cryosip.structures.path import PathModel

__all__ = ["BuiltinModelSpec", "FileModelSpec", "ModelSpec", "load_model", "load_output_model"]

_BUILTIN = ("adk-path", "adk-domains", "hinge")
_STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".cif.gz")


class BuiltinModelSpec(BaseModel):
    """A built-in model with options (``coarse``/``hydrogens`` apply to AdK only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: Literal["adk-path", "adk-domains", "hinge"]
    coarse: Literal["residue"] | None = None
    hydrogens: bool = True
    interpolation: Literal["cubic", "linear"] = "cubic"
    n_beads: int = 24


class FileModelSpec(BaseModel):
    """A user model from ``topology`` + ``trajectory`` or a multi-model ``structure``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    topology: str | None = None
    trajectory: str | None = None
    structure: str | None = None
    select: str = "all"
    hydrogens: bool = True
    coarse: Literal["residue"] | None = None
    interpolation: Literal["cubic", "linear"] = "cubic"
    n_modes: int | None = None
    align: bool = False


ModelSpec = str | BuiltinModelSpec | FileModelSpec


def parse_model_spec(spec: str | dict | BuiltinModelSpec | FileModelSpec) -> ModelSpec:
    """Validate a raw spec (string or mapping) into a :data:`ModelSpec`."""
    if isinstance(spec, str):
        if spec not in _BUILTIN and not spec.lower().endswith(_STRUCTURE_SUFFIXES):
            raise InputError("model", "model", "adk-path | adk-domains | hinge | a PDB/mmCIF "
                             "file | {topology, trajectory}", repr(spec))
        return spec
    if isinstance(spec, BuiltinModelSpec | FileModelSpec):
        return spec
    if not isinstance(spec, dict):
        raise InputError("model", "model", "a name, a file or a mapping", repr(spec))
    cls = BuiltinModelSpec if "name" in spec else FileModelSpec
    try:
        return cls.model_validate(spec)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(map(str, first["loc"])) or "model"
        expected = first["msg"].removeprefix("Input should be ")
        if first["type"] == "extra_forbidden":
            expected = "a known key"
        raise InputError("model", f"model.{key}", expected, repr(first.get("input"))) from None


def load_model(
    spec: str | dict | BuiltinModelSpec | FileModelSpec, base_dir: str | os.PathLike = "."
) -> AbstractConformationModel:
    """The conformation model described by ``spec`` (see the module doc)."""
    spec = parse_model_spec(spec)
    if isinstance(spec, str):
        if spec in _BUILTIN:
            return _builtin(BuiltinModelSpec(name=spec))
        return _from_files(FileModelSpec(structure=spec), Path(base_dir))
    if isinstance(spec, BuiltinModelSpec):
        return _builtin(spec)
    return _from_files(spec, Path(base_dir))


def load_output_model(
    spec: str | dict | BuiltinModelSpec | FileModelSpec, base_dir: str | os.PathLike = "."
) -> AbstractConformationModel:
    """The model of ``spec`` without coarse-graining: every atom (hydrogens as ``spec``
    says) with its real name, for the structures and maps a run writes.

    Same ``x`` and frame as :func:`load_model`'s model: residue beads sit at their residues'
    amplitude-weighted centroids, so the centring is the same; superposed models fit all CA
    atoms rather than the CA-named beads, which moves the AdK residue centroids by at most
    0.15 Å (rms 0.09 Å) from the beads. Specs without ``coarse`` give :func:`load_model`'s.

    >>> load_output_model({"name": "adk-path", "coarse": "residue"}).topology.n_atoms
    3341
    """
    spec = parse_model_spec(spec)
    if isinstance(spec, BuiltinModelSpec | FileModelSpec) and spec.coarse is not None:
        spec = spec.model_copy(update={"coarse": None})
    return load_model(spec, base_dir)


def _builtin(spec: BuiltinModelSpec) -> AbstractConformationModel:
    if spec.name == "hinge":
        return HingeModel(n_beads=spec.n_beads)
    cls = AdkPath if spec.name == "adk-path" else AdkDomains
    return cls(coarse=spec.coarse, hydrogens=spec.hydrogens, interpolation=spec.interpolation)


def _existing(base_dir: Path, name: str, field: str) -> str:
    path = Path(name) if Path(name).is_absolute() else base_dir / name
    if not path.is_file():
        raise InputError(str(path), f"model.{field}", "an existing file", "no such file")
    return str(path)


def _from_files(spec: FileModelSpec, base_dir: Path) -> AbstractConformationModel:
    if spec.structure is not None:
        path = _existing(base_dir, spec.structure, "structure")
        if spec.n_modes:
            return LinearModeModel.from_structure_file(path, hydrogens=spec.hydrogens,
                                                       n_modes=spec.n_modes, align=spec.align)
        return PathModel.from_structure_file(path, hydrogens=spec.hydrogens,
                                             interpolation=spec.interpolation, coarse=spec.coarse,
                                             align=spec.align)
    if spec.topology is None or spec.trajectory is None:
        raise InputError("model", "model.trajectory", "both topology and trajectory, or "
                         "structure", f"topology={spec.topology}, trajectory={spec.trajectory}")
    top = _existing(base_dir, spec.topology, "topology")
    traj = _existing(base_dir, spec.trajectory, "trajectory")
    if spec.n_modes:
        return LinearModeModel.from_files(top, traj, select=spec.select,
                                          hydrogens=spec.hydrogens, n_modes=spec.n_modes,
                                          align=spec.align)
    return PathModel.from_files(top, traj, select=spec.select, hydrogens=spec.hydrogens,
                                interpolation=spec.interpolation, coarse=spec.coarse,
                                align=spec.align)



