"""Files of a run: ``ensemble.npz``, figures, structures and maps, ``report.html``.

``ensemble.npz`` holds ``positions [n_particles, dim]``, ``weights [n_particles]``,
``positions_history [n_saved, n_particles, dim]``, ``weights_history``, ``steps_history``,
``losses [n_steps]``, ``method``, ``status``, the data scale (``offset``, ``contrast``,
``noise_std`` in data units, ``noise_std_model``), the flow geometry (``flow_box``,
``flow_pixel_size_angstrom``) and the image split (``train_index``, ``heldout_index``).
Baselines write the same file with a history of length one. With a bootstrap
(:mod:`cryosip.pipeline.bootstrap`, :func:`bootstrap_arrays`) it also holds the refits
(``bootstrap_positions [B, n_particles, dim]``, ``bootstrap_weights [B, n_particles]``)
and the 90% bands: ``band_grid [dim, G]``, ``band_density``, ``band_density_lo``,
``band_density_hi``, ``band_free_energy`` (and ``_lo``, ``_hi``) ``[dim, G]`` (per-axis
marginals), ``population_names [S]``, ``population_value``, ``population_lo``,
``population_hi [S]`` and ``bootstrap_populations [B, S]``.

Structures at the weighted quantiles ``q`` of each coordinate (the other coordinates at
their weighted medians) go to ``structures/x_<axis>_q<q>.pdb`` and their maps, rendered at
the data's box and pixel, to ``maps/x_<axis>_q<q>.mrc``. Both come from the *output
model* the caller passes: the fitted model without coarse-graining
(:func:`cryosip.structures.factory.load_output_model`), so a run on residue beads still
writes every atom with its real name. The maps' header origin puts them on the PDBs.

``chimerax.cxc`` opens those maps and structures in ChimeraX (``chimerax chimerax.cxc``;
ChimeraX runs a ``.cxc`` from the script's own folder, so the paths are relative to the run
folder): each map as a half-transparent surface at :func:`contour_level`, one colour per
quantile, the structure in the same colour as cartoon (non-protein atoms as sticks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from cryosip import plotting
from cryosip.forward import ImageConfig, render_volume
from cryosip.io import write_map
from cryosip.pipeline.bootstrap import BootstrapResult, bootstrap_record
from cryosip.pipeline.report import write_report
from cryosip.provenance import atomic_savez, atomic_write_text
from cryosip.structures.pdb import write_pdb

__all__ = ["bootstrap_arrays", "bootstrap_record", "contour_level", "weighted_quantile",
           "write_chimerax_script", "write_ensemble", "write_figures", "write_run_report",
           "write_structures"]

_COLOURS = ("cornflowerblue", "mediumseagreen", "salmon", "goldenrod", "orchid", "slategray")
"""ChimeraX colour names (CSS), one per quantile of an axis, lowest quantile first."""


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


def bootstrap_arrays(boot: BootstrapResult | None) -> dict[str, np.ndarray]:
    """The bootstrap's arrays for ``ensemble.npz`` (module docstring); ``{}`` without one."""
    if boot is None:
        return {}
    b = boot.bands
    names = list(b.populations)
    arrays = {"bootstrap_positions": boot.positions, "bootstrap_weights": boot.weights,
              "bootstrap_steps": np.asarray(boot.steps), "band_grid": b.grid,
              "band_density": b.density, "band_density_lo": b.density_lo,
              "band_density_hi": b.density_hi, "band_free_energy": b.free_energy,
              "band_free_energy_lo": b.free_energy_lo, "band_free_energy_hi": b.free_energy_hi}
    if names:
        arrays.update({
            "population_names": np.asarray(names),
            **{f"population_{k}": np.asarray([b.populations[n][k] for n in names])
               for k in ("value", "lo", "hi")},
            "bootstrap_populations": np.asarray([b.refit_populations[n] for n in names]).T})
    return arrays


def _quantile_points(positions, weights, quantiles) -> list[tuple[int, float, np.ndarray]]:
    medians = np.array([weighted_quantile(positions[:, d], weights, 0.5)
                        for d in range(positions.shape[1])])
    points = []
    for d in range(positions.shape[1]):
        for q in quantiles:
            x = medians.copy()
            x[d] = weighted_quantile(positions[:, d], weights, q)
            points.append((d, float(q), x))
    return points


def contour_level(volume: np.ndarray, enclosed_fraction: float = 0.8) -> float:
    """The density above which the voxels hold ``enclosed_fraction`` of the map's total.

    For the all-atom AdK map (box 32-128, 1.5-4 Å voxels) 0.8 encloses 25-28 x 10^3 Å³,
    the 28.6 x 10^3 Å³ that 1.21 Å³/Da gives for its 23.6 kDa, whatever the sampling.

    >>> contour_level(np.array([0.0, 1.0, 2.0, 7.0]), 0.7)
    7.0
    """
    values = np.sort(np.clip(np.ravel(volume), 0.0, None))[::-1]
    cumulative = np.cumsum(values) / max(float(values.sum()), np.finfo(float).tiny)
    return float(values[min(np.searchsorted(cumulative, enclosed_fraction), len(values) - 1)])


