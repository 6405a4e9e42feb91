"""Does cryoDRGN read a cryoSPARC ``.cs`` file to the same numbers as cryosip's conventions?

What it checks. A ``.cs`` file is written as cryoSPARC writes it (a structured numpy array
with cryoSPARC's field names and dtypes, float32 numbers, bytes paths, ``np.save`` then a
rename): random 3-D poses (``alignments3D/pose`` rotation vectors, ``alignments3D/shift``
in pixels), defocus, astigmatism angle and phase shift in radians, two exposure groups
with different voltage, Cs and amplitude contrast, a pixel size float32 does not hold
exactly. Then:

1. cryoDRGN's own commands ``parse_pose_csparc`` and ``parse_ctf_csparc`` (their
   ``add_args`` and ``main``, as the CLI runs them) pickle the poses and CTF of the file;
   they are compared with :func:`cryosip.io.read_cs`, i.e. cryosip's conventions applied
   to the ``.cs`` directly: ``rot`` against RELION's matrix ``A`` of the angles cryosip
   reads (:func:`cryosip.rotations.euler_to_matrix`), ``trans`` against cryosip's
   ``rlnOriginX/YAngst`` / (pixel size * box), the nine CTF columns against cryosip's
   numbers (max relative difference per column).
2. The file is converted with :func:`cryosip.io.cs_to_star` (what ``cryosip convert``
   does), and cryoDRGN's ``parse_pose_star`` / ``parse_ctf_star`` are run on that STAR:
   cryoDRGN's two readers, one on the ``.cs`` and one on cryosip's STAR, must agree.

The first particle's numbers (cryoDRGN's and cryosip's) are kept in the JSON for
docs/conventions.md. Pass if rotations agree to 1e-5, translations to 1e-6 (fractions of
the box), every CTF column to 1e-5 relative. Writes
``benchmarks/results/cryodrgn_cs_check.json``; exit status 1 if a check fails.

How to run. cryoDRGN is not a cryosip dependency: make a throwaway venv outside the repo,
as for ``benchmarks/cryodrgn_star_check.py``::

    python3.11 -m venv /tmp/venv-drgn
    /tmp/venv-drgn/bin/pip install --no-deps cryodrgn==4.3.1
    /tmp/venv-drgn/bin/pip install torch numpy pandas pyyaml igraph typing_extensions
    /tmp/venv-drgn/bin/pip install -e .          # cryosip and its dependencies (jax ...)
    /tmp/venv-drgn/bin/python benchmarks/cryodrgn_cs_check.py

(``torch`` may be a CPU wheel, e.g. ``torch==2.13.0+cpu``.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import pickle
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from cryosip.io import cs_to_star, read_cs
from cryosip.io.cryodrgn import CTF_COLUMNS
from cryosip.rotations import euler_to_matrix

TOL = {"rotation_abs": 1e-5, "translation_abs": 1e-6, "ctf_rel": 1e-5}
OUT = Path(__file__).resolve().parent / "results" / "cryodrgn_cs_check.json"
OPTICS = ((300.0, 2.7, 0.1), (200.0, 1.4, 0.07))  # exposure groups 1 and 2
DTYPE = [
    ("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4"), ("ctf/type", "S1"), ("ctf/exp_group_id", "<u4"),
    ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
    ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
    ("ctf/phase_shift_rad", "<f4"), ("alignments3D/split", "<u4"),
    ("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)),
    ("alignments3D/psize_A", "<f4"), ("alignments3D/error", "<f4"),
]


def write_cs(path: Path, n: int, box: int, pixel: float, seed: int) -> np.ndarray:
    """A cryoSPARC-like ``.cs`` of ``n`` particles in two exposure groups; its rows."""
    rng = np.random.default_rng(seed)
    rows = np.zeros(n, dtype=DTYPE)
    group = rng.integers(0, 2, n)
    rows["uid"] = rng.integers(1, 2**62, n)
    rows["blob/path"] = [f">J12/extract/mic{g}_particles.mrc".encode() for g in group]
    rows["blob/idx"] = np.arange(n)
    rows["blob/shape"] = box
    rows["blob/psize_A"] = rows["alignments3D/psize_A"] = pixel
    rows["ctf/type"] = b"i"
    rows["ctf/exp_group_id"] = group + 1
    for k, field in enumerate(("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")):
        rows[field] = [OPTICS[g][k] for g in group]
    rows["ctf/df1_A"] = rng.uniform(1.2e4, 2.6e4, n)
    rows["ctf/df2_A"] = rows["ctf/df1_A"] - rng.uniform(0, 2e3, n)
    rows["ctf/df_angle_rad"] = rng.uniform(-np.pi, np.pi, n)
    rows["ctf/phase_shift_rad"] = rng.uniform(0, np.pi / 2, n)
    rows["alignments3D/split"] = rng.integers(0, 2, n)
    rows["alignments3D/shift"] = rng.normal(0, 4.0, (n, 2))
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    rows["alignments3D/pose"] = axis * rng.uniform(0.01, np.pi, (n, 1))  # cryoDRGN: |v| > 0
    rows["alignments3D/error"] = rng.uniform(0, 1, n)
    np.save(path.with_suffix(".npy"), rows)
    path.with_suffix(".npy").rename(path)
    return rows


def run_command(module, source: Path, out: Path):
    """A cryoDRGN command as its CLI runs it (``add_args`` then ``main``); its pickle."""
    parser = argparse.ArgumentParser()
    module.add_args(parser)
    with contextlib.redirect_stdout(io.StringIO()):  # parse_pose_csparc prints row 0
        module.main(parser.parse_args([str(source), "-o", str(out)]))
    with open(out, "rb") as fh:
        return pickle.load(fh)


def cryodrgn_pickles(source: Path, folder: Path, kind: str):
    """``(rot, trans, ctf)`` from cryoDRGN's ``parse_pose_<kind>`` and ``parse_ctf_<kind>``."""
    import importlib

    pose = importlib.import_module(f"cryodrgn.commands.parse_pose_{kind}")
    ctf = importlib.import_module(f"cryodrgn.commands.parse_ctf_{kind}")
    rot, trans = run_command(pose, source, folder / f"{source.stem}_{kind}_pose.pkl")
    ctf_array = run_command(ctf, source, folder / f"{source.stem}_{kind}_ctf.pkl")
    return np.asarray(rot, float), np.asarray(trans, float), np.asarray(ctf_array, float)


