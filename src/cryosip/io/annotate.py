"""A particle file with per-image columns added: the input's rows, repeated, plus results.

:func:`annotate_particles` writes a RELION 3.1 STAR whose particle rows are the input's,
in the input's order, with extra columns (``rlnCryosipX1``, ...) appended or, when the
input already has a column of that name, replaced:

* **STAR input**: the file is copied as it is (comments, optics table, every other block
  and column, quoting, number formatting), except the particle loop, which gets the new
  column names after its last one and, on each row, the new values (the row's own tokens
  kept as written; a replaced column's token swapped). Rows are streamed: memory holds
  one line of the input and the new values of :data:`TEXT_BLOCK` rows as text at a time,
  whatever the number of particles.
* **cryoSPARC ``.cs`` input**: there are no STAR rows to repeat; the rows are the ones
  :func:`cryosip.io.cs_to_star` writes for the same table (optics table, origins in Å,
  stack paths without cryoSPARC's leading ``>``), plus the new columns.

Files are written through a temporary file in the output's folder and a rename, so a
reader never sees half a file. Floats are written as the shortest decimal that reads back
to the same value of their own dtype (float32 results stay short), integers as integers.

:func:`relion_pose_columns` turns rotation matrices and in-plane shifts into RELION's
``rlnAngleRot/Tilt/Psi`` (degrees) and ``rlnOriginXAngst/YAngst`` (Å) with the convention
functions :func:`cryosip.star.read_star` uses the other way (:func:`cryosip.rotations.
matrix_to_euler`; shifts are RELION's origins, :mod:`cryosip.conventions`), so reading the
file back gives the same rotation. :func:`read_star_columns` reads chosen columns of a
particle loop in blocks.

>>> import tempfile, os
>>> folder = tempfile.mkdtemp()
>>> src, out = os.path.join(folder, "in.star"), os.path.join(folder, "out.star")
>>> _ = open(src, "w").write("data_particles\\n\\nloop_\\n_rlnImageName #1\\n_rlnDefocusU #2\\n"
...                          "1@a.mrcs 15000\\n2@a.mrcs 16000\\n")
>>> _ = annotate_particles(src, out, {"rlnCryosipX1": np.float32([0.25, 0.5])})
>>> print(open(out).read().expandtabs(1).strip())
data_particles
<BLANKLINE>
loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnCryosipX1 #3
1@a.mrcs 15000 0.25
2@a.mrcs 16000 0.5
>>> read_star_columns(out, ["rlnCryosipX1"])["rlnCryosipX1"].tolist()
[0.25, 0.5]
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import starfile

from cryosip.errors import InputError
from cryosip.io.star import ParticleTable, _shortest
from cryosip.io.starloop import StarLoop, particle_loop, read_loop, scan_loops
from cryosip.provenance import atomic_open, atomic_write_text
from cryosip.rotations import matrix_to_euler

__all__ = ["annotate_particles", "read_star_columns", "relion_pose_columns"]

_TOKEN = re.compile(rb"\"[^\"]*\"|'[^']*'|\S+")
"""A STAR value: a quoted string (either quote) or a run of non-blank characters."""
TEXT_BLOCK = 1 << 14
"""Rows whose new values are formatted at a time."""
PIXEL_ORIGINS = ("rlnOriginX", "rlnOriginY")
"""RELION 3.0's origins in pixels: replaced (never added) so they agree with the Å ones."""


def _text(values: np.ndarray) -> list[str]:
    """Integers as integers, floats as the shortest decimal of their own dtype."""
    values = np.asarray(values)
    if values.dtype.kind in "biu":
        return [str(int(v)) for v in values]
    return _shortest(values)


def relion_pose_columns(rotations, shifts_angstrom, pixel_size_angstrom: float
                        ) -> dict[str, np.ndarray]:
    """RELION's pose columns of rotations ``A [n, 3, 3]`` (model -> image frame) and origins
    ``o [n, 2]`` (Å, :mod:`cryosip.conventions`), and the pixel origins ``o / pixel``
    (written only where the input has them, :data:`PIXEL_ORIGINS`)."""
    euler = np.asarray(matrix_to_euler(jnp.asarray(rotations)))
    shifts = np.asarray(shifts_angstrom)
    pixels = (shifts.astype(np.float64) / float(pixel_size_angstrom)).astype(shifts.dtype)
    return {"rlnAngleRot": euler[:, 0], "rlnAngleTilt": euler[:, 1], "rlnAnglePsi": euler[:, 2],
            "rlnOriginXAngst": shifts[:, 0], "rlnOriginYAngst": shifts[:, 1],
            "rlnOriginX": pixels[:, 0], "rlnOriginY": pixels[:, 1]}


def _plan(loop: StarLoop, columns: Mapping[str, np.ndarray]):
    """``(replace, append)``: ``{column index: values}`` of columns the loop has, and the
    ``[(name, values)]`` it gets (pixel origins only replaced, never added)."""
    replace = {loop.columns.index(k): v for k, v in columns.items() if k in loop.columns}
    append = [(k, v) for k, v in columns.items()
              if k not in loop.columns and k not in PIXEL_ORIGINS]
    return replace, append


