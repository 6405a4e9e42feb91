"""Does cryoDRGN read a cryosip-written STAR file to the same numbers as cryosip's conventions?

What it checks. A small particle set (random RELION angles, origins in Å, defocus U/V and
astigmatism angle, phase shift; voltage, Cs, amplitude contrast; a pixel size that float32
does not represent exactly) is written with :func:`cryosip.io.write_star`. cryoDRGN's own
commands are then run on the file through the same code path as the CLI
(``cryodrgn.commands.parse_pose_star`` and ``cryodrgn.commands.parse_ctf_star``: their
``add_args`` and ``main``, which read the file with ``cryodrgn.starfile.Starfile`` and
pickle the poses and CTF). Their pickles are compared with what cryosip says they should be:

* ``rot``, ``trans`` against :func:`cryosip.conventions.relion_to_cryodrgn_pose` (rotation
  matrix ``A``; origin in Å / (pixel size * box)), max abs difference;
* the (n, 9) CTF array, columns ``D, Apix, dfu, dfv, dfang, volt, cs, w, phase_shift``
  (:data:`cryosip.io.cryodrgn.CTF_COLUMNS`), max relative difference per column.

Two files are checked: ``one_group`` (as written by ``write_star``, which writes a single
optics group) and ``two_groups``: two ``write_star`` files with different optics merged into
one STAR with optics groups 1 and 2 (rows interleaved), so that cryoDRGN's per-group optics
lookup is compared with cryosip's ``read_star`` (``optics_index``). As a further check of
the CTF conventions behind the numbers (astigmatism angle, phase shift and amplitude
contrast signs), ``cryodrgn.ctf.compute_ctf`` is evaluated with the parsed parameters on
cryosip's ``rfft2`` frequency grid and compared with ``-1 *`` ``cryosip.forward.ctf.ctf_rfft``
(cryoDRGN's contrast sign is -1). cryoDRGN's electron wavelength constants differ from
RELION's by about 3.5e-5 relative, which alone moves the CTF by ~1e-2 at the corner of the
grid; the difference is reported as is (``ctf_curve_max_abs``, informative) and with
cryosip's voltage set so that both wavelengths agree (``..._matched_wavelength``, checked).

Pass if rotation <= 1e-5, translation <= 1e-6 (box fractions), every CTF column <= 1e-3
relative, optics per row equal to ``read_star``'s, and the wavelength-matched CTF curves
within 1e-3. Writes ``benchmarks/results/cryodrgn_star_check.json``.

How to run. cryoDRGN is not a cryosip dependency: make a throwaway venv outside the repo with
cryoDRGN, a CPU torch and cryosip itself (cryoDRGN's pose/CTF commands import torch and
igraph through ``cryodrgn.utils``/``cryodrgn.ctf``; its other dependencies are not needed)::

    python3.11 -m venv /tmp/venv-drgn
    /tmp/venv-drgn/bin/pip install --no-deps cryodrgn==4.3.1
    /tmp/venv-drgn/bin/pip install torch numpy pandas pyyaml igraph typing_extensions
    /tmp/venv-drgn/bin/pip install -e .          # cryosip and its dependencies (jax ...)
    /tmp/venv-drgn/bin/python benchmarks/cryodrgn_star_check.py

(``torch`` may be a CPU wheel, e.g. ``torch==2.13.0+cpu``.) Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import starfile

from cryosip import conventions
from cryosip.forward import ImageNuisance, Optics
from cryosip.io import read_star, write_star
from cryosip.io.cryodrgn import CTF_COLUMNS

TOL = {"rotation_abs": 1e-5, "translation_abs": 1e-6, "ctf_rel": 1e-3, "ctf_curve_abs": 1e-3}
OUT = Path(__file__).resolve().parent / "results" / "cryodrgn_star_check.json"
OPTICS = (
    Optics(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1),
    Optics(voltage_kv=200.0, cs_mm=1.4, amplitude_contrast=0.07),
)


def random_nuisance(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """RELION-convention nuisances, float32 as cryosip keeps them."""
    a = dict(
        euler_deg=np.stack(
            [rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)], 1
        ),
        shift_angstrom=rng.normal(0.0, 6.0, (n, 2)),
        defocus_u_angstrom=rng.uniform(1.2e4, 2.6e4, n),
        astigmatism_angle_deg=rng.uniform(-180, 180, n),
        phase_shift_deg=rng.uniform(0, 90, n),
    )
    a["defocus_v_angstrom"] = a["defocus_u_angstrom"] - rng.uniform(0, 2e3, n)
    return {k: v.astype(np.float32) for k, v in a.items()}


def write_files(folder: Path, n: int, box: int, pixel: float, seed: int):
    """``{case: (path, nuisance arrays, optics per row)}`` for the two cases."""
    rng = np.random.default_rng(seed)
    cases = {}
    arrays = random_nuisance(n, rng)
    path = folder / "one_group.star"
    write_star(
        path,
        ImageNuisance(**{k: jnp.asarray(v) for k, v in arrays.items()}),
        OPTICS[0],
        pixel_size_angstrom=pixel,
        box_size=box,
    )
    cases["one_group"] = (path, arrays, [OPTICS[0]] * n)

    halves = [random_nuisance(n // 2, rng) for _ in OPTICS]
    tables = []
    for g, (optics, half) in enumerate(zip(OPTICS, halves, strict=True), start=1):
        part = folder / f"group{g}.star"
        write_star(
            part,
            ImageNuisance(**{k: jnp.asarray(v) for k, v in half.items()}),
            optics,
            pixel_size_angstrom=pixel,
            box_size=box,
            stack_name=f"g{g}.mrcs",
        )
        tables.append(starfile.read(part, always_dict=True))
    optics_df = pd.concat([t["optics"] for t in tables], ignore_index=True)
    optics_df["rlnOpticsGroup"] = [1, 2]
    optics_df["rlnOpticsGroupName"] = ["opticsGroup1", "opticsGroup2"]
    parts = [t["particles"].assign(rlnOpticsGroup=g) for g, t in enumerate(tables, start=1)]
    order = np.argsort(np.r_[np.arange(n // 2) * 2, np.arange(n // 2) * 2 + 1], kind="stable")
    particles = pd.concat(parts, ignore_index=True).iloc[order].reset_index(drop=True)
    path = folder / "two_groups.star"
    starfile.write({"optics": optics_df, "particles": particles}, path)
    merged = {k: np.concatenate([h[k] for h in halves])[order] for k in halves[0]}
    row_optics = [OPTICS[i] for i in np.repeat([0, 1], n // 2)[order]]
    cases["two_groups"] = (path, merged, row_optics)
    return cases


def run_cryodrgn(star: Path, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rot, trans, ctf)`` from cryoDRGN's parse_pose_star and parse_ctf_star commands."""
    from cryodrgn.commands import parse_ctf_star, parse_pose_star

    logging.getLogger("cryodrgn").setLevel(logging.WARNING)  # it logs each first row at INFO
    results = []
    for module, flag, name in (
        (parse_pose_star, "-o", "pose.pkl"),
        (parse_ctf_star, "-o", "ctf.pkl"),
    ):
        parser = argparse.ArgumentParser()
        module.add_args(parser)
        out = folder / f"{star.stem}_{name}"
        module.main(parser.parse_args([str(star), flag, str(out)]))
        with open(out, "rb") as fh:
            results.append(pickle.load(fh))
    (rot, trans), ctf = results
    return np.asarray(rot, float), np.asarray(trans, float), np.asarray(ctf, float)


