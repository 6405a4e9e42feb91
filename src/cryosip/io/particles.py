"""A particle data set: a STAR file with its images, read lazily (:func:`read_particles`).

``rlnImageName`` is ``"<index>@<stack>"`` with a 1-based index and the stack path relative
to the STAR file's folder. The images stay memory-mapped; ``stack.images[i:j]`` reads only
those images. Checks (each an :class:`~cryosip.errors.InputError` naming file and field):
needed STAR columns, finite values, stack files present and valid (size, shape, finite
pixels), indices within the stack, the row count equal to the stack length when the
whole STAR refers to a single stack (unless ``allow_subset=True``), and box sizes equal
to the optics table's ``rlnImageSize``.

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
from cryosip.io.mrc import MrcStack, open_stack
from cryosip.io.star import ParticleTable, read_star

__all__ = ["ParticleImages", "ParticleStack", "read_particles"]


class ParticleImages:
    """Lazy images of the particles, in STAR row order: ``images[index]`` -> (n, box, box)."""

    def __init__(self, stacks: list[MrcStack], file_index: np.ndarray, image_index: np.ndarray):
        self.stacks, self.file_index, self.image_index = stacks, file_index, image_index

    def __len__(self) -> int:
        return int(len(self.image_index))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.stacks[0].box_size, self.stacks[0].box_size)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(len(self))[index]
        if np.ndim(rows) == 0:
            return self[np.array([rows])][0]
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        for f, stack in enumerate(self.stacks):
            sel = np.flatnonzero(self.file_index[rows] == f)
            if len(sel):
                out[sel] = stack.data[self.image_index[rows[sel]]]
        return out

    def close(self) -> None:
        for stack in self.stacks:
            stack.close()


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


def _split_names(path: Path, names: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    files, file_index, image_index = [], np.empty(len(names), int), np.empty(len(names), int)
    lookup: dict[str, int] = {}
    for row, name in enumerate(names):
        index, sep, stack = str(name).partition("@")
        if not sep or not index.strip().isdigit() or int(index) < 1:
            raise InputError(str(path), "rlnImageName", "'<index>@<stack>' with index >= 1",
                             f"{name!r} in row {row + 1}")
        file_index[row] = lookup.setdefault(stack, len(lookup))
        image_index[row] = int(index) - 1
        if file_index[row] == len(files):
            files.append(stack)
    return files, file_index, image_index


def read_particles(
    star_path: str | os.PathLike, *, pixel_size_angstrom: float | None = None,
    require_poses: bool = True, allow_subset: bool = False, check_nan: bool = True,
) -> ParticleStack:
    """Read and check a particle STAR file and open its stacks lazily (module docstring)."""
    star_path = Path(star_path)
    table = read_star(star_path, pixel_size_angstrom=pixel_size_angstrom,
                      require_poses=require_poses)
    files, file_index, image_index = _split_names(star_path, table.image_names)
    stacks: list[MrcStack] = []
    try:
        for f, name in enumerate(files):
            stack_path = star_path.parent / name
            if not stack_path.is_file():
                raise InputError(str(star_path), "rlnImageName", "an existing stack file",
                                 f"missing {stack_path}")
            stacks.append(open_stack(stack_path, check_nan=check_nan))
            _check_rows(star_path, stacks[-1], image_index[file_index == f],
                        len(files) == 1 and not allow_subset, table.box_size)
    except InputError:
        for stack in stacks:
            stack.close()
        raise
    return ParticleStack(str(star_path), ParticleImages(stacks, file_index, image_index), table)


def _check_rows(star_path: Path, stack: MrcStack, indices: np.ndarray, whole: bool,
                box_size: int | None) -> None:
    name = Path(stack.path).name
    if whole and len(indices) != len(stack):
        raise InputError(str(star_path), "rlnImageName",
                         f"{len(stack)} rows (the length of {name})", f"{len(indices)} rows")
    if indices.max() >= len(stack):
        raise InputError(str(star_path), "rlnImageName", f"indices <= {len(stack)} ({name})",
                         f"index {int(indices.max()) + 1}")
    if box_size is not None and stack.box_size != box_size:
        raise InputError(str(stack.path), "shape", f"box {box_size} (rlnImageSize)",
                         f"box {stack.box_size}")
