"""Per-image results (issue 13 item 4): ``RUN/particles.star`` and its evaluation.

Independent checks: the written file is read back by ``starfile`` (another reader) and
compared with the input read by ``starfile``; rotations come from ``scipy.spatial.
transform.Rotation`` and are compared as matrices after cryosip's own reader read the
angles; the posterior mean of the held-out images is recomputed here from the real-space
pixel likelihood written out in numpy (the run's flow used the Fourier band); correlations
are checked against ``scipy.stats`` and angular errors against rotations perturbed by a
known angle.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import stats
from scipy.spatial.transform import Rotation

from cryosip.cli.main import main
from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.errors import InputError
from cryosip.forward import Optics
from cryosip.io import ParticleTable, read_star
from cryosip.io.annotate import annotate_particles, read_star_columns, relion_pose_columns
from cryosip.metrics.per_image import pearson, rotation_angle_deg, spearman
from cryosip.pipeline import load_run
from cryosip.pipeline.posterior import posterior_moments
from cryosip.rotations import euler_to_matrix

HINGE = {"model": "hinge",
         "truth": [{"kind": "gaussian", "weight": 0.6, "mean": [0.25], "std": [0.08]},
                   {"kind": "gaussian", "weight": 0.4, "mean": [0.8], "std": [0.06]}],
         "n_images": 120, "box_size": 32, "pixel_size_angstrom": 2.0, "snr": 0.5,
         "defocus_angstrom": [10000, 20000], "seed": 5, "render_batch_size": 60}
FLOW = ["--steps", "3", "--n-particles", "8", "--batch-size", "16", "--flow-box", "16",
        "--bootstrap", "0", "--register", "none", "--no-progress"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """``(input STAR, run folder, truth)``: a simulated hinge whose STAR ``starfile``
    rewrote with two optics groups and two extra columns, reconstructed with known poses."""
    root = tmp_path_factory.mktemp("particles_out")
    data = root / "data"
    simulate_dataset(parse_simulate_config(HINGE), data, progress=False)
    blocks = starfile.read(data / "particles.star", always_dict=True)
    second = blocks["optics"].assign(rlnOpticsGroup=2, rlnOpticsGroupName="g2",
                                     rlnVoltage=200.0)
    blocks["optics"] = pd.concat([blocks["optics"], second], ignore_index=True)
    n = len(blocks["particles"])
    blocks["particles"]["rlnOpticsGroup"] = np.where(np.arange(n) % 3 == 2, 2, 1)
    blocks["particles"]["rlnRandomSubset"] = np.arange(n) % 2 + 1
    blocks["particles"]["rlnMicrographName"] = [f"mics/m{k // 10:03d}.mrc" for k in range(n)]
    star = data / "input.star"
    starfile.write(blocks, star)
    run = root / "run"
    assert main(["reconstruct", "--particles", str(star), "--model", "hinge", "--out",
                 str(run), *FLOW]) == 0
    return star, run, data / "truth.npz"


def test_particles_star_repeats_the_input_rows_with_the_posterior_columns(made):
    star, run, _ = made
    given = starfile.read(star, always_dict=True)
    out = starfile.read(run / "particles.star", always_dict=True)
    pd.testing.assert_frame_equal(out["optics"], given["optics"])
    parts, inp = out["particles"], given["particles"]
    assert list(parts.columns) == [*inp.columns, "rlnCryosipX1", "rlnCryosipXStd1",
                                   "rlnCryosipHeldOut"]
    pd.testing.assert_frame_equal(parts[inp.columns], inp)
    held = json.loads((run / "run.json").read_text())["split"]["heldout_index"]
    np.testing.assert_array_equal(np.flatnonzero(parts["rlnCryosipHeldOut"]), held)
    x, sd = parts["rlnCryosipX1"].to_numpy(), parts["rlnCryosipXStd1"].to_numpy()
    with np.load(run / "ensemble.npz") as ens:
        positions = ens["positions"][:, 0]
    assert positions.min() - 1e-6 <= x.min() and x.max() <= positions.max() + 1e-6
    half_range = (positions.max() - positions.min()) / 2
    assert np.all(sd >= 0) and np.all(sd <= half_range + 1e-6)
    # cryosip's own reader gives the input's numbers back
    a, b = read_star(star), read_star(run / "particles.star")
    for name in ("euler_deg", "shift_angstrom", "defocus_u_angstrom", "optics_index"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
    assert b.optics == a.optics
    summary = json.loads((run / "summary.json").read_text())
    assert summary["per_image"]["map_poses"] is False
    assert summary["per_image"]["wall_time_s"] > 0


def test_posterior_mean_matches_a_pixel_space_likelihood_written_here(made):
    """``E[x | y_n]`` of the held-out images from ``heldout.npz`` (real-space images at
    the flow box) with ``log p = -|y - G|^2 / (2 sigma^2)``; the run used the band."""
    _, run, _ = made
    loaded = load_run(run)
    obs, op = loaded.heldout, loaded.operator
    clean = np.asarray(op.clean_grid(jnp.asarray(loaded.positions, jnp.float32),
                                     obs.nuisance), np.float64)  # (M, n, box, box)
    y = np.asarray(obs.values, np.float64)
    resid = ((y[None] - clean) ** 2).sum(axis=(-2, -1)).T  # (n, M)
    with np.errstate(divide="ignore"):  # the full-data weights phase can zero a weight
        log_w = np.log(loaded.weights)
    logp = -resid / (2 * float(op.noise_std) ** 2) + log_w[None]
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    x = loaded.positions[:, 0]
    want = p @ x
    want_sd = np.sqrt(p @ x**2 - want**2)
    got = read_star_columns(run / "particles.star", ["rlnCryosipX1", "rlnCryosipXStd1"])
    rows = loaded.heldout_rows
    np.testing.assert_allclose(got["rlnCryosipX1"][rows], want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["rlnCryosipXStd1"][rows], want_sd, rtol=0, atol=1e-3)


def test_training_rows_from_the_full_data_phase_match_a_fresh_likelihood_pass(made):
    """The run's particles.star took its training rows from the full-data phase's stored
    likelihood (``summary.json`` says so); scoring every image again through the operator
    (the path the held-out rows take, checked against pixel space above) gives the same."""
    from cryosip.io import read_particles
    from cryosip.measures import ParticleMeasure
    from cryosip.pipeline.config import ReconstructConfig
    from cryosip.pipeline.data import prepare_data
    from cryosip.pipeline.posterior import image_posteriors
    from cryosip.pipeline.reconstruct import build_operator

    star, run, _ = made
    summary = json.loads((run / "summary.json").read_text())
    assert "full-data phase" in summary["per_image"]["method"]
    loaded = load_run(run)
    s = loaded.scale
    stack = read_particles(star, require_poses=True)
    data = prepare_data(stack, loaded.model, known_poses=True, flow_box=16,
                        heldout_fraction=0.05, seed=0, offset=s.offset, contrast=s.contrast,
                        noise_std=s.noise_std * stack.box_size / 16)  # stack units
    np.testing.assert_array_equal(data.heldout_index, loaded.heldout_rows)
    config = ReconstructConfig.model_validate({"data": {"particles": str(star)}})
    measure = ParticleMeasure(jnp.asarray(loaded.positions, jnp.float32),
                              jnp.asarray(loaded.weights, jnp.float32))
    fresh = image_posteriors(config, build_operator(data, loaded.model, True), data,
                             loaded.model, measure)
    assert "full-data" not in fresh.method
    got = read_star_columns(run / "particles.star", ["rlnCryosipX1", "rlnCryosipXStd1"])
    train = data.train_index
    np.testing.assert_allclose(got["rlnCryosipX1"][train], fresh.x_mean[train, 0], atol=1e-4)
    np.testing.assert_allclose(got["rlnCryosipXStd1"][train], fresh.x_std[train, 0],
                               atol=1e-3)


def test_evaluate_reports_per_image_correlations(made, capsys):
    star, run, truth = made
    assert main(["evaluate", "--run", str(run), "--truth", str(truth), "--no-heldout"]) == 0
    scores = json.loads(capsys.readouterr().out)["per_image"]
    x = read_star_columns(run / "particles.star", ["rlnCryosipX1"])["rlnCryosipX1"]
    with np.load(truth) as t:
        x_true = t["x"][:, 0]
    assert scores["n"] == len(x_true) == len(x)
    np.testing.assert_allclose(scores["spearman_abs"][0],
                               abs(stats.spearmanr(x, x_true).statistic), rtol=1e-10)
    np.testing.assert_allclose(scores["pearson"][0], stats.pearsonr(x, x_true).statistic,
                               rtol=1e-10)
    assert scores["heldout"]["n"] == 6 and "median_angular_error_deg" not in scores
    assert scores["spearman_abs"][0] > 0.5


def test_correlations_agree_with_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)  # many ties
    b = a + rng.normal(size=200)
    np.testing.assert_allclose(spearman(a, b), stats.spearmanr(a, b).statistic, rtol=1e-12)
    np.testing.assert_allclose(pearson(a, b), stats.pearsonr(a, b).statistic, rtol=1e-12)


def test_angular_error_of_rotations_perturbed_by_a_known_angle():
    rng = np.random.default_rng(1)
    n = 50
    base = Rotation.random(n, random_state=rng)
    angle = rng.uniform(0.001, 179.0, n)
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    turned = Rotation.from_rotvec(np.deg2rad(angle)[:, None] * axis) * base
    got = rotation_angle_deg(base.as_matrix(), turned.as_matrix())
    np.testing.assert_allclose(got, angle, rtol=1e-9, atol=1e-9)
    # the right-hand factor (model frame) gives the same angle
    right = base * Rotation.from_rotvec(np.deg2rad(angle)[:, None] * axis)
    np.testing.assert_allclose(rotation_angle_deg(base.as_matrix(), right.as_matrix()), angle,
                               rtol=1e-9, atol=1e-9)


def _relion30(path: Path, n: int, pixel: float) -> Path:
    """A RELION 3.0 STAR (origins in pixels, pixel size per row), a comment and a quoted
    value with a space, a block after the particles, and a stale ``rlnCryosipX1``."""
    rows = [f'{k + 1:06d}@stack.mrcs 10.0 20.0 30.0 1.5 -2.25 15000 14000 5.0 '
            f'"mic {k}" 0.9 300 2.7 0.1 {pixel}' for k in range(n)]
    lines = ["# written by hand", "data_images", "", "loop_",
             *(f"_{c} #{k + 1}" for k, c in enumerate(
                 ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX",
                  "rlnOriginY", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                  "rlnMicrographName", "rlnCryosipX1", "rlnVoltage",
                  "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize"))),
             *rows[:2], "# a comment between rows", *rows[2:], "", "data_extra", "",
             "_rlnKeep 7", ""]
    path.write_text("\n".join(lines))
    return path


def test_map_poses_read_back_as_the_same_rotations(tmp_path):
    """MAP rotations and origins written into a RELION 3.0 file (pixel origins replaced
    to agree) read back by cryosip's reader to the same matrices; other values kept."""
    n, pixel = 7, 1.37
    src = _relion30(tmp_path / "in.star", n, pixel)
    rotations = Rotation.random(n, random_state=np.random.default_rng(2)).as_matrix()
    shifts = np.random.default_rng(3).normal(0, 3, (n, 2)).astype(np.float32)
    columns = {**relion_pose_columns(rotations, shifts, pixel),
               "rlnCryosipX1": np.float32(np.linspace(0, 1, n)),
               "rlnCryosipHeldOut": np.arange(n) % 2}
    out = annotate_particles(src, tmp_path / "out.star", columns)
    back = read_star(out)
    got = np.asarray(euler_to_matrix(jnp.asarray(back.euler_deg)), np.float64)
    np.testing.assert_allclose(got, rotations, rtol=0, atol=1e-5)
    np.testing.assert_allclose(back.shift_angstrom, shifts, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(back.defocus_u_angstrom, read_star(src).defocus_u_angstrom)
    blocks = starfile.read(out, always_dict=True)
    parts = blocks["images"]
    assert parts["rlnMicrographName"].tolist() == [f"mic {k}" for k in range(n)]
    np.testing.assert_array_equal(parts["rlnCryosipX1"].to_numpy(np.float32),
                                  np.float32(np.linspace(0, 1, n)))  # float32's shortest
    assert list(parts.columns[-3:]) == ["rlnOriginXAngst", "rlnOriginYAngst",
                                        "rlnCryosipHeldOut"]
    assert blocks["extra"]["rlnKeep"] == 7
    text = out.read_text()
    assert "# written by hand" in text and "# a comment between rows" in text


def test_values_formatted_in_blocks_write_the_same_file(tmp_path, monkeypatch):
    """The new values are turned into text a block of rows at a time: blocks of 3 rows
    (7 rows, a comment between rows) write the same bytes as one block."""
    from cryosip.io import annotate

    n, pixel = 7, 1.37
    src = _relion30(tmp_path / "in.star", n, pixel)
    rotations = Rotation.random(n, random_state=np.random.default_rng(5)).as_matrix()
    columns = {**relion_pose_columns(rotations, np.zeros((n, 2), np.float32), pixel),
               "rlnCryosipX1": np.float32(np.linspace(0, 1, n)),
               "rlnCryosipHeldOut": np.arange(n) % 2}
    whole = annotate_particles(src, tmp_path / "whole.star", columns).read_bytes()
    monkeypatch.setattr(annotate, "TEXT_BLOCK", 3)
    assert annotate_particles(src, tmp_path / "blocks.star", columns).read_bytes() == whole


def test_a_row_count_that_is_not_the_images_is_refused(tmp_path):
    src = _relion30(tmp_path / "in.star", 4, 1.0)
    with pytest.raises(InputError, match="rows"):
        annotate_particles(src, tmp_path / "out.star", {"rlnCryosipX1": np.zeros(5)})
    assert not (tmp_path / "out.star").exists()


def test_a_cs_table_is_written_as_cs_to_star_writes_it_plus_columns(tmp_path):
    table = ParticleTable(
        image_names=np.array(["000001@>J1/a.mrc", "000002@>J1/a.mrc"]),
        euler_deg=np.zeros((2, 3)), shift_angstrom=np.array([[0.5, -1.0], [2.0, 0.0]]),
        defocus_u_angstrom=np.array([1.5e4, 1.6e4]), defocus_v_angstrom=np.array([1.4e4, 1.5e4]),
        astigmatism_angle_deg=np.array([12.5, -3.0]), phase_shift_deg=np.zeros(2),
        optics=(Optics(300.0, 2.7, 0.1),), optics_index=np.array([0, 0]),
        pixel_size_angstrom=1.37, box_size=64, poses_known=False)
    rotations = Rotation.random(2, random_state=np.random.default_rng(4)).as_matrix()
    columns = {**relion_pose_columns(rotations, np.float32([[1.0, 2.0], [-3.0, 0.5]]), 1.37),
               "rlnCryosipX1": np.float32([0.1, 0.2])}
    out = annotate_particles(tmp_path / "p.cs", tmp_path / "out.star", columns, table=table)
    parts = starfile.read(out, always_dict=True)["particles"]
    assert "rlnOriginX" not in parts.columns  # pixel origins only where the input has them
    back = read_star(out)
    np.testing.assert_allclose(np.asarray(euler_to_matrix(jnp.asarray(back.euler_deg))),
                               rotations, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(back.defocus_u_angstrom, table.defocus_u_angstrom)
    np.testing.assert_array_equal(parts["rlnCryosipX1"].to_numpy(np.float32),
                                  np.float32([0.1, 0.2]))
    assert parts["rlnImageName"].tolist() == ["000001@J1/a.mrc", "000002@J1/a.mrc"]


def test_posterior_moments_against_brute_force_including_a_periodic_axis():
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(6), size=4)
    xs = np.column_stack([rng.uniform(0, 1, 6), rng.uniform(-180, 180, 6)])
    mean, std = posterior_moments(p, xs, [0.0, -180.0], [1.0, 180.0], [False, True])
    for n in range(4):
        m = np.sum(p[n] * xs[:, 0])
        np.testing.assert_allclose(mean[n, 0], m, rtol=1e-12)
        np.testing.assert_allclose(std[n, 0], np.sqrt(np.sum(p[n] * (xs[:, 0] - m) ** 2)),
                                   rtol=1e-10)
        z = np.sum(p[n] * np.exp(1j * np.deg2rad(xs[:, 1])))  # circular, written as complex
        want = np.rad2deg(np.angle(z))
        np.testing.assert_allclose(np.mod(mean[n, 1] - want + 180, 360) - 180, 0, atol=1e-9)
        assert -180 <= mean[n, 1] < 180
        np.testing.assert_allclose(std[n, 1], np.rad2deg(np.sqrt(-2 * np.log(abs(z)))),
                                   rtol=1e-10)


def test_unknown_poses_write_the_map_pose_that_reads_back(made, tmp_path):
    """The pose-grid posterior (``cryosip.forward.poses``) on the run's images: its MAP
    rotations and shifts go to RELION's columns and read back as the same matrices."""
    from cryosip.io import read_particles
    from cryosip.measures import ParticleMeasure
    from cryosip.pipeline.config import ReconstructConfig
    from cryosip.pipeline.data import prepare_data
    from cryosip.pipeline.posterior import image_posteriors, write_particles_star
    from cryosip.pipeline.reconstruct import build_operator

    star, run, _ = made
    loaded = load_run(run)
    s = loaded.scale
    stack = read_particles(star, require_poses=False)
    data = prepare_data(stack, loaded.model,
                        known_poses=False, flow_box=16, heldout_fraction=0.05, seed=0,
                        offset=s.offset, contrast=s.contrast,
                        noise_std=s.noise_std * stack.box_size / 16)  # stack units
    config = ReconstructConfig.model_validate({"data": {"particles": str(star),
                                                        "poses": "unknown"}})
    measure = ParticleMeasure(jnp.asarray(loaded.positions, jnp.float32),
                              jnp.asarray(loaded.weights, jnp.float32))
    post = image_posteriors(config, build_operator(data, loaded.model, False), data,
                            loaded.model, measure, grid={"level": 2, "shift_std_angstrom": 2.0})
    n = len(data.stack)
    assert post.rotations.shape == (n, 3, 3) and post.shifts_angstrom.shape == (n, 2)
    assert post.record()["map_poses"] is True
    out = write_particles_star(tmp_path / "particles.star", data, post)
    back, given = read_star(out), read_star(star)
    got = np.asarray(euler_to_matrix(jnp.asarray(back.euler_deg)), np.float64)
    np.testing.assert_allclose(got, post.rotations, rtol=0, atol=1e-5)
    np.testing.assert_allclose(back.shift_angstrom, post.shifts_angstrom, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(back.defocus_u_angstrom, given.defocus_u_angstrom)
    cols = read_star_columns(out, ["rlnCryosipX1", "rlnCryosipHeldOut"])
    np.testing.assert_array_equal(cols["rlnCryosipX1"].astype(np.float32),
                                  post.x_mean[:, 0].astype(np.float32))
    np.testing.assert_array_equal(np.flatnonzero(cols["rlnCryosipHeldOut"]), data.heldout_index)


def test_evaluate_median_angular_error_is_the_known_perturbation(made, tmp_path):
    """A run folder whose particles.star holds the true rotations turned by known angles
    about random axes: the median angular error is the median of those angles."""
    from cryosip.pipeline.evaluate import per_image_scores

    star, _, truth = made
    with np.load(truth) as t:
        x_true, euler_true = t["x"], t["euler_deg"]
    n = len(x_true)
    rng = np.random.default_rng(6)
    angle = rng.uniform(0.5, 40.0, n)
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    true = np.asarray(euler_to_matrix(jnp.asarray(euler_true)), np.float64)
    turned = (Rotation.from_rotvec(np.deg2rad(angle)[:, None] * axis)
              * Rotation.from_matrix(true)).as_matrix()
    folder = tmp_path / "run"
    folder.mkdir()
    annotate_particles(star, folder / "particles.star", {
        **relion_pose_columns(turned, np.zeros((n, 2)), 2.0),
        "rlnCryosipX1": x_true[:, 0] + rng.normal(0, 0.05, n),
        "rlnCryosipHeldOut": (np.arange(n) % 10 == 0).astype(int)})
    (folder / "summary.json").write_text(json.dumps({"per_image": {"map_poses": True}}))
    scores = per_image_scores(folder, truth)["per_image"]
    np.testing.assert_allclose(scores["median_angular_error_deg"], np.median(angle),
                               rtol=0, atol=1e-3)
    assert scores["heldout"]["n"] == 12
    (folder / "summary.json").write_text(json.dumps({"per_image": {"map_poses": False}}))
    assert "median_angular_error_deg" not in per_image_scores(folder, truth)["per_image"]
