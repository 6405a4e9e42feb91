"""Particle stacks (``.mrcs``): lazy memory-mapped reading, writing, validation.

A stack is an MRC file of ``n`` square images, ``data[n, y, x]`` (MRC order; a single
2-D image reads as a stack of one). Reading memory-maps the file read-only, so a stack
larger than memory is fine; :func:`open_stack` checks the header against the file size
(truncation), the shape (3-D, square) and, unless ``check_nan=False``, scans the pixels
for NaN/inf in chunks. Every problem is an :class:`~cryosip.errors.InputError`.

Headers written by older tools are often sloppy (a zero map ID ``"MAP "`` at byte 208, a
zero machine stamp at byte 212): such stacks are read permissively (``mrcfile``'s
``permissive=True``) and the problem is logged as a warning on the ``"cryosip"`` logger.
A stack ``mrcfile`` cannot read even so (an unknown data mode) is an ``InputError``, and so
is a compressed stack (``.gz``/``.bz2``/``.xz`` or gzip/bzip2/xz bytes): decompress it first.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "s.mrcs")
>>> write_stack(path, np.zeros((3, 8, 8), np.float32), pixel_size_angstrom=2.0)
>>> stack = open_stack(path)
>>> len(stack), stack.box_size, stack.pixel_size_angstrom
(3, 8, 2.0)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
from jaxtyping import Float

from cryosip.conventions import image_centre_index
from cryosip.errors import InputError

__all__ = ["MrcStack", "StackFile", "StackWriter", "create_stack", "open_stack", "read_header",
           "write_stack"]

_NAN_CHUNK = 512
_LOG = logging.getLogger("cryosip")
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_COMPRESSED_SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zip": "zip"}


class MrcStack:
    """A read-only memory-mapped stack: ``stack[i]`` or ``stack[i:j]`` gives float32 arrays."""

    def __init__(self, path: str | os.PathLike, handle, data: np.ndarray):
        self.path, self._handle, self.data = str(path), handle, data

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.data[index], dtype=np.float32)

    @property
    def box_size(self) -> int:
        return int(self.data.shape[-1])

    @property
    def pixel_size_angstrom(self) -> float:
        return float(self._handle.voxel_size.x)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> MrcStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class StackFile:
    """Where a validated stack's images lie in its file; reads open the file per call.

    Holds no file descriptor, so a data set of thousands of per-micrograph stacks (RELION's
    ``Extract``) stays under the open-file limit that one memory map per stack would hit.
    ``read(index)`` returns float32 ``(len(index), box, box)`` for 0-based ``index`` in any
    order (consecutive indices are read in one call).
    """

    path: str
    n_images: int
    box_size: int
    offset: int
    dtype: np.dtype

    @classmethod
    def of(cls, stack: MrcStack) -> StackFile:
        """The file layout of an open :class:`MrcStack` (header + extended header, dtype)."""
        h = stack._handle.header
        return cls(stack.path, len(stack), stack.box_size, 1024 + int(h.nsymbt),
                   stack.data.dtype)

    def read(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.box_size, self.box_size), np.float32)
        if not len(index):
            return out
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        size = self.box_size * self.box_size * self.dtype.itemsize
        runs = np.split(np.arange(len(index)), np.flatnonzero(np.diff(ordered) != 1) + 1)
        with open(self.path, "rb") as fh:
            for run in runs:
                start, count = int(ordered[run[0]]), len(run)
                fh.seek(self.offset + start * size)
                block = np.frombuffer(fh.read(count * size), self.dtype)
                out[order[run]] = block.reshape(count, self.box_size, self.box_size)
        return out


def _check_not_compressed(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(6)
    kind = _COMPRESSED_SUFFIXES.get(path.suffix.lower())
    kind = kind or next((k for magic, k in _COMPRESSED.items() if head.startswith(magic)), None)
    if kind:
        raise InputError(str(path), None, "an uncompressed MRC stack",
                         f"a {kind}-compressed stack: decompress it first "
                         f"(e.g. gunzip / bunzip2 / unxz) and point the STAR file at it")


def _expected_bytes(path: Path) -> tuple[int, int]:
    """``(expected, actual)`` file sizes from the header (1024 + extended + data)."""
    with warnings.catch_warnings():  # the permissive mmap below logs header problems once
        warnings.simplefilter("ignore")
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            h = mrc.header
            dtype = mrcfile.utils.data_dtype_from_header(h)
            n_voxels = int(h.nx) * int(h.ny) * int(h.nz)
            expected = 1024 + int(h.nsymbt) + n_voxels * np.dtype(dtype).itemsize
    return expected, path.stat().st_size


def _mmap_permissive(path: Path):
    """``mrcfile.mmap(permissive=True)``; its header warnings go to the "cryosip" logger."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            handle = mrcfile.mmap(path, mode="r", permissive=True)
        except (ValueError, OSError) as err:
            raise InputError(str(path), "header", "an MRC header",
                             str(err).splitlines()[0]) from None
    problems = [str(w.message).splitlines()[0] for w in caught]
    if handle.data is None:
        handle.close()
        raise InputError(str(path), "header", "an MRC stack mrcfile can read",
                         "; ".join(problems) or "no data block")
    if problems:
        _LOG.warning("%s: non-standard MRC header, read permissively: %s", path,
                     "; ".join(problems))
    return handle


