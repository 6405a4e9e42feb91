"""Figures are written without pyplot: a readable PNG of the stated size, nothing left open."""

from __future__ import annotations

import sys

import numpy as np
from matplotlib.image import imread

from cryosip.plotting import plot_density_1d, plot_loss


def test_plot_loss_writes_a_png_of_the_stated_size_with_the_curve_drawn(tmp_path):
    path = plot_loss(tmp_path / "loss.png", np.arange(50), np.exp(-np.arange(50) / 10), "KL")
    img = imread(path)  # matplotlib's own PNG reader
    # figsize (6, 3.4) inches at 110 dpi
    assert img.shape[:2] == (374, 660)
    dark = img[..., :3].mean(-1) < 0.5
    assert 0.002 < dark.mean() < 0.2  # axes, labels and the curve; not blank, not filled


def test_figures_leave_pyplot_alone(tmp_path):
    had_pyplot = "matplotlib.pyplot" in sys.modules
    x = np.linspace(-1, 1, 30)[:, None]
    plot_density_1d(tmp_path / "d.png", x, np.full(30, 1 / 30), (-2.0, 2.0))
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules
    else:  # another test imported pyplot: its figure list must not hold ours
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []
