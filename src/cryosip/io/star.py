"""RELION STAR particle files: read 3.0 and 3.1, write 3.1 (``starfile``).

RELION 3.1 has a ``data_optics`` table (``rlnOpticsGroup``, ``rlnVoltage`` kV,
``rlnSphericalAberration`` mm, ``rlnAmplitudeContrast``, ``rlnImagePixelSize`` Å,
``rlnImageSize``) and a ``data_particles`` table whose ``rlnOpticsGroup`` names each
particle's group. Optics are taken per particle from its own group; groups no particle
uses are ignored; the groups that are used may differ in voltage, Cs and amplitude
contrast but not in pixel size or box (an error naming the groups). Shifts are
``rlnOriginX/YAngst`` in Å or ``rlnOriginX/Y`` in pixels (times the particle's group pixel
size); when both are present they must agree to 0.01 pixel.
``rlnCtfBfactor`` (Å², 0 when absent; the envelope ``exp(-B k^2 / 4)``, RELION's sign) is
per particle in RELION but per optics group in cryosip (``Optics.b_factor_angstrom2``): a
group whose particles share one value takes it; a group whose particles carry several is
split into one group per value, named ``<group>.1``, ``<group>.2``, ... in increasing B
(as :func:`cryosip.io.cryosparc.read_cs` splits exposure groups), so every particle keeps
its own B-factor.
RELION 3.0 has one table: optics per particle, shifts ``rlnOriginX/Y`` in pixels and the
pixel size per row from ``rlnImagePixelSize`` or ``rlnDetectorPixelSize`` (µm) * 1e4 /
``rlnMagnification`` (rows must agree); its groups are the distinct (voltage, Cs,
amplitude contrast, B-factor) rows. A ``pixel_size_angstrom`` given to the reader
overrides the file (logged); when no column carries one, ``pixel_size_fallback`` (the
first stack's MRC voxel size, see :func:`cryosip.io.particles.read_particles`) is asked,
and logged on the ``"cryosip"`` logger.
Numbers are kept in RELION's conventions, which are cryosip's (:mod:`cryosip.conventions`):
``ImageNuisance`` takes them as they are. Written floats use the shortest decimal that
reads back to the same value, so a round trip is exact.

>>> import tempfile, os, jax.numpy as jnp
>>> from cryosip.forward import ImageNuisance, Optics
>>> path = os.path.join(tempfile.mkdtemp(), "p.star")
>>> w = ImageNuisance.create(jnp.array([[10.0, 20.0, 30.0]]), defocus_u_angstrom=15000.0)
>>> write_star(path, w, Optics(), pixel_size_angstrom=2.0, box_size=64)
>>> table = read_star(path)
>>> table.euler_deg.tolist(), table.pixel_size_angstrom, table.optics_group_names
([[10.0, 20.0, 30.0]], 2.0, ('1',))
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import starfile

from cryosip.errors import InputError
from cryosip.forward import ImageNuisance, Optics
from cryosip.io.starloop import (
    LoopColumns,
    StarLoop,
    particle_loop,
    read_loop,
    release_freed_memory,
    scan_loops,
)

__all__ = ["ParticleTable", "read_star", "write_star"]

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
OPTICS_COLUMNS = {"rlnVoltage": "voltage_kv", "rlnSphericalAberration": "cs_mm",
                  "rlnAmplitudeContrast": "amplitude_contrast"}
#: Origins in Å and in pixels count as equal within this fraction of a pixel (rounding).
ORIGIN_TOLERANCE_PIXELS = 0.01
_LOG = logging.getLogger("cryosip")

#: ``fallback(first_image_name) -> (pixel_size_angstrom, where) | None``.
PixelSizeFallback = Callable[[str], "tuple[float, str] | None"]


@dataclasses.dataclass(frozen=True)
class ParticleTable:
    """The numbers of a particle file, per particle (RELION conventions, Å and degrees).

    ``optics`` has one :class:`Optics` per optics group that particles use (in the file's
    order), ``optics_index[i]`` is particle ``i``'s 0-based index into it and
    ``optics_group_names[k]`` the file's name of group ``k`` (``rlnOpticsGroup``;
    ``<name>.<j>`` for the parts of a group split by B-factor) for messages.
    ``image_names`` are ``"<1-based index>@<stack path as written>"``.
    """

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
    optics_group_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(len(self.image_names))

    def nuisance(self, index=None) -> ImageNuisance:
        """The per-particle :class:`ImageNuisance` (leading axis ``n``, or the rows
        ``index``, taken from the table before any conversion: memory ``O(len(index))``);
        ``optics_group`` is ``optics_index`` (0-based into ``optics``)."""
        rows = slice(None) if index is None else np.asarray(index)
        f = lambda a: jnp.asarray(np.asarray(a)[rows], dtype=jnp.float32)
        return ImageNuisance(f(self.euler_deg), f(self.shift_angstrom),
                             f(self.defocus_u_angstrom), f(self.defocus_v_angstrom),
                             f(self.astigmatism_angle_deg), f(self.phase_shift_deg),
                             jnp.asarray(np.asarray(self.optics_index)[rows], dtype=jnp.int32))


@dataclasses.dataclass(frozen=True)
class _Groups:
    """Optics of the used groups, per-particle index, pixel size per particle, box."""

    optics: tuple[Optics, ...]
    index: np.ndarray
    names: tuple[str, ...]
    pixel_rows: np.ndarray
    box: int | None


def _without_rows(path: Path, loop: StarLoop) -> Path:
    """A temporary copy of ``path`` without the rows of ``loop`` (bytes ``start..end``)."""
    fd, name = tempfile.mkstemp(suffix=".star")
    with os.fdopen(fd, "wb") as out, open(path, "rb") as fh:
        out.write(fh.read(loop.start))
        fh.seek(loop.end)
        shutil.copyfileobj(fh, out, 1 << 20)
    return Path(name)


def _blocks(path: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | LoopColumns]:
    """``(optics or None, particles)``; the particle rows by :func:`starloop.read_loop`."""
    if not path.is_file():
        raise InputError(str(path), None, "an existing STAR file", "no such file")
    try:
        loop = particle_loop(scan_loops(path))
        head = path if loop is None or loop.start is None else _without_rows(path, loop)
        try:
            blocks = starfile.read(head, always_dict=True)
        finally:
            if head != path:
                head.unlink()
    except Exception as err:  # noqa: BLE001 - starfile raises many kinds
        raise InputError(str(path), None, "a STAR file", f"unparsable ({err})") from None
    frames = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if loop is not None and loop.name in frames and (
            loop.name == "particles" or len(frames) == 1):
        frames[loop.name] = read_loop(path, loop)
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


def _same_across_groups(path: Path, field: str, names, values, unit: str) -> None:
    """One value across the used groups, else an error naming each group's value."""
    if len(np.unique(values)) > 1:
        found = ", ".join(f"group {n}: {v:g}{unit}" for n, v in zip(names, values, strict=True))
        raise InputError(str(path), field, "one value across the optics groups particles use",
                         found)


