"""What limits a likelihood-based estimate of the conformation law in d > 1 (issue 12).

The data set of ``benchmarks/flow_vs_dto.py`` (all-atom AdK, box 64, SNR 0.01, known poses,
the same band likelihood of the residue-bead model that ``reconstruct`` fits) and its
log-likelihood matrix ``L [N, K^d]`` on a fine tensor grid; then estimates that use more and
more prior knowledge, each scored with ``cryosip evaluate``'s W2 beside the floor
(:func:`cryosip.pipeline.evaluate.distances_to_truth`):

* ``npmle``: reweighting on the grid (:class:`cryosip.baselines.Reweighting`, the
  ``baseline`` command's defaults): the nonparametric maximum-likelihood estimate that the
  flow's full-data phase also computes on its own support.
* ``smoothed``: that estimate convolved with a Gaussian of sd ``h`` on the grid, for each
  ``h`` of ``--h``, with its 5-fold held-out log-likelihood per image (the NPMLE fitted on
  4/5 of the images, smoothed, scored on the other 1/5): the rule a data-driven choice of
  ``h`` would use.
* ``truth_on_grid``: the truth's density at the grid nodes, normalised (no estimation):
  what a measure on this grid can represent.
* ``quantization``: the best measure on as many points as the flow has particles
  (``32 * 2^d``) knowing the truth: k-means on 40000 truth draws (the representation's
  limit, whatever the weights).
* ``npmle_components``: the NPMLE's mass, mean and sd on the nodes nearest each truth
  component's mean.
* ``oracle``: the truth's components known (means, sds), only their weights fitted by
  maximum likelihood on the images (each component's likelihood by quadrature on the grid);
  scored on draws of that mixture, beside the same score of the true weights' mixture.
* ``gibbs``: per image, the held-out log-likelihood of the NPMLE (5 folds) minus that of the
  truth's density; mean, standard error and z. Under a correctly specified likelihood its
  expectation is <= 0 (Gibbs' inequality: no law fitted on other images beats the truth in
  expectation); a positive mean is the mismatch between the likelihood and the images.

``--simulate-coarse residue`` simulates with the residue-bead model the likelihood uses
(well specified) instead of all atoms: the same study without the model mismatch.

Run (about 4 min for d = 2, N = 10^4, K = 25 on 2 idle cores)::

    .venv/bin/python benchmarks/likelihood_limit.py --d 2 --k 25
    .venv/bin/python benchmarks/likelihood_limit.py --d 2 --k 25 --simulate-coarse residue

Writes ``benchmarks/results/likelihood_limit_d<d>[_residue].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow_vs_dto as study  # noqa: E402 (the study's data sets and problem)

H_DEFAULT = [0.0, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08]
FOLDS = 5


def smooth(weights: np.ndarray, k: int, d: int, h: float, spacing: float) -> np.ndarray:
    """Grid weights convolved with a Gaussian of sd ``h`` (mass leaving the box dropped)."""
    from scipy.ndimage import gaussian_filter

    if h == 0:
        return weights
    out = gaussian_filter(weights.reshape((k,) * d), h / spacing, mode="constant").ravel()
    return out / out.sum()


def npmle(loglik: np.ndarray) -> np.ndarray:
    from cryosip.baselines.em import em_weights

    return em_weights(loglik).weights


def folds(n: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), FOLDS)


def held_out(loglik: np.ndarray, score_weights, seed: int) -> np.ndarray:
    """Per image, ``score_weights(w_train)``'s log mixture likelihood, ``w_train`` the NPMLE
    of the other folds; ``score_weights`` maps the training weights to a list of weights."""
    n = len(loglik)
    top = loglik.max(axis=1, keepdims=True)
    p = np.exp(loglik - top)
    out = None
    for part in folds(n, seed):
        train = np.setdiff1d(np.arange(n), part)
        ws = score_weights(npmle(loglik[train]))
        vals = np.log(p[part] @ np.stack(ws, 1)) + top[part]
        out = np.empty((n, len(ws))) if out is None else out
        out[part] = vals
    return out


def component_densities(truth, support: np.ndarray) -> np.ndarray:
    """``[K^d, C]``: each truth component's density at the nodes, normalised per component."""
    from cryosip.datasets.truth import TruthMixture

    cols = []
    for comp in truth.components:
        one = TruthMixture.from_specs([{**comp.model_dump(), "weight": 1.0}], truth.lower,
                                      truth.upper)
        q = one.density(support)
        cols.append(q / q.sum())
    return np.stack(cols, 1)