def open_stack(path: str | os.PathLike, *, check_nan: bool = True) -> MrcStack:
    """Memory-map a stack read-only after validating it (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, "an existing .mrcs file", "no such file")
    _check_not_compressed(path)
    try:
        expected, actual = _expected_bytes(path)
    except ValueError as err:
        raise InputError(str(path), "header", "an MRC header", str(err).splitlines()[0]) from None
    if actual < expected:
        raise InputError(str(path), "data", f"{expected} bytes from the header",
                         f"{actual} bytes (truncated file)")
    handle = _mmap_permissive(path)
    data = handle.data if handle.data.ndim == 3 else handle.data[None]
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        shape = handle.data.shape
        handle.close()
        raise InputError(str(path), "shape", "a stack of square images (n, box, box)",
                         f"shape {shape}")
    if check_nan:
        _check_finite(path, data, handle)
    return MrcStack(path, handle, data)


def read_header(path: str | os.PathLike) -> tuple[int, int, float]:
    """``(n_images, box_size, pixel_size_angstrom)`` from a stack's header alone.

    Same checks as :func:`open_stack` on the file itself (exists, not compressed, a header
    ``mrcfile`` reads permissively, as many bytes as the header promises, square images);
    the data is not touched.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, "an existing .mrcs file", "no such file")
    _check_not_compressed(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mrcfile.open(path, header_only=True, permissive=True) as mrc:
                h = mrc.header
                n, box, voxel = max(int(h.nz), 1), int(h.nx), float(mrc.voxel_size.x)
                ny = int(h.ny)
            expected, actual = _expected_bytes(path)
        except (ValueError, OSError) as err:
            raise InputError(str(path), "header", "an MRC header",
                             str(err).splitlines()[0]) from None
    if actual < expected:
        raise InputError(str(path), "data", f"{expected} bytes from the header",
                         f"{actual} bytes (truncated file)")
    if ny != box:
        raise InputError(str(path), "shape", "a stack of square images (n, box, box)",
                         f"images of {ny} x {box} pixels")
    return n, box, voxel


def _check_finite(path: Path, data: np.ndarray, handle) -> None:
    """NaN/inf scan by blocks read with ``readinto`` (not through the memory map, whose
    pages would stay resident: the scan of a 4 GB stack would cost 4 GB of RSS)."""
    if not np.issubdtype(data.dtype, np.floating):
        return
    per_image = int(np.prod(data.shape[1:])) * data.dtype.itemsize
    chunk = np.empty((_NAN_CHUNK, *data.shape[1:]), data.dtype)
    with open(path, "rb") as fh:
        fh.seek(1024 + int(handle.header.nsymbt))
        for start in range(0, data.shape[0], _NAN_CHUNK):
            count = min(_NAN_CHUNK, data.shape[0] - start)
            block = chunk[:count]
            if fh.readinto(memoryview(block).cast("B")) != count * per_image:
                break  # cannot happen after the size check; the memory map would fail too
            _raise_if_not_finite(path, block, start, handle)


def _raise_if_not_finite(path: Path, chunk: np.ndarray, start: int, handle) -> None:
    bad = ~np.isfinite(chunk)
    if bad.any():
        handle.close()
        image = start + int(np.argwhere(bad)[0][0])
        raise InputError(str(path), "pixels", "finite pixel values",
                         f"{int(bad.sum())} NaN/inf pixels (first in image {image})")


def write_stack(
    path: str | os.PathLike, images: Float[np.ndarray, "n box box"], pixel_size_angstrom: float
) -> None:
    """Write ``images`` as a float32 image stack with the voxel size set."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size_angstrom


def create_stack(
    path: str | os.PathLike, n_images: int, box_size: int, pixel_size_angstrom: float
):
    """A new writable memory-mapped float32 stack (an ``mrcfile`` object: ``.data[i] = ...``)."""
    mrc = mrcfile.new_mmap(path, (n_images, box_size, box_size), mrc_mode=2, overwrite=True)
    mrc.set_image_stack()
    mrc.voxel_size = pixel_size_angstrom
    return mrc


class StackWriter:
    """A new float32 stack written and read back by blocks through ``os.pwrite``/``os.pread``.

    Unlike :func:`create_stack` (a writable memory map, whose dirty pages count in the
    process's resident memory until the map is closed: 4 GB for 10^6 images of 32 x 32),
    the written images go to the OS page cache only, so the memory of writing a stack does
    not grow with its length. The header is ``create_stack``'s (mode 2, an image stack,
    the voxel size set), byte for byte.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.mrcs")
    >>> with StackWriter(path, 3, 4, 2.0) as w:
    ...     w.write(1, np.ones((2, 4, 4)))
    ...     w.read(0, 3).sum(axis=(1, 2)).tolist()
    [0.0, 16.0, 16.0]
    """

    def __init__(self, path: str | os.PathLike, n_images: int, box_size: int,
                 pixel_size_angstrom: float):
        mrc = create_stack(path, n_images, box_size, pixel_size_angstrom)  # data left sparse
        self._offset = 1024 + int(mrc.header.nsymbt)
        mrc.close()
        self.path, self.n_images, self.box_size = str(path), int(n_images), int(box_size)
        self._image_bytes = self.box_size * self.box_size * 4
        self._fd = os.open(path, os.O_RDWR)

    def _where(self, start: int, count: int) -> int:
        if start < 0 or start + count > self.n_images:
            raise IndexError(f"images {start}..{start + count - 1} of a stack of "
                             f"{self.n_images}")
        return self._offset + start * self._image_bytes

    def write(self, start: int, images: np.ndarray) -> None:
        """Write ``images [k, box, box]`` (cast to float32) as images ``start..start+k-1``."""
        block = np.ascontiguousarray(images, dtype=np.float32)
        if block.shape[1:] != (self.box_size, self.box_size):
            raise ValueError(f"images of shape {block.shape[1:]}, the stack's box is "
                             f"{self.box_size}")
        view, at = memoryview(block).cast("B"), self._where(start, len(block))
        while len(view):
            done = os.pwrite(self._fd, view, at)
            view, at = view[done:], at + done

    def read(self, start: int, count: int) -> np.ndarray:
        """Images ``start..start+count-1`` as a new float32 array ``[count, box, box]``."""
        out = np.empty((count, self.box_size, self.box_size), np.float32)
        view, at = memoryview(out).cast("B"), self._where(start, count)
        while len(view):
            got = os.preadv(self._fd, [view], at)
            if got == 0:
                raise OSError(f"{self.path}: unexpected end of file at byte {at}")
            view, at = view[got:], at + got
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_map(
    path: str | os.PathLike, volume: Float[np.ndarray, "z y x"], voxel_size_angstrom: float
) -> None:
    """Write a density map ``volume[z, y, x]`` as float32 MRC with the voxel size set.

    The header origin puts voxel ``n // 2`` of each axis at 0 Å (cryosip's image centre,
    :func:`cryosip.conventions.image_centre_index`), so a viewer (ChimeraX, Chimera, Coot)
    overlays the map on the model's PDB, whose coordinates are in that frame.
    """
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
        mrc.voxel_size = voxel_size_angstrom
        nz, ny, nx = np.shape(volume)
        mrc.header.origin = tuple(-image_centre_index(n) * float(voxel_size_angstrom)
                                  for n in (nx, ny, nz))
