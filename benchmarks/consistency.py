"""Consistency of discretize-then-optimize: W1 of reweighting and per-image MAP vs K, N, SNR.

On the AdK closed->open path (``x`` in [0, 1], frames coarse-grained to one bead per residue
unless ``--all-atom``) with a known continuous truth (a two-mode mixture of Gaussians
truncated to [0, 1]), images with known poses and CTF are simulated at each SNR
(``SNR = mean var(clean image) / sigma^2`` over the box). Then for nested grids of ``K``
support points and the first ``N`` images:

* reweighting (EM on the mixture likelihood, :class:`cryosip.baselines.Reweighting`),
* per-image MAP then histogram (:class:`cryosip.baselines.PerImageMAP`),

are scored by W1 to the truth, beside the floor (W1 between the ``N`` true ``x`` of the
dataset and the truth) and the grid floor (W1 between the truth and its best ``K``-point
approximation on the grid). The likelihood matrix ``log p(y_n | x_k)`` is computed once per
SNR on the finest grid with the operator's ``log_likelihood_grid`` (known poses); coarser
grids are column subsets (the grids are nested). ``wall_s`` = fit time + likelihood time
prorated to ``N x K`` entries.

The flow column: ``--with-flow`` runs ``cryosip.pipeline.fit_flow`` (the ``reconstruct``
flow at its defaults: KL, WFR, then the full-data weights phase) on the benchmark's
operator and in-memory observations. On the AdK problem every method compares images on
the Fourier band (``cryosip.forward.fourier``), as ``reconstruct`` and ``baseline`` do;
``wall_s`` of the flow is all of ``fit_flow`` (compilation included), that of
reweighting its likelihood matrix (prorated) plus EM.

Run: ``.venv/bin/python benchmarks/consistency.py`` (quick, a few minutes) or ``--full``
(K to 201, N to 3e4; hours on 2 CPU cores, minutes on a GPU). ``--problem toy`` runs the
same study on a cheap 1-D curve operator. Writes ``benchmarks/results/consistency.json`` and
``consistency.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

from cryosip.baselines import PerImageMAP, Reweighting, log_likelihood_matrix
from cryosip.forward.fourier import FourierOperator
from cryosip.operators import AbstractRandomOperator, Observations

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = {"n": [500, 2000], "k": [5, 11, 21, 41]}
FULL = {"n": [1000, 3000, 10000, 30000], "k": [5, 11, 21, 51, 101, 201]}
SNRS = [0.1, 0.01, 0.003]


class TruncatedMixture:
    """``sum_c p_c N(m_c, s_c^2)`` truncated to [0, 1], tabulated on a fine grid."""

    def __init__(self, weights, means, stds, n_grid: int = 20001):
        self.grid = np.linspace(0.0, 1.0, n_grid)
        parts = zip(weights, means, stds, strict=True)
        pdf = sum(p * norm.pdf(self.grid, m, s) for p, m, s in parts)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]))])
        self.cdf = cdf / cdf[-1]

    def quantile(self, t: np.ndarray) -> np.ndarray:
        return np.interp(t, self.cdf, self.grid)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.quantile(rng.random(n))


TRUTH = TruncatedMixture([0.6, 0.4], [0.3, 0.72], [0.08, 0.06])


def w1_to_truth(positions: np.ndarray, weights: np.ndarray | None) -> float:
    """W1 between a weighted 1-D measure and :data:`TRUTH` (cryosip.metrics if present)."""
    try:
        from cryosip.metrics import wasserstein_1d_to_quantile
    except ImportError:  # metrics not there yet: W1 against a fine quantile sample
        from scipy.stats import wasserstein_distance

        ref = TRUTH.quantile((np.arange(20000) + 0.5) / 20000)
        return float(wasserstein_distance(np.ravel(positions), ref, weights))
    return float(wasserstein_1d_to_quantile(np.ravel(positions), weights, TRUTH.quantile))


class ToyCurve(AbstractRandomOperator):
    """Cheap stand-in: ``G(x, w) = w sin(2 pi f x + phase)`` in 64 dims, gain ``w ~ U(.5, 1.5)``."""

    freqs: jax.Array
    phases: jax.Array
    noise_std: float

    def sample_nuisance(self, key, n_draws):
        return jax.random.uniform(key, (n_draws,), minval=0.5, maxval=1.5)

    def clean(self, x, nuisance):
        return nuisance * jnp.sin(2 * jnp.pi * self.freqs * x[0] + self.phases)


def build_operator(args):
    """``(operator with noise_std = 1, model or None)`` for ``args.problem``."""
    if args.problem == "toy":
        rng = np.random.default_rng(123)
        freqs = jnp.asarray(rng.uniform(0.2, 1.5, 64))
        return ToyCurve(freqs, jnp.asarray(rng.uniform(0, 2 * np.pi, 64)), 1.0), None
    from cryosip.forward import CryoEMOperator, ImageConfig, NuisancePrior, Optics
    from cryosip.structures.adk import AdkPath

    model = AdkPath(coarse=None if args.all_atom else "residue")
    config = ImageConfig(args.box, args.pixel_size)
    return CryoEMOperator(model, config, Optics(), NuisancePrior(), 1.0), model


def simulate(operator, n: int, seed: int):
    """True ``x [n, 1]``, known nuisances, clean images and a unit noise draw ``eps``."""
    rng = np.random.default_rng(seed)
    x = TRUTH.sample(rng, n)[:, None]
    nuisance = operator.sample_nuisance(jax.random.key(seed), n)
    render = eqx.filter_jit(lambda op, xs, w: op.clean_paired(xs, w))
    chunks = []
    for s in range(0, n, 1000):
        idx = jnp.arange(s, min(s + 1000, n))
        part = jax.tree.map(lambda a, i=idx: a[i], nuisance)
        chunks.append(np.asarray(render(operator, jnp.asarray(x[s : s + 1000]), part)))
    clean = np.concatenate(chunks)
    eps = rng.standard_normal(clean.shape).astype(clean.dtype)
    return x, nuisance, clean, eps


def noise_std(clean: np.ndarray, snr: float) -> float:
    """``sigma = sqrt(mean_n var(G_n) / SNR)`` (the SNR convention of cryosip.forward)."""
    return float(np.sqrt(np.mean(np.var(clean.reshape(len(clean), -1), axis=1)) / snr))


def grid_floor(support: np.ndarray) -> float:
    """W1 of the truth to its best approximation on the grid (mass to the nearest point)."""
    edges = np.concatenate([[0.0], 0.5 * (support[1:] + support[:-1]), [1.0]])
    mass = np.diff(np.interp(edges, TRUTH.grid, TRUTH.cdf))
    return w1_to_truth(support, mass)


def fit_rows(loglik, support_full, x_true, snr, args, ll_time):
    """Rows of the table for one SNR: every (K, N) for reweighting and per-image MAP."""
    rows = []
    n_max, k_max = loglik.shape
    for k in args.k:
        cols = np.round(np.linspace(0, k_max - 1, k)).astype(int)
        support = support_full[cols]
        gfloor = grid_floor(support[:, 0])
        for n in args.n:
            sub = loglik[:n][:, cols]
            floor = w1_to_truth(x_true[:n, 0], None)
            share = ll_time * (n * k) / (n_max * k_max)
            for name, est in (
                ("reweight", Reweighting(support, max_iter=args.max_iter, tol=args.tol)),
                ("map", PerImageMAP(support)),
            ):
                t0 = time.perf_counter()
                est.fit_loglik(sub)
                fit_s = time.perf_counter() - t0
                rows.append({
                    "method": name, "K": k, "N": n, "snr": snr,
                    "w1": w1_to_truth(support[:, 0], est.weights_), "floor": floor,
                    "grid_floor": gfloor, "wall_s": fit_s + share, "fit_s": fit_s,
                    "n_iter": int(getattr(est, "n_iter_", 0)),
                    "converged": bool(getattr(est, "converged_", True)),
                })
    return rows


def flow_rows(operator, observations, model, x_true, snr, args):
    """The flow column: ``reconstruct``'s flow at its defaults on each subset."""
    from cryosip.pipeline import fit_flow
    from cryosip.pipeline.config import ReconstructConfig

    config = ReconstructConfig.model_validate({"data": {"particles": "(in memory)"},
                                               "loop": {"progress": False}, "seed": args.seed})
    rows = []
    for n in args.n:
        t0 = time.perf_counter()
        subset = observations.take(jnp.arange(n))
        flow = fit_flow(config, operator, model, subset)
        wall = time.perf_counter() - t0
        pos, w = flow.measure.to_numpy()
        rows.append({
            "method": "flow", "K": None, "N": n, "snr": snr,
            "w1": w1_to_truth(np.asarray(pos), w),
            "w1_before_refine": w1_to_truth(flow.positions_history[-1],
                                            flow.weights_history[-1]),
            "floor": w1_to_truth(x_true[:n, 0], None), "grid_floor": None,
            "wall_s": wall, "refine_s": flow.timings.get("refine_s", 0.0),
            "n_particles": int(len(w)), "steps": flow.n_steps,
        })
    return rows


