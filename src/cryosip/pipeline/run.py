"""``run_reconstruction``: reconstruct, then write every output of the run folder.

The folder holds ``ensemble.npz``, ``run.json`` and ``heldout.npz`` (what is needed to use
and score the result without the particle files, :mod:`cryosip.pipeline.runfolder`),
``particles.star`` (the input's rows with each image's posterior mean and standard
deviation of ``x``, :mod:`cryosip.pipeline.posterior`), ``provenance.json`` (version, git
sha, argv, config, seed, times, the noise and scale used and whether they were
estimated), ``summary.json``, figures, ``structures/``, ``maps/``, ``report.html`` and,
while running, ``checkpoint.npz`` (kept, so ``--resume`` after the end is a no-op). On
several processes (:mod:`cryosip.distributed`) only process 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from cryosip import distributed
from cryosip.forward import ImageConfig
from cryosip.pipeline.config import ReconstructConfig, write_config
from cryosip.pipeline.outputs import (
    bootstrap_arrays,
    bootstrap_record,
    write_ensemble,
    write_figures,
    write_run_report,
    write_structures,
)
from cryosip.pipeline.posterior import image_posteriors, write_particles_star
from cryosip.pipeline.reconstruct import ReconstructResult, reconstruct
from cryosip.pipeline.runfolder import write_run_folder
from cryosip.provenance import atomic_write_text, utc_now, write_provenance
from cryosip.structures.factory import load_output_model
from cryosip.structures.translated import TranslatedModel

__all__ = ["run_reconstruction", "summarise"]


def _history(result: ReconstructResult) -> dict[str, np.ndarray]:
    flow = result.flow
    return {"positions_history": flow.positions_history, "weights_history": flow.weights_history,
            "steps_history": flow.steps_history, "losses": flow.losses}


def _scale_record(result: ReconstructResult) -> dict[str, Any]:
    s, d = result.data.scale, result.data
    return {"offset": s.offset, "contrast": s.contrast, "noise_std": s.noise_std,
            "noise_std_model": s.noise_std_model, "estimated": list(s.estimated),
            "flow_box": d.flow_box, "flow_pixel_size_angstrom": d.flow_pixel_size_angstrom}


def _image_pairs(result: ReconstructResult, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Observed images and clean images of the most likely particle for each (known poses)."""
    index = (result.data.heldout_index if len(result.data.heldout_index) >= n
             else result.data.train_index)[:n]
    known = result.config.data.poses == "known"
    obs = result.data.observations(index, with_nuisance=True)
    measure = result.flow.measure
    op = result.operator
    if known:
        ll = eqx.filter_jit(op.log_likelihood_grid)(obs.values, measure.positions, obs.nuisance)
        best = jnp.argmax(ll + jnp.log(measure.weights)[None, :], axis=1)
    else:
        best = jnp.full((n,), jnp.argmax(measure.weights))
    sim = eqx.filter_jit(op.clean_paired)(measure.positions[best], obs.nuisance)
    return np.asarray(obs.values), np.asarray(sim)


def summarise(result: ReconstructResult) -> dict[str, Any]:
    """Numbers of the run for the report and ``summary.json``."""
    flow = result.flow
    positions, weights = flow.measure.to_numpy()
    mean = np.sum(weights[:, None] * positions, axis=0)
    return {
        "status": flow.status.value, "steps": flow.n_steps,
        "final_loss": float(flow.losses[-1]) if flow.losses.size else float("nan"),
        "wall_time_s": result.wall_time_s, "per_step_s": flow.timings["per_step_s"],
        "n_images_train": int(len(result.data.train_index)),
        "n_images_heldout": int(len(result.data.heldout_index)),
        "weighted_mean_x": [float(v) for v in mean],
        **{f"scale_{k}": v for k, v in _scale_record(result).items()},
        **({"refinement": flow.refinement.record()} if flow.refinement is not None else {}),
    }


def run_reconstruction(config: ReconstructConfig, out_dir: str | Path, *, resume: bool = False,
                       argv: list[str] | None = None) -> tuple[ReconstructResult, dict]:
    """Reconstruct into ``out_dir`` and write all outputs (module docstring)."""
    started = utc_now()
    out_dir = Path(out_dir)
    result = reconstruct(config, out_dir, resume=resume)
    if not distributed.is_main():  # several processes: process 0 writes the outputs
        return result, summarise(result)
    positions, weights = result.flow.measure.to_numpy()
    history = _history(result)
    method = f"flow-{config.objective.kind}{'-wfr' if config.solver.wfr else ''}"
    write_ensemble(out_dir / "ensemble.npz", positions, weights, history, {
        "method": method,
        "status": result.flow.status.value, "train_index": result.data.train_index,
        "heldout_index": result.data.heldout_index,
        **{k: v for k, v in _scale_record(result).items() if k != "estimated"},
        **bootstrap_arrays(result.bootstrap),
    })
    known = config.data.poses == "known"
    write_run_folder(out_dir, config, result.data, result.model, method=method,
                     prior=None if known else result.operator.prior)
    posterior = image_posteriors(config, result.operator, result.data, result.model,
                                 result.flow.measure, refinement=result.flow.refinement)
    write_particles_star(out_dir / "particles.star", result.data, posterior)
    summary = {**summarise(result), **bootstrap_record(result.bootstrap),
               "per_image": posterior.record()}
    stack = result.data.stack
    # every atom of the model, even when the flow ran on residue beads
    output_model = load_output_model(config.model)
    if result.registration is not None:  # in the particles' frame, as the flow saw it
        output_model = TranslatedModel(output_model, result.registration.offset_angstrom)
    structures = write_structures(out_dir, output_model, positions, weights,
                                  config.outputs.quantiles,
                                  ImageConfig(stack.box_size, stack.pixel_size_angstrom))
    figures = write_figures(out_dir, result.model, positions, weights, history,
                            _image_pairs(result), bootstrap=result.bootstrap)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_config(config, out_dir / "config.yaml")  # --config RUN/config.yaml reruns it
    write_provenance(out_dir, config, config.seed, argv, started, scale=_scale_record(result),
                     registration=result.registration_record, warnings=list(result.warnings),
                     jax_devices=[str(d) for d in jax.devices()],
                     processes=jax.process_count())
    sections = {"Run": summary, "Registration": result.registration_record,
                **({"Warnings": dict(enumerate(result.warnings, 1))} if result.warnings else {}),
                "Structures at quantiles": {r["name"]: f"x = {r['x']}  ({r['pdb']}, {r['map']})"
                                            for r in structures},
                "Open in ChimeraX": {"command": "chimerax chimerax.cxc (from the run folder)"}}
    write_run_report(out_dir, f"cryosip reconstruction: {Path(config.data.particles).name}",
                     sections, figures)
    return result, summary