def _positive_pixel(source: str, field: str, value: float) -> float:
    if not np.isfinite(value) or value <= 0:
        raise InputError(source, field, "a pixel size > 0 Å", f"{value}")
    return float(value)


def _no_pixel_column(path: Path, names: np.ndarray, fallback: PixelSizeFallback | None,
                     ) -> float:
    """The fallback's pixel size (logged), or the error telling to pass --pixel-size."""
    found = fallback(str(names[0])) if fallback is not None and len(names) else None
    if found is None or not np.isfinite(found[0]) or found[0] <= 0:
        where = "" if found is None else f" and voxel size {found[0]} in {found[1]}"
        raise InputError(str(path), "pixel size", "a pixel-size column (rlnImagePixelSize, "
                         "or rlnDetectorPixelSize and rlnMagnification) or an MRC voxel size",
                         f"none{where}; pass --pixel-size")
    _LOG.warning("%s: no pixel-size column; using %g Å, the voxel size of %s "
                 "(pass --pixel-size to set it)", path, found[0], found[1])
    return float(found[0])


def _given_pixel(path: Path, given: float, in_file: np.ndarray | None) -> float:
    given = _positive_pixel("command line", "--pixel-size", given)
    if in_file is not None and np.any(np.abs(in_file - given) > 1e-6 * given):
        _LOG.warning("%s: pixel size %g Å given; it overrides the file's %s Å", path, given,
                     ", ".join(f"{v:g}" for v in np.unique(in_file)))
    else:
        _LOG.info("%s: pixel size %g Å given", path, given)
    return given


