"""Particle files to a RELION 3.1 STAR: any :class:`ParticleTable`, cryoSPARC ``.cs``, and
cryoDRGN pose + CTF pickles with their stack.

:func:`write_table_star` writes one ``data_optics`` row per optics group (``rlnOpticsGroup``
1..K, ``rlnOpticsGroupName``, voltage, Cs, amplitude contrast, ``rlnImagePixelSize``,
``rlnImageSize`` when known) and the particles with ``rlnOriginX/YAngst`` in Å. Floats
are written as the shortest decimal that reads back to the same float64, so
:func:`cryosip.io.read_star` gives back exactly the table's numbers. Files are written
atomically (a temporary file in the same folder, then a rename) and an existing file is
refused unless ``force``.

Stack paths: :func:`cs_to_star` writes ``blob/path`` without cryoSPARC's leading ``>``,
under ``datadir`` when one is given (the stacks need not exist); :func:`cryodrgn_to_star`
writes the stack's path relative to the STAR's folder. cryosip reads cryoSPARC's ``.mrc``
stacks as named; for RELION, tools such as ``cs2star`` link them as ``.mrcs``.

>>> import tempfile, os
>>> from cryosip.io.star import read_star
>>> folder = tempfile.mkdtemp()
>>> table = ParticleTable(
...     image_names=np.array(["000001@a.mrcs", "000002@a.mrcs"]),
...     euler_deg=np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]),
...     shift_angstrom=np.array([[0.1, -2.5], [3.0, 0.0]]),
...     defocus_u_angstrom=np.array([1.5e4, 1.6e4]), defocus_v_angstrom=np.array([1.4e4, 1.5e4]),
...     astigmatism_angle_deg=np.array([12.5, -3.0]), phase_shift_deg=np.zeros(2),
...     optics=(Optics(300.0, 2.7, 0.1), Optics(200.0, 1.4, 0.07)),
...     optics_index=np.array([1, 0]), pixel_size_angstrom=1.37, box_size=64)
>>> write_table_star(os.path.join(folder, "p.star"), table)
>>> back = read_star(os.path.join(folder, "p.star"))
>>> back.shift_angstrom.tolist(), [back.optics[i].voltage_kv for i in back.optics_index]
([[0.1, -2.5], [3.0, 0.0]], [200.0, 300.0])
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryosip.errors import InputError
from cryosip.forward import Optics
from cryosip.io.cryodrgn import read_cryodrgn_ctf, read_cryodrgn_poses
from cryosip.io.cryosparc import read_cs
from cryosip.io.mrc import open_stack
from cryosip.io.star import ParticleTable, _shortest
from cryosip.provenance import atomic_write_text

__all__ = ["cryodrgn_to_star", "cs_to_star", "write_table_star"]


def _f64(values) -> list[str]:
    return _shortest(np.asarray(values, dtype=np.float64))


def _optics_frame(table: ParticleTable) -> pd.DataFrame:
    k = len(table.optics)
    names = list(table.optics_group_names) or [f"opticsGroup{g + 1}" for g in range(k)]
    frame = {
        "rlnOpticsGroup": np.arange(1, k + 1),
        "rlnOpticsGroupName": names,
        "rlnVoltage": _f64([o.voltage_kv for o in table.optics]),
        "rlnSphericalAberration": _f64([o.cs_mm for o in table.optics]),
        "rlnAmplitudeContrast": _f64([o.amplitude_contrast for o in table.optics]),
        "rlnImagePixelSize": _f64(np.full(k, table.pixel_size_angstrom)),
    }
    if table.box_size is not None:
        frame["rlnImageSize"] = np.full(k, int(table.box_size))
    frame["rlnImageDimensionality"] = np.full(k, 2)
    return pd.DataFrame(frame)


def _particles_frame(table: ParticleTable) -> pd.DataFrame:
    frame = {"rlnImageName": [str(s) for s in table.image_names]}
    if table.poses_known:
        for j, name in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            frame[name] = _f64(np.asarray(table.euler_deg)[:, j])
    shift = np.asarray(table.shift_angstrom)
    frame |= {
        "rlnOriginXAngst": _f64(shift[:, 0]),
        "rlnOriginYAngst": _f64(shift[:, 1]),
        "rlnDefocusU": _f64(table.defocus_u_angstrom),
        "rlnDefocusV": _f64(table.defocus_v_angstrom),
        "rlnDefocusAngle": _f64(table.astigmatism_angle_deg),
        "rlnPhaseShift": _f64(table.phase_shift_deg),
        "rlnCtfBfactor": _f64([table.optics[i].b_factor_angstrom2 for i in table.optics_index]),
        "rlnOpticsGroup": np.asarray(table.optics_index, dtype=int) + 1,
    }
    return pd.DataFrame(frame)


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InputError(str(path), None, "a new output file (or --force)", "it exists")
    if not path.parent.is_dir():
        raise InputError(str(path), None, "an output path in an existing folder",
                         f"no folder {path.parent}")


def write_table_star(path: str | os.PathLike, table: ParticleTable, *,
                     force: bool = True) -> None:
    """Write ``table`` as a RELION 3.1 STAR (one optics row per group), atomically.

    Angles are written only when ``table.poses_known``; ``force=False`` refuses an
    existing ``path`` (:class:`InputError`).
    """
    path = Path(path)
    _refuse_existing(path, force)
    text = starfile.to_string({"optics": _optics_frame(table),
                               "particles": _particles_frame(table)})
    atomic_write_text(path, text)


def cs_to_star(cs_path: str | os.PathLike, out_star: str | os.PathLike,
               datadir: str | os.PathLike | None = None, *, force: bool = False,
               pixel_size_angstrom: float | None = None) -> ParticleTable:
    """Convert a cryoSPARC ``.cs`` file to a RELION 3.1 STAR; returns the table written.

    Needs no stacks: box and pixel size come from ``blob/shape`` and ``blob/psize_A``.
    Image paths lose cryoSPARC's leading ``>`` and are put under ``datadir`` if given.
    """
    _refuse_existing(Path(out_star), force)
    table = read_cs(cs_path, pixel_size_angstrom=pixel_size_angstrom)
    renamed = np.array([_renamed(str(name), datadir) for name in table.image_names])
    table = dataclasses.replace(table, image_names=renamed)
    write_table_star(out_star, table, force=force)
    return table


def _renamed(image_name: str, datadir: str | os.PathLike | None) -> str:
    index, _, stack = image_name.partition("@")
    stack = stack.lstrip(">")
    return f"{index}@{Path(datadir, stack).as_posix() if datadir is not None else stack}"


def _one(path: str, column: str, values: np.ndarray) -> float:
    unique = np.unique(values)
    if len(unique) != 1:
        raise InputError(path, column, "one value for every image",
                         ", ".join(f"{v:g}" for v in unique[:5]))
    return float(unique[0])


def _decimal32(values: np.ndarray) -> np.ndarray:
    """The pickle's float32 numbers as the shortest decimals that round to them."""
    return np.asarray(values, dtype=np.float32).astype(str).astype(np.float64)