def mixture_score(truth, weights, x_sub: np.ndarray, seed: int, repeats: int = 5):
    """Mean and sd over ``repeats`` of W2 between draws of the truth's components with
    ``weights`` and the scored subsample ``x_sub`` (as many draws as points)."""
    from cryosip.datasets.truth import TruthMixture
    from cryosip.metrics import wasserstein_nd

    law = TruthMixture.from_specs(
        [{**c.model_dump(), "weight": float(w)} for c, w in zip(truth.components, weights,
                                                                 strict=True)],
        truth.lower, truth.upper)
    rng = np.random.default_rng(seed)
    vals = [wasserstein_nd(law.sample(rng, len(x_sub)), None, x_sub, None, 2.0)
            for _ in range(repeats)]
    return float(np.mean(vals)), float(np.std(vals, ddof=1))


def quantization(truth, m: int, seed: int) -> dict:
    """The best ``m``-point measure knowing the truth: k-means (Lloyd, k-means++ start) on
    40000 truth draws; its W2 to them is the root mean squared distance to the nearest
    centre (each centre carrying its cell's mass)."""
    from scipy.cluster.vq import kmeans2

    draws = truth.sample(np.random.default_rng(seed), 40_000)
    centres, label = kmeans2(draws, m, seed=seed + 1, minit="++", iter=100)
    rms = np.sqrt(np.mean(np.sum((draws - centres[label]) ** 2, axis=1)))
    return {"points": m, "w2": float(rms)}


def by_component(truth, support: np.ndarray, weights: np.ndarray) -> list[dict]:
    """Mass, mean and sd of ``weights`` on the nodes nearest each truth component's mean."""
    means = np.array([c.mean for c in truth.components])
    near = np.argmin(((support[:, None] - means[None]) ** 2).sum(-1), axis=1)
    out = []
    for c in range(len(means)):
        w, s = weights[near == c], support[near == c]
        mean = w @ s / w.sum()
        out.append({"weight": float(w.sum()), "mean": mean.tolist(),
                    "sd": np.sqrt(w @ (s - mean) ** 2 / w.sum()).tolist()})
    return out


def run(args) -> dict:
    from cryosip.baselines import grid_support, log_likelihood_matrix
    from cryosip.datasets.truth import TruthMixture
    from cryosip.pipeline.evaluate import _subsample, distances_to_truth

    raw = study.simulate_config(args.d, args.n, args.snr, args.seed)
    if args.simulate_coarse:
        raw["model"] = {"name": study.MODELS[args.d], "coarse": args.simulate_coarse}
    folder = study.dataset(raw, args.data)
    problem = study.Problem(folder, args.d, args.seed)
    d, k, n = args.d, args.k, args.n
    support = grid_support(problem.model.lower, problem.model.upper, k)
    spacing = float((problem.model.upper[0] - problem.model.lower[0]) / (k - 1))
    t0 = time.perf_counter()
    loglik = log_likelihood_matrix(problem.operator, problem.source.take(np.arange(n)), support)
    loglik = np.asarray(loglik, np.float64)
    lik_s = time.perf_counter() - t0
    print(f"likelihood {n} x {k}^{d} in {lik_s:.0f} s", flush=True)
    npz = folder / "truth.npz"
    truth = TruthMixture.from_npz(npz)
    score = lambda w: distances_to_truth(support, w, npz)  # noqa: E731
    w_ml = npmle(loglik)
    base = score(w_ml)
    out = {"d": d, "k": k, "n": n, "snr": args.snr, "simulate_model": raw["model"],
           "likelihood_s": lik_s, "floor": base["floor"], "npmle_w2": base["w2"]}
    # what the grid represents (the truth's density on it)
    q = component_densities(truth, support)
    w_true = q @ truth.weights
    # held out, per image: the NPMLE of the other folds smoothed by each h (h = 0 first: the
    # NPMLE itself), then the truth's density; one set of fold fits serves both checks
    hs = [0.0] + [h for h in args.h if h != 0]
    cv = held_out(loglik, lambda w: [smooth(w, k, d, h, spacing) for h in hs] + [w_true],
                  args.seed)
    out["smoothed"] = [{"h": h, "w2": score(smooth(w_ml, k, d, h, spacing))["w2"],
                        "heldout_loglik_per_image": float(cv[:, i].mean())}
                       for i, h in enumerate(hs)]
    out["truth_on_grid_w2"] = score(w_true)["w2"]
    out["quantization"] = quantization(truth, args.particles or 32 * 2**d, args.seed)
    out["npmle_components"] = by_component(truth, support, w_ml)
    top = loglik.max(axis=1, keepdims=True)
    a = np.exp(loglik - top) @ q
    from cryosip.baselines.em import em_weights

    w_or = em_weights(np.log(np.maximum(a, 1e-300)), max_iter=5000, tol=1e-12).weights
    x_sub = _subsample(problem.x_true, min(n, 10_000), args.seed)
    out["oracle"] = {"true_weights": truth.weights.tolist(), "fitted_weights": w_or.tolist(),
                     "w2": mixture_score(truth, w_or, x_sub, 7),
                     "true_weights_w2": mixture_score(truth, truth.weights, x_sub, 7)}
    # Gibbs check: held-out NPMLE against the truth's density
    diff = cv[:, 0] - cv[:, -1]
    se = float(diff.std(ddof=1) / np.sqrt(n))
    out["gibbs"] = {"mean": float(diff.mean()), "se": se, "z": float(diff.mean() / se),
                    "total_nats": float(diff.sum())}
    return out


