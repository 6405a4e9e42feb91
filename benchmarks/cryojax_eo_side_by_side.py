"""Side by side with cryojax-eo ensemble reweighting on the same AdK images and 98 frames.

1. Installs ``cryojax-eo`` into a SEPARATE venv (``python -m venv /tmp/eo-venv &&
   /tmp/eo-venv/bin/pip install cryojax-eo``; it is not a cryosip dependency).
2. Simulates an AdK data set like ``cryosip simulate`` (particles.mrcs/.star/truth.npz;
   known poses and CTF in the STAR file).
3. cryosip: :class:`cryosip.baselines.Reweighting` on the 98 frames of the path
   (``x_f = f / 97``), likelihood with the known poses and noise level.
4. cryojax-eo, in its own venv: reads the same STAR file with ``cryospax``, takes the same
   98 frames (bead positions, amplitudes, variances = widths^2) as walkers, computes its
   log-likelihood matrix (``MargGaussianWhiteLogLikelihoodFn``: per image-walker fitted
   scale and offset, noise variance marginalised) and its weights
   (``optimize_weights``: multiplicative gradient). It also runs its optimiser on cryosip's
   matrix, and cryosip's EM runs on its matrix, which separates the likelihood model from
   the optimiser.
5. Writes each weight vector as a run folder ``--out/<method>/ensemble.npz`` (``positions``,
   ``weights``, ``method``) and scores it as ``cryosip evaluate --run ... --truth truth.npz
   --no-heldout`` does: W1 to the truth law (``w1_to_truth``), W1 to the ``N`` true ``x``
   of the images, and the finite-sample floor; writes
   ``benchmarks/results/cryojax_eo_side_by_side.json``. ``--with-flow`` adds cryosip's flow
   through ``cryosip.pipeline.fit_flow`` (``reconstruct``'s flow at its defaults).

Run: ``.venv/bin/python benchmarks/cryojax_eo_side_by_side.py`` (about 5-10 min on 2 CPU
cores at the defaults). If the install or cryojax-eo's API fails, the reason is printed and
recorded in the JSON (``eo_status``) and cryosip's rows are still reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import yaml

RESULTS = Path(__file__).resolve().parent / "results"

EO_RUNNER = textwrap.dedent('''
    """Runs inside the cryojax-eo venv: likelihood matrix and weights for the 98 frames."""
    import sys, time, json
    import numpy as np
    import jax, jax.numpy as jnp
    import cryojax_eo as cxeo
    from cryospax import RelionParticleDataset, RelionParticleParameterFile

    star, project, frames_npz, ours_npz, out_npz, batch = sys.argv[1:7]
    frames = np.load(frames_npz)
    walkers = jnp.asarray(frames["positions"])                 # (98, n_atoms, 3)
    amps = jnp.asarray(frames["amplitudes"])[:, None]          # (n_atoms, 1)
    variances = jnp.asarray(frames["widths"] ** 2)[:, None]    # (n_atoms, 1)
    t0 = time.perf_counter()
    dataset = RelionParticleDataset(
        RelionParticleParameterFile(path_to_starfile=star), path_to_relion_project=project
    )
    loader = cxeo.dataset.create_dataloader(dataset, batch_size=int(batch))
    fn = cxeo.ImagesToEnsembleLikelihoodFn(
        cxeo.MargGaussianWhiteLogLikelihoodFn(amps, variances, data_sign="light-on-dark"),
        n_walkers_in_parallel=1, n_images_in_parallel=int(batch),
    )
    loglik = np.asarray(fn.compute_full_log_likelihood_matrix(walkers, loader))
    t1 = time.perf_counter()
    weights = np.asarray(cxeo.optimize_weights(jnp.asarray(loglik), max_iter=5000, tol=1e-4))
    t2 = time.perf_counter()
    ours = np.load(ours_npz)["loglik"]
    weights_on_ours = np.asarray(cxeo.optimize_weights(jnp.asarray(ours), max_iter=5000, tol=1e-4))
    t3 = time.perf_counter()
    np.savez(out_npz, loglik=loglik, weights=weights, weights_on_ours=weights_on_ours,
             loglik_s=t1 - t0, optimize_s=t2 - t1, optimize_on_ours_s=t3 - t2,
             version=cxeo.__version__)
    print(json.dumps({"loglik_s": t1 - t0, "optimize_s": t2 - t1, "n_images": loglik.shape[0]}))
''')


def ensure_eo_venv(venv: Path) -> tuple[bool, str]:
    """Create the venv and ``pip install cryojax-eo`` unless it imports already."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import cryojax_eo, cryospax; print(cryojax_eo.__version__)"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        out = subprocess.run(check, capture_output=True, text=True).stdout.strip()
        return True, f"cryojax-eo {out} already installed in {venv}"
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "pip"), "install", "--quiet", "cryojax-eo"]]
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            return False, f"`{' '.join(cmd)}` failed ({res.returncode}): {res.stderr[-2000:]}"
    res = subprocess.run(check, capture_output=True, text=True)
    if res.returncode != 0:
        return False, f"cryojax-eo installed but does not import: {res.stderr[-2000:]}"
    return True, f"installed cryojax-eo {res.stdout.strip()} into {venv}"


