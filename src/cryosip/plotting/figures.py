"""Figures of a recovered measure over conformations.

Weighted particles ``(positions [n_particles, dim], weights [n_particles])`` are shown as a
kernel density estimate (Gaussian, bandwidth 3% of the box: Scott's rule over-smooths a
multimodal measure carried by a few dozen particles) with the particles as a rug; a
truth, when given (its density, or a reference sample), is drawn on the same axes.
The free energy is ``F(x) = -kT log p(x)`` in units of kT, shifted so that ``min F = 0``.

Figures are ``matplotlib.figure.Figure`` objects written straight to PNG, without pyplot:
no backend is chosen, no global figure list is kept, and importing this module changes
nothing in matplotlib's state (whatever backend the caller uses is left alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

__all__ = ["weighted_kde", "plot_density_1d", "plot_free_energy", "plot_marginal_bands",
           "plot_density_2d",
           "plot_loss", "plot_particle_paths", "plot_image_pairs"]


def weighted_kde(samples: np.ndarray, weights: np.ndarray | None, grid: np.ndarray,
                 bandwidth: float | None = None) -> np.ndarray:
    """1-D weighted Gaussian KDE of ``samples [n]`` on ``grid [g]`` (integrates to 1).

    >>> g = np.linspace(-5, 5, 1001)
    >>> p = weighted_kde(np.zeros(3), None, g, bandwidth=1.0)
    >>> round(float(np.trapezoid(p, g)), 4)
    1.0
    """
    samples = np.asarray(samples, float).ravel()
    w = np.full(samples.shape, 1.0 / samples.size) if weights is None else np.asarray(weights)
    w = w / w.sum()
    if bandwidth is None:
        mean = np.sum(w * samples)
        std = np.sqrt(np.sum(w * (samples - mean) ** 2))
        n_eff = 1.0 / np.sum(w**2)
        bandwidth = max(1.06 * std * n_eff ** (-0.2), 1e-3 * (np.ptp(grid) or 1.0))
    z = (grid[:, None] - samples[None, :]) / bandwidth
    return (np.exp(-0.5 * z**2) @ w) / (bandwidth * np.sqrt(2 * np.pi))


def _subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, on a figure pyplot does not track."""
    figsize = kwargs.pop("figsize")
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_density_1d(  # noqa: PLR0913 - the measure, its box and the optional truth to overlay
        path: str | Path, positions: np.ndarray, weights: np.ndarray,
                    bounds: tuple[float, float], truth_sample: np.ndarray | None = None,
                    xlabel: str = "conformation x", truth_density=None,
                    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Path:
    """Recovered density over a 1-D conformation space, particles as a rug, truth dashed;
    ``band = (grid, lo, hi)`` (the bootstrap's 90% band) shaded."""
    grid = np.linspace(bounds[0], bounds[1], 400)
    h = 0.03 * (bounds[1] - bounds[0])
    fig, ax = _subplots(figsize=(6, 3.6))
    if band is not None:
        ax.fill_between(band[0], band[1], band[2], color="C0", alpha=0.25, lw=0,
                        label="90% bootstrap band")
    ax.plot(grid, weighted_kde(positions[:, 0], weights, grid, h), lw=2, label="recovered")
    if truth_density is not None:
        ax.plot(grid, truth_density(grid), "k--", lw=1.5, label="truth")
    elif truth_sample is not None:
        ax.plot(grid, weighted_kde(truth_sample[:, 0], None, grid, h), "k--", lw=1.5,
                label="truth (sample)")
    ax.plot(positions[:, 0], np.zeros(len(positions)), "|", color="C3", ms=12,
            alpha=0.7, label="particles")
    ax.set(xlabel=xlabel, ylabel="density", xlim=bounds)
    ax.legend(frameon=False)
    return _save(fig, path)


def free_energy_profile(positions: np.ndarray, weights: np.ndarray,
                        bounds: tuple[float, float], n_grid: int = 200,
                        floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, F)`` with ``F = -log p`` (kT units) from the KDE, shifted to min 0."""
    grid = np.linspace(bounds[0], bounds[1], n_grid)
    p = weighted_kde(positions[:, 0], weights, grid, 0.03 * (bounds[1] - bounds[0]))
    f = -np.log(np.maximum(p, floor * p.max()))
    return grid, f - f.min()


def plot_free_energy(path: str | Path, positions: np.ndarray, weights: np.ndarray,
                     bounds: tuple[float, float],
                     truth_sample: np.ndarray | None = None,
                     band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Path:
    """Free-energy profile ``-kT log p(x)`` of the recovered measure (and of the truth);
    ``band = (grid, lo, hi)`` (the bootstrap's 90% band) shaded."""
    fig, ax = _subplots(figsize=(6, 3.6))
    if band is not None:
        ax.fill_between(band[0], band[1], band[2], color="C0", alpha=0.25, lw=0,
                        label="90% bootstrap band")
    grid, f = free_energy_profile(positions, weights, bounds)
    ax.plot(grid, f, lw=2, label="recovered")
    if truth_sample is not None:
        g, ft = free_energy_profile(truth_sample, np.ones(len(truth_sample)), bounds)
        ax.plot(g, ft, "k--", lw=1.5, label="truth")
    ax.set(xlabel="conformation x", ylabel="free energy (kT)", xlim=bounds, ylim=(0, 8))
    ax.legend(frameon=False)
    return _save(fig, path)


def plot_marginal_bands(path: str | Path, grid: np.ndarray, curves: np.ndarray,
                        lo: np.ndarray, hi: np.ndarray, ylabel: str = "marginal density") -> Path:
    """One panel per axis: the curve ``curves[d]`` on ``grid[d]`` with its band
    ``[lo[d], hi[d]]`` shaded (the bootstrap's per-axis marginals, d-D)."""
    dim = len(grid)
    fig, axes = _subplots(1, dim, figsize=(3.4 * dim, 3.2), squeeze=False)
    for d, ax in enumerate(axes[0]):
        ax.fill_between(grid[d], lo[d], hi[d], color="C0", alpha=0.25, lw=0,
                        label="90% bootstrap band")
        ax.plot(grid[d], curves[d], lw=2, label="recovered")
        ax.set(xlabel=f"x[{d}]", ylabel=ylabel if d == 0 else None,
               xlim=(grid[d][0], grid[d][-1]))
    axes[0, 0].legend(frameon=False, fontsize=8)
    return _save(fig, path)


def weighted_kde_2d(points: np.ndarray, weights: np.ndarray | None, gx: np.ndarray,
                    gy: np.ndarray, bandwidth: tuple[float, float]) -> np.ndarray:
    """Product-Gaussian weighted KDE of ``points [n, 2]`` on the grid ``gy x gx`` -> [ny, nx]."""
    w = np.full(len(points), 1.0 / len(points)) if weights is None else np.asarray(weights)
    kx = np.exp(-0.5 * ((gx[:, None] - points[None, :, 0]) / bandwidth[0]) ** 2)
    ky = np.exp(-0.5 * ((gy[:, None] - points[None, :, 1]) / bandwidth[1]) ** 2)
    return (ky * (w / w.sum())) @ kx.T / (2 * np.pi * bandwidth[0] * bandwidth[1])


def plot_density_2d(path: str | Path, positions: np.ndarray, weights: np.ndarray,
                    bounds: Sequence[tuple[float, float]],
                    truth_sample: np.ndarray | None = None,
                    labels: tuple[str, str] = ("x[0]", "x[1]")) -> Path:
    """Recovered 2-D density (KDE, bandwidth 4% of the box; particles as dots of area
    proportional to weight), beside a histogram of the truth's sample when given."""
    n_panels = 1 if truth_sample is None else 2
    fig, axes = _subplots(1, n_panels, figsize=(4.2 * n_panels, 3.8), squeeze=False)
    (x0, x1), (y0, y1) = bounds[0], bounds[1]
    gx, gy = np.linspace(x0, x1, 120), np.linspace(y0, y1, 120)
    dens = weighted_kde_2d(positions, weights, gx, gy, (0.04 * (x1 - x0), 0.04 * (y1 - y0)))
    ax = axes[0, 0]
    ax.imshow(dens, origin="lower", extent=(x0, x1, y0, y1), aspect="auto", cmap="viridis")
    ax.scatter(positions[:, 0], positions[:, 1], s=600 * np.asarray(weights) / np.max(weights)
               * 0.2, facecolors="none", edgecolors="w", linewidths=0.8)
    ax.set(title="recovered", xlabel=labels[0], ylabel=labels[1], xlim=(x0, x1), ylim=(y0, y1))
    if truth_sample is not None:
        ax = axes[0, 1]
        ax.hist2d(truth_sample[:, 0], truth_sample[:, 1], bins=40, range=[[x0, x1], [y0, y1]],
                  cmap="viridis")
        ax.set(title="truth", xlabel=labels[0], ylabel=labels[1])
    return _save(fig, path)


def plot_loss(path: str | Path, steps: np.ndarray, loss: np.ndarray, label: str) -> Path:
    """Loss (discrepancy estimate) against the flow step."""
    fig, ax = _subplots(figsize=(6, 3.4))
    ax.plot(steps, loss, lw=1.2)
    ax.set(xlabel="step", ylabel=label)
    return _save(fig, path)


def plot_particle_paths(path: str | Path, steps: np.ndarray, positions: np.ndarray,
                        axis: int = 0) -> Path:
    """Coordinate ``axis`` of every particle against the step (``positions [T, M, dim]``)."""
    fig, ax = _subplots(figsize=(6, 3.6))
    ax.plot(steps, positions[:, :, axis], lw=0.7, alpha=0.6)
    ax.set(xlabel="step", ylabel=f"x[{axis}]")
    return _save(fig, path)


def plot_image_pairs(path: str | Path, observed: np.ndarray, simulated: np.ndarray,
                     titles: tuple[str, str] = ("observed", "simulated")) -> Path:
    """Rows of observed images above the matching simulated (clean) images."""
    n = len(observed)
    fig, axes = _subplots(2, n, figsize=(1.8 * n, 3.8), squeeze=False)
    for j in range(n):
        for row, stack in enumerate((observed, simulated)):
            ax = axes[row, j]
            ax.imshow(stack[j], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(f"#{j}", fontsize=8)
    axes[0, 0].set_ylabel(titles[0])
    axes[1, 0].set_ylabel(titles[1])
    return _save(fig, path)
