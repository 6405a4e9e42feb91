"""Pose and shift integrated out on a grid (cryosip.forward.poses).

Independent checks: brute-force quadrature written here (every pose rendered in real space
by CryoEMOperator, a pixel-space Gaussian likelihood and a log-sum-exp in numpy); moments
of the Haar measure on SO(3) in closed form; central finite differences in float64; the
refined grid against the full fine grid.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cryosip.forward import CryoEMOperator, ImageConfig, ImageNuisance, NuisancePrior, Optics
from cryosip.forward.fourier import FourierOperator
from cryosip.forward.poses import (
    GridSettings,
    PoseGrid,
    children,
    grid_log_likelihood,
    image_posteriors,
    log_marginal,
    map_poses_given_particle,
    so3_grid,
    so3_volume,
)
from cryosip.operators import Observations
from cryosip.rotations import euler_to_matrix, matrix_to_euler
from cryosip.structures.factory import load_model

BOX, PIXEL = 16, 8.0


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _data(sigma, n_images=3, x_true=0.2, seed=1):
    """Images rendered in real space at random poses, shifts and per-image defoci."""
    model = load_model({"name": "adk-path", "coarse": "residue"})
    op = CryoEMOperator(model, ImageConfig(BOX, PIXEL), Optics(), NuisancePrior(), sigma)
    wide = jnp.result_type(float)
    w = NuisancePrior((8000.0, 30000.0), 500.0, shift_std_angstrom=4.0).sample(
        jax.random.key(seed), n_images)
    w = jax.tree.map(lambda a: a.astype(wide) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                     w)
    clean = op.clean_paired(jnp.full((n_images, 1), x_true, wide), w)
    ys = clean + sigma * jax.random.normal(jax.random.key(seed + 7), clean.shape, wide)
    fop = FourierOperator.from_operator(op)
    bands = jnp.asarray(fop.band.prepare(np.asarray(ys), sigma), wide)
    return op, fop, w, np.asarray(ys), bands


def _brute_force(op, w, ys, xs, grid):
    """``log p(y_n | x_i, R_r, t)`` ``(n, M, T, R)``: every pose rendered in real space."""
    mats = np.asarray(grid.matrices, np.float64)
    euler = np.asarray(matrix_to_euler(jnp.asarray(mats)))
    np.testing.assert_allclose(np.asarray(euler_to_matrix(jnp.asarray(euler))), mats, atol=1e-6)
    shifts = np.asarray(grid.shifts_angstrom, np.float64)
    n_t, n_r = len(shifts), len(mats)
    d = BOX * BOX
    out = np.empty((len(ys), len(xs), n_t, n_r))
    render = jax.jit(jax.vmap(op.clean, (None, 0)))
    for n in range(len(ys)):
        pose = ImageNuisance.create(
            np.repeat(euler[None], n_t, 0).reshape(-1, 3),
            np.repeat(shifts[:, None], n_r, 1).reshape(-1, 2),
            w.defocus_u_angstrom[n], w.defocus_v_angstrom[n], w.astigmatism_angle_deg[n])
        for i, x in enumerate(xs):
            g = np.asarray(render(jnp.asarray(x), pose))
            r2 = np.sum((ys[n][None] - g) ** 2, axis=(1, 2))
            ll = -0.5 * r2 / op.noise_std**2 - 0.5 * d * np.log(2 * np.pi * op.noise_std**2)
            out[n, i] = ll.reshape(n_t, n_r)
    return out


def test_grid_likelihood_equals_brute_force_quadrature(x64):
    """Level 3 (108 rotations) x 5 shifts of one flow pixel: 540 poses per image."""
    op, fop, w, ys, bands = _data(sigma=0.3)
    xs = np.array([[0.2], [0.8]])
    grid = PoseGrid.build(3, 4.0, PIXEL, jnp.float64)
    assert grid.shifts_angstrom.shape == (5, 2) and grid.matrices.shape == (108, 3, 3)
    table = np.asarray(grid_log_likelihood(fop, bands, w, jnp.asarray(xs), grid))
    brute = _brute_force(op, w, ys, xs, grid)
    # pose by pose to the band's own precision (float32 DFT tables; tests/test_fourier.py)
    np.testing.assert_allclose(table, brute, rtol=3e-4)
    logq = np.asarray(grid.log_q_shift)[:, None] + np.asarray(grid.log_q_rot)[None]
    want = _logsumexp((brute + logq).reshape(*brute.shape[:2], -1), -1)
    settings = GridSettings(level=3, shift_std_angstrom=4.0, shift_spacing_angstrom=PIXEL)
    got = np.asarray(log_marginal(fop, bands, w, jnp.asarray(xs), jnp.zeros(2), settings))
    np.testing.assert_allclose(got, want, rtol=1e-4)  # the criterion
    # and what the flow sees, the differences between particles, to much better than that
    diff_got, diff_want = got[:, 0] - got[:, 1], want[:, 0] - want[:, 1]
    assert np.abs(diff_got - diff_want).max() < 1e-5 * np.abs(want).max()
    assert np.abs(diff_want).min() > 10.0  # the particles are told apart


def test_full_data_rows_in_particle_chunks_equal_brute_force_quadrature(x64, monkeypatch):
    """The full-data phase's rows (PoseMarginalRows through likelihood_rows): one particle
    per chunk and blocks of 2 images, so templates are reused across blocks and rendered
    again per chunk; against the real-space quadrature written above."""
    import cryosip.forward.poses as poses
    from cryosip.flows.refine import likelihood_rows

    op, fop, w, ys, bands = _data(sigma=0.3)
    xs = np.array([[0.2], [0.5], [0.8]])
    settings = GridSettings(level=2, shift_std_angstrom=4.0, shift_spacing_angstrom=PIXEL)
    rows_fn = poses.pose_marginal_block(fop, settings)
    assert isinstance(rows_fn, poses.PoseMarginalRows)
    monkeypatch.setattr(poses, "TEMPLATE_BYTES", 1)
    assert rows_fn.particle_chunk(3, block=2) == 1
    renders = []
    render = rows_fn._render
    rows_fn._render = lambda *a: renders.append(1) or render(*a)
    obs = Observations(bands, w)
    got = likelihood_rows(rows_fn, xs, obs, np.arange(3), block=2)
    assert len(renders) == 3  # once per particle chunk, not once per block
    grid = PoseGrid.build(2, 4.0, PIXEL, jnp.float64)
    brute = _brute_force(op, w, ys, xs, grid)
    logq = np.asarray(grid.log_q_shift)[:, None] + np.asarray(grid.log_q_rot)[None]
    want = _logsumexp((brute + logq).reshape(*brute.shape[:2], -1), -1)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_rotation_grid_is_a_quadrature_for_the_haar_measure():
    """E[tr R] = 0, E[tr^2 R] = 1, E[R_ij R_kl] = delta_ik delta_jl / 3 (Haar); the cells'
    volumes sum to pi^2 (S^3 / +-1); 8 children per cell, each fine cell once."""
    for level in (4, 8):
        np.testing.assert_allclose(so3_volume(level), np.pi**2, rtol=1e-6)
    mats, logq = so3_grid(8)
    q = np.exp(logq)
    np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.einsum("rij,rkj->rik", mats, mats),
                               np.broadcast_to(np.eye(3), mats.shape), atol=1e-12)
    tr = np.trace(mats, axis1=1, axis2=2)
    np.testing.assert_allclose(q @ tr, 0.0, atol=1e-9)
    np.testing.assert_allclose(q @ tr**2, 1.0, atol=0.01)
    second = np.einsum("r,rij,rkl->ijkl", q, mats, mats)
    eye = np.eye(3)
    np.testing.assert_allclose(second, np.einsum("ik,jl->ijkl", eye, eye) / 3, atol=0.01)
    # a random rotation set of the same size misses by ~1/sqrt(R): the grid does better
    rng = np.random.default_rng(0)
    rand = np.asarray(euler_to_matrix(jnp.asarray(np.column_stack([
        rng.uniform(-180, 180, len(q)), np.degrees(np.arccos(rng.uniform(-1, 1, len(q)))),
        rng.uniform(-180, 180, len(q))]))))
    err_rand = np.abs(np.trace(rand, axis1=1, axis2=2).__pow__(2).mean() - 1)
    assert abs(q @ tr**2 - 1) < err_rand or err_rand < 0.01
    kids = children(np.arange(4 * 4**3), 4)
    assert kids.shape == (256, 8)
    np.testing.assert_array_equal(np.sort(kids.ravel()), np.arange(4 * 8**3))
    fine_mats, fine_logq = so3_grid(8)
    coarse_mats, coarse_logq = so3_grid(4)
    np.testing.assert_allclose(np.exp(fine_logq)[kids].sum(1), np.exp(coarse_logq), rtol=1e-5)
    # every child lies within its parent's cell: nearer its parent than the grid spacing
    cos = np.einsum("rij,rkij->rk", coarse_mats, fine_mats[kids])
    assert np.degrees(np.arccos(np.clip((cos - 1) / 2, -1, 1))).max() < 30.0


def test_refinement_keeping_every_cell_is_the_fine_grid(x64):
    op, fop, w, ys, bands = _data(sigma=0.3, n_images=2)
    xs = jnp.array([[0.3], [0.7]])
    every = GridSettings(level=2, top_k=32, shift_std_angstrom=4.0, shift_spacing_angstrom=PIXEL)
    fine = PoseGrid.build(4, 4.0, PIXEL, jnp.float64)
    table = grid_log_likelihood(fop, bands, w, xs, fine)
    want = jax.nn.logsumexp(table + fine.log_q_shift[:, None] + fine.log_q_rot[None], (2, 3))
    got = log_marginal(fop, bands, w, xs, jnp.zeros(2), every)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-8)
    # keeping a few cells changes the sum only where the posterior has little mass
    few = GridSettings(level=2, top_k=4, shift_std_angstrom=4.0, shift_spacing_angstrom=PIXEL)
    part = np.asarray(log_marginal(fop, bands, w, xs, jnp.zeros(2), few))
    coarse = np.asarray(log_marginal(fop, bands, w, xs, jnp.zeros(2),
                                     GridSettings(2, 0, 4.0, PIXEL)))
    assert np.abs(part - np.asarray(want)).max() < np.abs(coarse - np.asarray(want)).max()


@pytest.mark.parametrize("top_k", [0, 3])
def test_gradient_matches_finite_differences(x64, top_k):
    op, fop, w, ys, bands = _data(sigma=2.0, n_images=2)
    settings = GridSettings(level=2, top_k=top_k, shift_std_angstrom=4.0,
                            shift_spacing_angstrom=PIXEL)
    log_w = jnp.log(jnp.array([0.4, 0.6]))

    def f(xs):
        ll = log_marginal(fop, bands, w, xs, log_w, settings)
        return jnp.sum(jax.nn.logsumexp(ll + log_w, axis=1))

    xs = jnp.array([[0.35], [0.6]])
    g = np.asarray(jax.grad(f)(xs))
    # h: the model's float32 frames leave ~1e-9 relative noise in f, and its path is
    # piecewise linear between frames (kinks ~1e-3 apart): FD is good to ~1e-3 here
    h = 1e-4
    fd = np.array([(f(xs.at[i, 0].add(h)) - f(xs.at[i, 0].add(-h))) / (2 * h) for i in range(2)])
    np.testing.assert_allclose(g[:, 0], fd, rtol=2e-3, atol=1e-3)
    assert np.abs(g).max() > 1.0  # the check is not on a flat function


def test_image_posteriors_find_the_particle_and_the_pose():
    """High SNR: the posterior picks the generating particle, the MAP rotation is within
    the fine grid's spacing of the true one (cryosip's convention) and the shift within a
    grid step."""
    op, fop, w, ys, bands = _data(sigma=0.02, n_images=6, x_true=0.1, seed=3)
    w32 = jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.float64 else a, w)
    obs = Observations(jnp.asarray(bands, jnp.float32), w32)
    post = image_posteriors(fop, np.array([[0.1], [0.9]]), np.array([0.5, 0.5]), obs, block=4,
                            level=4, top_k=2, shift_std_angstrom=4.0,
                            shift_spacing_angstrom=PIXEL / 2)
    assert post.particle_probs.shape == (6, 2) and post.rotations.shape == (6, 3, 3)
    np.testing.assert_allclose(post.particle_probs.sum(1), 1.0, rtol=1e-5)
    assert post.particle_probs[:, 0].min() > 0.99
    truth = np.asarray(euler_to_matrix(w.euler_deg))
    cos = (np.einsum("nij,nij->n", truth, post.rotations) - 1) / 2
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.median(angle) < 15.0 and angle.max() < 35.0, angle  # level 8: 17 degrees
    err = np.linalg.norm(post.shifts_angstrom - np.asarray(w.shift_angstrom), axis=1)
    assert np.median(err) <= PIXEL / 2, err


def test_map_pose_given_particle_is_the_argmax_of_the_whole_table(x64):
    """Images of one conformation, each paired with a particle (the generating one for
    three, the other for two): the MAP pose of every image, grouped by particle in padded
    blocks of 2, is the argmax of the whole ``(n, M, T, R)`` table of
    :func:`grid_log_likelihood` plus the grid's log prior weights (no grouping, chunks or
    padding); with the generating particle it is also the argmax of the real-space
    brute-force quadrature, and the rotation is within the grid's spacing of the truth.
    (Against the wrong particle the landscape is flat and the band model's ~1e-4 relative
    difference from the real-space renderer may move the argmax, so that is not asked.)"""
    op, fop, w, ys, bands = _data(sigma=0.02, n_images=5, x_true=0.1, seed=3)
    xs = np.array([[0.1], [0.9]])
    particle = np.array([0, 1, 0, 0, 1])
    settings = GridSettings(level=3, shift_std_angstrom=4.0, shift_spacing_angstrom=PIXEL / 2)
    grid = PoseGrid.build(3, 4.0, PIXEL / 2, jnp.float64)
    log_q = np.asarray(grid.log_q_shift)[None, :, None] + np.asarray(grid.log_q_rot)[None, None]

    def argmax(table):
        score = table[np.arange(len(table)), particle[:len(table)]] + log_q
        return np.unravel_index(score.reshape(len(table), -1).argmax(1), score.shape[1:])

    t, r = argmax(np.asarray(grid_log_likelihood(fop, jnp.asarray(bands), w, jnp.asarray(xs),
                                                 grid)))

    class _Rows:  # a source read in any order, as the pipeline's
        def __len__(self):
            return 5

        def take(self, rows):
            return Observations(jnp.asarray(bands)[np.asarray(rows)],
                                jax.tree.map(lambda a: a[np.asarray(rows)], w))

    rots, shifts = map_poses_given_particle(fop, xs, particle, _Rows(), settings, block=2)
    np.testing.assert_allclose(rots, np.asarray(grid.matrices)[r], atol=1e-6)
    np.testing.assert_allclose(shifts, np.asarray(grid.shifts_angstrom)[t], atol=1e-9)
    own = np.flatnonzero(particle == 0)
    t_b, r_b = argmax(_brute_force(op, w, ys, xs, grid))
    np.testing.assert_array_equal(r_b[own], r[own])
    np.testing.assert_array_equal(t_b[own], t[own])
    truth = np.asarray(euler_to_matrix(w.euler_deg))
    cos = (np.einsum("nij,nij->n", truth[own], rots[own]) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 35.0  # level 3: ~40 degrees
    with pytest.raises(ValueError, match="indices"):
        map_poses_given_particle(fop, xs, np.array([0, 1, 2, 0, 0]), _Rows(), settings)


HINGE = {"model": "hinge",
         "truth": [{"kind": "gaussian", "weight": 0.6, "mean": [0.2], "std": [0.05]},
                   {"kind": "gaussian", "weight": 0.4, "mean": [0.8], "std": [0.05]}],
         "n_images": 300, "box_size": 24, "pixel_size_angstrom": 2.0, "snr": 2.0,
         "defocus_angstrom": [10000, 20000], "shift_std_angstrom": 1.0, "seed": 5,
         "render_batch_size": 100}


def test_reconstruct_with_no_angles_in_the_star_beats_the_uniform_start(tmp_path):
    """End to end: `simulate`, the STAR's angles and origins removed with `starfile`,
    `reconstruct --poses unknown` (KL on the pose grid, each image's CTF from the file).
    The contrast is given: its unknown-pose estimate (from the images' power,
    cryosip.pipeline.data) was 0.76 for a true 1.0 on these images, a bias of its own."""
    import starfile
    from scipy import stats

    from cryosip.cli.main import main
    from cryosip.datasets import parse_simulate_config, simulate_dataset

    data = tmp_path / "data"
    simulate_dataset(parse_simulate_config(HINGE), data, progress=False)
    blocks = starfile.read(data / "particles.star", always_dict=True)
    pose_cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                 "rlnOriginYAngst"]
    assert set(pose_cols) <= set(blocks["particles"].columns)
    blocks["particles"] = blocks["particles"].drop(columns=pose_cols)
    starfile.write(blocks, data / "noposes.star")
    run = tmp_path / "run"
    (tmp_path / "kl.yaml").write_text("objective: {kind: kl, pose_level: 3}\n")
    assert main(["reconstruct", "--particles", str(data / "noposes.star"), "--model", "hinge",
                 "--poses", "unknown", "--config", str(tmp_path / "kl.yaml"),
                 "--shift-std-angstrom", "1.0", "--flow-box", "16", "--steps", "40",
                 "--contrast", "1.0",
                 "--n-particles", "8", "--batch-size", "64", "--bootstrap", "0",
                 "--no-progress", "--out", str(run)]) == 0
    ens = np.load(run / "ensemble.npz")
    truth = np.load(data / "truth.npz")["x"][:, 0]
    start = (np.arange(8) + 0.5) / 8
    w1_start = stats.wasserstein_distance(start, truth)
    w1_flow = stats.wasserstein_distance(ens["positions"][:, 0], truth, ens["weights"])
    # the flow and the full-data weights phase on the pose grid (level 3 here): on these
    # images W1 0.082 against the start's 0.103, the closed population (x < 0.5) 0.58
    # against the truth's 0.59 and the start's 0.5
    assert w1_flow < 0.9 * w1_start, (w1_flow, w1_start)
    closed, true_closed = ens["weights"][ens["positions"][:, 0] < 0.5].sum(), np.mean(truth < 0.5)
    assert abs(closed - true_closed) < 0.5 * abs(0.5 - true_closed), (closed, true_closed)
