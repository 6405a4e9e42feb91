"""The typed configuration of ``cryosip simulate`` (YAML; frozen; unknown keys rejected).

Keys (units in the names; defaults in brackets)::

    model: adk-path            # adk-domains | hinge | {name: ..., coarse: residue}
                               # | {topology: FILE, trajectory: FILE} | FILE.pdb/.cif
    truth:                     # mixture over x, truncated to the model's box
      - {kind: gaussian, weight: 0.6, mean: [0.2], std: [0.08]}
      - {kind: uniform, weight: 0.1, low: [0.0], high: [1.0]}
      - {kind: beta, weight: 0.3, a: [8.0], b: [2.0]}
    n_images: 10000
    box_size: 64
    pixel_size_angstrom: 2.0
    snr: 0.1                   # or noise_std (exactly one; SNR as in cryosip.forward.noise)
    defocus_angstrom: [10000, 25000]   # mean defocus ~ U(lo, hi)
    astigmatism_angstrom: 0.0  # d_U - d_V [0]
    shift_std_angstrom: 0.0    # in-plane shift ~ N(0, s^2 I) [0]
    pose_distribution: uniform # uniform on SO(3) | identity [uniform]
    optics: {voltage_kv: 300, cs_mm: 2.7, amplitude_contrast: 0.1,
             b_factor_angstrom2: 0, contrast_sign: 1}
    seed: 0
    render_batch_size: 256     # images rendered per batch (results do not depend on it)

Two keys were renamed so that one name has one meaning across commands (``poses`` is
reconstruct's known/unknown switch, ``batch_size`` its minibatch of the flow): ``poses`` is
now ``pose_distribution`` and ``batch_size`` is ``render_batch_size``; an old key is refused
with an error naming the new one.

>>> cfg = SimulateConfig.model_validate({"model": "hinge",
...     "truth": [{"kind": "uniform", "low": [0.0], "high": [1.0]}],
...     "n_images": 4, "box_size": 16, "pixel_size_angstrom": 2.0, "snr": 1.0})
>>> cfg.defocus_angstrom, cfg.optics.voltage_kv
((10000.0, 25000.0), 300.0)
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from cryosip.errors import InputError, from_validation, read_yaml
from cryosip.problems.truth import Component
from cryosip.structures.factory import BuiltinModelSpec, FileModelSpec, parse_model_spec

__all__ = ["OpticsConfig", "SimulateConfig", "load_simulate_config"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")

RENAMED = {"poses": "pose_distribution", "batch_size": "render_batch_size"}
"""Keys of older simulate configs and their new names (refused with the new name)."""


class _Problem(ValueError):
    """A check of ours that names its key (turned into an InputError at the boundary)."""

    def __init__(self, key: str, expected: str, found: str):
        super().__init__(f"{key}: expected {expected}, found {found}")
        self.key, self.expected, self.found = key, expected, found


class OpticsConfig(BaseModel):
    """Microscope optics (one optics group)."""

    model_config = _FROZEN
    voltage_kv: PositiveFloat = 300.0
    cs_mm: NonNegativeFloat = 2.7
    amplitude_contrast: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    b_factor_angstrom2: NonNegativeFloat = 0.0
    contrast_sign: Literal[1, -1] = 1


class SimulateConfig(BaseModel):
    """Everything ``simulate_dataset`` needs (see the module docstring)."""

    model_config = _FROZEN
    model: str | BuiltinModelSpec | FileModelSpec
    truth: Annotated[list[Component], Field(min_length=1)]
    n_images: PositiveInt
    box_size: Annotated[int, Field(ge=8)]
    pixel_size_angstrom: PositiveFloat
    snr: PositiveFloat | None = None
    noise_std: PositiveFloat | None = None
    defocus_angstrom: tuple[PositiveFloat, PositiveFloat] = (10000.0, 25000.0)
    astigmatism_angstrom: NonNegativeFloat = 0.0
    shift_std_angstrom: NonNegativeFloat = 0.0
    pose_distribution: Literal["uniform", "identity"] = "uniform"
    optics: OpticsConfig = OpticsConfig()
    seed: int = 0
    render_batch_size: PositiveInt = 256

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any):
        if isinstance(data, dict):
            for old, new in RENAMED.items():
                if old in data:
                    raise _Problem(old, f"a known key (renamed {new})", repr(old))
        return data

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any):
        try:
            return parse_model_spec(value)
        except InputError as err:
            raise _Problem(err.field or "model", err.expected, err.found) from None

    @model_validator(mode="after")
    def _checks(self):
        if (self.snr is None) == (self.noise_std is None):
            raise _Problem("snr", "exactly one of snr and noise_std",
                           f"snr={self.snr}, noise_std={self.noise_std}")
        lo, hi = self.defocus_angstrom
        if hi < lo:
            raise _Problem("defocus_angstrom", "[low, high] with low <= high", f"[{lo}, {hi}]")
        if self.astigmatism_angstrom >= 2 * lo:
            raise _Problem("astigmatism_angstrom", f"below twice the lowest defocus ({2 * lo})",
                           f"{self.astigmatism_angstrom}")
        return self


_TAGS = ("gaussian", "uniform", "beta")


def _input_error(err: ValidationError, source: str) -> InputError:
    """The first pydantic error as an InputError: our :class:`_Problem` checks and a wrong
    component ``kind`` here, the rest by :func:`cryosip.errors.from_validation` with the
    component tags (``truth.0.uniform.low``) dropped from the key."""
    first = err.errors()[0]
    problem = first.get("ctx", {}).get("error")
    if isinstance(problem, _Problem):
        return InputError(source, problem.key, problem.expected, problem.found)
    loc = tuple(p for p in first["loc"] if str(p) not in _TAGS)
    if first["type"] == "union_tag_invalid":
        key = ".".join(map(str, loc))
        return InputError(source, f"{key}.kind", "kind " + " | ".join(_TAGS),
                          repr(first["ctx"]["tag"]))
    return from_validation(SimpleNamespace(errors=lambda: [{**first, "loc": loc}]), source)


def parse_simulate_config(data: Any, source: str = "config") -> SimulateConfig:
    """Validate a mapping; errors are :class:`InputError` naming ``source`` and the key."""
    if not isinstance(data, dict):
        raise InputError(source, None, "a YAML mapping of keys", type(data).__name__)
    try:
        return SimulateConfig.model_validate(data)
    except ValidationError as err:
        raise _input_error(err, source) from None


def load_simulate_config(path: str | os.PathLike) -> SimulateConfig:
    """Read and validate a YAML config file."""
    return parse_simulate_config(read_yaml(path), str(path))