def cryosip_expected(cs: Path):
    """What cryosip's conventions say cryoDRGN's pickles hold: ``(rot, trans, ctf)``."""
    table = read_cs(cs)
    box, pixel = table.box_size, table.pixel_size_angstrom
    rot = np.asarray(euler_to_matrix(jnp.asarray(table.euler_deg, jnp.float32)), float)
    optics = np.array([[table.optics[i].voltage_kv, table.optics[i].cs_mm,
                        table.optics[i].amplitude_contrast] for i in table.optics_index])
    n = len(table)
    ctf = np.column_stack([np.full(n, box), np.full(n, pixel), table.defocus_u_angstrom,
                           table.defocus_v_angstrom, table.astigmatism_angle_deg, optics,
                           table.phase_shift_deg])
    return table, rot, table.shift_angstrom / (pixel * box), ctf


def differences(a, b) -> dict:
    rot, trans, ctf = a
    rot2, trans2, ctf2 = b
    rel = np.abs(ctf - ctf2) / np.maximum(np.abs(ctf2), 1e-12)
    return {
        "rotation_max_abs": float(np.max(np.abs(rot - rot2))),
        "translation_max_abs": float(np.max(np.abs(trans - trans2))),
        "ctf_max_rel": {c: float(rel[:, k].max()) for k, c in enumerate(CTF_COLUMNS)},
    }


def passed(d: dict) -> bool:
    return bool(d["rotation_max_abs"] <= TOL["rotation_abs"]
                and d["translation_max_abs"] <= TOL["translation_abs"]
                and max(d["ctf_max_rel"].values()) <= TOL["ctf_rel"])


def first_particle(rows, table, drgn_rot, drgn_trans, ours_rot) -> dict:
    """Particle 1 as the ``.cs`` holds it, as cryoDRGN reads it and as cryosip reads it."""
    r = lambda a, k=6: np.round(np.asarray(a, float), k).tolist()
    return {
        "cs_pose_rotvec": r(rows["alignments3D/pose"][0]),
        "cs_shift_px": r(rows["alignments3D/shift"][0]),
        "cryodrgn_rot": r(drgn_rot[0]),
        "cryodrgn_trans": r(drgn_trans[0], 8),
        "cryosip_euler_deg": r(table.euler_deg[0], 4),
        "cryosip_A": r(ours_rot[0]),
        "cryosip_shift_angstrom": r(table.shift_angstrom[0], 5),
        "cryosip_trans": r(table.shift_angstrom[0] / (table.pixel_size_angstrom
                                                      * table.box_size), 8),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=64, help="particles")
    parser.add_argument("--box", type=int, default=96)
    parser.add_argument("--pixel", type=float, default=1.37, help="Å per pixel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        import cryodrgn
    except ImportError as err:
        print(f"cryoDRGN is not importable here ({err}); see the module docstring.")
        return 2
    logging.getLogger("cryodrgn").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cs = folder / "P1_J12_particles.cs"
        rows = write_cs(cs, args.n, args.box, args.pixel, args.seed)
        drgn_cs = cryodrgn_pickles(cs, folder, "csparc")
        table, *ours = cryosip_expected(cs)
        star = folder / "converted.star"
        cs_to_star(cs, star)
        drgn_star = cryodrgn_pickles(star, folder, "star")
    cases = {"cryodrgn_csparc_vs_cryosip_read_cs": differences(drgn_cs, ours),
             "cryodrgn_star_of_converted_vs_cryodrgn_csparc": differences(drgn_star, drgn_cs)}
    for name, d in cases.items():
        d["pass"] = passed(d)
        worst = max(d["ctf_max_rel"], key=d["ctf_max_rel"].get)
        print(f"{name}: rot {d['rotation_max_abs']:.2e}  trans {d['translation_max_abs']:.2e}"
              f"  ctf rel {d['ctf_max_rel'][worst]:.2e} ({worst})  "
              f"{'PASS' if d['pass'] else 'FAIL'}")
    result = {
        "cryodrgn_version": cryodrgn.__version__, "tolerances": TOL, "n": args.n,
        "box": args.box, "pixel_size_angstrom": args.pixel, "seed": args.seed,
        "exposure_groups": {str(g + 1): dict(zip(("voltage_kv", "cs_mm", "amplitude_contrast"),
                                                 o, strict=True)) for g, o in enumerate(OPTICS)},
        "cases": cases,
        "first_particle": first_particle(rows, table, drgn_cs[0], drgn_cs[1], ours[0]),
        "pass": all(d["pass"] for d in cases.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"cryoDRGN {result['cryodrgn_version']}: {'PASS' if result['pass'] else 'FAIL'}"
          f" -> {args.out}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