def _row(line: bytes, replace: dict[int, str], extra: bytes, n_columns: int,
         source: Path, row: int) -> bytes:
    """One particle row: tokens kept, those of ``replace`` swapped, ``extra`` appended."""
    if not replace and b"#" not in line:
        return line.rstrip(b"\r\n") + extra + b"\n"
    tokens = _TOKEN.findall(line)
    cut = next((k for k, t in enumerate(tokens) if t.startswith(b"#")), len(tokens))
    tokens = tokens[:cut]  # a trailing comment is dropped (starfile ignores it too)
    if len(tokens) != n_columns:
        raise InputError(str(source), f"row {row + 1}", f"{n_columns} values",
                         f"{len(tokens)}")
    for k, value in replace.items():
        tokens[k] = value.encode()
    return b"\t".join(tokens) + extra + b"\n"


def _annotate_star(source: Path, out: Path, columns: Mapping[str, np.ndarray]) -> None:
    loop = particle_loop(scan_loops(source))
    if loop is None or loop.start is None:
        raise InputError(str(source), None, "a particle loop with rows", "none")
    replace, append = _plan(loop, columns)
    with open(source, "rb") as fh:
        head = fh.read(loop.start)
    lines = head.splitlines(keepends=True)
    last = max(k for k, line in enumerate(lines) if line.lstrip().startswith(b"_"))
    names = [f"_{name} #{len(loop.columns) + k + 1}\n".encode()
             for k, (name, _) in enumerate(append)]
    if not lines[last].endswith(b"\n"):
        lines[last] += b"\n"
    n = len(next(iter(columns.values())))
    texts: dict[int, list[str]] = {}
    extras: list[list[str]] = []
    row = 0
    with atomic_open(out) as dst, open(source, "rb") as src:
        dst.write(b"".join([*lines[:last + 1], *names, *lines[last + 1:]]))
        src.seek(loop.start)
        while src.tell() < loop.end:  # the loop's rows, blank lines and comments
            line = src.readline()
            stripped = line.strip()
            if not stripped or stripped.startswith(b"#"):
                dst.write(line)
                continue
            if row == n:
                raise InputError(str(source), "data_particles", f"{n} rows (the images "
                                 "read)", "more")
            i = row % TEXT_BLOCK
            if i == 0:  # the next block's values as text (memory: one block, not N rows)
                part = slice(row, row + TEXT_BLOCK)
                texts = {k: _text(v[part]) for k, v in replace.items()}
                extras = [_text(v[part]) for _, v in append]
            extra = "".join("\t" + e[i] for e in extras).encode()
            dst.write(_row(line, {k: t[i] for k, t in texts.items()}, extra,
                           len(loop.columns), source, row))
            row += 1
        if row != n:
            raise InputError(str(source), "data_particles", f"{n} rows (the images read)",
                             f"{row}")
        dst.write(src.read())  # the blocks after the particle loop


def _annotate_table(table: ParticleTable, out: Path, columns: Mapping[str, np.ndarray]) -> None:
    """The rows :func:`cryosip.io.cs_to_star` writes for ``table``, plus ``columns``."""
    from cryosip.io.convert import _optics_frame, _particles_frame, _renamed

    names = np.array([_renamed(str(name), None) for name in table.image_names])
    particles = _particles_frame(dataclasses.replace(table, image_names=names))
    for name, values in columns.items():
        if name not in PIXEL_ORIGINS or name in particles.columns:
            particles[name] = _text(values)
    atomic_write_text(out, starfile.to_string({"optics": _optics_frame(table),
                                               "particles": particles}))


def annotate_particles(source: str | os.PathLike, out: str | os.PathLike,
                       columns: Mapping[str, np.ndarray], table: ParticleTable | None = None
                       ) -> Path:
    """Write ``out``: the particle rows of ``source`` with ``columns`` (module docstring).

    ``columns`` maps a column name to one value per particle, in the file's row order.
    A ``.cs`` source needs its ``table`` (:func:`cryosip.io.read_table`).
    """
    source, out = Path(source), Path(out)
    if source.suffix.lower() == ".cs":
        if table is None:
            raise ValueError("a .cs source needs its ParticleTable")
        _annotate_table(table, out, columns)
    else:
        _annotate_star(source, out, columns)
    return out


def read_star_columns(path: str | os.PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The columns ``names`` of ``path``'s particle loop that it has, as numbers (read in
    blocks, :func:`cryosip.io.starloop.read_loop`); an absent column is left out."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, "an existing STAR file", "no such file")
    loop = particle_loop(scan_loops(path))
    if loop is None:
        raise InputError(str(path), None, "a data_particles table", "none")
    table = read_loop(path, loop, frozenset(names))
    out = {}
    for name in names:
        if name in table.columns:
            values = np.asarray(table[name])
            if values.dtype.kind not in "biuf":
                raise InputError(str(path), name, "numbers", f"{values[0]!r}")
            out[name] = values
    return out