def write_structures(out_dir: Path, output_model, positions, weights, quantiles: Sequence[float],
                     geometry: ImageConfig) -> list[dict[str, Any]]:
    """PDB and MRC of ``output_model`` at the recovered quantiles, and ``chimerax.cxc``.

    Maps are rendered at the data's box and pixel, ``geometry``.

    ``output_model`` has the fitted model's ``x`` (``load_output_model`` of its spec, wrapped
    by the caller if the run moved it); returns one record per structure (name, axis,
    quantile, x, the two paths relative to ``out_dir``, the map's contour level and range).
    """
    (out_dir / "structures").mkdir(exist_ok=True)
    (out_dir / "maps").mkdir(exist_ok=True)
    records = []
    for axis, q, x in _quantile_points(positions, weights, quantiles):
        name = f"x_{axis}_q{q:g}"
        write_pdb(output_model, x, out_dir / "structures" / f"{name}.pdb")
        atoms = output_model.structure_at(jnp.asarray(x, jnp.float32))
        volume = np.asarray(render_volume(atoms, geometry.box_size, geometry.pixel_size_angstrom))
        write_map(out_dir / "maps" / f"{name}.mrc", volume, geometry.pixel_size_angstrom)
        records.append({"name": name, "axis": axis, "quantile": q, "x": [float(v) for v in x],
                        "pdb": f"structures/{name}.pdb", "map": f"maps/{name}.mrc",
                        "level": contour_level(volume),
                        "map_range": [float(volume.min()), float(volume.max())]})
    write_chimerax_script(out_dir / "chimerax.cxc", records)
    return records


def write_chimerax_script(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """``chimerax.cxc`` for the records of :func:`write_structures` (module docstring).

    Maps are models ``#1..#n`` and structures ``#n+1..#2n`` in record order, so the script
    starts from an empty session (``close session``).
    """
    n = len(records)
    lines = ["# cryosip: structures and maps at the recovered quantiles.",
             "# Open with `chimerax chimerax.cxc` (paths are relative to this folder).",
             "close session"]
    for k, rec in enumerate(records, start=1):
        colour = _colour(records, rec)
        lines += [f"open {rec['map']}",
                  f"volume #{k} style surface level {rec['level']:.6g} color {colour}",
                  f"transparency #{k} 50"]
    for k, rec in enumerate(records, start=n + 1):
        colour = _colour(records, rec)
        lines += [f"open {rec['pdb']}", f"color #{k} {colour}", f"color #{k} byhetero",
                  f"cartoon #{k}", f"hide #{k} atoms",
                  f"show #{k} & ~protein atoms", f"style #{k} & ~protein stick"]
    lines += ["set bgColor white", "lighting soft", "graphics silhouettes true", "view"]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _colour(records: Sequence[Mapping[str, Any]], record: Mapping[str, Any]) -> str:
    """One colour per quantile of the record's axis, by rank among that axis' quantiles."""
    same_axis = sorted(r["quantile"] for r in records if r["axis"] == record["axis"])
    return _COLOURS[same_axis.index(record["quantile"]) % len(_COLOURS)]


# PLR0913: ``bootstrap`` is an optional keyword (the bands), not another input of the run.
def write_figures(out_dir: Path, model, positions, weights,  # noqa: PLR0913
                  history: Mapping[str, np.ndarray],
                  image_pairs: tuple[np.ndarray, np.ndarray] | None, *,
                  bootstrap: BootstrapResult | None = None) -> list[tuple[Path, str]]:
    """The run's PNG figures with their captions (bands shaded when ``bootstrap`` is given)."""
    lower, upper = np.asarray(model.lower, float), np.asarray(model.upper, float)
    bands = None if bootstrap is None else bootstrap.bands
    figures = []
    with_band = "" if bands is None else f"; shaded: 90% band over {bootstrap.n_refits} " \
        "bootstrap refits"
    if positions.shape[1] == 1:
        bounds = (float(lower[0]), float(upper[0]))
        figures.append((plotting.plot_density_1d(
            out_dir / "density.png", positions, weights, bounds,
            band=None if bands is None else (bands.grid[0], bands.density_lo[0],
                                             bands.density_hi[0])),
            "recovered density over x (particles as a rug)" + with_band))
        figures.append((plotting.plot_free_energy(
            out_dir / "free_energy.png", positions, weights, bounds,
            band=None if bands is None else (bands.grid[0], bands.free_energy_lo[0],
                                             bands.free_energy_hi[0])),
            "free-energy profile -kT log p(x)" + with_band))
    else:
        bounds = [(float(a), float(b)) for a, b in zip(lower[:2], upper[:2], strict=True)]
        figures.append((plotting.plot_density_2d(out_dir / "density.png", positions[:, :2],
                                                 weights, bounds),
                        "recovered density over (x0, x1)"))
        if bands is not None:
            figures.append((plotting.plot_marginal_bands(
                out_dir / "marginals.png", bands.grid, bands.density, bands.density_lo,
                bands.density_hi), "marginal density per axis" + with_band))
            figures.append((plotting.plot_marginal_bands(
                out_dir / "free_energy.png", bands.grid, bands.free_energy,
                bands.free_energy_lo, bands.free_energy_hi, "free energy (kT)"),
                "marginal free energy -kT log p per axis" + with_band))
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