def _optics_31(path: Path, optics: pd.DataFrame, particles: pd.DataFrame,
               given: float | None, fallback: PixelSizeFallback | None) -> _Groups:
    group_ids = _column(path, optics, "rlnOpticsGroup").astype(int)
    if len(group_ids) == 0 or len(np.unique(group_ids)) != len(group_ids):
        raise InputError(str(path), "rlnOpticsGroup", "each optics group once in data_optics",
                         f"{group_ids.tolist()}")
    pgroup = _column(path, particles, "rlnOpticsGroup", float(group_ids[0])).astype(int)
    unknown = set(pgroup.tolist()) - set(group_ids.tolist())
    if unknown:
        raise InputError(str(path), "rlnOpticsGroup", f"one of {group_ids.tolist()}",
                         f"{sorted(unknown)}")
    rows = [k for k, g in enumerate(group_ids) if g in set(pgroup.tolist())]
    used = optics.iloc[rows]
    names = tuple(str(g) for g in group_ids[rows])
    cols = [_column(path, used, c) for c in OPTICS_COLUMNS]
    table = tuple(Optics(voltage_kv=float(v), cs_mm=float(c), amplitude_contrast=float(w))
                  for v, c, w in zip(*cols, strict=True))
    used_ids = group_ids[rows]
    order = np.argsort(used_ids)
    index = order[np.searchsorted(used_ids[order], pgroup)]
    in_file = (_column(path, used, "rlnImagePixelSize")
               if "rlnImagePixelSize" in used.columns else None)
    if given is not None:
        pixel = np.full(len(rows), _given_pixel(path, given, in_file))
    elif in_file is not None:
        for v in in_file:
            _positive_pixel(str(path), "rlnImagePixelSize", v)
        pixel = in_file
    else:
        pixel = np.full(len(rows), _no_pixel_column(path, _names(particles), fallback))
    _same_across_groups(path, "rlnImagePixelSize", names, pixel, " Å")
    box = None
    if "rlnImageSize" in used.columns:
        boxes = _column(path, used, "rlnImageSize").astype(int)
        _same_across_groups(path, "rlnImageSize", names, boxes, " px")
        box = int(boxes[0]) if len(boxes) and boxes[0] > 0 else None
    return _Groups(table, index, names, pixel[index], box)


def _split_by_bfactor(path: Path, particles: pd.DataFrame, groups: _Groups) -> _Groups:
    """Each particle's ``rlnCtfBfactor`` in its group's :class:`Optics`; a group with several
    values becomes one group per value, ``<name>.<k>`` in increasing B (module docstring)."""
    b = _column(path, particles, "rlnCtfBfactor", 0.0)
    unique, index = np.unique(np.column_stack([groups.index, b]), axis=0, return_inverse=True)
    parent = unique[:, 0].astype(int)  # sorted by (group, B): groups keep their order
    first, count = np.searchsorted(parent, parent), np.bincount(parent)[parent]
    optics = tuple(dataclasses.replace(groups.optics[g], b_factor_angstrom2=float(v))
                   for g, v in zip(parent, unique[:, 1], strict=True))
    names = tuple(groups.names[g] if c == 1 else f"{groups.names[g]}.{k - f + 1}"
                  for k, (g, f, c) in enumerate(zip(parent, first, count, strict=True)))
    return dataclasses.replace(groups, optics=optics, index=index.ravel().astype(int),
                               names=names)


def _pixel_30(path: Path, particles: pd.DataFrame, given: float | None,
              fallback: PixelSizeFallback | None) -> float:
    cols = particles.columns
    if "rlnImagePixelSize" in cols:
        field, rows = "rlnImagePixelSize", _column(path, particles, "rlnImagePixelSize")
    elif "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
        field = "rlnDetectorPixelSize"
        rows = (_column(path, particles, "rlnDetectorPixelSize") * 1e4
                / _column(path, particles, "rlnMagnification"))
    else:
        field, rows = None, None
    if given is not None:
        return _given_pixel(path, given, rows)
    if rows is None:
        return _no_pixel_column(path, _names(particles), fallback)
    off = np.flatnonzero(np.abs(rows - rows[0]) > 1e-6 * abs(rows[0]))
    if len(off):
        raise InputError(str(path), field, "one pixel size on every row",
                         f"{rows[0]:g} Å in row 1, {rows[off[0]]:g} Å in row {off[0] + 1}")
    return _positive_pixel(str(path), field, float(rows[0]))


