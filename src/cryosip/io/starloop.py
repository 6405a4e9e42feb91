"""A STAR file's particle loop read in blocks of rows, so 10^6 particles take bounded memory.

:func:`cryosip.io.star.read_star` hands ``starfile`` the file *without* the rows of its
particle loop (the loop named ``particles``, else the file's only loop): ``starfile``
reads the optics table, the other blocks and the loop's column names as before, and
:func:`read_loop` reads the rows here, ``CHUNK_BYTES`` of lines at a time, with ``starfile``'s
own ``pandas.read_csv`` options (whitespace-separated, ``#`` comments, ``'`` read as
``"``, ``nan``/``NaN``/``<NA>`` missing). Of each block only the columns ``read_star``
uses are kept, as numbers (a column with a value that is not a number keeps its text, as
``starfile`` does, so the error names the value), and the image names as
:class:`ImageNames`. ``starfile`` itself holds the whole file as lines and a table of
strings: about 850 MB above the process for 10^6 rows, against about 100 MB here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cryosip.errors import InputError

__all__ = ["CHUNK_BYTES", "ImageNames", "LoopColumns", "StarLoop", "read_loop",
           "release_freed_memory", "scan_loops"]

CHUNK_BYTES = 8 << 20
"""Bytes of a particle loop's rows parsed at a time (whole lines: ~80 000 rows)."""

NUMERIC_COLUMNS = frozenset({
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY",
    "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
    "rlnPhaseShift", "rlnCtfBfactor", "rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration",
    "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnDetectorPixelSize", "rlnMagnification",
})
"""The particle columns :func:`cryosip.io.star.read_star` reads as numbers."""

NAME_COLUMN = "rlnImageName"
_MAX_DIGITS = 9  # image numbers fit int32


@dataclasses.dataclass
class StarLoop:
    """A loop block: its name, column names and the byte range ``[start, end)`` of its rows
    (``start`` is ``None`` for a loop without rows)."""

    name: str
    columns: list[str]
    start: int | None = None
    end: int | None = None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    offset = 0
    with open(path, "rb") as fh:
        for raw in fh:
            yield offset, raw.strip()
            offset += len(raw)
    yield offset, None  # end of file


def scan_loops(path: str | os.PathLike) -> list[StarLoop]:
    """The loop blocks of a STAR file, found as ``starfile``'s parser finds them: a block
    starts at a line ``data_<name>``; its first line starting ``loop_`` opens a loop whose
    ``_`` lines are the columns and whose rows run, after blank lines, to the next line
    starting ``data_`` (a line starting ``_`` first makes it a key-value block)."""
    loops: list[StarLoop] = []
    state, name, loop = "outside", "", None
    for offset, line in _lines(Path(path)):
        if state == "header":
            if line is not None and line.startswith(b"_"):
                loop.columns.append(line.split()[0][1:].decode("utf-8", "replace"))
                continue
            state = "rows"
        if state == "rows":
            if line is not None and not line.startswith(b"data_"):
                if loop.start is None and line:
                    loop.start = offset
                continue
            loop.end = None if loop.start is None else offset
            state = "outside"
        if line is None:
            break
        if state == "simple" and line.startswith(b"data"):
            state = "outside"
        if state == "outside" and line.startswith(b"data_"):
            state, name = "block", line[5:].decode("utf-8", "replace")
        elif state == "block" and line.startswith(b"loop_"):
            state, loop = "header", StarLoop(name, [])
            loops.append(loop)
        elif state == "block" and line.startswith(b"_"):
            state = "simple"
    return loops


def particle_loop(loops: list[StarLoop]) -> StarLoop | None:
    """The loop ``read_star`` takes as the particles: the last named ``particles`` (a later
    block of one name replaces an earlier one in ``starfile``), else the only loop."""
    named = [loop for loop in loops if loop.name == "particles"]
    if named:
        return named[-1]
    return loops[0] if len(loops) == 1 else None