def expected_ctf(arrays, row_optics, box: int, pixel: float) -> np.ndarray:
    """The (n, 9) cryoDRGN CTF array that cryosip's numbers call for."""
    f64 = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    per_row = np.array([[o.voltage_kv, o.cs_mm, o.amplitude_contrast] for o in row_optics])
    n = len(row_optics)
    return np.column_stack(
        [
            np.full(n, box),
            np.full(n, pixel),
            f64["defocus_u_angstrom"],
            f64["defocus_v_angstrom"],
            f64["astigmatism_angle_deg"],
            per_row,
            f64["phase_shift_deg"],
        ]
    )


def cryodrgn_matched_voltage(voltage_kv: float) -> float:
    """The voltage (kV) at which RELION's wavelength formula gives cryoDRGN's wavelength.

    cryoDRGN uses ``12.2639 / sqrt(V + 0.97845e-6 V^2)``, RELION (and cryosip)
    ``12.2643247 / sqrt(V (1 + 0.978466e-6 V))``: about 3.5e-5 relative apart.
    """
    volts = 1000.0 * voltage_kv
    lam = 12.2639 / np.sqrt(volts + 0.97845e-6 * volts**2)
    a, c = 0.978466e-6, (12.2643247 / lam) ** 2
    return float((-1.0 + np.sqrt(1.0 + 4.0 * a * c)) / (2.0 * a)) / 1000.0