def simulate(args, data: Path) -> dict:
    """Write the simulate config and simulate (the library call behind ``cryosip simulate``)."""
    from cryosip.datasets.config import load_simulate_config
    from cryosip.datasets.simulate import simulate_dataset

    model = {"name": "adk-path", "coarse": "residue"} if args.coarse else "adk-path"
    config = {
        "model": model,
        "truth": [{"kind": "gaussian", "weight": 0.6, "mean": [0.3], "std": [0.08]},
                  {"kind": "gaussian", "weight": 0.4, "mean": [0.72], "std": [0.06]}],
        "n_images": args.n_images, "box_size": args.box,
        "pixel_size_angstrom": args.pixel_size, "snr": args.snr, "seed": args.seed,
    }
    data.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = data.parent / "simulate.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    simulate_dataset(load_simulate_config(cfg_path), data, force=True, progress=False)
    return config


def cryosip_side(data: Path):
    """``(operator, model, observations, loglik, weights, timings)`` of cryosip's reweighting."""
    import jax.numpy as jnp

    from cryosip.baselines import Reweighting, log_likelihood_matrix, trajectory_support
    from cryosip.datasets.config import load_simulate_config
    from cryosip.datasets.simulate import simulation_operator
    from cryosip.io.particles import read_particles
    from cryosip.operators import Observations

    truth = np.load(data / "truth.npz")
    op = simulation_operator(load_simulate_config(data / "config.yaml"))
    op = type(op)(op.model, op.image_config, op.optics, op.prior, float(truth["noise_std"]))
    t0 = time.perf_counter()
    stack = read_particles(data / "particles.star")
    obs = Observations(jnp.asarray(stack.images[0 : len(stack)]), stack.nuisance)
    support = trajectory_support(op.model)
    t1 = time.perf_counter()
    loglik = log_likelihood_matrix(op, obs, support)
    t2 = time.perf_counter()
    rw = Reweighting(support, max_iter=5000, tol=1e-9).fit_loglik(loglik)
    t3 = time.perf_counter()
    times = {"read_s": t1 - t0, "loglik_s": t2 - t1, "optimize_s": t3 - t2}
    return op, obs, loglik, rw.weights_, times


def export_frames(op, path: Path) -> np.ndarray:
    """The 98 frames' atoms (as rendered by cryosip) for cryojax-eo; returns their ``x``."""
    import jax.numpy as jnp

    from cryosip.baselines import trajectory_support

    xs = trajectory_support(op.model)
    atoms = [op.model.structure_at(jnp.asarray(x)) for x in xs]
    np.savez(path, positions=np.stack([np.asarray(a.positions_angstrom) for a in atoms]),
             amplitudes=np.asarray(atoms[0].amplitudes),
             widths=np.asarray(atoms[0].widths_angstrom), x=xs[:, 0])
    return xs


def run_eo(venv: Path, work: Path, data: Path, loglik: np.ndarray, batch: int):
    """Run the runner in the eo venv; ``(result dict | None, status string)``."""
    runner = work / "eo_runner.py"
    runner.write_text(EO_RUNNER)
    np.savez(work / "cryosip_loglik.npz", loglik=loglik)
    cmd = [str(venv / "bin" / "python"), str(runner), str(data / "particles.star"), str(data),
           str(work / "frames.npz"), str(work / "cryosip_loglik.npz"), str(work / "eo_out.npz"),
           str(batch)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (work / "eo_runner.log").write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    if res.returncode != 0:
        return None, f"cryojax-eo runner failed ({res.returncode}): {res.stderr[-3000:]}"
    out = dict(np.load(work / "eo_out.npz"))
    out["wall_s"] = wall
    return out, f"cryojax-eo {out['version']} ran (subprocess wall {wall:.1f} s)"


def score(out: Path, slug: str, xs: np.ndarray, weights: np.ndarray, truth: Path) -> dict:
    """Write ``out/slug/ensemble.npz`` (the run contract) and score it as ``cryosip evaluate
    --run out/slug --truth truth.npz --no-heldout`` does (``evaluate_run``)."""
    from cryosip.pipeline.evaluate import evaluate_run

    (out / slug).mkdir(parents=True, exist_ok=True)
    np.savez(out / slug / "ensemble.npz", positions=np.asarray(xs, float).reshape(len(xs), -1),
             weights=np.asarray(weights, float), method=np.array(slug))
    res = evaluate_run(out / slug, truth, heldout=False)
    return {"w1": res["w1_to_truth"], "w1_to_images_x": res["w1"], "floor": res["floor"],
            "run": str(out / slug)}


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """How two log-likelihood matrices rank the frames: argmax agreement, mean |Δ argmax|."""
    ia, ib = np.argmax(a, axis=1), np.argmax(b, axis=1)
    return {"argmax_equal": float(np.mean(ia == ib)),
            "mean_abs_frame_diff": float(np.mean(np.abs(ia - ib)))}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=1000)
    p.add_argument("--snr", type=float, default=0.01)
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--pixel-size", type=float, default=3.0)
    p.add_argument("--all-atom", dest="coarse", action="store_false",
                   help="all atoms (default: one bead per residue)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--venv", type=Path, default=Path("/tmp/eo-venv"))
    p.add_argument("--out", type=Path, default=Path("/tmp/cryosip-eo-side-by-side"))
    p.add_argument("--eo-batch", type=int, default=100, help="images per cryojax-eo batch")
    p.add_argument("--with-flow", action="store_true", help="add the flow row (pipeline hook)")
    p.add_argument("--name", default="cryojax_eo_side_by_side", help="results/<name>.json")
    return p.parse_args(argv)