class ImageNames:
    """``"<number>@<stack>"`` per particle, held as ``stacks`` (the distinct stack names in
    order of first use), ``stack_index`` (int32), ``number`` (int32, 1-based) and the
    number's ``digits`` (int8: leading zeros kept), 9 bytes a particle instead of a Python
    string's ~70. Indexing gives ``str`` (one) or a numpy ``str`` array (a slice or an
    index array), like the array of names it stands for.

    >>> names = ImageNames(("a.mrcs", "b.mrcs"), np.int32([0, 1, 0]), np.int32([1, 1, 12]),
    ...                    np.int8([6, 1, 2]))
    >>> names[0], names[1:].tolist(), len(names)
    ('000001@a.mrcs', ['1@b.mrcs', '12@a.mrcs'], 3)
    """

    def __init__(self, stacks: tuple[str, ...], stack_index: np.ndarray, number: np.ndarray,
                 digits: np.ndarray):
        self.stacks, self.stack_index, self.number, self.digits = (
            tuple(stacks), stack_index, number, digits)

    def __len__(self) -> int:
        return int(len(self.number))

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def _name(self, row: int) -> str:
        return (f"{int(self.number[row]):0{int(self.digits[row])}d}@"
                f"{self.stacks[self.stack_index[row]]}")

    def __getitem__(self, key):
        rows = np.arange(len(self))[key]
        if np.ndim(rows) == 0:
            return self._name(int(rows))
        return self._strings(rows)

    def _strings(self, rows: np.ndarray, block: int = 65_536) -> np.ndarray:
        """The names of ``rows`` as a numpy ``str`` array, filled a block at a time (no
        list of every name: 10^6 names take the array's 84 MB, not 150 MB more)."""
        longest = max((len(t) for t in self.stacks), default=0)
        digits = int(self.digits[rows].max(initial=1)) if len(rows) else 1
        out = np.empty(len(rows), dtype=f"<U{digits + 1 + longest}")
        for start in range(0, len(rows), block):
            out[start:start + block] = [self._name(r) for r in rows[start:start + block]]
        return out

    def __iter__(self) -> Iterator[str]:
        return (self._name(r) for r in range(len(self)))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def tolist(self) -> list[str]:
        return list(self)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype)


class _NameBlocks:
    """Image names gathered block by block: compact while every name is ``<digits>@<stack>``
    with a number 1..999999999, else as text (for ``split_image_names`` to refuse)."""

    def __init__(self):
        self.stacks: dict[str, int] = {}
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.text: list[np.ndarray] | None = None

    def add(self, column: pd.Series) -> None:
        text = column.astype(str)
        if self.text is None:
            split = text.str.partition("@")
            number = split[0]
            ok = (split[1] == "@") & (split[2].str.len() > 0) & number.str.fullmatch(
                f"[0-9]{{1,{_MAX_DIGITS}}}")
            if ok.all():
                values = number.astype(np.int64).to_numpy()
                if values.min(initial=1) >= 1:
                    codes, uniques = pd.factorize(split[2])
                    lookup = np.array([self.stacks.setdefault(u, len(self.stacks))
                                       for u in uniques], dtype=np.int32)
                    self.parts.append((lookup[codes], values.astype(np.int32),
                                       number.str.len().to_numpy().astype(np.int8)))
                    return
            self.text = [np.asarray(self._compact(), dtype=object)]
        self.text.append(text.to_numpy(dtype=object))

    def _compact(self) -> ImageNames:
        if not self.parts:
            empty = np.zeros(0, np.int32)
            return ImageNames((), empty, empty, empty.astype(np.int8))
        return ImageNames(tuple(self.stacks), *(np.concatenate(p) for p in zip(*self.parts,
                                                                                strict=True)))

    def result(self):
        if self.text is None:
            return self._compact()
        return np.concatenate(self.text).astype(str).astype(object)


