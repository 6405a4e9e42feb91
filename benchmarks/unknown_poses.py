"""KL with unknown poses (pose and shift integrated out on a grid) beside known poses.

Issue 13, items 1-2. Data: `cryosip simulate` of ``examples/adk_bimodal.yaml`` (AdK path,
bimodal truth 0.6 N(0.2, 0.08) + 0.4 N(0.8, 0.08)), box 64, shifts with std 2 Å, per-image
defocus in [10000, 25000] Å, at each ``--snr``. Two runs of ``reconstruct`` (KL, flow box
32, ``reconstruct``'s defaults otherwise: the residue-bead model, 64 particles with known
poses and 32 with unknown ones, one flow step in 1-D, the full-data weights phase, the
weight bootstrap) on the same images, one after the other
in one process, each as the command line runs it (``run_reconstruction``: outputs and
per-image posteriors included):

* ``known``: the STAR as written (angles, origins, CTF);
* ``unknown``: the same STAR with ``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/YAngst``
  removed (written with ``starfile``): CTF from the file, pose and shift integrated out
  (:mod:`cryosip.forward.poses`, level ``--pose-level``, ``--refine-top``,
  ``--shift-std-angstrom 2``);
* ``unknown-mmd`` (only when asked, ``--rows known,unknown,unknown-mmd``): the same STAR
  without poses, ``--discrepancy mmd`` at its defaults (posterior features,
  :mod:`cryosip.flows.posterior_objective`).

W1 (``scipy.stats.wasserstein_distance``) of each measure against the true ``x`` of the
training images (and of the flow's measure before the full-data phase), the uniform
start's W1, and the wall time of the whole command, of ``reconstruct`` (data preparation,
flow, full-data phase, bootstrap), of the flow's parts and of the per-image posteriors;
``evaluate``'s per-image scores of each run (``per_image_scores``).

    nice -n 10 .venv/bin/python benchmarks/unknown_poses.py --n-images 10000
    # JSON to benchmarks/results/unknown_poses.json (--out to change)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import starfile
import yaml
from scipy import stats

from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.pipeline.config import ReconstructConfig, SolverSection
from cryosip.pipeline.evaluate import per_image_scores
from cryosip.pipeline.reconstruct import initial_measure
from cryosip.pipeline.run import run_reconstruction
from cryosip.structures.factory import load_model

ROOT = Path(__file__).resolve().parents[1]
POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                "rlnOriginYAngst")


def simulate(n_images: int, snr: float, shift_std: float, seed: int, cache: Path) -> Path:
    """The data set (cached by its parameters; one ``unknown_pose_mmd.py`` simulated in the
    same ``--cache`` is reused as it is) and a copy of its STAR without poses."""
    out = cache / f"adk_bimodal_n{n_images}_snr{snr}_shift{shift_std}_seed{seed}"
    if not (out / "noposes.star").is_file():
        if not (out / "particles.star").is_file():
            raw = yaml.safe_load((ROOT / "examples" / "adk_bimodal.yaml").read_text())
            raw.update(n_images=n_images, snr=snr, shift_std_angstrom=shift_std, seed=seed,
                       box_size=64)
            simulate_dataset(parse_simulate_config(raw), out, progress=False)
        blocks = starfile.read(out / "particles.star", always_dict=True)
        blocks["particles"] = blocks["particles"].drop(
            columns=[c for c in POSE_COLUMNS if c in blocks["particles"]])
        starfile.write(blocks, out / "noposes.star")
    return out


def config(args, star: Path, poses: str, kind: str = "kl") -> ReconstructConfig:
    """``reconstruct``'s defaults but for the data's own settings; ``--steps``,
    ``--n-particles``, ``--batch-size``, ``--bootstrap`` override them when given;
    ``kind="mmd"``: MMD at its defaults (posterior features with unknown poses)."""
    objective = ({"kind": "kl", "pose_level": args.pose_level,
                  "pose_refine_top": args.refine_top, "weights_pose_level": args.weights_level}
                 if kind == "kl" else {"kind": kind})
    loop = {"progress": False, **({"steps": args.steps} if args.steps else {}),
            **({"batch_size": args.batch_size} if args.batch_size else {})}
    return ReconstructConfig.model_validate({
        "data": {"particles": str(star), "poses": poses, "flow_box": 32,
                 "shift_std_angstrom": args.shift_std},
        "model": {"name": "adk-path", "coarse": "residue"}, "seed": args.seed,
        "objective": objective,
        "solver": {"n_particles": args.n_particles}, "loop": loop,
        "uncertainty": {"bootstrap": args.bootstrap},
    })


ROW_KIND = {"unknown": "kl", "unknown-mmd": "mmd"}
"""The unknown-pose rows: KL, and MMD at ``reconstruct``'s defaults."""


