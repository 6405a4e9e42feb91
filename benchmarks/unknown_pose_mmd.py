"""MMD with unknown poses: posterior features and second moments against raw pixels.

Issue 13, item 3. Data: `cryosip simulate` of ``examples/adk_bimodal.yaml`` (AdK path,
bimodal truth 0.6 N(0.2, 0.08) + 0.4 N(0.8, 0.08)) with ``--n-images``, ``--snr``, box 64,
shifts with std 2 Å; the flow runs at box 32 with the poses and shifts unknown. Rows:

* ``uniform``: the measure every flow starts from (evenly spaced, equal weights);
* ``posterior``: ``objective.features: posterior``
  (:class:`cryosip.flows.posterior_objective.PosteriorFeatureObjective`): each image's
  posterior over ``--references`` fixed conformations with the pose (rotation grid
  ``--reference-level``) and shift integrated out, log-posteriors over ``--temperature``;
  linear-kernel MMD between the mean features of noisy simulations and of the images, on
  the whitened band (``reconstruct``'s ``flow_inputs``); CTF from the file, simulations with
  the CTF of a random image of the minibatch and pose and shift from the prior;
* ``second-moment``: ``objective.features: second-moment``
  (:class:`cryosip.flows.moment_objective.SecondMomentObjective`), each simulation with the
  CTF of a random image of the minibatch (CTF from the file), pose uniform on SO(3) and
  shift ~ N(0, 2 Å) from the prior;
* ``pixels``: the old unknown-pose MMD (Gaussian kernel on raw pixels, noise integrated out,
  CTF from the prior's defocus range), as ``reconstruct --poses unknown --discrepancy mmd``
  ran before.

The STAR's angles and origins are never read by any row. W1
(``scipy.stats.wasserstein_distance``) of each measure against the true ``x`` of the
training images; wall time of the flow (after data preparation, which the rows share).
``--per-image RESULT.json`` adds, for its ``--per-image-row`` row (default ``posterior``),
the per-image posterior mean of ``x`` under that measure (the pose-grid likelihood of
:func:`cryosip.forward.poses.image_posteriors`, level ``--grid-level``) and its |Spearman|
with the true ``x``. ``benchmarks/unknown_poses.py --cache`` pointed at this script's
cache runs KL, known and unknown poses, on the very same files.

    .venv/bin/python benchmarks/unknown_pose_mmd.py --n-images 10000 --steps 200 \
        --n-draws 512 --batch-size 512 --rows posterior --out a.json
    .venv/bin/python benchmarks/unknown_pose_mmd.py --n-images 10000 --per-image a.json
    .venv/bin/python benchmarks/unknown_poses.py --n-images 10000 --snr 0.1 \
        --cache /tmp/cryosip-unknown-pose-mmd            # KL on the same images
    # JSON to benchmarks/results/unknown_pose_mmd.json (--out to change); rows may run as
    # separate processes (--rows second-moment --out a.json; --rows pixels --out b.json)
    # and be merged: --combine a.json b.json --out benchmarks/results/unknown_pose_mmd.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import yaml
from scipy import stats

from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.forward import CryoEMOperator, NuisancePrior
from cryosip.io import read_particles
from cryosip.pipeline.config import ReconstructConfig
from cryosip.pipeline.data import prepare_data
from cryosip.pipeline.reconstruct import fit_flow, flow_inputs, initial_measure
from cryosip.structures.factory import load_model

ROOT = Path(__file__).resolve().parents[1]


def simulate(n_images: int, snr: float, shift_std: float, seed: int, cache: Path) -> Path:
    """The data set (cached by its parameters)."""
    out = cache / f"adk_bimodal_n{n_images}_snr{snr}_shift{shift_std}_seed{seed}"
    if (out / "particles.star").is_file():
        return out
    raw = yaml.safe_load((ROOT / "examples" / "adk_bimodal.yaml").read_text())
    raw.update(n_images=n_images, snr=snr, shift_std_angstrom=shift_std, seed=seed,
               box_size=64)
    simulate_dataset(parse_simulate_config(raw), out, progress=False)
    return out


def flow_config(args, data_dir: Path, features: str) -> ReconstructConfig:
    return ReconstructConfig.model_validate({
        "data": {"particles": str(data_dir / "particles.star"), "poses": "unknown",
                 "flow_box": 32, "heldout_fraction": 0.05,
                 "shift_std_angstrom": args.shift_std},
        "model": "adk-path", "seed": args.seed,
        "objective": {"kind": "mmd", "features": features, "n_draws": args.n_draws,
                      **({"references": args.references, "temperature": args.temperature,
                          "reference_pose_level": args.reference_level}
                         if features == "posterior" else {})},
        "solver": {"n_particles": args.n_particles},
        "loop": {"steps": args.steps, "batch_size": args.batch_size, "progress": False},
        "uncertainty": {"bootstrap": 0},
    })


def prior_operator(data, model, shift_std: float) -> CryoEMOperator:
    """Uniform poses, Gaussian shifts; defocus from the data's range (only used when the
    batch carries no CTF, i.e. the ``pixels`` row)."""
    w = data.stack.nuisance
    mean_defocus = 0.5 * (np.asarray(w.defocus_u_angstrom) + np.asarray(w.defocus_v_angstrom))
    prior = NuisancePrior((float(mean_defocus.min()), float(mean_defocus.max())),
                          shift_std_angstrom=shift_std,
                          optics_group_probs=data.optics_group_probs)
    return CryoEMOperator(model, data.image_config, data.optics, prior,
                          data.scale.noise_std_model)


def w1(measure, truth_x) -> float:
    positions, weights = measure.to_numpy() if hasattr(measure, "to_numpy") else measure
    return float(stats.wasserstein_distance(np.asarray(positions)[:, 0], truth_x,
                                            np.asarray(weights)))


def run_row(args, data_dir, features, with_ctf: bool):
    config = flow_config(args, data_dir, features)
    model = load_model(config.model)
    stack = read_particles(config.data.particles, require_poses=False)
    data = prepare_data(stack, model, known_poses=False, flow_box=32,
                        heldout_fraction=config.data.heldout_fraction, seed=args.seed)
    operator = prior_operator(data, model, args.shift_std)
    if features == "posterior":  # the band operator and the whitened bands, with their CTFs
        operator, source = flow_inputs(config, data, operator)
    else:
        source = data.source(data.train_index, with_nuisance=with_ctf)
    t0 = time.perf_counter()
    flow = fit_flow(config, operator, model, source)
    return flow, time.perf_counter() - t0, data, operator, model


def posteriors(operator, positions, weights, data, truth_x, level: int):
    """Per-image posterior mean of ``x`` (P's pose grid), |Spearman| with the truth."""
    try:
        from cryosip.forward.fourier import FourierOperator
        from cryosip.forward.poses import image_posteriors
    except ImportError as err:  # the pose grid is not in this tree
        return {"status": f"not run: {err}"}
    band_op = FourierOperator.from_operator(operator)
    obs = data.band_source(data.train_index, None, with_nuisance=True)
    t0 = time.perf_counter()
    post = image_posteriors(band_op, jnp.asarray(positions)[:, None], jnp.asarray(weights), obs,
                            block=100, level=level,
                            shift_std_angstrom=operator.prior.shift_std_angstrom)
    mean_x = np.asarray(post.particle_probs) @ np.asarray(positions)
    rho = stats.spearmanr(mean_x, truth_x).statistic
    return {"status": "ok", "abs_spearman": float(abs(rho)), "grid_level": level,
            "wall_s": time.perf_counter() - t0}


def per_image(args, data_dir: Path, truth_all) -> int:
    """Add per-image |Spearman| to the ``--per-image-row`` row of ``args.per_image``."""
    result = json.loads(args.per_image.read_text())
    row = result["rows"][args.per_image_row]
    config = flow_config(args, data_dir, args.per_image_row)
    model = load_model(config.model)
    stack = read_particles(config.data.particles, require_poses=False)
    data = prepare_data(stack, model, known_poses=False, flow_box=32,
                        heldout_fraction=config.data.heldout_fraction, seed=args.seed)
    operator = prior_operator(data, model, args.shift_std)
    row["per_image"] = posteriors(operator, np.asarray(row["positions"]),
                                  np.asarray(row["weights"]), data,
                                  truth_all[data.train_index], args.grid_level)
    print(row["per_image"])
    args.per_image.write_text(json.dumps(result, indent=1))
    return 0


def combine(paths: list[Path], out: Path) -> int:
    """One JSON with the rows of several runs (each keeps its own args)."""
    runs = [json.loads(path.read_text()) for path in paths]
    merged = {"command": runs[0]["command"], "runs": [
        {"args": r["args"], "rows": sorted(r["rows"])} for r in runs], "rows": {}}
    for r in runs:
        merged["rows"].update({k: {**v, "args": r["args"]} for k, v in r["rows"].items()})
    out.write_text(json.dumps(merged, indent=1))
    print({k: v.get("w1") for k, v in merged["rows"].items()})
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--shift-std", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--n-particles", type=int, default=32)
    p.add_argument("--n-draws", type=int, default=1024, help="simulations per step")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", default="posterior,second-moment,pixels")
    p.add_argument("--references", type=int, default=16, help="posterior row: bank size")
    p.add_argument("--temperature", type=float, default=1.0, help="posterior row")
    p.add_argument("--reference-level", type=int, default=3,
                   help="posterior row: rotation grid level of the features")
    p.add_argument("--per-image", type=Path, default=None,
                   help="a result JSON: add the per-image |Spearman| of its --per-image-row")
    p.add_argument("--per-image-row", default="posterior")
    p.add_argument("--grid-level", type=int, default=4, help="pose grid of --per-image")
    p.add_argument("--cache", type=Path, default=Path("/tmp/cryosip-unknown-pose-mmd"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                   / "unknown_pose_mmd.json")
    p.add_argument("--combine", type=Path, nargs="+", default=None,
                   help="merge the rows of these JSON files (runs of separate --rows) into --out")
    args = p.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out)
    t0 = time.perf_counter()
    data_dir = simulate(args.n_images, args.snr, args.shift_std, args.seed, args.cache)
    sim_s = time.perf_counter() - t0
    truth_all = np.asarray(np.load(data_dir / "truth.npz")["x"])[:, 0]
    if args.per_image:
        return per_image(args, data_dir, truth_all)
    result = {"command": "benchmarks/unknown_pose_mmd.py", "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "simulate_s": sim_s, "rows": {}}
    for features in filter(None, args.rows.split(",")):
        flow, wall, data, operator, model = run_row(args, data_dir, features,
                                                    with_ctf=features != "pixels")
        truth_x = truth_all[data.train_index]
        if "uniform" not in result["rows"]:
            start = initial_measure(model, args.n_particles, args.seed)
            result["rows"]["uniform"] = {"w1": w1(start, truth_x)}
        row = {"w1": w1(flow.measure, truth_x), "flow_wall_s": wall,
               "status": str(flow.status), "steps": flow.n_steps,
               "w1_history": {int(k): w1((pos, wt), truth_x) for k, pos, wt in zip(
                   flow.steps_history, flow.positions_history, flow.weights_history,
                   strict=True)},
               "positions": np.asarray(flow.measure.positions)[:, 0].tolist(),
               "weights": np.asarray(flow.measure.weights).tolist()}
        result["rows"][features] = row
        print(features, {k: v for k, v in row.items() if k not in ("positions", "weights")},
              flush=True)
    print("uniform", result["rows"].get("uniform"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
