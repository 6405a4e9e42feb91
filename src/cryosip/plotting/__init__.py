"""Figures of a run (matplotlib, without pyplot): each function writes one PNG, returns its path."""

from cryosip.plotting.figures import (
    plot_density_1d,
    plot_density_2d,
    plot_free_energy,
    plot_image_pairs,
    plot_loss,
    plot_marginal_bands,
    plot_particle_paths,
)

__all__ = [
    "plot_density_1d",
    "plot_density_2d",
    "plot_free_energy",
    "plot_image_pairs",
    "plot_loss",
    "plot_marginal_bands",
    "plot_particle_paths",
]