def _optics_30(path: Path, particles: pd.DataFrame, given: float | None,
               fallback: PixelSizeFallback | None) -> _Groups:
    cols = np.stack([_column(path, particles, c) for c in OPTICS_COLUMNS]
                    + [_column(path, particles, "rlnCtfBfactor", 0.0)], axis=1)
    unique, index = np.unique(cols, axis=0, return_inverse=True)
    table = tuple(Optics(voltage_kv=float(v), cs_mm=float(c), amplitude_contrast=float(w),
                         b_factor_angstrom2=float(b)) for v, c, w, b in unique)
    pixel = _pixel_30(path, particles, given, fallback)
    names = tuple(str(k + 1) for k in range(len(table)))
    return _Groups(table, index.ravel().astype(int), names, np.full(len(particles), pixel),
                   None)


def _names(particles: pd.DataFrame | LoopColumns):
    """The image names: :class:`~cryosip.io.starloop.ImageNames` (or text) from the
    particle loop, an array of ``str`` from a table ``starfile`` read."""
    if isinstance(particles, LoopColumns):
        return particles.names()
    return particles["rlnImageName"].astype(str).to_numpy()


def _shifts(path: Path, particles: pd.DataFrame, pixel_rows: np.ndarray) -> np.ndarray:
    """Origins in Å from ``rlnOriginX/YAngst`` or ``rlnOriginX/Y`` (pixels); both must agree."""
    cols = particles.columns
    has_angst = any(f"rlnOrigin{a}Angst" in cols for a in "XY")
    has_pixels = any(f"rlnOrigin{a}" in cols for a in "XY")
    angst = np.stack([_column(path, particles, f"rlnOrigin{a}Angst", 0.0) for a in "XY"], 1)
    pixels = np.stack([_column(path, particles, f"rlnOrigin{a}", 0.0) for a in "XY"], 1)
    from_pixels = pixels * pixel_rows[:, None]
    if has_angst and has_pixels:
        tol = ORIGIN_TOLERANCE_PIXELS * pixel_rows[:, None]
        bad = np.argwhere(np.abs(angst - from_pixels) > tol)
        if len(bad):
            r, k = (int(i) for i in bad[0])
            raise InputError(str(path), f"rlnOrigin{'XY'[k]}Angst",
                             f"rlnOrigin{'XY'[k]} x pixel size ({pixel_rows[r]:g} Å) when both "
                             "are given", f"{angst[r, k]:g} Å vs {pixels[r, k]:g} px = "
                             f"{from_pixels[r, k]:g} Å in row {r + 1}")
    return angst if has_angst else from_pixels


def read_star(
    path: str | os.PathLike, *, pixel_size_angstrom: float | None = None,
    require_poses: bool = True, pixel_size_fallback: PixelSizeFallback | None = None,
) -> ParticleTable:
    """Read a RELION 3.0 or 3.1 particle STAR file (checks columns and values).

    ``pixel_size_angstrom`` overrides the file's; ``pixel_size_fallback(first_image_name)``
    gives ``(pixel size, where it was read)`` when no column carries one (module docstring).
    """
    path = Path(path)
    optics, particles = _blocks(path)
    if "rlnImageName" not in particles.columns:
        raise InputError(str(path), "rlnImageName", "a column", "none")
    if len(particles) == 0:
        raise InputError(str(path), "data_particles", "at least one particle", "no rows")
    if optics is not None:
        groups = _split_by_bfactor(path, particles, _optics_31(
            path, optics, particles, pixel_size_angstrom, pixel_size_fallback))
    else:
        groups = _optics_30(path, particles, pixel_size_angstrom, pixel_size_fallback)
    shift = _shifts(path, particles, groups.pixel_rows)
    known = require_poses or all(c in particles.columns for c in POSE_COLUMNS)
    euler = np.stack([_column(path, particles, c, None if require_poses else 0.0)
                      for c in POSE_COLUMNS], axis=1)
    du = _column(path, particles, "rlnDefocusU")
    dv = _column(path, particles, "rlnDefocusV") if "rlnDefocusV" in particles.columns else du
    pixel = float(groups.pixel_rows[0])
    table = ParticleTable(
        _names(particles), euler, shift, du, dv.copy(),
        _column(path, particles, "rlnDefocusAngle", 0.0),
        _column(path, particles, "rlnPhaseShift", 0.0), groups.optics, groups.index, pixel,
        groups.box, known, groups.names)
    del particles  # the columns the table does not keep, before the heap is trimmed
    release_freed_memory()
    return table


