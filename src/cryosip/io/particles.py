"""A particle data set: a STAR or cryoSPARC ``.cs`` file with its images, read lazily.

:func:`read_particles` reads the table (:func:`read_table`: RELION STAR 3.0/3.1 by
:func:`cryosip.io.star.read_star`, ``.cs`` by :func:`cryosip.io.cryosparc.read_cs`) and
checks each stack once; ``stack.images[i:j]`` then reads only those images, opening only
their stacks for that read (no file stays open: a RELION ``Extract`` job has one stack per
micrograph, thousands, beyond the usual open-file limit). Each image name is
``"<index>@<stack>"`` with a 1-based index. The stack path is resolved as RELION does
(:func:`resolve_stack_path`): ``datadir`` first (``DIR/name``, then ``DIR/basename``),
then the particle file's folder, then each of its ancestors (a RELION project root, from
which ``Refine3D/job012/run_data.star`` names ``Extract/job007/Micrographs/x.mrcs``); a
leading ``>`` (cryoSPARC) is dropped. Any subset of a stack, in any order, is accepted.
Checks (each an :class:`~cryosip.errors.InputError` naming file and field): needed
columns, finite values, stack files found and valid (size, shape, finite pixels), indices
within their stack, one box size across stacks equal to the optics table's
``rlnImageSize``. When no column carries a pixel size, the first stack's MRC voxel size
is used (logged); ``pixel_size_angstrom`` overrides the file's.

>>> import tempfile, os, jax.numpy as jnp
>>> from cryosip.forward import ImageNuisance, Optics
>>> from cryosip.io.mrc import write_stack
>>> from cryosip.io.star import write_star
>>> d = tempfile.mkdtemp()
>>> write_stack(os.path.join(d, "particles.mrcs"), np.ones((2, 8, 8)), 2.0)
>>> write_star(os.path.join(d, "p.star"), ImageNuisance.create(jnp.zeros((2, 3))), Optics(),
...            pixel_size_angstrom=2.0, box_size=8)
>>> stack = read_particles(os.path.join(d, "p.star"))
>>> len(stack), stack.images[0:2].shape
(2, (2, 8, 8))
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from cryosip.errors import InputError
from cryosip.forward import ImageNuisance, Optics
from cryosip.io.mrc import MrcStack, StackFile, open_stack, read_header
from cryosip.io.star import ParticleTable, read_star
from cryosip.io.starloop import ImageNames

__all__ = ["ParticleImages", "ParticleStack", "read_particles", "read_table",
           "resolve_stack_path", "split_image_names"]


class ParticleImages:
    """Lazy images of the particles, in file row order: ``images[index]`` -> (n, box, box).

    Each read opens only the stacks the requested rows live in (:class:`StackFile`), so no
    file stays open between reads.
    """

    def __init__(self, files: list[StackFile], file_index: np.ndarray,
                 image_index: np.ndarray):
        self.files, self.file_index, self.image_index = files, file_index, image_index

    def __len__(self) -> int:
        return int(len(self.image_index))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.files[0].box_size, self.files[0].box_size)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(len(self))[index]
        if np.ndim(rows) == 0:
            return self[np.array([rows])][0]
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        files = self.file_index[rows]
        for f in np.unique(files):
            sel = np.flatnonzero(files == f)
            out[sel] = self.files[f].read(self.image_index[rows[sel]])
        return out

    def close(self) -> None:
        """Nothing stays open between reads; kept for callers that close."""


@dataclasses.dataclass(frozen=True)
class ParticleStack:
    """Images, per-image nuisances and optics of a STAR file (RELION conventions)."""

    path: str
    images: ParticleImages
    table: ParticleTable

    def __len__(self) -> int:
        return len(self.table)

    @property
    def nuisance(self) -> ImageNuisance:
        return self.table.nuisance()

    def nuisance_at(self, index) -> ImageNuisance:
        """The nuisance of the images ``index`` only (no ``[N]`` arrays made)."""
        return self.table.nuisance(index)

    @property
    def optics(self) -> tuple[Optics, ...]:
        return self.table.optics

    @property
    def optics_index(self) -> np.ndarray:
        return self.table.optics_index

    @property
    def pixel_size_angstrom(self) -> float:
        return self.table.pixel_size_angstrom

    @property
    def box_size(self) -> int:
        return self.images.shape[1]


def resolve_stack_path(name: str, source_file: str | os.PathLike,
                       datadir: str | os.PathLike | None, *, field: str = "rlnImageName",
                       ) -> Path:
    """The stack file that ``name`` (as written in ``source_file``) refers to.

    Tried in order: ``datadir/name``, ``datadir/basename(name)``, the source file's folder
    ``/name``, then each ancestor folder ``/name``; a leading ``>`` is dropped first. The
    error lists every place tried.

    >>> import tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "Extract", "job007"))
    >>> os.makedirs(os.path.join(root, "Refine3D", "job012"))
    >>> open(os.path.join(root, "Extract", "job007", "x.mrcs"), "wb").close()
    >>> star = os.path.join(root, "Refine3D", "job012", "run_data.star")
    >>> resolve_stack_path("Extract/job007/x.mrcs", star, None).relative_to(root).as_posix()
    'Extract/job007/x.mrcs'
    """
    clean = str(name).strip().removeprefix(">")
    tried: list[Path] = []
    if datadir is not None:
        tried += [Path(datadir) / clean, Path(datadir) / Path(clean).name]
    source_dir = Path(source_file).parent
    tried += [source_dir / clean, *(a / clean for a in source_dir.absolute().parents)]
    unique = list(dict.fromkeys(tried))
    for candidate in unique:
        if candidate.is_file():
            return candidate
    raise InputError(str(source_file), field, f"an existing stack file {name!r}",
                     "missing: not at " + ", ".join(str(c) for c in unique)
                     + ("" if datadir is not None else "; pass --datadir"))


def split_image_names(path: str | os.PathLike, names: np.ndarray, field: str = "rlnImageName",
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(stack names, file index per row, 0-based image index per row)`` of ``"i@stack"``.

    :class:`~cryosip.io.starloop.ImageNames` (a STAR reader's, checked as it read them)
    give their own int32 arrays, without a string per row."""
    if isinstance(names, ImageNames):
        return list(names.stacks), names.stack_index, names.number - np.int32(1)
    files, file_index, image_index = [], np.empty(len(names), int), np.empty(len(names), int)
    lookup: dict[str, int] = {}
    for row, name in enumerate(names):
        index, sep, stack = str(name).partition("@")
        if not sep or not index.strip().isdigit() or int(index) < 1 or not stack.strip():
            raise InputError(str(path), field, "'<index>@<stack>' with index >= 1",
                             f"{name!r} in row {row + 1}")
        file_index[row] = lookup.setdefault(stack, len(lookup))
        image_index[row] = int(index) - 1
        if file_index[row] == len(files):
            files.append(stack)
    return files, file_index, image_index


