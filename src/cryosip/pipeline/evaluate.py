"""``evaluate_run``: how good is a recovered measure (a run folder), with or without truth.

With a ``truth.npz`` (written by ``cryosip simulate``):

* 1-D: ``w1`` = W1(recovered, true x of the N images), ``w1_to_truth`` = W1 to the
  truth's law (its quantile function), ``floor`` = mean W1 between N fresh samples of the
  truth and the truth's law (``floor_std`` over 10 repeats): what a perfect sampler of
  the truth scores with N samples.
* d-D: ``w2`` = W2(recovered, a random subsample of ``n_sub = min(N, 2000)`` true x, exact
  optimal transport), ``floor`` = W2 between ``n_sub`` fresh truth samples and the same
  subsample.
* ``populations``: mass of each named state of the model, recovered and true.

Always (needs the run's STAR and model, from its ``provenance.json``): the conditional MMD
on the held-out images (known poses; noise-marginalised Gaussian kernel with
``h^2 = D sigma^2``) of the recovered measure, beside that of the uniform measure on the
model's box (and of the true x when the truth is given) as a scale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cryosip.datasets.truth import TruthMixture
from cryosip.errors import InputError
from cryosip.metrics.wasserstein import (
    finite_sample_floor,
    wasserstein_1d,
    wasserstein_1d_to_quantile,
    wasserstein_nd,
)

__all__ = ["distances_to_truth", "evaluate_run", "populations"]


def _load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(str(path), None, "an existing .npz file", "no such file")
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # not .npz; pickles are refused here
        raise InputError(str(path), None, "a numpy .npz file",
                         str(err).splitlines()[0] if str(err) else repr(err)) from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise InputError(str(path), None, "a numpy .npz file", "a single .npy array")
    with f:
        missing = [k for k in keys if k not in f.files]
        if missing:
            raise InputError(str(path), missing[0], "an array of that name",
                             f"only {sorted(f.files)}")
        try:
            return {k: f[k] for k in f.files}
        except (ValueError, OSError, EOFError) as err:  # object arrays, a broken member
            raise InputError(str(path), None, "numeric arrays",
                             str(err).splitlines()[0] if str(err) else repr(err)) from None


def distances_to_truth(positions, weights, truth_npz: Path, seed: int = 0) -> dict[str, Any]:
    """W1 (1-D) or W2 (d-D) to the true x of the images, and the finite-sample floor."""
    t = _load_npz(truth_npz, ("x", "truth_spec", "lower", "upper"))
    x_true = t["x"]
    if x_true.shape[1] != positions.shape[1]:
        raise InputError(str(truth_npz), "x", f"dimension {positions.shape[1]} (the run's)",
                         f"dimension {x_true.shape[1]}")
    truth = TruthMixture.from_npz(truth_npz)
    rng = np.random.default_rng(seed)
    n = len(x_true)
    if positions.shape[1] == 1:
        to_law = lambda s, w=None: wasserstein_1d_to_quantile(s[:, 0], w, truth.quantile)
        floor, floor_std = finite_sample_floor(truth.sample, to_law, n, rng)
        return {"w1": wasserstein_1d(positions[:, 0], weights, x_true[:, 0], None),
                "w1_to_truth": to_law(positions, weights), "floor": floor,
                "floor_std": floor_std, "n_images": n}
    n_sub = min(n, 2000)
    sub = x_true[rng.choice(n, n_sub, replace=False)]
    w2 = wasserstein_nd(positions, weights, sub, None, p=2.0)
    floor = wasserstein_nd(truth.sample(rng, n_sub), None, sub, None, p=2.0)
    return {"w2": w2, "floor": floor, "n_subsample": n_sub, "n_images": n}


def populations(positions, weights, states: dict, x_true=None) -> dict[str, dict[str, float]]:
    """Mass in each named state's box ``[lower, upper)``, recovered and (if given) true."""
    def inside(x, lo, hi):
        return np.all((x >= np.asarray(lo)) & (x < np.asarray(hi)), axis=1)

    out = {}
    for name, (lo, hi) in states.items():
        out[name] = {"recovered": float(np.sum(weights[inside(positions, lo, hi)]))}
        if x_true is not None:
            out[name]["true"] = float(np.mean(inside(x_true, lo, hi)))
    return out


