"""`cryosip toy`: a tiny run writes its files; a non-empty output folder is refused."""

import json

import matplotlib.image
import numpy as np
from scipy import stats

from cryosip.cli.main import main


def _argv(out, *extra):
    return ["toy", "--problem", "a", "--discrepancy", "kl", "--n-obs", "200",
            "--n-particles", "16", "--steps", "20", "--seed", "3", "--out", str(out), *extra]


def _check_density_png(path):
    """The plot decodes and shows the recovered density (a blue line, matplotlib's first
    colour) with its taller mode on the right, where toy (a)'s major mode (0.65 at x = 1.5)
    lies, and the dashed black truth."""
    rgb = matplotlib.image.imread(path)[..., :3]
    height, width = rgb.shape[:2]
    assert height >= 200 and width >= 300
    blue = (rgb[..., 2] - rgb[..., 0] > 0.35) & (rgb[..., 1] < 0.6)
    dark = rgb.max(axis=-1) < 0.25
    assert blue.sum() > 300 and dark.sum() > 300
    rows, cols = np.nonzero(blue)
    # the legend's blue sample sits in the left 20% of the width: compare the curve beyond it
    left = rows[(cols > 0.2 * width) & (cols < 0.5 * width)]
    right = rows[cols >= 0.5 * width]
    assert right.min() < left.min() - 0.05 * height


def test_toy_writes_ensemble_plot_provenance(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(out)) == 0
    with np.load(out / "ensemble.npz") as f:
        assert f["positions"].shape == (16, 1)
        np.testing.assert_allclose(f["weights"].sum(), 1.0, rtol=1e-5)
        assert f["losses"].shape == (20,)
    _check_density_png(out / "density.png")
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["seed"] == 3 and prov["config"]["runs"][0]["discrepancy"] == "kl"
    summary = json.loads((out / "summary.json").read_text())[0]
    with np.load(out / "ensemble.npz") as f:
        positions, weights = f["positions"][:, 0], f["weights"]
    # toy (a)'s truth, written here: 0.35 N(-2, 0.4^2) + 0.65 N(1.5, 0.6^2), as 20 000
    # midpoint quantiles (their W1 error ~1e-4, the summary's 400 000-sample reference ~2e-3)
    grid = np.linspace(-6.0, 6.0, 200_001)
    cdf = 0.35 * stats.norm.cdf(grid, -2.0, 0.4) + 0.65 * stats.norm.cdf(grid, 1.5, 0.6)
    ref = np.interp((np.arange(20_000) + 0.5) / 20_000, cdf, grid)
    w1 = stats.wasserstein_distance(positions, ref, u_weights=weights)
    np.testing.assert_allclose(summary["w1"], w1, atol=0.01)
    # the floor: mean W1 of 200 true draws (the run's n_obs) over 30 repeats; 300 repeats
    # here, so 4 standard errors of the difference bound it
    rng = np.random.default_rng(0)
    draws = [stats.wasserstein_distance(rng.choice(ref, 200), ref) for _ in range(300)]
    se = summary["floor_w1_sd"] * np.sqrt(1 / 30 + 1 / 300)
    np.testing.assert_allclose(summary["floor_w1"], np.mean(draws), atol=4 * se)
    # and the flow moved the particles towards the truth: W1 at least halved from the start
    assert summary["w1"] < 0.5 * summary["w1_init"]
    assert "W1" in capsys.readouterr().out


def test_toy_refuses_a_non_empty_folder_without_force(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(_argv(tmp_path)) == 2
    assert "--force" in capsys.readouterr().err
    assert main(_argv(tmp_path, "--force")) == 0
    assert (tmp_path / "keep.txt").exists()


def test_toy_rejects_bad_sizes(tmp_path, capsys):
    assert main(_argv(tmp_path / "bad", "--n-particles", "1")) == 2
    assert "--n-particles" in capsys.readouterr().err


def test_toy_rejects_bad_n_draws(tmp_path, capsys):
    """``--n-draws`` (draws per step, issue 10) is checked like the other sizes."""
    assert main(_argv(tmp_path / "bad", "--n-draws", "0")) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].endswith(
        "command line: field --n-draws: expected greater than or equal to 1, found 0")
