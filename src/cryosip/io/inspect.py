"""What cryosip understood from a particle file, without running anything (``cryosip inspect``).

:func:`inspect_particles` reads the table (:func:`cryosip.io.particles.read_table`), then
only the header of each stack it names, and returns a JSON-ready dict:

* ``file``, ``format`` (``"star"`` or ``"cryosparc"``), ``n_particles``, ``box_size``
  (``rlnImageSize``, else the first readable stack's), ``pixel_size_angstrom``, ``poses``
  (whether the file carries angles);
* ``shift_angstrom_max``: the largest ``|shift|`` (Å, the norm of the 2-D origin);
* ``defocus_angstrom``: ``[min, max]`` of the mean defocus ``(U + V) / 2`` (Å);
* ``optics_groups``: ``{group, voltage_kv, cs_mm, amplitude_contrast,
  pixel_size_angstrom, n_particles}`` for each group particles use;
* ``stacks``: ``{path, n_images, readable}`` per stack (``path`` resolved as
  :func:`~cryosip.io.particles.resolve_stack_path` does, else as written), with
  ``n_referenced`` rows, ``max_index`` (1-based) and an ``error`` line when it is missing,
  unreadable or shorter than the indices need.

A file that cannot be understood raises :class:`~cryosip.errors.InputError`; missing or
unreadable stacks are only reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryosip.errors import InputError
from cryosip.io.mrc import read_header
from cryosip.io.particles import read_table, resolve_stack_path, split_image_names
from cryosip.io.star import ParticleTable

__all__ = ["format_report", "inspect_particles"]


def inspect_particles(path: str | os.PathLike, *, datadir: str | os.PathLike | None = None,
                      pixel_size_angstrom: float | None = None) -> dict:
    """The summary of a STAR or ``.cs`` particle file (module docstring)."""
    path = Path(path)
    table = read_table(path, pixel_size_angstrom=pixel_size_angstrom, require_poses=False,
                       datadir=datadir)
    cs = path.suffix.lower() == ".cs"
    stacks = _stacks(path, table, datadir, "blob/path" if cs else "rlnImageName")
    first_box = next((s["box_size"] for s in stacks if s["readable"]), None)
    mean_defocus = 0.5 * (table.defocus_u_angstrom + table.defocus_v_angstrom)
    return {
        "file": str(path),
        "format": "cryosparc" if cs else "star",
        "n_particles": len(table),
        "box_size": table.box_size if table.box_size is not None else first_box,
        "pixel_size_angstrom": float(table.pixel_size_angstrom),
        "poses": bool(table.poses_known),
        "shift_angstrom_max": float(np.max(np.hypot(*table.shift_angstrom.T))),
        "defocus_angstrom": [float(mean_defocus.min()), float(mean_defocus.max())],
        "optics_groups": _groups(table),
        "stacks": [{k: v for k, v in s.items() if k != "box_size"} for s in stacks],
    }


def _group_name(name: str) -> int | str:
    return int(name) if name.isdigit() else name


def _groups(table: ParticleTable) -> list[dict]:
    names = table.optics_group_names or tuple(str(k + 1) for k in range(len(table.optics)))
    counts = np.bincount(table.optics_index, minlength=len(table.optics))
    return [{"group": _group_name(name), "voltage_kv": o.voltage_kv, "cs_mm": o.cs_mm,
             "amplitude_contrast": o.amplitude_contrast,
             "pixel_size_angstrom": float(table.pixel_size_angstrom),
             "n_particles": int(n)}
            for name, o, n in zip(names, table.optics, counts, strict=True)]


def _stacks(path: Path, table: ParticleTable, datadir, field: str) -> list[dict]:
    files, file_index, image_index = split_image_names(path, table.image_names, field)
    out = []
    for f, name in enumerate(files):
        rows = image_index[file_index == f]
        entry = {"path": name, "n_images": None, "readable": False,
                 "n_referenced": int(len(rows)), "max_index": int(rows.max()) + 1,
                 "box_size": None}
        try:
            resolved = resolve_stack_path(name, path, datadir, field=field)
            entry["path"] = str(resolved)
            entry["n_images"], entry["box_size"], _ = read_header(resolved)
            entry["readable"] = True
            if entry["max_index"] > entry["n_images"]:
                entry["error"] = (f"index {entry['max_index']} beyond its "
                                  f"{entry['n_images']} images")
        except InputError as err:
            entry["error"] = str(err)
        out.append(entry)
    return out


def format_report(summary: dict) -> str:
    """A short human-readable table of :func:`inspect_particles`' summary."""
    lo, hi = summary["defocus_angstrom"]
    lines = [
        f"{summary['file']} ({summary['format']}): {summary['n_particles']} particles, "
        f"box {summary['box_size']}, {summary['pixel_size_angstrom']:g} Å/px, "
        f"poses {'yes' if summary['poses'] else 'no'}",
        f"shifts up to {summary['shift_angstrom_max']:.3g} Å; mean defocus "
        f"{lo:.0f}-{hi:.0f} Å",
        "optics group  voltage_kV  Cs_mm  amp_contrast  A/px  particles",
    ]
    lines += [f"{str(g['group']):>12}  {g['voltage_kv']:10g}  {g['cs_mm']:5g}  "
              f"{g['amplitude_contrast']:12g}  {g['pixel_size_angstrom']:4g}  "
              f"{g['n_particles']:9d}" for g in summary["optics_groups"]]
    lines.append("stack  images  used  status")
    for s in summary["stacks"]:
        status = s.get("error", "ok")
        status = "missing (see --json)" if "found missing" in status else status
        lines.append(f"{s['path']}  {s['n_images'] if s['n_images'] is not None else '-'}  "
                     f"{s['n_referenced']}  {status}")
    return "\n".join(lines)