def ctf_curve_differences(ctf: np.ndarray, arrays, row_optics, box: int, pixel: float):
    """Max |cryoDRGN compute_ctf - (-1) cryosip ctf_rfft| on cryosip's rfft grid (8 rows):
    ``(as is, with cryosip's voltage matched to cryoDRGN's wavelength)``."""
    import dataclasses

    import torch
    from cryodrgn.ctf import compute_ctf

    from cryosip.forward.config import ImageConfig
    from cryosip.forward.ctf import ctf_rfft

    ky, kx = conventions.rfft_frequencies(box, pixel)
    ky, kx = np.broadcast_arrays(np.asarray(ky, float), np.asarray(kx, float))
    freqs = torch.tensor(np.stack([kx.ravel(), ky.ravel()], -1))
    config = ImageConfig(box_size=box, pixel_size_angstrom=pixel)
    worst = [0.0, 0.0]
    for i in range(min(8, len(ctf))):
        p = [torch.tensor(float(v), dtype=torch.float64) for v in ctf[i, 2:]]
        theirs = compute_ctf(freqs, *p[:6], phase_shift=p[6]).numpy().reshape(kx.shape)
        w = ImageNuisance(**{k: jnp.asarray(v[i]) for k, v in arrays.items()})
        optics = row_optics[i]
        matched = dataclasses.replace(
            optics, voltage_kv=cryodrgn_matched_voltage(optics.voltage_kv)
        )
        for j, o in enumerate((optics, matched)):
            ours = conventions.CRYOJAX_CONTRAST_SIGN * np.asarray(ctf_rfft(o, w, config))
            worst[j] = max(worst[j], float(np.max(np.abs(theirs - ours))))
    return tuple(worst)


def check_case(star: Path, arrays, row_optics, box: int, pixel: float, folder: Path) -> dict:
    rot, trans, ctf = run_cryodrgn(star, folder)
    want_rot, want_trans = conventions.relion_to_cryodrgn_pose(
        np.asarray(arrays["euler_deg"], np.float64),
        np.asarray(arrays["shift_angstrom"], np.float64),
        box,
        pixel,
    )
    want_ctf = expected_ctf(arrays, row_optics, box, pixel)
    rel = np.abs(ctf - want_ctf) / np.maximum(np.abs(want_ctf), 1e-12)
    rel[np.abs(want_ctf) < 1e-12] = np.abs(ctf - want_ctf)[np.abs(want_ctf) < 1e-12]
    table = read_star(star)
    cryosip_optics = [table.optics[i] for i in table.optics_index]
    diffs = {
        "n_particles": len(rot),
        "rotation_max_abs": float(np.max(np.abs(rot - want_rot))),
        "translation_max_abs": float(np.max(np.abs(trans - want_trans))),
        "ctf_max_rel": {c: float(rel[:, k].max()) for k, c in enumerate(CTF_COLUMNS)},
        "optics_groups_agree_with_read_star": bool(
            np.allclose(
                [[o.voltage_kv, o.cs_mm, o.amplitude_contrast] for o in cryosip_optics],
                ctf[:, 5:8],
                rtol=1e-6,
            )
        ),
    }
    diffs["ctf_curve_max_abs"], diffs["ctf_curve_max_abs_matched_wavelength"] = (
        ctf_curve_differences(ctf, arrays, row_optics, box, pixel)
    )
    diffs["pass"] = bool(
        diffs["rotation_max_abs"] <= TOL["rotation_abs"]
        and diffs["translation_max_abs"] <= TOL["translation_abs"]
        and max(diffs["ctf_max_rel"].values()) <= TOL["ctf_rel"]
        and diffs["optics_groups_agree_with_read_star"]
        and diffs["ctf_curve_max_abs_matched_wavelength"] <= TOL["ctf_curve_abs"]
    )
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=64, help="particles per file (even)")
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
    result = {
        "cryodrgn_version": cryodrgn.__version__,
        "tolerances": TOL,
        "n": args.n,
        "box": args.box,
        "pixel_size_angstrom": args.pixel,
        "seed": args.seed,
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = write_files(folder, args.n, args.box, args.pixel, args.seed)
        for name, (star, arrays, row_optics) in cases.items():
            diffs = check_case(star, arrays, row_optics, args.box, args.pixel, folder)
            result["cases"][name] = diffs
            ctf_worst = max(diffs["ctf_max_rel"], key=diffs["ctf_max_rel"].get)
            print(
                f"{name}: rot {diffs['rotation_max_abs']:.2e}  "
                f"trans {diffs['translation_max_abs']:.2e}  ctf rel "
                f"{diffs['ctf_max_rel'][ctf_worst]:.2e} ({ctf_worst})  "
                f"ctf curve {diffs['ctf_curve_max_abs']:.2e} "
                f"(same wavelength {diffs['ctf_curve_max_abs_matched_wavelength']:.2e})  "
                f"{'PASS' if diffs['pass'] else 'FAIL'}"
            )
    result["pass"] = all(c["pass"] for c in result["cases"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"cryoDRGN {result['cryodrgn_version']}: {'PASS' if result['pass'] else 'FAIL'}"
        f" -> {args.out}"
    )
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
