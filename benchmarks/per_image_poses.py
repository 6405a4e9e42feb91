"""Per-image results of an unknown-pose run: MAP angles and posterior x against the truth.

Simulates the AdK path (residue beads, bimodal truth 0.6 N(0.2, 0.08) + 0.4 N(0.8, 0.08),
``--n`` images of box 32 at 4 Å, SNR ``--snr``, in-plane shifts of std 2 Å, CTF from the
file), runs ``cryosip reconstruct --poses unknown`` (KL with the pose grid, flow box 16,
``--steps`` steps, ``--particles`` particles, no bootstrap) and ``cryosip evaluate``, then
puts the MAP rotations of ``RUN/particles.star`` beside what the grid allows: the angle from
each true rotation to its nearest grid rotation (the error of a perfect search on that
grid). Angles are geodesic distances with no symmetry divided out. Writes
``benchmarks/results/per_image_poses.json``::

    .venv/bin/python benchmarks/per_image_poses.py --out /tmp/per-image-poses
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import yaml

from cryosip.cli.main import main as cryosip
from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.forward.poses import so3_grid
from cryosip.io import read_star
from cryosip.metrics.per_image import rotation_angle_deg
from cryosip.rotations import euler_to_matrix

RESULTS = Path(__file__).parent / "results" / "per_image_poses.json"


def simulate(folder: Path, n: int, snr: float) -> None:
    simulate_dataset(parse_simulate_config({
        "model": {"name": "adk-path", "coarse": "residue"},
        "truth": [{"kind": "gaussian", "weight": 0.6, "mean": [0.2], "std": [0.08]},
                  {"kind": "gaussian", "weight": 0.4, "mean": [0.8], "std": [0.08]}],
        "n_images": n, "box_size": 32, "pixel_size_angstrom": 4.0, "snr": snr,
        "defocus_angstrom": [10000, 25000], "shift_std_angstrom": 2.0, "seed": 1,
        "render_batch_size": 200}), folder, progress=False)


def nearest_grid_angle(true: np.ndarray, level: int) -> np.ndarray:
    """Angle (degrees) from each rotation to the nearest rotation of the level's grid."""
    grid, _ = so3_grid(level)
    return np.array([rotation_angle_deg(np.repeat(r[None], len(grid), 0), grid).min()
                     for r in true])


def run(args) -> dict:
    data, folder = args.out / "data", args.out / "run"
    simulate(data, args.n, args.snr)
    t0 = time.perf_counter()
    assert cryosip(["reconstruct", "--particles", str(data / "particles.star"), "--poses",
                    "unknown", "--flow-box", "16", "--shift-std-angstrom", "2", "--steps",
                    str(args.steps), "--n-particles", str(args.particles), "--bootstrap", "0",
                    "--no-progress", "--out", str(folder)]) == 0
    wall = time.perf_counter() - t0
    assert cryosip(["evaluate", "--run", str(folder), "--truth", str(data / "truth.npz"),
                    "--no-heldout"]) == 0
    evaluation = json.loads((folder / "evaluation.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    truth = np.load(data / "truth.npz")
    true = np.asarray(euler_to_matrix(jnp.asarray(truth["euler_deg"])), float)
    table = read_star(folder / "particles.star")
    written = np.asarray(euler_to_matrix(jnp.asarray(table.euler_deg)), float)
    err = rotation_angle_deg(written, true)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    level = int(config["objective"].get("pose_level", 5))
    floor = nearest_grid_angle(true, level)
    shift_err = np.linalg.norm(table.shift_angstrom - truth["shift_angstrom"], axis=1)
    return {
        "n_images": args.n, "snr": args.snr, "steps": args.steps, "particles": args.particles,
        "pose_level": level, "reconstruct_wall_s": wall,
        "per_image_wall_s": summary["per_image"]["wall_time_s"],
        "w1": evaluation["w1"], "per_image": evaluation["per_image"],
        "angular_error_deg_quantiles_25_50_75_90": np.percentile(err, [25, 50, 75, 90]).tolist(),
        "fraction_within_30_deg": float(np.mean(err < 30)),
        "fraction_beyond_90_deg": float(np.mean(err > 90)),
        "grid_nearest_angle_deg_median": float(np.median(floor)),
        "grid_nearest_angle_deg_max": float(floor.max()),
        "shift_error_angstrom_median": float(np.median(shift_err)),
        "true_shift_angstrom_median": float(np.median(np.linalg.norm(truth["shift_angstrom"],
                                                                     axis=1))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="a new folder for data and run")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--particles", type=int, default=16)
    result = run(p.parse_args())
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
