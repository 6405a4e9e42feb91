"""What limits the flow in 1-D: particles, transport steps and the full-data weights phase.

On the AdK path problem of ``benchmarks/consistency.py`` (same truth, simulator, band
likelihood), one data set of ``--n`` images per SNR; for each variant of the ``reconstruct``
config (``VARIANTS``: particles, steps, minibatch, resampling) ``fit_flow`` runs at the
defaults otherwise, and the W1 to the truth is printed twice: of the flow's last step (its
minibatch weights) and after the full-data weights phase (``cryosip.flows.refine``: EM
on one likelihood pass over every image at the final positions). Beside them: reweighting on
51 grid points (likelihood matrix + EM) and the sample floor. Times are wall seconds of each
part in the same run (noisy on a shared machine: read them as rough ratios).

Run: ``.venv/bin/python benchmarks/flow_variants.py --snr 0.1 0.01 --variants p64s1 p64s50``
(about a minute per variant on 2 quiet cores). Writes
``benchmarks/results/flow_variants.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import consistency as C  # noqa: E402  (the sibling benchmark's problem)
from cryosip.baselines import Reweighting, log_likelihood_matrix  # noqa: E402
from cryosip.forward.fourier import FourierOperator  # noqa: E402
from cryosip.operators import Observations  # noqa: E402

VARIANTS = {
    "s1": {"solver": {"n_particles": 32}, "loop": {"steps": 1}},
    "s25": {"solver": {"n_particles": 32}, "loop": {"steps": 25}},
    "s60": {"solver": {"n_particles": 32}, "loop": {"steps": 60}},
    "s300": {"solver": {"n_particles": 32}, "loop": {"steps": 300}},
    "p64s1": {"solver": {"n_particles": 64}, "loop": {"steps": 1}},
    "p64s50": {"solver": {"n_particles": 64}, "loop": {"steps": 50}},
    "p64s100": {"solver": {"n_particles": 64}, "loop": {"steps": 100}},
    "p64s25b64": {"solver": {"n_particles": 64}, "loop": {"steps": 25, "batch_size": 64}},
    "p48s40": {"solver": {"n_particles": 48}, "loop": {"steps": 40}},
    "p64s50r": {"solver": {"n_particles": 64, "resample_ess_fraction": 0.5,
                           "resample_jitter": 0.01}, "loop": {"steps": 50}},
    "defaults": {},
}


def run_variant(name, operator, model, obs):
    from cryosip.pipeline import fit_flow
    from cryosip.pipeline.config import ReconstructConfig

    raw = {"data": {"particles": "(in memory)"}, "loop": {"progress": False}, "seed": 0}
    for section, values in VARIANTS[name].items():
        raw.setdefault(section, {}).update(values)
    t0 = time.perf_counter()
    flow = fit_flow(ReconstructConfig.model_validate(raw), operator, model, obs)
    wall = time.perf_counter() - t0
    pos, w = flow.measure.to_numpy()
    return {"variant": name, "n_particles": int(len(w)), "steps": flow.n_steps,
            "w1_last_step": C.w1_to_truth(flow.positions_history[-1], flow.weights_history[-1]),
            "w1": C.w1_to_truth(np.asarray(pos), w), "wall_s": wall,
            "refine_s": flow.timings.get("refine_s", 0.0)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.01])
    p.add_argument("--variants", nargs="+", default=["p64s1", "p64s50", "defaults"],
                   choices=sorted(VARIANTS))
    p.add_argument("--out", default=str(C.RESULTS / "flow_variants.json"))
    args = p.parse_args(argv)
    problem = argparse.Namespace(problem="adk", all_atom=False, box=32, pixel_size=3.0)
    operator, model = C.build_operator(problem)
    x, nuisance, clean, eps = C.simulate(operator, args.n, 0)
    rows = []
    for snr in args.snr:
        sigma = C.noise_std(clean, snr)
        band = FourierOperator.from_operator(eqx.tree_at(lambda o: o.noise_std, operator, sigma))
        obs = Observations(jnp.asarray(band.band.prepare(clean + sigma * eps, sigma)), nuisance)
        floor = C.w1_to_truth(x[:, 0], None)
        t0 = time.perf_counter()
        support = np.linspace(0.0, 1.0, 51)[:, None]
        fit = Reweighting(support, max_iter=3000, tol=1e-9).fit_loglik(
            log_likelihood_matrix(band, obs, support))
        reweight = {"w1": C.w1_to_truth(support[:, 0], fit.weights_),
                    "wall_s": time.perf_counter() - t0}
        print(f"SNR {snr}, N {args.n}: floor {floor:.4f}; reweighting K=51 W1 "
              f"{reweight['w1']:.4f} ({reweight['wall_s']:.1f} s)", flush=True)
        for name in args.variants:
            row = {"snr": snr, "n": args.n, "floor": floor, "reweight": reweight,
                   **run_variant(name, band, model, obs)}
            rows.append(row)
            print(f"  {name:>10}: M {row['n_particles']:3d}, {row['steps']:3d} steps: W1 "
                  f"{row['w1_last_step']:.4f} at the last step, {row['w1']:.4f} after the "
                  f"full-data phase ({row['w1'] / reweight['w1']:.2f}x reweighting); "
                  f"{row['wall_s']:.1f} s ({row['refine_s']:.1f} s of it the full-data phase)",
                  flush=True)
            Path(args.out).write_text(json.dumps({"config": vars(args), "rows": rows},
                                                 indent=1))
    return 0


if __name__ == "__main__":
    from cryosip.cli.main import configure_process

    configure_process()
    sys.exit(main())