def run_snr(operator, model, sim, snr, args):
    x, nuisance, clean, eps = sim
    n_max = max(args.n)
    sigma = noise_std(clean, snr)
    op = eqx.tree_at(lambda o: o.noise_std, operator, sigma)
    images = clean + sigma * eps
    if model is not None:  # AdK: compare on the Fourier band, as reconstruct and baseline do
        op = FourierOperator.from_operator(op)
        images = op.band.prepare(images, sigma)
    obs = Observations(jnp.asarray(images), nuisance)
    support_full = np.linspace(0.0, 1.0, max(args.k))[:, None]
    t0 = time.perf_counter()
    loglik = log_likelihood_matrix(op, obs, support_full, batch_size=args.batch_size)
    ll_time = time.perf_counter() - t0
    print(f"SNR {snr}: sigma {sigma:.4g}, log-likelihood {n_max}x{len(support_full)} "
          f"in {ll_time:.1f} s")
    rows = fit_rows(loglik, support_full, x, snr, args, ll_time)
    if args.with_flow:
        rows += flow_rows(op, obs, model, x, snr, args)
    return rows


def print_table(rows):
    print(f"{'method':>9} {'K':>5} {'N':>6} {'SNR':>6} {'W1':>8} {'floor':>8} "
          f"{'grid_fl':>8} {'wall_s':>8}")
    for r in rows:
        k = "-" if r["K"] is None else r["K"]
        gf = "-" if r["grid_floor"] is None else f"{r['grid_floor']:.4f}"
        print(f"{r['method']:>9} {k:>5} {r['N']:>6} {r['snr']:>6} {r['w1']:>8.4f} "
              f"{r['floor']:>8.4f} {gf:>8} {r['wall_s']:>8.2f}")


