"""``run_baseline``: a discretize-then-optimize baseline on a particle stack, written like a run.

The data are prepared exactly as for :func:`cryosip.pipeline.reconstruct.reconstruct`
(same split, crop and scale), the baseline is fitted through the same operator
(:func:`cryosip.baselines.fit_baseline`), and the folder gets the same ``ensemble.npz``
(history of length one), ``run.json`` and ``heldout.npz`` (:mod:`cryosip.pipeline.runfolder`),
``provenance.json``, figures and ``report.html``, so
``cryosip evaluate`` scores baselines and flows the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cryosip.baselines import BaselineConfig, fit_baseline
from cryosip.forward.fourier import FourierOperator
from cryosip.io import read_particles
from cryosip.pipeline.config import ReconstructConfig
from cryosip.pipeline.data import prepare_data
from cryosip.pipeline.outputs import write_ensemble, write_figures, write_run_report
from cryosip.pipeline.reconstruct import build_operator
from cryosip.pipeline.runfolder import write_run_folder
from cryosip.provenance import atomic_write_text, utc_now, write_provenance
from cryosip.structures.factory import load_model

__all__ = ["run_baseline"]


def run_baseline(method: str, data_config: ReconstructConfig, baseline: BaselineConfig,
                 out_dir: str | Path, argv: list[str] | None = None) -> dict[str, Any]:
    """Fit ``method`` to the stack of ``data_config`` and write the run folder."""
    started = utc_now()
    out_dir = Path(out_dir)
    section = data_config.data
    known = section.poses == "known"
    model = load_model(data_config.model)
    stack = read_particles(section.particles, require_poses=known, datadir=section.datadir,
                           pixel_size_angstrom=section.pixel_size_angstrom)
    data = prepare_data(stack, model,
                        known_poses=known, flow_box=section.flow_box,
                        heldout_fraction=section.heldout_fraction, seed=data_config.seed,
                        offset=section.offset, contrast=section.contrast,
                        noise_std=section.noise_std)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs passed their checks
    operator = build_operator(data, model, known)
    if data_config.data.likelihood_space == "fourier":  # the likelihood matrix on the band
        likelihood_op = FourierOperator.from_operator(operator, data.band.native_pixel_angstrom)
        observations = data.band_source(data.train_index, with_nuisance=known)
        observations = observations.take(np.arange(len(observations)))
    else:
        likelihood_op = operator
        observations = data.observations(data.train_index, with_nuisance=known)
    result = fit_baseline(method, likelihood_op, observations, baseline, model=model)
    positions, weights = result.positions, result.weights
    history = {"positions_history": positions[None], "weights_history": weights[None],
               "steps_history": np.zeros(1, int), "losses": np.zeros(0)}
    scale = data.scale
    write_ensemble(out_dir / "ensemble.npz", positions, weights, history, {
        "method": method, "status": "converged" if result.info.get("converged") else "max_iter",
        "train_index": data.train_index, "heldout_index": data.heldout_index,
        "offset": scale.offset, "contrast": scale.contrast, "noise_std": scale.noise_std,
        "noise_std_model": scale.noise_std_model, "flow_box": data.flow_box,
        "flow_pixel_size_angstrom": data.flow_pixel_size_angstrom,
    })
    write_run_folder(out_dir, data_config, data, model, method=method,
                     prior=None if known else operator.prior)
    summary = {"method": method, "wall_time_s": result.wall_time_s,
               **{k: v for k, v in result.info.items() if not isinstance(v, list)}}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_provenance(out_dir, data_config, data_config.seed, argv, started,
                     baseline=baseline.model_dump(mode="json"), method=method)
    figures = write_figures(out_dir, model, positions, weights, history, None)
    write_run_report(out_dir, f"cryosip baseline {method}: {Path(section.particles).name}",
                     {"Baseline": summary}, figures)
    return summary