def _numeric(column: pd.Series) -> np.ndarray:
    """``starfile``'s ``pd.to_numeric``, block by block: text kept when it fails."""
    if column.dtype.kind in "iuf":
        return column.to_numpy()
    try:
        return pd.to_numeric(column).to_numpy()
    except (ValueError, TypeError):
        return column.to_numpy(dtype=object)


class LoopColumns:
    """The particle loop's kept columns, each its own array: the few parts of a
    ``DataFrame`` that ``read_star`` uses (``columns``, ``len``, ``df[name]`` as a Series)."""

    def __init__(self, columns: list[str], data: dict[str, np.ndarray], n: int):
        self.columns, self._data, self._n = list(columns), data, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, name: str):
        value = self._data[name]
        return value if isinstance(value, ImageNames) else pd.Series(value, copy=False)

    def names(self):
        """The ``rlnImageName`` column: :class:`ImageNames`, or text for malformed names."""
        return self._data[NAME_COLUMN]


def _blocks_of_lines(path: Path, loop: StarLoop) -> Iterator[str]:
    with open(path, "rb") as fh:
        fh.seek(loop.start)
        reader = io.BufferedReader(_Window(fh, loop.end - loop.start), 1 << 20)
        while True:
            lines = reader.readlines(CHUNK_BYTES)
            if not lines:
                return
            yield b"".join(lines).decode("utf-8").replace("'", '"')


class _Window(io.RawIOBase):
    """``size`` bytes of an open file from its current position."""

    def __init__(self, fh, size: int):
        self._fh, self._left = fh, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)[: self._left]
        got = self._fh.readinto(view)
        self._left -= got
        return got


def read_loop(path: str | os.PathLike, loop: StarLoop,
              numeric: frozenset[str] = NUMERIC_COLUMNS) -> LoopColumns:
    """The rows of ``loop`` (module docstring); a malformed row is an ``InputError``.
    ``numeric``: the columns kept as numbers (default: those ``read_star`` uses)."""
    path = Path(path)
    keep = [c for c in loop.columns if c in numeric]
    parts: dict[str, list[np.ndarray]] = {c: [] for c in keep}
    names, n = _NameBlocks(), 0
    if loop.start is not None:
        for text in _blocks_of_lines(path, loop):
            try:
                df = pd.read_csv(io.StringIO(text), delimiter=r"\s+", header=None, comment="#",
                                 keep_default_na=False, na_values=["nan", "NaN", "<NA>"],
                                 engine="c")
            except pd.errors.EmptyDataError:
                continue
            except Exception as err:  # noqa: BLE001 - pandas raises many kinds
                raise InputError(str(path), None, "a STAR file",
                                 f"unparsable (rows {n + 1}... of loop "
                                 f"data_{loop.name}: {err})") from None
            if df.shape[1] != len(loop.columns):
                raise InputError(str(path), None, "a STAR file",
                                 f"unparsable (Length mismatch: Expected axis has "
                                 f"{df.shape[1]} elements, new values have "
                                 f"{len(loop.columns)} elements)")
            df.columns = loop.columns
            for c in keep:
                parts[c].append(_numeric(df[c]))
            if NAME_COLUMN in loop.columns:
                names.add(df[NAME_COLUMN])
            n += len(df)
    data = {c: _joined(p) for c, p in parts.items()}
    if NAME_COLUMN in loop.columns:
        data[NAME_COLUMN] = names.result()
    columns = [c for c in loop.columns if c in data]
    return LoopColumns(columns, data, n)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros(0)
    if any(p.dtype == object for p in parts):
        return np.concatenate([p.astype(object) for p in parts])
    return np.concatenate(parts)


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``; nothing
    elsewhere). Parsing 10^6 rows frees ~150 MB of blocks that glibc would otherwise keep
    mapped for the rest of the process (measured in ``docs/scaling.md``)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