def _select(rows, **match):
    return [r for r in rows if all(r[key] == value for key, value in match.items())]


def plot(rows, args, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_max, k_max, snr0 = max(args.n), max(args.k), args.snr[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, snr in zip(("C0", "C1", "C2", "C3", "C4"), args.snr, strict=False):
        for method, style in (("reweight", "-o"), ("map", "--s")):
            by_k = _select(rows, snr=snr, method=method, N=n_max)
            axes[0].plot([r["K"] for r in by_k], [r["w1"] for r in by_k], style, color=color,
                         label=f"{method} SNR {snr}")
            by_n = _select(rows, snr=snr, method=method, K=k_max)
            axes[1].plot([r["N"] for r in by_n], [r["w1"] for r in by_n], style, color=color)
    floor = _select(rows, snr=snr0, method="map", K=k_max)
    axes[1].plot([r["N"] for r in floor], [r["floor"] for r in floor], ":k", label="sample floor")
    grid = _select(rows, snr=snr0, method="map", N=n_max)
    axes[0].plot([r["K"] for r in grid], [r["grid_floor"] for r in grid], ":k", label="grid floor")
    for ax, xl in zip(axes, (f"K (N = {n_max})", f"N (K = {k_max})"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel=xl, ylabel="W1 to truth")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"DTO consistency ({args.problem}): reweighting (solid), per-image MAP (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="K to 201, N to 3e4 (slow on CPU)")
    p.add_argument("--n", type=int, nargs="+", help="numbers of images (override)")
    p.add_argument("--k", type=int, nargs="+", help="grid sizes (override; nested if K-1 | Kmax-1)")
    p.add_argument("--snr", type=float, nargs="+", default=SNRS)
    p.add_argument("--problem", choices=("adk", "toy"), default="adk")
    p.add_argument("--all-atom", action="store_true", help="all 3341 atoms instead of residues")
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--pixel-size", type=float, default=3.0, help="Å per pixel")
    p.add_argument("--max-iter", type=int, default=3000)
    p.add_argument("--tol", type=float, default=1e-9)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-flow", action="store_true", help="add the flow rows (pipeline hook)")
    p.add_argument("--name", default="consistency", help="results/<name>.json and .png")
    args = p.parse_args(argv)
    sizes = FULL if args.full else QUICK
    args.n = sorted(args.n or sizes["n"])
    args.k = sorted(args.k or sizes["k"])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    operator, model = build_operator(args)
    sim = simulate(operator, max(args.n), args.seed)
    print(f"simulated {max(args.n)} images ({args.problem}) in {time.perf_counter() - start:.1f} s")
    rows = [r for snr in args.snr for r in run_snr(operator, model, sim, snr, args)]
    print_table(rows)
    RESULTS.mkdir(exist_ok=True)
    meta = {k: v for k, v in vars(args).items()}
    meta["truth"] = "0.6 N(0.3, 0.08^2) + 0.4 N(0.72, 0.06^2) truncated to [0, 1]"
    meta["total_s"] = time.perf_counter() - start
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"config": meta, "rows": rows}, indent=1))
    plot(rows, args, RESULTS / f"{args.name}.png")
    print(f"wrote {RESULTS / args.name}.json/.png in {meta['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    from cryosip.cli.main import configure_process

    configure_process()  # as the cryosip command: XLA's CPU YNN fusions off
    sys.exit(main())
