"""Calibration of the bootstrap bands: how often the 90% interval of the closed population
covers the true population, over replicate data sets of one truth.

One truth (the hinge model, ``x`` in [0, 1], a mixture 0.7 N(0.25, 0.08) + 0.3 N(0.8, 0.06);
``closed`` is ``x < 0.5``, true population from the truth's law by 10^6 draws), ``R``
replicates: each simulates its own images (``cryosip simulate``, seed ``100 + r``: its own
true x, poses, CTFs and noise) and runs ``cryosip.pipeline.reconstruct`` (known poses, KL,
seed ``r``) with its bootstrap (:mod:`cryosip.pipeline.bootstrap`: by default 40 weight
refits on the full-data likelihood; ``--bootstrap B`` sets ``B``; with
``--no-refine`` the flow has no full-data phase and the refits are warm-started flows).
A replicate is covered when ``lo <= p_true <= hi`` for its closed population (the interval
that ``reconstruct`` reports). ``coverage_by_rule`` scores three interval rules on the same
stored refits: ``t_sd`` (``value +- t(0.95, B-1) sd``, what reconstruct reports now),
``centred_percentile`` (``value`` + the 5th/95th percentiles of the refits' deviations from
their mean) and ``plain_percentile`` (5th/95th percentiles of the refits); ``--rescore
FILE`` recomputes them from a results file without refitting. Beside the rate:
the mean interval width, the replicates' bias and the spread of their point estimates
against the refits' own spread (``sd_point / mean sd_refits``: well above 1 means the
bootstrap under-states the sampling error, e.g. warm starts that do not move).

Run: ``.venv/bin/python benchmarks/bootstrap_coverage.py`` (20 replicates, 1000 images of
box 32, SNR 0.05, flow box 16, reconstruct's particles and bootstrap, 60 steps)
or ``--quick`` (4 replicates, 500 images, 40 steps).
Prints the rate and writes ``benchmarks/results/bootstrap_coverage.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.datasets.truth import TruthMixture
from cryosip.pipeline.config import ReconstructConfig
from cryosip.pipeline.reconstruct import reconstruct

RESULTS = Path(__file__).resolve().parent / "results"
TRUTH = [{"kind": "gaussian", "weight": 0.7, "mean": [0.25], "std": [0.08]},
         {"kind": "gaussian", "weight": 0.3, "mean": [0.8], "std": [0.06]}]


def _simulate(folder: Path, n_images: int, snr: float, seed: int) -> Path:
    spec = {"model": "hinge", "truth": TRUTH, "n_images": n_images, "box_size": 32,
            "pixel_size_angstrom": 2.0, "snr": snr, "defocus_angstrom": [10000, 20000],
            "shift_std_angstrom": 0.0, "seed": seed, "render_batch_size": 256}
    simulate_dataset(parse_simulate_config(spec), folder, progress=False)
    return folder


def _config(data: Path, args, seed: int) -> ReconstructConfig:
    solver = {} if args.particles is None else {"n_particles": args.particles}
    return ReconstructConfig.model_validate({
        "data": {"particles": str(data / "particles.star"), "flow_box": 16,
                 "heldout_fraction": 0.05},
        "model": "hinge", "solver": solver,
        "uncertainty": {"bootstrap": args.bootstrap},
        "loop": {"steps": args.steps, "history_every": 10, "checkpoint_every": 50,
                 "progress": False, "refine_weights": not args.no_refine},
        "seed": seed})


def _p_true(truth_npz: Path) -> float:
    """Closed (``x < 0.5``) mass of the truth's law, by 10^6 draws (sd 5e-4)."""
    truth = TruthMixture.from_npz(truth_npz)
    return float(np.mean(truth.sample(np.random.default_rng(12345), 1_000_000)[:, 0] < 0.5))


