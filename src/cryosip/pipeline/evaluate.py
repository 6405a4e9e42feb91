"""``evaluate_run``: how good is a recovered measure (a run folder), with or without truth.

With a ``truth.npz`` (written by ``cryosip simulate``):

* 1-D: ``w1`` = W1(recovered, true x of the N images), ``w1_to_truth`` = W1 to the
  truth's law (its quantile function), ``floor`` = mean W1 between N fresh samples of the
  truth and the truth's law (``floor_std`` over 10 repeats): what a perfect sampler of
  the truth scores with N samples.
* d-D (d = 2, 3, ...): ``w2`` = W2(recovered, a random subsample of
  ``n_sub = min(N, n_subsample)`` true x; ``n_subsample`` 10^4 by default), exact optimal
  transport (POT's network simplex, :func:`~cryosip.metrics.wasserstein_nd`); ``floor`` =
  W2 between ``n_sub`` fresh truth samples and the same subsample (one draw): what a
  perfect sampler of the truth scores with ``n_sub`` samples. Cost, measured on 2 busy CPU
  cores (load 7): ``w2`` of 300 particles against 10^4 samples 2-3 s; the floor, an
  ``n_sub x n_sub`` problem, 2 s at ``n_sub = 3000`` and 6 s (3-D) to 16 s (2-D) at 10^4. It
  is computed once per truth file, seed and ``n_sub`` in a process and reused (scoring
  several runs against one data set pays it once).
* ``populations``: mass of each named state of the model, recovered and true.

From the run folder alone (``run.json`` and ``heldout.npz``,
:mod:`cryosip.pipeline.runfolder`; the particle files may be gone): the conditional MMD on
the first 512 stored held-out images (known poses; noise-marginalised Gaussian kernel with
``h^2 = D sigma^2``, ``D`` pixels of the flow box) of the recovered measure, beside that of
the uniform measure on the model's box (and of 64 true x when the truth is given) as a
scale. A folder without ``run.json`` (an older cryosip's) is scored against the truth only
with ``heldout=False``; otherwise it is refused with an InputError saying to re-run.

Per image (a run folder with ``particles.star``, :mod:`cryosip.pipeline.posterior`, and a
truth with the images' ``x``, as ``cryosip simulate`` writes): ``per_image`` holds
``spearman_abs``, ``pearson`` (one per coordinate) and ``n`` of the posterior mean
``rlnCryosipX<k>`` against the true ``x`` of the same row, over all images and, under
``heldout``, over the held-out ones only; when the run estimated poses (``summary.json``'s
``per_image.map_poses``) and the truth has ``euler_deg``, ``median_angular_error_deg``:
the median geodesic distance between the written and the true rotation
(:func:`cryosip.metrics.per_image.rotation_angle_deg`, no symmetry divided out).

Random draws come from the run's seed by name (:mod:`cryosip.seeds`): ``floor``,
``subsample`` (W2), ``evaluate`` (the true x of the held-out MMD) and ``figure``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from cryosip.datasets.truth import TruthMixture
from cryosip.discrepancies import GaussianKernel, conditional_mmd2
from cryosip.errors import InputError
from cryosip.metrics.per_image import pearson, spearman
from cryosip.metrics.wasserstein import (
    finite_sample_floor,
    wasserstein_1d,
    wasserstein_1d_to_quantile,
    wasserstein_nd,
)
from cryosip.operators import Observations
from cryosip.pipeline.runfolder import LoadedRun, load_npz, load_run, read_run_record
from cryosip.seeds import numpy_rng

__all__ = ["N_SUBSAMPLE", "distances_to_truth", "evaluate_run", "heldout_mmd",
           "per_image_scores", "populations"]


N_SUBSAMPLE = 10_000
"""Largest number of true x that a d-D recovered measure is scored against (module doc)."""


def distances_to_truth(positions, weights, truth_npz: Path, seed: int = 0,
                       n_subsample: int = N_SUBSAMPLE) -> dict[str, Any]:
    """W1 (1-D) or W2 (d-D) to the true x of the images, and the finite-sample floor."""
    t = load_npz(truth_npz, ("x", "truth_spec", "lower", "upper"))
    x_true = t["x"]
    if x_true.shape[1] != positions.shape[1]:
        raise InputError(str(truth_npz), "x", f"dimension {positions.shape[1]} (the run's)",
                         f"dimension {x_true.shape[1]}")
    n = len(x_true)
    if positions.shape[1] == 1:
        truth = TruthMixture.from_npz(truth_npz)
        to_law = lambda s, w=None: wasserstein_1d_to_quantile(s[:, 0], w, truth.quantile)
        floor, floor_std = finite_sample_floor(truth.sample, to_law, n,
                                               numpy_rng(seed, "floor"))
        return {"w1": wasserstein_1d(positions[:, 0], weights, x_true[:, 0], None),
                "w1_to_truth": to_law(positions, weights), "floor": floor,
                "floor_std": floor_std, "n_images": n}
    n_sub = min(n, int(n_subsample))
    w2 = wasserstein_nd(positions, weights, _subsample(x_true, n_sub, seed), None, p=2.0)
    stat = Path(truth_npz).stat()
    floor = _floor_nd(str(Path(truth_npz).resolve()), stat.st_mtime_ns, stat.st_size, seed, n_sub)
    return {"w2": w2, "floor": floor, "n_subsample": n_sub, "n_images": n}


def _subsample(x_true: np.ndarray, n_sub: int, seed: int) -> np.ndarray:
    """The ``n_sub`` true x a d-D measure is scored against (stream ``subsample``)."""
    return x_true[numpy_rng(seed, "subsample").choice(len(x_true), n_sub, replace=False)]


@functools.lru_cache(maxsize=8)
def _floor_nd(truth_npz: str, mtime_ns: int, size: int, seed: int, n_sub: int) -> float:
    """W2 between ``n_sub`` fresh truth samples and the subsample (cached per file version:
    ``mtime_ns`` and ``size`` are part of the key)."""
    sub = _subsample(load_npz(Path(truth_npz), ("x",))["x"], n_sub, seed)
    truth = TruthMixture.from_npz(truth_npz)
    floor, _ = finite_sample_floor(truth.sample, lambda s: wasserstein_nd(s, None, sub, None, 2.0),
                                   n_sub, numpy_rng(seed, "floor"), n_repeats=1)
    return floor


def populations(positions, weights, states: dict, x_true=None) -> dict[str, dict[str, float]]:
    """Mass in each named state's box ``[lower, upper)``, recovered and (if given) true.

    An upper bound that is the largest of all the states' in its coordinate (the model box's
    edge) is inclusive, so particles held on that edge count (``x = 1`` is ``open`` on the
    AdK path).

    >>> states = {"closed": ((0.0,), (0.5,)), "open": ((0.5,), (1.0,))}
    >>> populations(np.array([[0.2], [0.5], [1.0]]), np.array([0.5, 0.3, 0.2]), states)
    {'closed': {'recovered': 0.5}, 'open': {'recovered': 0.5}}
    """
    top = np.max([np.asarray(hi, float) for _, hi in states.values()], axis=0)

    def inside(x, lo, hi):
        hi = np.asarray(hi, float)
        below = (x < hi) | ((hi >= top) & (x <= hi))
        return np.all((x >= np.asarray(lo)) & below, axis=1)

    out = {}
    for name, (lo, hi) in states.items():
        out[name] = {"recovered": float(np.sum(weights[inside(positions, lo, hi)]))}
        if x_true is not None:
            out[name]["true"] = float(np.mean(inside(x_true, lo, hi)))
    return out


@eqx.filter_jit
def _conditional_mmd(op, obs: Observations, kernel, noise_var, xs, w):
    """Conditional MMD^2 of particles ``(xs, w)`` on ``obs`` (compiled once per shape)."""
    return conditional_mmd2(op.clean_grid(xs, obs.nuisance), w, obs.values, kernel, noise_var)


def heldout_mmd(run: LoadedRun, x_true=None, n_images: int = 512) -> dict[str, Any]:
    """Conditional MMD of the first ``n_images`` stored held-out images (module docstring).

    Only the run folder is read (``run.json``, ``heldout.npz``); unknown poses or no
    held-out images give ``{}``.
    """
    from cryosip.pipeline.reconstruct import initial_measure

    if not run.known_poses or len(run.heldout_rows) == 0:
        return {}
    op = run.operator
    obs = run.heldout.take(jnp.arange(min(n_images, len(run.heldout_rows))))
    kernel = GaussianKernel(float(np.sqrt(op.image_config.box_size**2) * op.noise_std))
    var = jnp.asarray(float(op.noise_std) ** 2)

    def mmd(xs, w) -> float:
        return float(_conditional_mmd(op, obs, kernel, var, jnp.asarray(xs, jnp.float32),
                                      jnp.asarray(w, jnp.float32)))

    uniform = initial_measure(run.model, len(run.positions), run.seed)
    out = {"heldout_mmd": mmd(run.positions, run.weights),
           "heldout_mmd_uniform": mmd(uniform.positions, uniform.weights),
           "n_heldout_scored": int(len(obs))}
    if x_true is not None:
        rng = numpy_rng(run.seed, "evaluate")
        xs = x_true[rng.choice(len(x_true), min(64, len(x_true)), replace=False)]
        out["heldout_mmd_truth"] = mmd(xs, np.full(len(xs), 1.0 / len(xs)))
    return out


def _correlations(x_mean: np.ndarray, x_true: np.ndarray) -> dict[str, Any]:
    dims = range(x_true.shape[1])
    return {"spearman_abs": [abs(spearman(x_mean[:, k], x_true[:, k])) for k in dims],
            "pearson": [pearson(x_mean[:, k], x_true[:, k]) for k in dims],
            "n": int(len(x_true))}


def per_image_scores(run_dir: Path, truth_npz: Path) -> dict[str, Any]:
    """``{"per_image": ...}`` of the run's ``particles.star`` against the truth (module
    docstring); ``{}`` when the run has no ``particles.star``."""
    from cryosip.io import read_star
    from cryosip.io.annotate import read_star_columns
    from cryosip.metrics.per_image import rotation_angle_deg
    from cryosip.pipeline.posterior import HELDOUT_COLUMN, x_columns
    from cryosip.rotations import euler_to_matrix

    star = run_dir / "particles.star"
    if not star.is_file():
        return {}
    truth = load_npz(truth_npz, ("x",))
    x_true = truth["x"]
    means, _ = x_columns(x_true.shape[1])
    cols = read_star_columns(star, [*means, HELDOUT_COLUMN])
    missing = [c for c in (*means, HELDOUT_COLUMN) if c not in cols]
    if missing:
        raise InputError(str(star), missing[0], "a column (written by reconstruct)", "none")
    x_mean = np.stack([cols[c] for c in means], axis=1)
    if len(x_mean) != len(x_true):
        raise InputError(str(truth_npz), "x", f"{len(x_mean)} images (the run's "
                         "particles.star)", f"{len(x_true)}")
    out = _correlations(x_mean, x_true)
    held = np.asarray(cols[HELDOUT_COLUMN]) == 1
    if held.sum() > 1:
        out["heldout"] = _correlations(x_mean[held], x_true[held])
    summary = run_dir / "summary.json"
    record = json.loads(summary.read_text()).get("per_image", {}) if summary.is_file() else {}
    if record.get("map_poses") and "euler_deg" in truth:
        written = read_star(star, require_poses=False).euler_deg
        errors = rotation_angle_deg(np.asarray(euler_to_matrix(jnp.asarray(written))),
                                    np.asarray(euler_to_matrix(jnp.asarray(truth["euler_deg"]))))
        out["median_angular_error_deg"] = float(np.median(errors))
    return {"per_image": out}


def _comparison_figure(run_dir: Path, positions, weights, truth_npz: Path, seed: int) -> Path:
    """``evaluation.png``: recovered density over the truth's (1-D) or beside it (2-D)."""
    from cryosip import plotting

    truth = TruthMixture.from_npz(truth_npz)
    path = run_dir / "evaluation.png"
    if positions.shape[1] == 1:
        bounds = (float(truth.lower[0]), float(truth.upper[0]))
        return plotting.plot_density_1d(path, positions, weights, bounds,
                                        truth_density=lambda g: truth.density(g[:, None]))
    sample = truth.sample(numpy_rng(seed, "figure"), 20000)
    bounds = [(float(a), float(b)) for a, b in zip(truth.lower[:2], truth.upper[:2], strict=True)]
    return plotting.plot_density_2d(path, positions[:, :2], weights, bounds, sample[:, :2])