def flow_row(op, obs, seed: int):
    """``(positions, weights, wall_s)`` of ``reconstruct``'s flow at its defaults."""
    from cryosip.pipeline import fit_flow
    from cryosip.pipeline.config import ReconstructConfig

    config = ReconstructConfig.model_validate({"data": {"particles": "(in memory)"},
                                               "loop": {"progress": False}, "seed": seed})
    t0 = time.perf_counter()
    positions, weights = fit_flow(config, op, op.model, obs).measure.to_numpy()
    return np.asarray(positions), np.asarray(weights), time.perf_counter() - t0


def eo_rows(eo: dict, xs: np.ndarray, times: dict) -> list[tuple[str, str, np.ndarray, dict]]:
    """cryojax-eo's weights, its optimiser on cryosip's matrix, cryosip's EM on its matrix."""
    from cryosip.baselines import Reweighting

    t1 = time.perf_counter()
    w_em_on_eo = Reweighting(xs, max_iter=5000, tol=1e-9).fit_loglik(eo["loglik"]).weights_
    em_s = time.perf_counter() - t1
    eo_ll, eo_opt, eo_on_ours = (float(eo[k]) for k in
                                 ("loglik_s", "optimize_s", "optimize_on_ours_s"))
    return [
        ("cryojax-eo (its likelihood + mult. gradient)", "cryojax_eo", eo["weights"],
         {"likelihood": "cryojax-eo", "loglik_s": eo_ll, "optimize_s": eo_opt,
          "wall_s": eo_ll + eo_opt}),
        ("cryojax-eo mult. gradient on cryosip likelihood", "eo_optimiser_on_cryosip_loglik",
         eo["weights_on_ours"], {"likelihood": "cryosip", "optimize_s": eo_on_ours,
                                 "wall_s": times["loglik_s"] + eo_on_ours}),
        ("cryosip EM on cryojax-eo likelihood", "cryosip_em_on_eo_loglik", w_em_on_eo,
         {"likelihood": "cryojax-eo", "optimize_s": em_s, "wall_s": eo_ll + em_s}),
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    work, data = args.out, args.out / "data"
    t0 = time.perf_counter()
    ok, install = ensure_eo_venv(args.venv)
    install_s = time.perf_counter() - t0
    print(f"[install {install_s:.0f} s] {install}")
    config = simulate(args, data)
    op, obs, loglik, w_ours, times = cryosip_side(data)
    xs = export_frames(op, work / "frames.npz")[:, 0]
    eo, status = run_eo(args.venv, work, data, loglik, args.eo_batch) if ok else (None, install)
    print(f"[cryojax-eo] {status}")
    truth = np.load(data / "truth.npz")
    entries = [("cryosip reweight (EM)", "cryosip_reweight", w_ours,
                {"likelihood": "cryosip", "wall_s": times["loglik_s"] + times["optimize_s"],
                 **times})]
    if eo is not None:
        entries += eo_rows(eo, xs, times)
        status += f"; likelihood agreement {agreement(loglik, eo['loglik'])}"
    positions = {}
    if args.with_flow and (flow := flow_row(op, obs, args.seed)) is not None:
        entries.append(("cryosip flow", "cryosip_flow", flow[1], {"wall_s": flow[2]}))
        positions["cryosip_flow"] = flow[0]
    rows = []
    for name, slug, weights, extra in entries:
        scores = score(work, slug, positions.get(slug, xs), weights, data / "truth.npz")
        rows.append({"method": name, **scores, **extra})
    floor = rows[0]["floor"]
    print(f"N = {len(obs)}, SNR = {float(truth['snr']):.4g}, K = {len(xs)} frames, "
          f"floor (cryosip evaluate) = {floor:.4f}")
    print(f"{'method':>48} {'W1':>8} {'W1 to x_n':>9} {'wall_s':>8}")
    for r in rows:
        print(f"{r['method']:>48} {r['w1']:>8.4f} {r['w1_to_images_x']:>9.4f} "
              f"{r['wall_s']:>8.1f}")
    RESULTS.mkdir(exist_ok=True)
    result = {"config": config, "n_images": len(obs), "snr": float(truth["snr"]), "floor": floor,
              "install": install, "install_s": install_s, "eo_status": status, "rows": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    print(f"status: {status}")
    return 0


if __name__ == "__main__":
    from cryosip.cli.main import configure_process

    configure_process()  # as the cryosip command: XLA's CPU YNN fusions off
    sys.exit(main())