def replicate(r: int, args, work: Path) -> dict:
    """One replicate: simulate, reconstruct with the bootstrap, score the closed interval."""
    t0 = time.perf_counter()
    data = _simulate(work / f"data{r}", args.images, args.snr, 100 + r)
    p_true = _p_true(data / "truth.npz")
    x = np.load(data / "truth.npz")["x"][:, 0]
    result = reconstruct(_config(data, args, r), work / f"run{r}")
    boot = result.bootstrap
    closed = boot.bands.populations["closed"]
    refits = np.asarray(boot.bands.refit_populations["closed"])
    return {"replicate": r, "p_true": p_true, "value": closed["value"], "lo": closed["lo"],
            "hi": closed["hi"],
            "covered": bool(closed["lo"] <= p_true <= closed["hi"]),
            "covered_plain_percentile": bool(np.percentile(refits, 5) <= p_true
                                             <= np.percentile(refits, 95)),
            "sample_closed": float(np.mean(x < 0.5)),
            "covered_sample": bool(closed["lo"] <= np.mean(x < 0.5) <= closed["hi"]),
            "refits": refits.tolist(), "refit_sd": float(np.std(refits, ddof=1)),
            "main_flow_s": float(result.flow.timings["total_s"]),
            "bootstrap_s": float(boot.wall_time_s), "wall_s": time.perf_counter() - t0}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--replicates", type=int, default=None)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--bootstrap", type=int, default=None,
                        help="refits (default: reconstruct's, 40 weight refits with the "
                             "full-data refinement)")
    parser.add_argument("--particles", type=int, default=None,
                        help="particles (default: reconstruct's)")
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--no-refine", action="store_true",
                        help="no full-data weights phase (flow refits, as before)")
    parser.add_argument("--out", default=str(RESULTS / "bootstrap_coverage.json"))
    parser.add_argument("--rescore", default=None,
                        help="recompute the coverages of a results file in place, no refits")
    args = parser.parse_args(argv)
    if args.rescore:
        old = json.loads(Path(args.rescore).read_text())
        args = argparse.Namespace(**old["settings"], out=args.rescore)
        note = old.get("note", "")
        result = _summarise(args, old["replicates"], note)
        return result
    quick = {"replicates": 4, "images": 500, "steps": 40}
    full = {"replicates": 20, "images": 1000, "steps": 60}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.replicates):
            rows.append(replicate(r, args, Path(tmp)))
            row = rows[-1]
            p_true = row["p_true"]
            print(f"replicate {r}: closed {row['value']:.3f} [{row['lo']:.3f}, {row['hi']:.3f}]"
                  f" true {p_true:.3f} covered {row['covered']}  ({row['wall_s']:.0f} s, "
                  f"bootstrap {row['bootstrap_s']:.0f} s, main flow {row['main_flow_s']:.0f} s)",
                  flush=True)
            result = _summarise(args, rows)
    return result


def _intervals(value: float, refits: np.ndarray) -> dict[str, tuple[float, float]]:
    """The three interval rules of the module docstring for one replicate."""
    half = stats.t.ppf(0.95, len(refits) - 1) * refits.std(ddof=1)
    dev = np.percentile(refits - refits.mean(), [5, 95])
    return {"t_sd": (value - half, value + half),
            "centred_percentile": (value + dev[0], value + dev[1]),
            "plain_percentile": tuple(np.percentile(refits, [5, 95]))}


def _summarise(args, rows: list[dict], note: str = "") -> dict:
    """Coverage and the diagnostics of the module docstring over ``rows``; written to
    ``--out`` (after every replicate, so a study cut short keeps what it measured)."""
    p_true = rows[-1]["p_true"]
    values = np.array([r["value"] for r in rows])
    result = {
        "settings": {k: getattr(args, k, None) for k in ("replicates", "images", "steps",
                                                         "bootstrap", "particles", "snr",
                                                         "no_refine")},
        "model": "hinge", "truth": TRUTH, "p_true_closed": p_true,
        "coverage": float(np.mean([r["covered"] for r in rows])),
        "coverage_by_rule": {
            rule: float(np.mean([lo <= r["p_true"] <= hi for r in rows
                                 for lo, hi in [_intervals(r["value"],
                                                           np.asarray(r["refits"]))[rule]]]))
            for rule in ("t_sd", "centred_percentile", "plain_percentile")},
        "coverage_of_sample_fraction": float(np.mean([r["covered_sample"] for r in rows])),
        "mean_width": float(np.mean([r["hi"] - r["lo"] for r in rows])),
        "bias": float(values.mean() - p_true),
        "sd_point": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
        "mean_refit_sd": float(np.mean([r["refit_sd"] for r in rows])),
        "replicates": rows,
        **({"note": note} if note else {}),
    }
    result["sd_ratio"] = result["sd_point"] / max(result["mean_refit_sd"], 1e-12)
    print(f"after {len(rows)} replicates: coverage of the 90% closed-population interval "
          f"{result['coverage']:.2f} (by rule {result['coverage_by_rule']}) "
          f"({sum(r['covered'] for r in rows)}/{len(rows)}); mean width "
          f"{result['mean_width']:.3f}; bias {result['bias']:+.3f}; sd of point estimates "
          f"{result['sd_point']:.3f} vs mean refit sd {result['mean_refit_sd']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