def _check_datadir(datadir: str | os.PathLike | None) -> None:
    if datadir is not None and not Path(datadir).is_dir():
        raise InputError("command line", "--datadir", "an existing folder", str(datadir))


def _header_pixel_size(source: Path, datadir):
    """The pixel-size fallback of :func:`read_star`: the first stack's MRC voxel size."""
    def fallback(image_name: str) -> tuple[float, str] | None:
        try:
            stack = resolve_stack_path(image_name.partition("@")[2], source, datadir)
            return read_header(stack)[2], str(stack)
        except InputError:
            return None
    return fallback


def read_table(
    path: str | os.PathLike, *, pixel_size_angstrom: float | None = None,
    require_poses: bool = False, datadir: str | os.PathLike | None = None,
) -> ParticleTable:
    """The particle table of a STAR or ``.cs`` file, without opening the stacks.

    Only a STAR file with no pixel-size column reads one header: the first stack's voxel
    size (resolved with ``datadir`` as in :func:`resolve_stack_path`).
    """
    path = Path(path)
    _check_datadir(datadir)
    if path.suffix.lower() == ".cs":
        from cryosip.io.cryosparc import read_cs

        return read_cs(path, pixel_size_angstrom=pixel_size_angstrom,
                       require_poses=require_poses)
    return read_star(path, pixel_size_angstrom=pixel_size_angstrom,
                     require_poses=require_poses,
                     pixel_size_fallback=_header_pixel_size(path, datadir))


def read_particles(
    path: str | os.PathLike, *, datadir: str | os.PathLike | None = None,
    pixel_size_angstrom: float | None = None, require_poses: bool = True,
    check_nan: bool = True,
) -> ParticleStack:
    """Read and check a particle file and open its stacks lazily (module docstring)."""
    path = Path(path)
    table = read_table(path, pixel_size_angstrom=pixel_size_angstrom,
                       require_poses=require_poses, datadir=datadir)
    field = "blob/path" if path.suffix.lower() == ".cs" else "rlnImageName"
    files, file_index, image_index = split_image_names(path, table.image_names, field)
    stacks: list[StackFile] = []
    for f, name in enumerate(files):
        stack_path = resolve_stack_path(name, path, datadir, field=field)
        with open_stack(stack_path, check_nan=check_nan) as stack:
            _check_rows(path, stack, image_index, file_index == f, field)
            stacks.append(StackFile.of(stack))
        _check_box(stacks[-1], stacks[0], table.box_size)
    return ParticleStack(str(path), ParticleImages(stacks, file_index, image_index), table)


def _check_rows(path: Path, stack: MrcStack, image_index: np.ndarray, mine: np.ndarray,
                field: str) -> None:
    beyond = np.flatnonzero(mine & (image_index >= len(stack)))
    if len(beyond):
        row = int(beyond[0])
        raise InputError(str(path), field,
                         f"indices 1..{len(stack)} ({Path(stack.path).name} holds "
                         f"{len(stack)} images)",
                         f"index {image_index[row] + 1} in row {row + 1}"
                         + (f" and {len(beyond) - 1} more rows" if len(beyond) > 1 else ""))


def _check_box(stack: StackFile, first: StackFile, box_size: int | None) -> None:
    if box_size is not None and stack.box_size != box_size:
        raise InputError(str(stack.path), "shape", f"box {box_size} (rlnImageSize)",
                         f"box {stack.box_size}")
    if stack.box_size != first.box_size:
        raise InputError(str(stack.path), "shape", f"box {first.box_size} as in {first.path}",
                         f"box {stack.box_size}")