def report(out: dict) -> None:
    fl = out["floor"]
    print(f"d = {out['d']}, N = {out['n']}, K = {out['k']}, simulated with "
          f"{out['simulate_model']}: floor W2 {fl:.4f}")
    print(f"  NPMLE on the grid      W2 {out['npmle_w2']:.4f} ({out['npmle_w2'] / fl:.1f}x)")
    for row in out["smoothed"]:
        print(f"  smoothed h = {row['h']:.2f}      W2 {row['w2']:.4f} ({row['w2'] / fl:.1f}x), "
              f"held-out log-lik {row['heldout_loglik_per_image']:.6f}")
    print(f"  truth's density, grid  W2 {out['truth_on_grid_w2']:.4f} "
          f"({out['truth_on_grid_w2'] / fl:.1f}x)")
    for i, c in enumerate(out["npmle_components"]):
        print(f"  NPMLE near component {i}: weight {c['weight']:.3f}, mean "
              f"{np.round(c['mean'], 3).tolist()}, sd {np.round(c['sd'], 3).tolist()}")
    q = out["quantization"]
    print(f"  k-means, {q['points']} points    W2 {q['w2']:.4f} ({q['w2'] / fl:.1f}x)")
    o = out["oracle"]
    print(f"  oracle weights {np.round(o['fitted_weights'], 4).tolist()} (true "
          f"{o['true_weights']}): W2 {o['w2'][0]:.4f} +- {o['w2'][1]:.4f}; true weights "
          f"{o['true_weights_w2'][0]:.4f} +- {o['true_weights_w2'][1]:.4f}")
    g = out["gibbs"]
    print(f"  held-out NPMLE minus truth: {g['mean']:.5f} +- {g['se']:.5f} nats/image "
          f"(z {g['z']:.1f}, {g['total_nats']:.1f} nats)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, choices=(2, 3), default=2)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--k", type=int, default=25, help="grid points per axis")
    p.add_argument("--h", type=float, nargs="+", default=H_DEFAULT, help="smoothing sds")
    p.add_argument("--particles", type=int,
                   help="points of the k-means quantization (default the flow's 32 * 2^d)")
    p.add_argument("--snr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--simulate-coarse", choices=("residue",),
                   help="simulate with this coarse model (well specified) instead of all atoms")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cryosip_flow_vs_dto")
    p.add_argument("--name", help="results/<name>.json")
    args = p.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    out = run(args)
    out["git"] = study.git_state()
    report(out)
    name = args.name or f"likelihood_limit_d{args.d}" + (
        f"_{args.simulate_coarse}" if args.simulate_coarse else "")
    path = study.RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from cryosip.cli.main import configure_process

    configure_process()
    sys.exit(main())
