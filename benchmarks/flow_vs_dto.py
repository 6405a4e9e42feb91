"""The flow against discretize-then-optimise at equal compute, d = 1, 2, 3 (issue 12, item 3).

For each dimension a data set is simulated once (``cryosip simulate``'s
:func:`~cryosip.datasets.simulate_dataset`, all-atom AdK, box 64, 2 Å pixels, known poses,
defocus 1-2.5 µm, SNR 0.01) and prepared as ``reconstruct`` prepares it
(:func:`~cryosip.pipeline.data.prepare_data`: Fourier crop to the flow box 32, whitened
bands of :mod:`cryosip.forward.fourier`; offset, contrast and noise given, not estimated;
no held-out images, no registration), so every method sees the same images on the same
band likelihood:

* d = 1, ``adk-path``: the truth of ``benchmarks/consistency.py`` (0.6 N(0.3, 0.08^2) +
  0.4 N(0.72, 0.06^2) on [0, 1]);
* d = 2, ``adk-domains``: the correlated truth of ``examples/adk_domains_correlated.yaml``
  (three components along the diagonal);
* d = 3, ``adk-modes``: three components apart in every coordinate (:data:`TRUTH_3D`).

Methods, on the residue-bead model that ``reconstruct`` fits by default:

* **flow**: :func:`cryosip.pipeline.fit_flow` with a default ``ReconstructConfig`` on the
  band operator of :func:`cryosip.pipeline.reconstruct.flow_inputs` (no bootstrap refits);
  wall time = that call (compilation included).
* **reweighting** (EM, :class:`cryosip.baselines.Reweighting` at the ``baseline`` command's
  defaults, 1000 iterations, tol 1e-9) on tensor grids of ``K^d`` points
  (:func:`cryosip.baselines.grid_support`). The grids of one ``d`` are nested (``K - 1``
  divides ``K_max - 1``), so the log-likelihood matrix is computed once on the finest grid
  and each coarser grid takes its columns; its wall time = EM time + the likelihood time
  prorated to its ``N K^d`` entries (``prorate_check`` in the JSON times the smallest grid
  directly as a check of the proration).

Scores (:mod:`cryosip.metrics`): d = 1, W1 to the truth's law beside the floor (mean W1
of N fresh truth samples to the law, 10 repeats); d > 1, ``cryosip evaluate``'s W2
(:func:`cryosip.pipeline.evaluate.distances_to_truth`: exact W2 against the images' true
x, floor = W2 of as many fresh truth samples to them).

``--consistency``: the flow's W1 (d = 1) for N = 1e3, 3e3, 1e4, 3e4 (nested subsets of one
data set) with the floor and reweighting on K = 51 beside it; the log-log slopes of W1
against N are printed and compared.

Run: ``nice -n 10 .venv/bin/python benchmarks/flow_vs_dto.py`` (the study; an hour on 2
busy CPU cores) and ``... --consistency``; ``--quick`` for development (small N, few K).
Data sets are simulated once into ``--data`` (default ``$TMPDIR/cryosip_flow_vs_dto``) and
reused. Writes ``benchmarks/results/flow_vs_dto[_consistency][_quick].json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from consistency import TRUTH as CONSISTENCY_TRUTH  # noqa: E402 (the 1-D study's truth)

TRUTH_1D = [{"kind": "gaussian", "weight": 0.6, "mean": [0.3], "std": [0.08]},
            {"kind": "gaussian", "weight": 0.4, "mean": [0.72], "std": [0.06]}]
"""``consistency.TRUTH`` as a simulate truth (checked equal in :func:`truth_specs`)."""

TRUTH_3D = [{"kind": "gaussian", "weight": 0.45, "mean": [-1.2, -0.6, 0.6], "std": [0.4] * 3},
            {"kind": "gaussian", "weight": 0.35, "mean": [0.8, 0.6, -0.6], "std": [0.4] * 3},
            {"kind": "gaussian", "weight": 0.20, "mean": [0.4, -1.0, -0.8], "std": [0.4] * 3}]
"""Closed-like, open-like and a third state; every pair of means is >= 1.2 (3 sd) apart in
at least one coordinate and every coordinate separates some pair by >= 1.2."""

MODELS = {1: "adk-path", 2: "adk-domains", 3: "adk-modes"}
GRIDS = {1: [[11, 21, 51, 101]],
         2: [[4, 6, 16], [3, 5, 11, 21], [4, 7, 11, 16, 31], [3, 5, 9, 21, 41]],
         3: [[3, 4, 7], [3, 5, 9], [3, 4, 5, 7, 13], [3, 5, 9, 17]]}
"""Nested grid sets per ``d``, coarsest ceiling first: the study takes the first whose finest
grid is predicted to cost at least the flow's wall time (:func:`choose_grids`)."""
QUICK_GRIDS = {1: [11, 21], 2: [4, 7], 3: [3, 5]}
CONSISTENCY_N = [1000, 3000, 10000, 30000]
CONSISTENCY_K = 51