def evaluate_run(run_dir: str | Path, truth: str | Path | None = None,
                 heldout: bool = True, n_subsample: int = N_SUBSAMPLE) -> dict[str, Any]:
    """Scores of the run in ``run_dir`` (module docstring) as a JSON-ready dict.

    Reads the run folder only (``ensemble.npz``, ``run.json``, ``heldout.npz``), never the
    particle file. Without ``run.json`` (a bare ``ensemble.npz``, or a folder of an older
    cryosip) it scores against ``truth`` alone, and only with ``heldout=False``.
    ``n_subsample`` caps the true x a d-D measure is scored against (module doc).
    """
    run_dir = Path(run_dir)
    ens = load_npz(run_dir / "ensemble.npz", ("positions", "weights"))
    positions, weights = ens["positions"].astype(float), ens["weights"].astype(float)
    run = load_run(run_dir) if (run_dir / "run.json").is_file() else None
    seed = run.seed if run is not None else 0
    result: dict[str, Any] = {"run": str(run_dir), "method": str(ens.get("method", "")),
                              "n_particles": int(len(positions))}
    x_true = None
    if truth is not None:
        result.update(distances_to_truth(positions, weights, Path(truth), seed,
                                         n_subsample))
        x_true = load_npz(Path(truth), ("x",))["x"]
    if run is None and heldout:
        read_run_record(run_dir)  # the InputError that says what is missing and what to do
    if truth is not None:
        result["figure"] = str(_comparison_figure(run_dir, positions, weights, Path(truth),
                                                  seed))
    if run is not None:
        states = run.model.named_states
        if states:
            result["populations"] = populations(positions, weights, states, x_true)
        if heldout:
            result.update(heldout_mmd(run, x_true))
        if truth is not None:
            result.update(per_image_scores(run_dir, Path(truth)))
    return result