def _heldout_mmd(run_dir: Path, ens: dict, positions, weights, x_true,
                 datadir: str | Path | None = None) -> dict[str, Any]:
    from cryosip.discrepancies import GaussianKernel, conditional_mmd2
    from cryosip.pipeline.config import ReconstructConfig
    from cryosip.pipeline.data import prepare_data
    from cryosip.pipeline.reconstruct import build_operator, initial_measure

    prov = json.loads((run_dir / "provenance.json").read_text())
    config = ReconstructConfig(**prov["config"])
    if config.poses != "known" or len(ens["heldout_index"]) == 0:
        return {}
    from cryosip.io import read_particles
    from cryosip.structures.factory import load_model

    model = load_model(config.model)
    offset = prov.get("registration", {}).get("offset_angstrom")
    if offset is not None:  # the model as the flow saw it (cryosip.pipeline.register)
        from cryosip.structures.translated import TranslatedModel

        model = TranslatedModel(model, offset)
    stack = read_particles(config.particles, datadir=datadir or config.datadir,
                           pixel_size_angstrom=config.pixel_size_angstrom)
    data = prepare_data(stack, model, known_poses=True,
                        flow_box=int(ens["flow_box"]), heldout_fraction=config.heldout_fraction,
                        seed=config.seed, offset=float(ens["offset"]),
                        contrast=float(ens["contrast"]), noise_std=float(ens["noise_std"]))
    op = build_operator(data, model, True)
    index = ens["heldout_index"][:512]
    obs = data.observations(index)
    kernel = GaussianKernel(float(np.sqrt(data.flow_box**2) * op.noise_std))
    var = float(op.noise_std) ** 2

    @jax.jit
    def mmd(xs, w):
        sim = op.clean_grid(xs, obs.nuisance)
        return conditional_mmd2(sim, w, obs.values, kernel, var)

    uniform = initial_measure(model, len(positions), config.seed)
    out = {"heldout_mmd": float(mmd(jnp.asarray(positions, jnp.float32), jnp.asarray(weights))),
           "heldout_mmd_uniform": float(mmd(uniform.positions, uniform.weights)),
           "n_heldout_scored": int(len(index))}
    if x_true is not None:
        xs = x_true[np.random.default_rng(0).choice(len(x_true), 64, replace=False)]
        out["heldout_mmd_truth"] = float(mmd(jnp.asarray(xs, jnp.float32),
                                             jnp.full(64, 1.0 / 64)))
    return out


def _comparison_figure(run_dir: Path, positions, weights, truth_npz: Path) -> Path:
    """``evaluation.png``: recovered density over the truth's (1-D) or beside it (2-D)."""
    from cryosip import plotting

    truth = TruthMixture.from_npz(truth_npz)
    path = run_dir / "evaluation.png"
    if positions.shape[1] == 1:
        bounds = (float(truth.lower[0]), float(truth.upper[0]))
        return plotting.plot_density_1d(path, positions, weights, bounds,
                                        truth_density=lambda g: truth.density(g[:, None]))
    sample = truth.sample(np.random.default_rng(0), 20000)
    bounds = [(float(a), float(b)) for a, b in zip(truth.lower[:2], truth.upper[:2], strict=True)]
    return plotting.plot_density_2d(path, positions[:, :2], weights, bounds, sample[:, :2])


def evaluate_run(run_dir: str | Path, truth: str | Path | None = None,
                 heldout: bool = True, datadir: str | Path | None = None) -> dict[str, Any]:
    """Scores of the run in ``run_dir`` (module docstring) as a JSON-ready dict."""
    run_dir = Path(run_dir)
    ens = _load_npz(run_dir / "ensemble.npz", ("positions", "weights"))
    positions, weights = ens["positions"].astype(float), ens["weights"].astype(float)
    result: dict[str, Any] = {"run": str(run_dir), "method": str(ens.get("method", "")),
                              "n_particles": int(len(positions))}
    x_true = None
    if truth is not None:
        result.update(distances_to_truth(positions, weights, Path(truth)))
        x_true = _load_npz(Path(truth), ("x",))["x"]
        result["figure"] = str(_comparison_figure(run_dir, positions, weights, Path(truth)))
    prov_path = run_dir / "provenance.json"
    if prov_path.is_file():
        from cryosip.structures.factory import load_model

        config = json.loads(prov_path.read_text()).get("config", {})
        if "model" in config:
            states = load_model(config["model"]).named_states
            if states:
                result["populations"] = populations(positions, weights, states, x_true)
        if heldout and "heldout_index" in ens and "particles" in config:
            result.update(_heldout_mmd(run_dir, ens, positions, weights, x_true, datadir))
    return result