def truth_specs(d: int) -> list[dict]:
    """The truth components of dimension ``d`` (module docstring)."""
    if d == 1:
        from cryosip.datasets.truth import TruthMixture

        t = (np.arange(999) + 0.5) / 999
        mine = TruthMixture.from_specs(TRUTH_1D, [0.0], [1.0]).quantile(t)
        # TruthMixture renormalises each component on the box, consistency's mixture the
        # sum: the weights differ by ~1e-4, the quantiles by < 5e-4 (in the gap)
        np.testing.assert_allclose(mine, CONSISTENCY_TRUTH.quantile(t), atol=5e-4)
        return TRUTH_1D
    if d == 2:
        return yaml.safe_load((ROOT / "examples" / "adk_domains_correlated.yaml").read_text())[
            "truth"]
    return TRUTH_3D


def simulate_config(d: int, n: int, snr: float, seed: int) -> dict:
    """The ``cryosip simulate`` config of dimension ``d`` (geometry of the 2-D example)."""
    return {"model": MODELS[d], "truth": truth_specs(d), "n_images": n, "box_size": 64,
            "pixel_size_angstrom": 2.0, "snr": snr, "defocus_angstrom": [10000, 25000],
            "shift_std_angstrom": 0.0, "seed": seed, "render_batch_size": 256}


