"""cryoSPARC ``.cs`` particle files: read into a :class:`ParticleTable` (RELION conventions).

A ``.cs`` file is a numpy ``.npy`` file holding a structured array, one row per particle
(read with ``np.load(path, allow_pickle=False)``; cryosparc-tools' newer compressed
``CSDAT`` format is refused with the way to re-save it). Fields read:

* ``blob/path`` (bytes; a leading ``>`` is kept, :func:`resolve_stack_path` strips it),
  ``blob/idx`` (0-based index in the stack), ``blob/psize_A`` (Å; optional when a pixel
  size is given), ``blob/shape`` (``(ny, nx)``; optional, square);
* ``ctf/df1_A``, ``ctf/df2_A`` (defocus U, V in Å), ``ctf/df_angle_rad``,
  ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``, ``ctf/phase_shift_rad`` (0 when
  absent), ``ctf/bfactor`` (Å², 0 when absent; RELION's ``rlnCtfBfactor``, which pyem's
  ``csparc2star`` copies unchanged), ``ctf/exp_group_id`` (optics groups; when absent, one
  group per distinct voltage, Cs, amplitude contrast and B-factor; an exposure group whose
  particles differ in these is split, ``exp_group<g>.<k>``);
* when present, ``alignments3D/pose`` (rotation vector) and ``alignments3D/shift``
  (pixels of ``alignments3D/psize_A`` when present, else of the image), converted by
  :func:`cryosip.conventions.cryosparc_to_relion_pose`.

Angles become degrees. cryoSPARC stores float32: each float32 number is read as the
shortest decimal that rounds to it (``1.37``, not ``1.3700000047683716``), in float64.
Pixel size and box must be the same in every group (an error names the groups).

>>> import tempfile, os
>>> dtype = [("blob/path", "S16"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
...          ("blob/shape", "<u4", (2,)), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
...          ("ctf/df_angle_rad", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
...          ("ctf/amp_contrast", "<f4"), ("ctf/phase_shift_rad", "<f4")]
>>> rows = np.array([(b"J1/a.mrc", 4, 1.37, (64, 64), 1.5e4, 1.4e4, 0.5, 300, 2.7, 0.1, 0)],
...                 dtype=dtype)
>>> path = os.path.join(tempfile.mkdtemp(), "p.cs")
>>> with open(path, "wb") as fh:
...     np.save(fh, rows)
>>> t = read_cs(path)
>>> t.image_names.tolist(), t.pixel_size_angstrom, t.box_size, t.poses_known
(['000005@J1/a.mrc'], 1.37, 64, False)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from cryosip import conventions
from cryosip.errors import InputError
from cryosip.forward import Optics
from cryosip.io.star import ParticleTable

__all__ = ["read_cs"]

_LOG = logging.getLogger("cryosip")
CTF_FIELDS = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm",
              "ctf/amp_contrast")


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(str(path), None, "an existing cryoSPARC .cs file", "no such file")
    with open(path, "rb") as fh:
        if fh.read(6) == b"\x94CSDAT":
            raise InputError(str(path), None, "a .cs file in cryoSPARC's numpy format",
                             "the compressed CSDAT format; re-save it with cryosparc-tools "
                             "(Dataset.load(p).save(q, format=NUMPY_FORMAT))")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - numpy raises many kinds
        raise InputError(str(path), None, "a cryoSPARC .cs file (numpy structured array)",
                         f"unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        found = f"{type(data).__name__} {getattr(data, 'dtype', '')}".strip()
        raise InputError(str(path), None, "a cryoSPARC .cs file (1-D structured array)", found)
    if len(data) == 0:
        raise InputError(str(path), None, "at least one particle", "0 rows")
    return data


def _decimal(values: np.ndarray) -> np.ndarray:
    """float32 numbers as the shortest decimals that round to them, in float64."""
    if values.dtype == np.float32:
        return values.astype(str).astype(np.float64)
    return values.astype(np.float64)


def _numeric(path: Path, data: np.ndarray, name: str, width: int | None = None,
             default: float | None = None, integer: bool = False) -> np.ndarray:
    """Field ``name`` checked: a column (or ``width`` columns) of finite numbers."""
    if name not in data.dtype.names:
        if default is None:
            raise InputError(str(path), name, "a field", "none")
        return np.full(len(data) if width is None else (len(data), width), default, float)
    col = data[name]
    kinds = "iu" if integer else "iuf"
    shape = (len(data),) if width is None else (len(data), width)
    if col.dtype.kind not in kinds or col.shape != shape:
        want = ("integers" if integer else "numbers") + ("" if width is None else f" x{width}")
        raise InputError(str(path), name, want, f"dtype {col.dtype}, shape {col.shape[1:]}")
    values = _decimal(col)
    bad = ~np.isfinite(values).reshape(len(data), -1).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(str(path), name, "finite numbers", f"{col[row]!r} in row {row + 1}")
    return values


def _image_names(path: Path, data: np.ndarray) -> np.ndarray:
    if "blob/path" not in data.dtype.names:
        raise InputError(str(path), "blob/path", "a field", "none")
    col = data["blob/path"]
    if col.dtype.kind not in "SU" or col.ndim != 1:
        raise InputError(str(path), "blob/path", "strings", f"dtype {col.dtype}")
    try:
        paths = [p.decode() if isinstance(p, bytes) else str(p) for p in col.tolist()]
    except UnicodeDecodeError as err:
        raise InputError(str(path), "blob/path", "UTF-8 paths", f"{err}") from None
    if not all(p.strip(">") for p in paths):
        row = next(i for i, p in enumerate(paths) if not p.strip(">"))
        raise InputError(str(path), "blob/path", "a stack path", f"'' in row {row + 1}")
    idx = _numeric(path, data, "blob/idx", integer=True)
    if np.any(idx < 0):
        raise InputError(str(path), "blob/idx", "indices >= 0", f"{int(idx.min())}")
    return np.array([f"{int(i) + 1:06d}@{p}" for i, p in zip(idx, paths, strict=True)])


def _groups(path: Path, data: np.ndarray, optics_cols: np.ndarray):
    """``(optics, index, names)``: groups from ``ctf/exp_group_id`` (split further where
    voltage, Cs, amplitude contrast or B-factor differ inside one), else from the distinct
    optics."""
    has_id = "ctf/exp_group_id" in data.dtype.names
    gid = (_numeric(path, data, "ctf/exp_group_id", integer=True) if has_id
           else np.zeros(len(data)))
    keys = np.column_stack([gid, optics_cols])
    unique, first, index = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # groups in the order of their first particle
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    unique, index = unique[order], rank[index.ravel()]
    optics = tuple(Optics(voltage_kv=float(r[1]), cs_mm=float(r[2]),
                          amplitude_contrast=float(r[3]), b_factor_angstrom2=float(r[4]))
                   for r in unique)
    ids = unique[:, 0].astype(int)
    names = []
    for k, g in enumerate(ids):
        same = np.flatnonzero(ids == g)
        tag = "" if len(same) == 1 else f".{int(np.searchsorted(same, k)) + 1}"
        names.append(f"exp_group{g}{tag}" if has_id else f"{k + 1}")
    return optics, index, tuple(names)


def _one_per_file(path: Path, field: str, rows: np.ndarray, index, names, unit: str):
    """The one value of ``rows`` (per particle) in every group, else an error naming them."""
    values = np.unique(rows)
    if len(values) == 1:
        return values[0]
    found = "; ".join(f"group {n}: {', '.join(f'{v:g}' for v in np.unique(rows[index == k]))}"
                      f"{unit}" for k, n in enumerate(names))
    raise InputError(str(path), field, "one value across the optics groups", found)


def _pixel_size(path: Path, data: np.ndarray, given: float | None, index, names) -> float:
    if given is not None:
        if not np.isfinite(given) or given <= 0:
            raise InputError("command line", "--pixel-size", "a pixel size > 0 Å", f"{given}")
        if "blob/psize_A" in data.dtype.names:
            in_file = np.unique(_numeric(path, data, "blob/psize_A"))
            if np.any(np.abs(in_file - given) > 1e-6 * given):
                _LOG.warning("%s: pixel size %g Å given; it overrides the file's %s Å", path,
                             given, ", ".join(f"{v:g}" for v in in_file))
        return float(given)
    if "blob/psize_A" not in data.dtype.names:
        raise InputError(str(path), "blob/psize_A", "a field (or pass --pixel-size)", "none")
    pixel = float(_one_per_file(path, "blob/psize_A", _numeric(path, data, "blob/psize_A"),
                                index, names, " Å"))
    if pixel <= 0:
        raise InputError(str(path), "blob/psize_A", "a pixel size > 0 Å", f"{pixel:g}")
    return pixel


def _box_size(path: Path, data: np.ndarray, index, names) -> int | None:
    if "blob/shape" not in data.dtype.names:
        return None
    shape = _numeric(path, data, "blob/shape", width=2, integer=True).astype(int)
    if np.any(shape[:, 0] != shape[:, 1]) or np.any(shape <= 0):
        row = int(np.flatnonzero((shape[:, 0] != shape[:, 1]) | (shape[:, 0] <= 0))[0])
        raise InputError(str(path), "blob/shape", "square images",
                         f"{shape[row].tolist()} in row {row + 1}")
    return int(_one_per_file(path, "blob/shape", shape[:, 0], index, names, " px"))


def _poses(path: Path, data: np.ndarray, pixel: float, require: bool):
    """``(euler_deg, shift_angstrom, known)`` from ``alignments3D``."""
    n = len(data)
    if "alignments3D/pose" not in data.dtype.names:
        if require:
            raise InputError(str(path), "alignments3D/pose",
                             "a field (poses of a 3-D refinement)", "none")
        return np.zeros((n, 3)), np.zeros((n, 2)), False
    rotvec = _numeric(path, data, "alignments3D/pose", width=3)
    shift_px = _numeric(path, data, "alignments3D/shift", width=2, default=0.0)
    shift_pixel = _numeric(path, data, "alignments3D/psize_A", default=pixel)
    if np.any(shift_pixel <= 0):
        raise InputError(str(path), "alignments3D/psize_A", "pixel sizes > 0 Å",
                         f"{float(shift_pixel.min()):g}")
    euler, shift = conventions.cryosparc_to_relion_pose(rotvec, shift_px, shift_pixel)
    return euler, shift, True


def read_cs(
    path: str | os.PathLike, *, pixel_size_angstrom: float | None = None,
    require_poses: bool = False,
) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` file (checks fields, dtypes and values).

    ``pixel_size_angstrom`` overrides ``blob/psize_A`` (logged when they differ);
    ``require_poses`` makes a file without ``alignments3D/pose`` an error.
    """
    path = Path(path)
    data = _load(path)
    names = _image_names(path, data)
    cols = {f: _numeric(path, data, f) for f in CTF_FIELDS}
    optics, index, group_names = _groups(path, data, np.column_stack(
        [cols["ctf/accel_kv"], cols["ctf/cs_mm"], cols["ctf/amp_contrast"],
         _numeric(path, data, "ctf/bfactor", default=0.0)]))
    pixel = _pixel_size(path, data, pixel_size_angstrom, index, group_names)
    box = _box_size(path, data, index, group_names)
    euler, shift, known = _poses(path, data, pixel, require_poses)
    phase = _numeric(path, data, "ctf/phase_shift_rad", default=0.0)
    return ParticleTable(
        image_names=names, euler_deg=euler, shift_angstrom=shift,
        defocus_u_angstrom=cols["ctf/df1_A"], defocus_v_angstrom=cols["ctf/df2_A"],
        astigmatism_angle_deg=np.rad2deg(cols["ctf/df_angle_rad"]),
        phase_shift_deg=np.rad2deg(phase), optics=optics, optics_index=index,
        pixel_size_angstrom=pixel, box_size=box, poses_known=known,
        optics_group_names=group_names)