def cryodrgn_to_star(poses_pkl: str | os.PathLike, ctf_pkl: str | os.PathLike,
                     stack: str | os.PathLike, out_star: str | os.PathLike, *,
                     force: bool = False) -> ParticleTable:
    """Convert cryoDRGN pose and CTF pickles of the images of ``stack`` to a RELION 3.1 STAR.

    Box and pixel size come from the CTF pickle's ``D`` and ``Apix`` columns (one value
    each); one optics group per distinct ``(volt, cs, w)``. Row ``i`` of the pickles is
    image ``i + 1`` of ``stack``, which must hold exactly as many images.
    """
    out_star = Path(out_star)
    _refuse_existing(out_star, force)
    ctf = {k: _decimal32(v) for k, v in read_cryodrgn_ctf(ctf_pkl).items()}
    box = _one(str(ctf_pkl), "D", ctf["D"])
    pixel = _one(str(ctf_pkl), "Apix", ctf["Apix"])
    if box != int(box) or box <= 0 or pixel <= 0:
        raise InputError(str(ctf_pkl), "D, Apix", "a box > 0 pixels and a pixel size > 0 Å",
                         f"{box:g}, {pixel:g}")
    euler, shift = read_cryodrgn_poses(poses_pkl, box_size=int(box), pixel_size_angstrom=pixel)
    n = len(ctf["D"])
    if len(euler) != n:
        raise InputError(str(poses_pkl), "rot", f"{n} poses (one per CTF row)", f"{len(euler)}")
    with open_stack(stack, check_nan=False) as images:
        if len(images) != n or images.box_size != int(box):
            raise InputError(str(stack), None, f"{n} images of {int(box)} pixels (the pickles)",
                             f"{len(images)} images of {images.box_size} pixels")
    rows = np.column_stack([ctf["volt"], ctf["cs"], ctf["w"]])
    unique, index = np.unique(rows, axis=0, return_inverse=True)
    relative = Path(os.path.relpath(Path(stack).resolve(), out_star.resolve().parent))
    table = ParticleTable(
        image_names=np.array([f"{i + 1:06d}@{relative.as_posix()}" for i in range(n)]),
        euler_deg=euler, shift_angstrom=shift, defocus_u_angstrom=ctf["dfu"],
        defocus_v_angstrom=ctf["dfv"], astigmatism_angle_deg=ctf["dfang"],
        phase_shift_deg=ctf["phase_shift"],
        optics=tuple(Optics(voltage_kv=float(v), cs_mm=float(c), amplitude_contrast=float(w))
                     for v, c, w in unique),
        optics_index=index.ravel(), pixel_size_angstrom=pixel, box_size=int(box))
    write_table_star(out_star, table, force=force)
    return table
