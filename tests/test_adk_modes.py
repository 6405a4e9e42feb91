"""adk-modes: AdK in the space of its first three principal components (3-D), and a tiny
3-D simulate -> reconstruct / baseline -> evaluate run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from cryosip.errors import InputError
from cryosip.structures import AdkModes
from cryosip.structures.factory import load_model, load_output_model


@pytest.fixture(scope="module")
def beads() -> AdkModes:
    return load_model({"name": "adk-modes", "coarse": "residue"})


@pytest.fixture(scope="module")
def atoms() -> AdkModes:
    return load_model("adk-modes")


def _mdanalysis_pca(n_modes: int, amplitudes: np.ndarray):
    """An independent PCA: MDAnalysis reads the files and superposes each frame on frame 0
    by its CA atoms (``align.rotation_matrix``, QCP), frames centred on their
    amplitude-weighted centroid, then the eigenvectors of the frames' Gram matrix (dual PCA)."""
    import MDAnalysis as mda
    from MDAnalysis.analysis import align
    from MDAnalysisTests.datafiles import DCD, PSF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = mda.Universe(PSF, DCD)
        ca = u.select_atoms("name CA").indices
        frames = np.stack([u.atoms.positions.astype(np.float64) for _ in u.trajectory])
    ref = frames[0, ca] - frames[0, ca].mean(0)
    aligned = []
    for f in frames:
        rot, _ = align.rotation_matrix(f[ca] - f[ca].mean(0), ref)
        g = (f - f[ca].mean(0)) @ np.asarray(rot).T
        aligned.append(g - amplitudes @ g / amplitudes.sum())
    flat = np.reshape(aligned, (len(frames), -1))
    centred = flat - flat.mean(0)
    evals, evecs = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(evals)[::-1][:n_modes]
    directions = (centred.T @ evecs[:, order]) / np.sqrt(evals[order])
    return evals[order] / (len(frames) - 1), directions.T, evals.sum() / (len(frames) - 1)


def test_modes_match_an_independent_pca(atoms):
    variances, directions, total = _mdanalysis_pca(3, np.asarray(atoms.amplitudes, float))
    modes = np.asarray(atoms.modes_angstrom, float).reshape(3, -1)
    np.testing.assert_allclose(np.sum(modes**2, axis=1), variances, rtol=1e-4)
    cosines = np.sum(modes * directions, axis=1) / np.linalg.norm(modes, axis=1)
    np.testing.assert_allclose(np.abs(cosines), 1.0, atol=1e-4)
    # the docs' claim: the first three modes carry 93.1% of the all-atom variance
    np.testing.assert_allclose(variances.sum() / total, 0.931, atol=5e-4)


def test_sign_convention_and_named_states(atoms):
    fx = np.asarray(atoms.frames_x)
    assert fx.shape == (98, 3)
    assert np.all(fx[0] < 0), "frame 0 (closed) sits on the negative side of every mode"
    assert fx[-1, 0] > 1.0
    states = atoms.named_states
    inside = lambda x, box: bool(np.all((x >= box[0]) & (x < box[1])))
    assert inside(fx[0], states["closed"]) and inside(fx[-1], states["open"])
    # x_0 = 0 (the frames' mean) is crossed once more than halfway along, between frames 46
    # and 47 (up to the small wobbles of the open-end plateau, after frame 80)
    assert np.flatnonzero(np.diff(np.sign(fx[:, 0])))[0] == 46
    assert np.all(np.diff(fx[:81, 0]) > 0)


def test_structures_at_the_frame_scores_reproduce_the_frames(atoms):
    """r(frames_x[f]) is frame f up to what the discarded modes carry (< 0.94 Å RMSD)."""
    from cryosip.structures.adk import load_adk_frames
    from cryosip.structures.path import prepare_frames

    frames, amps, _, topo = load_adk_frames(True, None)
    frames = prepare_frames(frames, amps, np.flatnonzero(topo.atom_names == "CA"))
    for f in (0, 40, 97):
        got = np.asarray(atoms.structure_at(atoms.frames_x[f]).positions_angstrom, float)
        rmsd = np.sqrt(np.mean(np.sum((got - frames[f]) ** 2, axis=1)))
        assert rmsd < 0.95
    end_to_end = np.sqrt(np.mean(np.sum((frames[-1] - frames[0]) ** 2, axis=1)))
    np.testing.assert_allclose(end_to_end, 6.93, atol=0.01)


def test_beads_are_the_residue_centroids_of_the_atoms_at_any_x(beads, atoms):
    from cryosip.structures.topology import _residue_groups

    groups = _residue_groups(atoms.topology)
    z = np.asarray(atoms.amplitudes, float)
    for x in np.random.default_rng(0).uniform(-3, 3, size=(3, 3)):
        a = np.asarray(atoms.structure_at(jnp.asarray(x, jnp.float32)).positions_angstrom, float)
        b = np.asarray(beads.structure_at(jnp.asarray(x, jnp.float32)).positions_angstrom)
        want = np.stack([z[g] @ a[g] / z[g].sum() for g in groups])
        np.testing.assert_allclose(b, want, atol=2e-3)
    np.testing.assert_allclose(np.asarray(beads.amplitudes),
                               [z[g].sum() for g in groups], rtol=1e-6)