def dataset(raw: dict, root: Path) -> Path:
    """The simulated data set of ``raw`` under ``root`` (simulated once, then reused)."""
    from cryosip.datasets import parse_simulate_config, simulate_dataset

    digest = hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:10]
    model = raw["model"] if isinstance(raw["model"], str) else "-".join(raw["model"].values())
    folder = root / f"{model}_n{raw['n_images']}_{digest}"
    if not (folder / "truth.npz").exists():
        t0 = time.perf_counter()
        simulate_dataset(parse_simulate_config(raw), folder, progress=False)
        print(f"simulated {folder.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


class Problem:
    """One data set prepared as ``reconstruct`` prepares it, with its flow config."""

    def __init__(self, folder: Path, d: int, seed: int):
        from cryosip.io import read_particles
        from cryosip.pipeline.config import ReconstructConfig
        from cryosip.pipeline.data import prepare_data
        from cryosip.pipeline.reconstruct import build_operator, flow_inputs
        from cryosip.structures.factory import load_model

        self.d, self.folder = d, folder
        self.config = ReconstructConfig.model_validate({
            "data": {"particles": str(folder / "particles.star")},
            "model": {"name": MODELS[d], "coarse": "residue"},
            "loop": {"progress": False}, "seed": seed})
        truth = np.load(folder / "truth.npz")
        self.x_true, sigma = truth["x"], float(truth["noise_std"])
        self.model = load_model(self.config.model)
        stack = read_particles(self.config.data.particles, require_poses=True)
        # the simulation's noise sd in the stack's units: prepare_data converts it to the
        # Fourier-cropped images' (the crop scales white noise's sd by flow_box / box)
        flow_box = self.config.data.flow_box
        self.data = prepare_data(stack, self.model, known_poses=True, flow_box=flow_box,
                                 heldout_fraction=0.0, seed=seed, offset=0.0, contrast=1.0,
                                 noise_std=sigma)
        operator = build_operator(self.data, self.model, known_poses=True)
        self.operator, self.source = flow_inputs(self.config, self.data, operator)

    def first(self, n: int):
        """The first ``n`` images as a source (``len`` and ``take``) for ``fit_flow``."""
        return _First(self.source, n)


class _First:
    def __init__(self, source, n: int):
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def take(self, rows):
        return self.source.take(rows)


def run_flow(problem: Problem, n: int) -> dict:
    """The flow at ``reconstruct``'s defaults on the first ``n`` images."""
    from cryosip.pipeline import fit_flow

    t0, c0 = time.perf_counter(), time.process_time()
    result = fit_flow(problem.config, problem.operator, problem.model, problem.first(n))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    positions, weights = (np.asarray(a, float) for a in result.measure.to_numpy())
    return {"method": "flow", "N": n, "wall_s": wall, "cpu_s": cpu, "positions": positions,
            "weights": weights, "n_particles": len(positions),
            "status": str(getattr(result, "status", "")), "timings": dict(result.timings)}


def likelihood(problem: Problem, n: int, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(support [k^d, d], L [n, k^d], seconds)`` on the band operator."""
    from cryosip.baselines import grid_support, log_likelihood_matrix

    support = grid_support(problem.model.lower, problem.model.upper, k)
    obs = problem.source.take(np.arange(n))
    t0, c0 = time.perf_counter(), time.process_time()
    loglik = log_likelihood_matrix(problem.operator, obs, support)
    return support, loglik, Seconds(time.perf_counter() - t0, time.process_time() - c0)


@dataclasses.dataclass(frozen=True)
class Seconds:
    """Wall and process CPU seconds; ``s * f`` scales both (a prorated share)."""

    wall: float
    cpu: float

    def __mul__(self, f: float) -> Seconds:
        return Seconds(self.wall * f, self.cpu * f)


def nested_columns(k: int, k_max: int, d: int) -> np.ndarray:
    """Columns of the ``k_max^d`` grid that make the ``k^d`` grid (``k - 1 | k_max - 1``)."""
    step = (k_max - 1) // (k - 1)
    assert step * (k - 1) == k_max - 1, f"K = {k} is not nested in K = {k_max}"
    axis = np.arange(0, k_max, step)
    idx = np.stack(np.meshgrid(*[axis] * d, indexing="ij"), -1).reshape(-1, d)
    return np.ravel_multi_index(tuple(idx.T), (k_max,) * d)


def reweighting_rows(problem: Problem, n: int, ks: list[int]) -> list[dict]:
    """Reweighting on every nested grid of ``ks`` (one likelihood matrix, module docstring)."""
    k_max, d = max(ks), problem.d
    support, loglik, ll_s = likelihood(problem, n, k_max)
    print(f"  likelihood {n} x {k_max}^{d} in {ll_s.wall:.1f} s (cpu {ll_s.cpu:.1f} s)",
          flush=True)
    rows = []
    for k in ks:
        cols = nested_columns(k, k_max, d)
        rows.append(fit_reweighting(support[cols], loglik[:, cols], ll_s * (len(cols) / k_max**d),
                                    n, k))
    return rows


def fit_reweighting(support, loglik, ll_s: Seconds, n: int, k: int) -> dict:
    """EM on the columns of one grid; times = EM's + the likelihood's share ``ll_s``."""
    from cryosip.baselines import Reweighting

    t0, c0 = time.perf_counter(), time.process_time()
    est = Reweighting(support).fit_loglik(loglik)
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"method": "reweight", "K": k, "n_support": len(support), "N": n,
            "wall_s": ll_s.wall + fit_s, "cpu_s": ll_s.cpu + fit_cpu,
            "likelihood_s": ll_s.wall, "likelihood_cpu_s": ll_s.cpu, "fit_s": fit_s,
            "n_iter": int(est.n_iter_), "converged": bool(est.converged_),
            "positions": np.asarray(support, float), "weights": np.asarray(est.weights_)}


def score(problem: Problem, row: dict, n: int) -> dict:
    """W1 (1-D, to the truth's law) or W2 (d-D, ``cryosip evaluate``'s) of a row's measure."""
    from cryosip.pipeline.evaluate import distances_to_truth

    pos, w = row.pop("positions"), row.pop("weights")
    if problem.d == 1:
        row["w1"] = _law_w1(problem)(pos, w)
    else:
        assert n == len(problem.x_true), "d > 1 is scored against all the images' x"
        row["w2"] = distances_to_truth(pos, w, problem.folder / "truth.npz")["w2"]
    return row


def _law_w1(problem: Problem):
    from cryosip.datasets.truth import TruthMixture
    from cryosip.metrics import wasserstein_1d_to_quantile

    truth = TruthMixture.from_npz(problem.folder / "truth.npz")
    return lambda pos, w=None: wasserstein_1d_to_quantile(np.ravel(pos), w, truth.quantile)


def floor(problem: Problem, n: int) -> tuple[float, float]:
    """``(floor, sd)`` of the score at ``n`` images (cryosip.metrics; module docstring)."""
    from cryosip.datasets.truth import TruthMixture
    from cryosip.metrics import finite_sample_floor
    from cryosip.pipeline.evaluate import distances_to_truth
    from cryosip.seeds import numpy_rng

    if problem.d > 1:
        pos = problem.x_true[:1]
        return distances_to_truth(pos, None, problem.folder / "truth.npz")["floor"], 0.0
    truth = TruthMixture.from_npz(problem.folder / "truth.npz")
    return finite_sample_floor(truth.sample, _law_w1(problem), n, numpy_rng(0, "floor"))


def prorate_check(problem: Problem, n: int, k: int) -> dict:
    """The smallest grid's likelihood timed directly (its prorated share is added later)."""
    _, _, direct = likelihood(problem, n, k)
    return {"K": k, "direct_s": direct.wall, "direct_cpu_s": direct.cpu}


def overrides(problem: Problem, args) -> None:
    """``--steps`` and ``--particles`` into the problem's flow config."""
    config = problem.config
    if args.steps:
        config = config.model_copy(
            update={"loop": config.loop.model_copy(update={"steps": args.steps})})
    if args.particles:
        config = config.model_copy(
            update={"solver": config.solver.model_copy(update={"n_particles": args.particles})})
    problem.config = config


def study_d(d: int, args) -> tuple[list[dict], dict]:
    """Rows of one dimension: the flow, reweighting on every grid, the floor beside them."""
    n, ks = args.n, args.grids[d]
    problem = Problem(dataset(simulate_config(d, n, args.snr, args.seed), args.data), d,
                      args.seed)
    overrides(problem, args)
    print(f"d = {d} ({MODELS[d]}): N = {n}", flush=True)
    rows, check = [], {}
    if args.part != "grids":
        flow = run_flow(problem, n)
        print(f"  flow: {flow['n_particles']} particles in {flow['wall_s']:.1f} s (cpu "
              f"{flow['cpu_s']:.1f} s) {flow['timings']}", flush=True)
        ks = ks if isinstance(ks[0], int) else choose_grids(ks, flow, d)
        rows.append(flow)
    if args.part != "flow":
        ks = ks if isinstance(ks[0], int) else ks[-1]
        print(f"  grids K = {ks}", flush=True)
        rows += reweighting_rows(problem, n, ks)
        check = prorate_check(problem, n, min(ks))
        smallest = next(r for r in rows if r.get("K") == min(ks))
        check.update(prorated_s=smallest["likelihood_s"],
                     prorated_cpu_s=smallest["likelihood_cpu_s"])
    fl, fl_sd = floor(problem, n)
    metric = "w1" if d == 1 else "w2"
    out = []
    for row in rows:
        row = score(problem, row, n)
        out.append({"d": d, "model": MODELS[d], "metric": metric, "score": row[metric],
                    "floor": fl, "floor_sd": fl_sd, **row})
    return out, check


def choose_grids(candidates: list[list[int]], flow: dict, d: int) -> list[int]:
    """The first nested set whose finest grid's likelihood is predicted to take at least
    the flow's wall time, at the per-pair rate of the flow's own full-data pass (one
    likelihood per image and particle, :mod:`cryosip.flows.refine`); the last set if none."""
    refine = flow["timings"].get("refine_s")
    if not refine:
        return candidates[-1]
    per_pair = refine / (flow["N"] * flow["n_particles"])
    for ks in candidates:
        if per_pair * flow["N"] * max(ks) ** d >= flow["wall_s"]:
            return ks
    return candidates[-1]


def claims(rows: list[dict]) -> dict:
    """The issue's claims on these rows (printed and stored)."""
    out = {}
    by_d = {d: [r for r in rows if r["d"] == d] for d in (1, 2, 3)}
    for d, rs in by_d.items():
        if not rs:
            continue
        flow = next((r for r in rs if r["method"] == "flow"), None)
        if flow is None:  # a grids-only part (--part grids)
            continue
        entry = {"flow": flow["score"], "floor": flow["floor"],
                 "flow_over_floor": flow["score"] / flow["floor"], "flow_s": flow["wall_s"],
                 "flow_cpu_s": flow["cpu_s"]}
        fitting = {}
        for clock in ("wall_s", "cpu_s"):  # the finest grid within the flow's time, per clock
            fits = [r for r in rs if r["method"] == "reweight" and r[clock] <= flow[clock]]
            best = max(fits, key=lambda r: r["K"]) if fits else None
            fitting[clock] = best
            entry[f"finest_grid_in_flow_{clock}"] = best and best["K"]
            entry[f"its_score_{clock}"] = best and best["score"]
        if d == 1:
            k51 = next((r for r in rs if r.get("K") == 51), None)
            if k51 is not None:
                entry["w1_over_k51"] = flow["score"] / k51["score"]
                entry["time_over_k51"] = flow["wall_s"] / k51["wall_s"]
                entry["holds"] = bool(entry["w1_over_k51"] <= 1.25
                                      and entry["time_over_k51"] <= 3.0)
                entry["claim"] = "W1 <= 1.25x reweighting K = 51, wall <= 3x"
        elif d == 2:
            entry["claim"] = "W2 <= 2x floor"
            entry["holds"] = bool(entry["flow_over_floor"] <= 2.0)
        else:
            entry["claim"] = ("W2 <= 2.5x floor and below reweighting on the finest grid "
                              "that fits in the flow's wall time")
            beats = {c: b is None or flow["score"] < b["score"] for c, b in fitting.items()}
            entry["beats_grid_wall"], entry["beats_grid_cpu"] = beats["wall_s"], beats["cpu_s"]
            entry["holds"] = bool(entry["flow_over_floor"] <= 2.5 and beats["wall_s"])
        out[f"d{d}"] = entry
    return out


def consistency_rows(args) -> list[dict]:
    """The flow and reweighting (K = 51) on nested subsets of one 1-D data set."""
    ns = args.consistency_n
    problem = Problem(dataset(simulate_config(1, max(ns), args.snr, args.seed), args.data), 1,
                      args.seed)
    overrides(problem, args)
    support, loglik, ll_s = likelihood(problem, max(ns), CONSISTENCY_K)
    print(f"likelihood {max(ns)} x {CONSISTENCY_K} in {ll_s.wall:.1f} s", flush=True)
    rows = []
    for n in ns:
        fl, fl_sd = floor(problem, n)
        flow = run_flow(problem, n)
        rw = fit_reweighting(support, loglik[:n], ll_s * (n / max(ns)), n, CONSISTENCY_K)
        for row in (flow, rw):
            row = score(problem, row, n)
            rows.append({"d": 1, "metric": "w1", "score": row["w1"], "floor": fl,
                         "floor_sd": fl_sd, **row})
        print(f"  N = {n}: flow W1 {rows[-2]['score']:.4f} ({flow['wall_s']:.0f} s), "
              f"reweighting {rows[-1]['score']:.4f}, floor {fl:.4f}", flush=True)
    return rows


def slopes(rows: list[dict]) -> dict:
    """Log-log slopes of W1 against N (least squares) and the claim on them."""
    out = {}
    for method in ("flow", "reweight"):
        rs = [r for r in rows if r["method"] == method]
        out[method] = float(np.polyfit(np.log([r["N"] for r in rs]),
                                       np.log([r["score"] for r in rs]), 1)[0])
    fl = {r["N"]: r["floor"] for r in rows}
    out["floor"] = float(np.polyfit(np.log(list(fl)), np.log(list(fl.values())), 1)[0])
    out["claim"] = "the flow's W1 falls with N at least as fast as reweighting's"
    out["holds"] = bool(out["flow"] <= out["reweight"])
    return out


def print_table(rows: list[dict]) -> None:
    print(f"{'d':>2} {'method':>9} {'K':>4} {'points':>6} {'N':>6} {'W':>8} {'floor':>8} "
          f"{'W/floor':>8} {'wall_s':>8} {'cpu_s':>8} {'lik_s':>8} {'EM_s':>7}")
    for r in rows:
        k = r.get("K") or "-"
        pts = r.get("n_support") or r.get("n_particles")
        lik = f"{r['likelihood_s']:.1f}" if "likelihood_s" in r else "-"
        em = f"{r['fit_s']:.1f}" if "fit_s" in r else "-"
        print(f"{r['d']:>2} {r['method']:>9} {k:>4} {pts:>6} {r['N']:>6} {r['score']:>8.4f} "
              f"{r['floor']:>8.4f} {r['score'] / r['floor']:>8.2f} {r['wall_s']:>8.1f} "
              f"{r['cpu_s']:>8.1f} {lik:>8} {em:>7}")


def plot_study(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    dims = sorted({r["d"] for r in rows})
    fig, axes = plt.subplots(1, len(dims), figsize=(4.6 * len(dims), 4.0), squeeze=False)
    for ax, d in zip(axes[0], dims, strict=True):
        rs = [r for r in rows if r["d"] == d]
        # one point per grid (merged runs may repeat a coarse grid), coarse to fine
        rw = sorted({r["K"]: r for r in reversed(rs) if r["method"] == "reweight"}.values(),
                    key=lambda r: r["K"])
        flow = next(r for r in rs if r["method"] == "flow")
        ax.plot([r["wall_s"] for r in rw], [r["score"] for r in rw], "-o", color="C0",
                label="reweighting (EM) on K^d grids")
        for r in rw:
            ax.annotate(f"{r['K']}^{d}" if d > 1 else str(r["K"]), (r["wall_s"], r["score"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.plot([flow["wall_s"]], [flow["score"]], "*", ms=14, color="C3",
                label=f"flow ({flow['n_particles']} particles)")
        ax.axhline(flow["floor"], ls=":", color="k", label="sample floor")
        metric = "W1" if d == 1 else "W2"
        ax.set(xscale="log", yscale="log", xlabel="wall time (s)",
               ylabel=f"{metric} to truth", title=f"d = {d} ({rs[0]['model']}), N = {flow['N']}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_consistency(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    for method, style, label in (("flow", "-*", "flow"),
                                 ("reweight", "-o", f"reweighting K = {CONSISTENCY_K}")):
        rs = [r for r in rows if r["method"] == method]
        ax.plot([r["N"] for r in rs], [r["score"] for r in rs], style, label=label)
    rs = [r for r in rows if r["method"] == "flow"]
    ax.plot([r["N"] for r in rs], [r["floor"] for r in rs], ":k", label="sample floor")
    ax.set(xscale="log", yscale="log", xlabel="N images", ylabel="W1 to truth",
           title="adk-path, SNR 0.01: W1 against N")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge(paths: list[Path], out: Path) -> int:
    """One JSON and figure from runs of separate dimensions, claims recomputed."""
    parts = [json.loads(Path(p).read_text()) if Path(p).suffix == ".json" else rows_from_log(p)
             for p in paths]
    rows = [r for part in parts for r in part["rows"]]
    checks = {k: v for part in parts for k, v in part.get("prorate_check", {}).items()}
    result = {"config": {"merged_from": [str(p) for p in paths],
                         "runs": [part["config"] for part in parts]},
              "rows": rows, "prorate_check": checks, "claims": claims(rows)}
    print_table(rows)
    print(json.dumps(result["claims"], indent=1))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot_study(rows, out.with_suffix(".png"))
    print(f"wrote {out}.json/.png")
    return 0


def rows_from_log(path: Path) -> dict:
    """The rows of the tables a run printed (``print_table``) in its log ``path``: a run
    stopped before it wrote its JSON still gives the dimensions it finished."""
    names = ("d", "method", "K", "points", "N", "score", "floor", "ratio", "wall_s", "cpu_s",
             "likelihood_s", "fit_s")
    rows = []
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) != len(names) or f[1] not in ("flow", "reweight"):
            continue
        r = dict(zip(names, f, strict=True))
        d = int(r["d"])
        row = {"d": d, "model": MODELS[d], "metric": "w1" if d == 1 else "w2",
               "method": r["method"], "K": None if r["K"] == "-" else int(r["K"]),
               "N": int(r["N"]), "score": float(r["score"]), "floor": float(r["floor"]),
               "wall_s": float(r["wall_s"]), "cpu_s": float(r["cpu_s"]), "source": str(path)}
        row["n_particles" if r["method"] == "flow" else "n_support"] = int(r["points"])
        for key in ("likelihood_s", "fit_s"):
            if r[key] != "-":
                row[key] = float(r[key])
        rows.append(row)
    return {"config": {"log": str(path)}, "rows": rows}


def git_state() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("log", "-1", "--format=%h"),
            "dirty_paths": git("status", "--porcelain", "--untracked-files=no").splitlines()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small N, two grids, 40 flow steps")
    p.add_argument("--consistency", action="store_true", help="the flow's W1 against N (1-D)")
    p.add_argument("--d", type=int, nargs="+", choices=(1, 2, 3), default=[1, 2, 3])
    p.add_argument("--n", type=int, help="images per data set (default 10000; quick 500)")
    p.add_argument("--consistency-n", type=int, nargs="+", help="N of --consistency")
    p.add_argument("--k1", type=int, nargs="+", help="grid sizes, d = 1 (nested)")
    p.add_argument("--k2", type=int, nargs="+", help="grid points per axis, d = 2 (nested)")
    p.add_argument("--k3", type=int, nargs="+", help="grid points per axis, d = 3 (nested)")
    p.add_argument("--steps", type=int, help="override the flow's steps (quick: 40)")
    p.add_argument("--particles", type=int, help="override the flow's particle count")
    p.add_argument("--snr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path,
                   default=Path(tempfile.gettempdir()) / "cryosip_flow_vs_dto",
                   help="folder of the simulated data sets (reused)")
    p.add_argument("--name", help="results/<name>.json and .png")
    p.add_argument("--part", choices=("all", "flow", "grids"), default="all",
                   help="only the flow or only the grids (separate processes; then --merge)")
    p.add_argument("--merge", type=Path, nargs="+",
                   help="combine runs of separate d (their JSON, or the log of a run stopped "
                        "after printing a table) into one JSON, figure and claims")
    args = p.parse_args(argv)
    grids = QUICK_GRIDS if args.quick else GRIDS
    args.grids = {d: sorted(getattr(args, f"k{d}")) if getattr(args, f"k{d}") else grids[d]
                  for d in (1, 2, 3)}
    sets = [(d, ks) for d, v in args.grids.items() for ks in ([v] if isinstance(v[0], int) else v)]
    for d, ks in sets:
        if any((max(ks) - 1) % (k - 1) for k in ks if k > 1) or min(ks) < 2:
            p.error(f"grids of d = {d} must be nested (K - 1 divides K_max - 1): {ks}")
    args.n = args.n or (500 if args.quick else 10000)
    args.consistency_n = sorted(args.consistency_n or ([300, 1000] if args.quick
                                                       else CONSISTENCY_N))
    args.steps = args.steps or (40 if args.quick else None)
    base = "flow_vs_dto_consistency" if args.consistency else "flow_vs_dto"
    args.name = args.name or base + ("_quick" if args.quick else "")
    return args


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    args = parse_args(argv)
    start = time.perf_counter()
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta.update(git_state(), started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    RESULTS.mkdir(exist_ok=True)
    if args.merge:
        return merge(args.merge, RESULTS / args.name)
    if args.consistency:
        rows = consistency_rows(args)
        result = {"config": meta, "rows": rows, "slopes": slopes(rows)}
        print_table(rows)
        print(json.dumps(result["slopes"], indent=1))
        plot_consistency(rows, RESULTS / f"{args.name}.png")
    else:
        rows, checks = [], {}
        for d in args.d:
            part, checks[f"d{d}"] = study_d(d, args)
            rows += part
            print_table(part)
            partial = {"config": meta, "rows": rows, "prorate_check": checks}
            (RESULTS / f"{args.name}.partial.json").write_text(json.dumps(partial, indent=1))
        result = {"config": meta, "rows": rows, "prorate_check": checks, "claims": claims(rows)}
        print(json.dumps(result["claims"], indent=1))
        if args.part == "all":
            plot_study(rows, RESULTS / f"{args.name}.png")
    result["config"]["total_s"] = time.perf_counter() - start
    result["config"]["truths"] = {d: truth_specs(d) for d in (1, 2, 3)}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS / args.name}.json/.png in {result['config']['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    from cryosip.cli.main import configure_process

    configure_process()  # as the cryosip command: XLA's CPU YNN fusions off
    sys.exit(main())
