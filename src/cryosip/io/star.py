"""RELION STAR particle files: read 3.0 and 3.1, write 3.1 (``starfile``).

RELION 3.1 has a ``data_optics`` table (``rlnOpticsGroup``, ``rlnVoltage`` kV,
``rlnSphericalAberration`` mm, ``rlnAmplitudeContrast``, ``rlnImagePixelSize`` Å,
``rlnImageSize``) and a ``data_particles`` table with shifts ``rlnOriginX/YAngst`` in Å.
RELION 3.0 has one table: optics per particle, shifts ``rlnOriginX/Y`` in pixels and the
pixel size from ``rlnDetectorPixelSize`` (µm) * 1e4 / ``rlnMagnification``, or given.
Numbers are kept in RELION's conventions, which are cryosip's (:mod:`cryosip.conventions`):
``ImageNuisance`` takes them as they are. Written floats use the shortest decimal that
reads back to the same value, so a round trip is exact.

>>> import tempfile, os, jax.numpy as jnp
>>> from cryosip.forward import ImageNuisance, Optics
>>> path = os.path.join(tempfile.mkdtemp(), "p.star")
>>> w = ImageNuisance.create(jnp.array([[10.0, 20.0, 30.0]]), defocus_u_angstrom=15000.0)
>>> write_star(path, w, Optics(), pixel_size_angstrom=2.0, box_size=64)
>>> table = read_star(path)
>>> table.euler_deg.tolist(), table.pixel_size_angstrom
([[10.0, 20.0, 30.0]], 2.0)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import starfile

from cryosip.errors import InputError
from cryosip.forward import ImageNuisance, Optics

__all__ = ["ParticleTable", "read_star", "write_star"]

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
OPTICS_COLUMNS = {"rlnVoltage": "voltage_kv", "rlnSphericalAberration": "cs_mm",
                  "rlnAmplitudeContrast": "amplitude_contrast"}


@dataclasses.dataclass(frozen=True)
class ParticleTable:
    """The numbers of a STAR file, per particle (RELION conventions, Å and degrees)."""

    image_names: np.ndarray
    euler_deg: np.ndarray
    shift_angstrom: np.ndarray
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    astigmatism_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    optics: tuple[Optics, ...]
    optics_index: np.ndarray
    pixel_size_angstrom: float
    box_size: int | None
    poses_known: bool = True

    def __len__(self) -> int:
        return int(len(self.image_names))

    def nuisance(self) -> ImageNuisance:
        """The per-particle :class:`ImageNuisance` (leading axis ``n``)."""
        f = lambda a: jnp.asarray(a, dtype=jnp.float32)
        return ImageNuisance(f(self.euler_deg), f(self.shift_angstrom),
                             f(self.defocus_u_angstrom), f(self.defocus_v_angstrom),
                             f(self.astigmatism_angle_deg), f(self.phase_shift_deg))


def _blocks(path: Path) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    if not path.is_file():
        raise InputError(str(path), None, "an existing STAR file", "no such file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # noqa: BLE001 - starfile raises many kinds
        raise InputError(str(path), None, "a STAR file", f"unparsable ({err})") from None
    frames = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "particles" in frames:
        return frames.get("optics"), frames["particles"]
    if len(frames) == 1:
        return None, next(iter(frames.values()))
    raise InputError(str(path), None, "a data_particles table", f"blocks {list(blocks)}")


def _column(path: Path, df: pd.DataFrame, name: str, default: float | None = None) -> np.ndarray:
    if name not in df.columns:
        if default is None:
            raise InputError(str(path), name, "a column", "none")
        return np.full(len(df), default, dtype=float)
    values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        found = f"{df[name].iloc[bad]!r} in row {bad + 1}"
        raise InputError(str(path), name, "finite numbers", found)
    return values


def _optics_31(path: Path, optics: pd.DataFrame, particles: pd.DataFrame):
    groups = _column(path, optics, "rlnOpticsGroup").astype(int).tolist()
    cols = [_column(path, optics, c) for c in OPTICS_COLUMNS]
    table = tuple(Optics(voltage_kv=float(v), cs_mm=float(c), amplitude_contrast=float(w))
                  for v, c, w in zip(*cols, strict=True))
    pixel = np.unique(_column(path, optics, "rlnImagePixelSize"))
    if len(pixel) != 1:
        raise InputError(str(path), "rlnImagePixelSize", "one pixel size", f"{pixel.tolist()}")
    box = np.unique(_column(path, optics, "rlnImageSize", 0.0)).astype(int)
    pgroup = _column(path, particles, "rlnOpticsGroup", float(groups[0])).astype(int).tolist()
    unknown = set(pgroup) - set(groups)
    if unknown:
        raise InputError(str(path), "rlnOpticsGroup", f"one of {groups}", f"{sorted(unknown)}")
    lookup = {g: i for i, g in enumerate(groups)}
    index = np.array([lookup[g] for g in pgroup], dtype=int)
    return table, index, float(pixel[0]), int(box[0]) if len(box) == 1 and box[0] > 0 else None


def _optics_30(path: Path, particles: pd.DataFrame, pixel_size_angstrom: float | None):
    cols = np.stack([_column(path, particles, c) for c in OPTICS_COLUMNS], axis=1)
    unique, index = np.unique(cols, axis=0, return_inverse=True)
    table = tuple(Optics(*map(float, row)) for row in unique)
    if pixel_size_angstrom is None:
        if "rlnImagePixelSize" in particles.columns:
            pixel_size_angstrom = float(_column(path, particles, "rlnImagePixelSize")[0])
        else:
            det = _column(path, particles, "rlnDetectorPixelSize")
            mag = _column(path, particles, "rlnMagnification")
            pixel_size_angstrom = float(det[0] * 1e4 / mag[0])
    return table, index.ravel(), pixel_size_angstrom, None


def read_star(
    path: str | os.PathLike, *, pixel_size_angstrom: float | None = None,
    require_poses: bool = True,
) -> ParticleTable:
    """Read a RELION 3.0 or 3.1 particle STAR file (checks columns and values)."""
    path = Path(path)
    optics, particles = _blocks(path)
    if "rlnImageName" not in particles.columns:
        raise InputError(str(path), "rlnImageName", "a column", "none")
    if optics is not None:
        table, index, pixel, box = _optics_31(path, optics, particles)
        shift = np.stack([_column(path, particles, f"rlnOrigin{a}Angst", 0.0) for a in "XY"], 1)
    else:
        table, index, pixel, box = _optics_30(path, particles, pixel_size_angstrom)
        shift = np.stack([_column(path, particles, f"rlnOrigin{a}", 0.0) for a in "XY"], 1) * pixel
    known = require_poses or all(c in particles.columns for c in POSE_COLUMNS)
    euler = np.stack([_column(path, particles, c, None if require_poses else 0.0)
                      for c in POSE_COLUMNS], axis=1)
    du = _column(path, particles, "rlnDefocusU")
    dv = _column(path, particles, "rlnDefocusV") if "rlnDefocusV" in particles.columns else du
    return ParticleTable(
        particles["rlnImageName"].astype(str).to_numpy(), euler, shift, du, dv.copy(),
        _column(path, particles, "rlnDefocusAngle", 0.0),
        _column(path, particles, "rlnPhaseShift", 0.0), table, index, pixel, box, known)


def _shortest(values: np.ndarray) -> list[str]:
    """Shortest decimal strings that read back to exactly ``values`` (their own dtype)."""
    return [np.format_float_positional(v, unique=True, trim="0") for v in np.asarray(values)]


def write_star(
    path: str | os.PathLike, nuisance: ImageNuisance, optics: Optics, *,
    pixel_size_angstrom: float, box_size: int, stack_name: str = "particles.mrcs",
) -> None:
    """Write a RELION 3.1 STAR (one optics group) for images 1..n of ``stack_name``."""
    n = len(nuisance)
    optics_df = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnVoltage": _shortest([optics.voltage_kv]),
        "rlnSphericalAberration": _shortest([optics.cs_mm]),
        "rlnAmplitudeContrast": _shortest([optics.amplitude_contrast]),
        "rlnImagePixelSize": _shortest([pixel_size_angstrom]),
        "rlnImageSize": [int(box_size)], "rlnImageDimensionality": [2],
    })
    w = {k: np.asarray(v) for k, v in dataclasses.asdict(_as_numpy(nuisance)).items()}
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(n)],
        "rlnAngleRot": _shortest(w["euler_deg"][:, 0]),
        "rlnAngleTilt": _shortest(w["euler_deg"][:, 1]),
        "rlnAnglePsi": _shortest(w["euler_deg"][:, 2]),
        "rlnOriginXAngst": _shortest(w["shift_angstrom"][:, 0]),
        "rlnOriginYAngst": _shortest(w["shift_angstrom"][:, 1]),
        "rlnDefocusU": _shortest(w["defocus_u_angstrom"]),
        "rlnDefocusV": _shortest(w["defocus_v_angstrom"]),
        "rlnDefocusAngle": _shortest(w["astigmatism_angle_deg"]),
        "rlnPhaseShift": _shortest(w["phase_shift_deg"]),
        "rlnCtfBfactor": _shortest(np.full(n, optics.b_factor_angstrom2)),
        "rlnOpticsGroup": np.ones(n, dtype=int),
    })
    starfile.write({"optics": optics_df, "particles": particles}, path)


@dataclasses.dataclass
class _NuisanceArrays:
    euler_deg: np.ndarray
    shift_angstrom: np.ndarray
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    astigmatism_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray


def _as_numpy(nuisance: ImageNuisance) -> _NuisanceArrays:
    return _NuisanceArrays(*(np.asarray(getattr(nuisance, f.name))
                             for f in dataclasses.fields(_NuisanceArrays)))
