"""Files of a run: ``ensemble.npz``, figures, structures and maps, ``report.html``.

``ensemble.npz`` holds ``positions [n_particles, dim]``, ``weights [n_particles]``,
``positions_history [n_saved, n_particles, dim]``, ``weights_history``, ``steps_history``,
``losses [n_steps]``, ``method``, ``status``, the data scale (``offset``, ``contrast``,
``noise_std`` in data units, ``noise_std_model``), the flow geometry (``flow_box``,
``flow_pixel_size_angstrom``) and the image split (``train_index``, ``heldout_index``).
Baselines write the same file with a history of length one.

Structures at the weighted quantiles ``q`` of each coordinate (the other coordinates at
their weighted medians) go to ``structures/x_<axis>_q<q>.pdb`` and their maps, rendered at
the data's box and pixel, to ``maps/x_<axis>_q<q>.mrc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from cryosip import plotting
from cryosip.forward import render_volume
from cryosip.io import write_map
from cryosip.pipeline.report import write_report
from cryosip.provenance import atomic_savez
from cryosip.structures.pdb import write_pdb

__all__ = ["weighted_quantile", "write_ensemble", "write_structures", "write_figures",
           "write_run_report"]


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q``.

    >>> weighted_quantile(np.array([3.0, 1.0, 2.0]), np.array([0.2, 0.5, 0.3]), 0.6)
    2.0
    """
    order = np.argsort(values)
    cum = np.cumsum(np.asarray(weights, float)[order]) / np.sum(weights)
    return float(np.asarray(values)[order][min(np.searchsorted(cum, q), len(cum) - 1)])


def write_ensemble(path: Path, positions, weights, history: Mapping[str, np.ndarray],
                   extra: Mapping[str, Any]) -> Path:
    """``ensemble.npz`` (module docstring), written atomically."""
    atomic_savez(path, positions=np.asarray(positions), weights=np.asarray(weights),
                 **{k: np.asarray(v) for k, v in history.items()},
                 **{k: np.asarray(v) for k, v in extra.items()})
    return path


def _quantile_points(positions, weights, quantiles) -> list[tuple[str, np.ndarray]]:
    medians = np.array([weighted_quantile(positions[:, d], weights, 0.5)
                        for d in range(positions.shape[1])])
    points = []
    for d in range(positions.shape[1]):
        for q in quantiles:
            x = medians.copy()
            x[d] = weighted_quantile(positions[:, d], weights, q)
            points.append((f"x_{d}_q{q:g}", x))
    return points


def write_structures(out_dir: Path, model, positions, weights, quantiles: Sequence[float],
                     box_size: int, pixel_size_angstrom: float) -> list[dict[str, Any]]:
    """PDB and MRC at the recovered quantiles; returns one record per structure."""
    (out_dir / "structures").mkdir(exist_ok=True)
    (out_dir / "maps").mkdir(exist_ok=True)
    records = []
    for name, x in _quantile_points(positions, weights, quantiles):
        write_pdb(model, x, out_dir / "structures" / f"{name}.pdb")
        volume = render_volume(model.structure_at(jnp.asarray(x, jnp.float32)), box_size,
                               pixel_size_angstrom)
        write_map(out_dir / "maps" / f"{name}.mrc", np.asarray(volume), pixel_size_angstrom)
        records.append({"name": name, "x": [float(v) for v in x],
                        "pdb": f"structures/{name}.pdb", "map": f"maps/{name}.mrc"})
    return records


def write_figures(out_dir: Path, model, positions, weights, history: Mapping[str, np.ndarray],
                  image_pairs: tuple[np.ndarray, np.ndarray] | None,
                  truth_sample: np.ndarray | None = None) -> list[tuple[Path, str]]:
    """The run's PNG figures with their captions."""
    lower, upper = np.asarray(model.lower, float), np.asarray(model.upper, float)
    figures = []
    if positions.shape[1] == 1:
        bounds = (float(lower[0]), float(upper[0]))
        figures.append((plotting.plot_density_1d(out_dir / "density.png", positions, weights,
                                                 bounds, truth_sample),
                        "recovered density over x (particles as a rug)"))
        figures.append((plotting.plot_free_energy(out_dir / "free_energy.png", positions,
                                                  weights, bounds, truth_sample),
                        "free-energy profile -kT log p(x)"))
    else:
        bounds = [(float(a), float(b)) for a, b in zip(lower[:2], upper[:2], strict=True)]
        figures.append((plotting.plot_density_2d(out_dir / "density.png", positions[:, :2],
                                                 weights, bounds, truth_sample),
                        "recovered density over (x0, x1)"))
    losses = np.asarray(history.get("losses", []))
    if losses.size > 1:
        figures.append((plotting.plot_loss(out_dir / "loss.png", np.arange(losses.size),
                                           losses, "minibatch discrepancy"), "loss"))
    if len(history.get("steps_history", [])) > 1:
        figures.append((plotting.plot_particle_paths(out_dir / "paths.png",
                                                     history["steps_history"],
                                                     history["positions_history"]),
                        "particle paths over iterations"))
    if image_pairs is not None:
        figures.append((plotting.plot_image_pairs(out_dir / "images.png", *image_pairs),
                        "observed images (top) and simulated clean images at the recovered "
                        "measure's most likely particle (bottom)"))
    return figures


def write_run_report(out_dir: Path, title: str, sections: Mapping[str, Mapping[str, Any]],
                     figures: Sequence[tuple[Path, str]]) -> Path:
    """``report.html`` listing every file of the run."""
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                   if p.is_file() and p.name != "report.html")
    return write_report(out_dir / "report.html", title, sections, figures, files)
