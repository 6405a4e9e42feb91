"""Does cryoDRGN read ``RUN/particles.star`` (cryosip's per-image results) as cryosip does?

What it checks, on a run folder written by ``cryosip reconstruct``:

* ``known``: cryoDRGN's ``Starfile`` loads ``RUN/particles.star`` with every row and the
  ``rlnCryosipX1``/``rlnCryosipXStd1``/``rlnCryosipHeldOut`` columns, and its
  ``parse_pose_star`` and ``parse_ctf_star`` commands give the same pickles for it as for
  the run's input STAR (the rows are the input's);
* ``map``: the input STAR annotated with random rotations and origins in RELION's columns
  (as an unknown-pose run writes its MAP poses, :func:`cryosip.io.annotate.
  relion_pose_columns`): cryoDRGN's ``rot`` equals the rotations written and its ``trans``
  is ``o / (pixel * box)`` (:func:`cryosip.conventions.relion_to_cryodrgn_pose`).

Pass if rows and columns are there, the pickles of the known case are equal, and in the
MAP case rotations agree to 1e-5 and translations to 1e-6 (box fractions). Writes
``benchmarks/results/cryodrgn_particles_check.json``. cryoDRGN is not a cryosip
dependency: run it with the throwaway venv of ``benchmarks/cryodrgn_star_check.py``::

    /tmp/drgn/bin/python benchmarks/cryodrgn_particles_check.py RUN
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from cryodrgn_star_check import run_cryodrgn
from cryosip.conventions import relion_to_cryodrgn_pose
from cryosip.io import read_star
from cryosip.io.annotate import annotate_particles, relion_pose_columns

RESULTS = Path(__file__).parent / "results" / "cryodrgn_particles_check.json"


def check(run: Path) -> dict:
    from cryodrgn import __version__
    from cryodrgn.starfile import Starfile

    config = json.loads((run / "run.json").read_text())["config"]
    given = Path(config["data"]["particles"])
    star = run / "particles.star"
    table = read_star(star)
    df = Starfile.load(str(star)).df
    columns = [c for c in ("_rlnCryosipX1", "_rlnCryosipXStd1", "_rlnCryosipHeldOut")
               if c in df.columns]
    out = {"cryodrgn_version": __version__, "run": str(run), "rows": len(df),
           "rows_expected": len(table), "cryosip_columns_seen": columns}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a = run_cryodrgn(star, tmp)
        (tmp / "in").mkdir()
        b = run_cryodrgn(given, tmp / "in")
        out["known_max_abs_diff"] = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b,
                                                                                     strict=True))
        n = len(table)
        rotations = Rotation.random(n, random_state=np.random.default_rng(0)).as_matrix()
        shifts = np.random.default_rng(1).normal(0, 3, (n, 2)).astype(np.float32)
        mapped = annotate_particles(given, tmp / "map.star",
                                    relion_pose_columns(rotations, shifts,
                                                        table.pixel_size_angstrom))
        rot, trans, _ = run_cryodrgn(mapped, tmp)
        back = read_star(mapped)  # cryosip's reading of the same file
    want_rot, want_trans = relion_to_cryodrgn_pose(back.euler_deg, back.shift_angstrom,
                                                   table.box_size, table.pixel_size_angstrom)
    out["map_rot_max_abs"] = float(np.max(np.abs(rot - rotations)))
    out["map_rot_vs_cryosip_reader_max_abs"] = float(np.max(np.abs(rot - want_rot)))
    out["map_trans_max_abs"] = float(np.max(np.abs(trans - want_trans)))
    out["pass"] = bool(out["rows"] == n and len(columns) == 3
                       and out["known_max_abs_diff"] == 0.0
                       and out["map_rot_max_abs"] <= 1e-5 and out["map_trans_max_abs"] <= 1e-6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder with particles.star")
    args = p.parse_args(argv)
    result = check(args.run)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