def _shortest(values: np.ndarray) -> list[str]:
    """Shortest decimal strings that read back to exactly ``values`` (their own dtype)."""
    return [np.format_float_positional(v, unique=True, trim="0") for v in np.asarray(values)]


_PARTICLE_COLUMNS = ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                     "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV",
                     "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor", "rlnOpticsGroup")
_WRITE_CHUNK = 8192


def _quoted(text: str) -> str:
    """A STAR value: quoted when it holds a space or is empty (as ``starfile`` writes)."""
    return f'"{text}"' if " " in text or not text else text


def _loop(name: str, columns, rows) -> list[str]:
    head = [f"data_{name}", "", "loop_", *(f"_{c} #{k + 1}" for k, c in enumerate(columns))]
    return head + ["\t".join(r) for r in rows]


def _particle_rows(nuisance: ImageNuisance, first: int, b_factor: float, stack: str):
    w = {f.name: np.asarray(getattr(nuisance, f.name)) for f in dataclasses.fields(nuisance)}
    n = len(w["euler_deg"])
    cols = [[_quoted(f"{first + i + 1:06d}@{stack}") for i in range(n)],
            *(_shortest(w["euler_deg"][:, k]) for k in range(3)),
            *(_shortest(w["shift_angstrom"][:, k]) for k in range(2)),
            _shortest(w["defocus_u_angstrom"]), _shortest(w["defocus_v_angstrom"]),
            _shortest(w["astigmatism_angle_deg"]), _shortest(w["phase_shift_deg"]),
            _shortest(np.full(n, b_factor)), ["1"] * n]
    return zip(*cols, strict=True)


def _chunks(nuisance: ImageNuisance | Iterable[ImageNuisance]):
    if not isinstance(nuisance, ImageNuisance):
        yield from nuisance
        return
    for start in range(0, len(nuisance), _WRITE_CHUNK):
        index = np.arange(start, min(start + _WRITE_CHUNK, len(nuisance)))
        yield jax.tree.map(lambda a, index=index: np.asarray(a)[index], nuisance)


def write_star(
    path: str | os.PathLike, nuisance: ImageNuisance | Iterable[ImageNuisance],
    optics: Optics, *, pixel_size_angstrom: float, box_size: int,
    stack_name: str = "particles.mrcs",
) -> None:
    """Write a RELION 3.1 STAR (one optics group) for images 1..n of ``stack_name``.

    ``nuisance`` is one :class:`ImageNuisance` or an iterable of them (consecutive blocks
    of images, numbered on from block to block); rows are formatted and written a block at
    a time, so writing 10^6 rows takes no more memory than a block. The layout is
    ``starfile``'s (tab-separated, shortest decimals).
    """
    optics_row = ["1", "opticsGroup1", *_shortest([optics.voltage_kv]),
                  *_shortest([optics.cs_mm]), *_shortest([optics.amplitude_contrast]),
                  *_shortest([pixel_size_angstrom]), str(int(box_size)), "2"]
    optics_cols = ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnVoltage",
                   "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
                   "rlnImageSize", "rlnImageDimensionality")
    head = [f"# Created by cryosip {_version()} (RELION 3.1 particle file)", "", "",
            *_loop("optics", optics_cols, [optics_row]), "", "",
            *_loop("particles", _PARTICLE_COLUMNS, [])]
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(head) + "\n")
        for block in _chunks(nuisance):
            rows = _particle_rows(block, n, float(optics.b_factor_angstrom2), stack_name)
            fh.write("".join("\t".join(r) + "\n" for r in rows))
            n += len(block)
        fh.write("\n\n")


def _version() -> str:
    from cryosip import __version__

    return __version__