def test_heavy_atom_variant_keeps_the_rows_of_the_heavy_atoms(atoms):
    heavy = AdkModes(hydrogens=False)
    keep = np.asarray(atoms.amplitudes) > 1
    assert heavy.topology.n_atoms == int(keep.sum()) == 1656
    x = jnp.array([0.7, -1.2, 2.0])
    np.testing.assert_allclose(heavy.structure_at(x).positions_angstrom,
                               np.asarray(atoms.structure_at(x).positions_angstrom)[keep],
                               atol=1e-5)


def test_spec_options_output_model_and_errors(beads):
    assert beads.dim == 3 and beads.topology.n_atoms == 214
    assert load_output_model({"name": "adk-modes", "coarse": "residue"}).topology.n_atoms == 3341
    assert load_model({"name": "adk-modes", "coarse": "residue", "n_modes": 2}).dim == 2
    with pytest.raises(InputError, match="interpolation"):
        load_model({"name": "adk-modes", "interpolation": "linear"})
    with pytest.raises(InputError, match="n_modes"):
        load_model({"name": "adk-modes", "n_modes": 98})


# --- a tiny 3-D run through the commands (CI-sized: 200 images at box 16) ---

MODEL = {"name": "adk-modes", "coarse": "residue"}
TRUTH = [{"kind": "gaussian", "weight": 0.6, "mean": [-1.2, -0.5, 0.3], "std": [0.4, 0.4, 0.4]},
         {"kind": "gaussian", "weight": 0.4, "mean": [1.0, 0.2, -0.3], "std": [0.4, 0.4, 0.4]}]


@pytest.fixture(scope="module")
def data3d(tmp_path_factory) -> Path:
    from cryosip.datasets import parse_simulate_config, simulate_dataset

    out = tmp_path_factory.mktemp("adk3d") / "data"
    cfg = parse_simulate_config({
        "model": MODEL, "truth": TRUTH, "n_images": 200, "box_size": 16,
        "pixel_size_angstrom": 5.0, "snr": 1.0, "defocus_angstrom": [10000, 20000],
        "seed": 1, "render_batch_size": 100})
    simulate_dataset(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    import yaml

    path = tmp_path_factory.mktemp("adk3d_model") / "model.yaml"
    path.write_text(yaml.safe_dump(MODEL))
    return str(path)


def test_simulate_writes_a_3d_truth(data3d):
    t = np.load(data3d / "truth.npz")
    assert t["x"].shape == (200, 3)
    np.testing.assert_allclose(t["lower"], -3.0)
    # the images' x follow the truth: 60% of them on the closed side (binomial sd 0.035)
    assert abs(np.mean(t["x"][:, 0] < 0) - 0.6) < 0.11


def _cli(argv: list[str]) -> None:
    from cryosip.cli.main import main

    assert main(argv) == 0


def _evaluate(run: Path, data: Path, *extra: str) -> dict:
    _cli(["evaluate", "--run", str(run), "--truth", str(data / "truth.npz"), *extra])
    scores = json.loads((run / "evaluation.json").read_text())
    assert scores["n_subsample"] == 200
    assert 0 < scores["floor"] < scores["w2"] < 6.0
    closed_true = np.mean(np.load(data / "truth.npz")["x"][:, 0] < 0)
    pops = scores["populations"]
    np.testing.assert_allclose(pops["closed"]["true"], closed_true)
    np.testing.assert_allclose(pops["closed"]["recovered"] + pops["open"]["recovered"], 1.0,
                               atol=1e-5)
    return scores


def test_reconstruct_and_evaluate_in_3d(data3d, model_file, tmp_path):
    """simulate -> reconstruct (a handful of KL steps) -> evaluate, through the commands.

    ``--contrast 1`` (the simulated one) skips the contrast estimate, which renders a grid of
    12^dim conformations for every scale image (1728 in 3-D: most of a minute here)."""
    run = tmp_path / "flow"
    _cli(["reconstruct", "--particles", str(data3d / "particles.star"), "--model", model_file,
          "--out", str(run), "--n-particles", "16", "--steps", "4", "--batch-size", "32",
          "--register", "none", "--flow-box", "16", "--contrast", "1.0", "--no-progress"])
    ens = np.load(run / "ensemble.npz")
    assert ens["positions"].shape == (16, 3)
    assert np.all(np.abs(ens["positions"]) <= 3.0 + 1e-6)
    _evaluate(run, data3d, "--no-heldout")


@pytest.mark.slow
def test_reweighting_baseline_in_3d_beats_its_uniform_grid(data3d, model_file, tmp_path):
    """The 4^3-grid reweighting run scores a lower W2 than uniform weights on its grid (that
    one by the transport linear program of test_metrics, not by POT)."""
    from test_metrics import _linprog_w

    run = tmp_path / "reweight"
    _cli(["baseline", "--method", "reweight", "--particles", str(data3d / "particles.star"),
          "--model", model_file, "--out", str(run), "--support", "grid", "--n-support", "4",
          "--flow-box", "16"])
    scores = _evaluate(run, data3d)
    grid = np.load(run / "ensemble.npz")["positions"].astype(float)
    sub = np.load(data3d / "truth.npz")["x"]
    uniform = _linprog_w(grid, np.ones(len(grid)), sub, np.ones(len(sub)), 2.0)
    assert scores["w2"] < 0.8 * uniform