def w1(positions, weights, truth_x) -> float:
    return float(stats.wasserstein_distance(np.asarray(positions)[:, 0], truth_x,
                                            np.asarray(weights)))


def run(args, star: Path, name: str, out: Path, truth_all: np.ndarray, truth_npz: Path
        ) -> dict:
    """One ``cryosip reconstruct`` as the command line runs it (outputs, bootstrap and
    per-image posteriors included), timed as a whole and by part, and ``evaluate``'s
    per-image scores of its ``particles.star`` (correlation of the posterior mean ``x``
    with the true ``x``; median angular error of the MAP poses for unknown poses)."""
    t0 = time.perf_counter()
    poses, kind = ("known", "kl") if name == "known" else ("unknown", ROW_KIND.get(name, "kl"))
    result, summary = run_reconstruction(config(args, star, poses, kind), out)
    wall = time.perf_counter() - t0
    truth_x = truth_all[result.data.train_index]
    positions, weights = result.flow.measure.to_numpy()
    hist = {int(k): w1(p, w, truth_x) for k, p, w in zip(
        result.flow.steps_history, result.flow.positions_history, result.flow.weights_history,
        strict=True)}
    return {"w1": w1(positions, weights, truth_x), "w1_flow_end": hist[max(hist)],
            "wall_s": wall, "reconstruct_s": result.wall_time_s,
            "flow_timings": {k: float(v) for k, v in result.flow.timings.items()},
            "per_image_s": summary["per_image"]["wall_time_s"],
            "per_image_method": summary["per_image"]["method"],
            "refinement": summary.get("refinement"),
            "per_image_scores": per_image_scores(out, truth_npz).get("per_image"),
            "steps": int(result.flow.n_steps), "status": str(result.flow.status),
            "n_particles": len(weights), "w1_history": hist,
            "positions": np.asarray(positions)[:, 0].tolist(),
            "weights": np.asarray(weights).tolist()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=int, default=10000)
    p.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.03])
    p.add_argument("--shift-std", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=None, help="default: reconstruct's")
    p.add_argument("--n-particles", type=int, default=None, help="default: reconstruct's")
    p.add_argument("--batch-size", type=int, default=None, help="default: reconstruct's")
    p.add_argument("--bootstrap", type=int, default=None, help="default: reconstruct's")
    p.add_argument("--pose-level", type=int, default=4)
    p.add_argument("--refine-top", type=int, default=0)
    p.add_argument("--weights-level", type=int, default=None,
                   help="the full-data phase's pose level (default: reconstruct's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", default="known,unknown")
    p.add_argument("--cache", type=Path, default=Path("/tmp/cryosip-unknown-poses"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                   / "unknown_poses.json")
    args = p.parse_args(argv)
    result = {"command": "benchmarks/unknown_poses.py", "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "snr": {}}
    model = load_model({"name": "adk-path", "coarse": "residue"})
    for snr in args.snr:
        data_dir = simulate(args.n_images, snr, args.shift_std, args.seed, args.cache)
        truth_all = np.asarray(np.load(data_dir / "truth.npz")["x"])[:, 0]
        rows = {}
        for poses in ("known", "unknown"):
            n_start = SolverSection(n_particles=args.n_particles).particles_for(
                model.dim, poses == "unknown")
            start = initial_measure(model, n_start, args.seed).to_numpy()
            rows[f"uniform_{poses}"] = {"w1": w1(*start, truth_all), "n_particles": n_start}
        rows["uniform"] = rows["uniform_known"]
        for name in filter(None, args.rows.split(",")):
            star = data_dir / ("particles.star" if name == "known" else "noposes.star")
            out = args.cache / f"run_{name}_snr{snr}_n{args.n_images}_{time.time_ns()}"
            rows[name] = run(args, star, name, out, truth_all, data_dir / "truth.npz")
            print(snr, name, {k: v for k, v in rows[name].items()
                              if k in ("w1", "w1_flow_end", "wall_s", "per_image_s")},
                  rows[name]["flow_timings"], flush=True)
        if "known" in rows and "unknown" in rows:
            rows["time_ratio"] = rows["unknown"]["wall_s"] / rows["known"]["wall_s"]
        result["snr"][str(snr)] = rows
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
