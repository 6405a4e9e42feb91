"""Build a conformation model from a config/CLI spec: :func:`load_model`.

Accepted specs (YAML form):

* a registered name (``adk-path`` | ``adk-domains`` | ``adk-modes`` | ``hinge`` | any name
  added with :func:`register_model`): that model with default options;
* ``{name: adk-path, coarse: residue, hydrogens: false, interpolation: linear}``: a
  registered model with options, checked by its options class (an option another model
  takes is refused: ``coarse`` is AdK's, ``n_beads`` the hinge's);
* ``{topology: adk.psf, trajectory: adk.dcd, select: "protein", n_modes: 2}``: a user path
  (MDAnalysis) or, with ``n_modes``, a :class:`~cryosip.structures.modes.LinearModeModel`;
* ``frames.pdb`` / ``frames.cif`` or ``{structure: frames.cif}``: a multi-model PDB/mmCIF.

**Registry.** :data:`MODELS` maps a name to a :class:`ModelOptions` subclass: its fields
are the model's options (typed, with defaults) and its ``build()`` returns the model. A
new model is one file that defines the model and its options class decorated with
``@register_model("name")``; importing the file registers it (``docs/extending.md``).
:class:`BuiltinModelSpec` holds a registered name with its options resolved (defaults
filled in), so its ``model_dump()`` is the exact spec to rebuild the model.

File models keep their coordinates as given (the frame of the consensus map, in which the
poses live); ``align: true`` superposes the frames on the first and centres each one
(``docs/data.md``, "Frames"). Built-in models keep their own (centred) frame.

Relative file names are resolved against ``base_dir`` (the config file's folder).

>>> load_model("hinge").dim
1
>>> import jax.numpy as jnp
>>> load_model({"name": "hinge", "n_beads": 8}).structure_at(jnp.zeros(1)).n_atoms
16
>>> resolve_model_spec("hinge").model_dump()
{'name': 'hinge', 'n_beads': 24}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    model_validator,
)

from cryosip.errors import InputError, from_validation
from cryosip.registry import Registry
from cryosip.structures.adk import AdkDomains, AdkPath
from cryosip.structures.adk_modes import AdkModes
from cryosip.structures.base import AbstractConformationModel
from cryosip.structures.hinge import HingeModel
from cryosip.structures.modes import LinearModeModel
from cryosip.structures.path import PathModel

__all__ = [
    "MODELS",
    "BuiltinModelSpec",
    "FileModelSpec",
    "ModelOptions",
    "ModelSpec",
    "load_model",
    "load_output_model",
    "parse_model_spec",
    "register_model",
    "resolve_model_spec",
]

_STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".cif.gz")


class ModelOptions(BaseModel):
    """The options of a registered conformation model; :meth:`build` makes the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def build(self) -> AbstractConformationModel:
        """The conformation model with these options."""
        raise NotImplementedError(f"{type(self).__name__} must define build()")


MODELS: Registry[type[ModelOptions]] = Registry("conformation model", ModelOptions)
"""Registered conformation models: name -> :class:`ModelOptions` subclass."""

register_model = MODELS.register
"""Class decorator: ``@register_model("name")`` on a :class:`ModelOptions` subclass."""


@register_model("hinge")
class HingeOptions(ModelOptions):
    """:class:`~cryosip.structures.hinge.HingeModel`, ``n_beads`` per arm."""

    n_beads: PositiveInt = 24

    def build(self) -> HingeModel:
        return HingeModel(n_beads=self.n_beads)


class _AdkOptions(ModelOptions):
    coarse: Literal["residue"] | None = None
    hydrogens: bool = True
    interpolation: Literal["cubic", "linear"] = "cubic"


@register_model("adk-path")
class AdkPathOptions(_AdkOptions):
    """:class:`~cryosip.structures.adk.AdkPath` (``dim = 1``)."""

    def build(self) -> AdkPath:
        return AdkPath(self.coarse, self.hydrogens, self.interpolation)


@register_model("adk-domains")
class AdkDomainsOptions(_AdkOptions):
    """:class:`~cryosip.structures.adk.AdkDomains` (``dim = 2``)."""

    def build(self) -> AdkDomains:
        return AdkDomains(self.coarse, self.hydrogens, self.interpolation)


@register_model("adk-modes")
class AdkModesOptions(ModelOptions):
    """:class:`~cryosip.structures.adk_modes.AdkModes` (``dim = n_modes``, 3 by default)."""

    coarse: Literal["residue"] | None = None
    hydrogens: bool = True
    n_modes: int = Field(3, ge=1, le=97)

    def build(self) -> AdkModes:
        return AdkModes(self.coarse, self.hydrogens, self.n_modes)


class BuiltinModelSpec(BaseModel):
    """A registered model ``name`` with its options as further keys, resolved on creation
    by the model's :class:`ModelOptions` (unknown or bad options raise, defaults are filled
    in)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    name: str

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return data
        options = MODELS.get(data["name"], source="model", field="model.name")
        rest = {k: v for k, v in data.items() if k != "name"}
        return {"name": data["name"], **options.model_validate(rest).model_dump()}

    @property
    def options(self) -> ModelOptions:
        """The typed options (an instance of the registered class)."""
        return MODELS.get(self.name).model_validate(self.model_extra or {})


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
    """Validate a raw spec (string or mapping) into a :data:`ModelSpec` (strings stay
    strings: a registered name or a structure file name)."""
    if isinstance(spec, str):
        if spec not in MODELS and not spec.lower().endswith(_STRUCTURE_SUFFIXES):
            raise InputError("model", "model", f"{MODELS.expected()}, a PDB/mmCIF file or "
                             "{topology, trajectory}", repr(spec))
        return spec
    if isinstance(spec, BuiltinModelSpec | FileModelSpec):
        return spec
    if not isinstance(spec, dict):
        raise InputError("model", "model", "a name, a file or a mapping", repr(spec))
    if "name" in spec:
        if not isinstance(spec["name"], str):
            raise InputError("model", "model.name", MODELS.expected(), repr(spec["name"]))
        MODELS.get(spec["name"], source="model", field="model.name")
    cls = BuiltinModelSpec if "name" in spec else FileModelSpec
    try:
        return cls.model_validate(spec)
    except ValidationError as err:
        raise from_validation(err, "model", prefix="model.") from None


def resolve_model_spec(spec: str | dict | BuiltinModelSpec | FileModelSpec,
                       ) -> BuiltinModelSpec | FileModelSpec:
    """``spec`` with every option spelled out: its ``model_dump()`` rebuilds the same model
    (what a run folder records)."""
    spec = parse_model_spec(spec)
    if isinstance(spec, str):
        if spec in MODELS:
            return BuiltinModelSpec(name=spec)
        return FileModelSpec(structure=spec)
    return spec


def load_model(
    spec: str | dict | BuiltinModelSpec | FileModelSpec, base_dir: str | os.PathLike = "."
) -> AbstractConformationModel:
    """The conformation model described by ``spec`` (see the module doc)."""
    spec = resolve_model_spec(spec)
    if isinstance(spec, BuiltinModelSpec):
        return spec.options.build()
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
    spec = resolve_model_spec(spec)
    if spec.model_dump().get("coarse") is not None:
        spec = type(spec).model_validate({**spec.model_dump(), "coarse": None})
    return load_model(spec, base_dir)


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
