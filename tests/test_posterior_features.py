"""MMD on pose-marginal posterior features (cryosip.flows.posterior_objective).

Independent checks: the linear-kernel statistic against numpy (the plug-in distance of
means, and loops over distinct pairs); the features against the brute-force real-space
quadrature of tests/test_poses.py (every pose rendered by CryoEMOperator, a pixel-space
Gaussian likelihood, a log-sum-exp in numpy); the objective on images rendered in real
space by CryoEMOperator and transformed with the band's own ``prepare`` (not the band
operator's ``clean``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from cryosip.discrepancies.moments import linear_feature_mmd2
from cryosip.flows.posterior_objective import PosteriorFeatureObjective
from cryosip.forward import CryoEMOperator, ImageConfig, NuisancePrior, Optics
from cryosip.forward.fourier import FourierOperator
from cryosip.forward.poses import GridSettings, PoseGrid
from cryosip.operators import Observations
from cryosip.structures.factory import load_model
from test_moments import distinct_pair_sum
from test_poses import BOX, PIXEL, _brute_force, _data, _logsumexp


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def small():
    rng = np.random.default_rng(3)
    phi = rng.dirichlet(np.ones(5), size=(4, 3))  # 4 particles, 3 draws, 5 features
    p = rng.dirichlet(np.ones(4))
    y = rng.dirichlet(np.ones(5), size=7)
    q = rng.dirichlet(np.ones(7))
    return phi, p, y, q


def test_linear_v_statistic_is_the_squared_distance_of_the_means(small):
    phi, p, y, q = small
    mean_sim = np.einsum("i,ibk->k", p / phi.shape[1], phi)
    want = np.sum((mean_sim - q @ y) ** 2)
    got = float(linear_feature_mmd2(jnp.asarray(phi), jnp.asarray(p), jnp.asarray(y),
                                    jnp.asarray(q), "v"))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_linear_u_statistic_sums_distinct_pairs(small):
    phi, p, y, q = small
    dot = lambda a, b: a @ b
    got = float(linear_feature_mmd2(jnp.asarray(phi), jnp.asarray(p), jnp.asarray(y),
                                    jnp.asarray(q), "u"))
    np.testing.assert_allclose(got, distinct_pair_sum(phi, p, y, q, dot, dot, dot), rtol=1e-5)


def test_features_are_the_brute_force_posterior_over_the_references(x64):
    """Level 3 (108 rotations) x 5 shifts, three references: ``phi`` equals the softmax of
    the brute-force quadrature's log-marginals divided by the temperature (1 and 3)."""
    op, fop, w, ys, bands = _data(sigma=1.0, n_images=3, x_true=0.3)
    refs = np.array([[0.2], [0.5], [0.8]])
    settings = GridSettings(level=3, shift_std_angstrom=4.0, shift_spacing_angstrom=PIXEL)
    grid = PoseGrid.build(3, 4.0, PIXEL, jnp.float64)
    brute = _brute_force(op, w, ys, refs, grid)
    logq = np.asarray(grid.log_q_shift)[:, None] + np.asarray(grid.log_q_rot)[None]
    marginal = _logsumexp((brute + logq).reshape(*brute.shape[:2], -1), -1)
    for temperature in (1.0, 3.0):
        objective = PosteriorFeatureObjective.build(fop, refs, settings, temperature)
        got = np.asarray(objective.features(bands, w))
        log_want = marginal / temperature - _logsumexp(marginal / temperature, 1)[:, None]
        # log-posteriors to test_poses' criterion for differences between particles (the
        # band's float32 DFT tables: 1e-5 of the log-likelihoods' size)
        tol = 1e-5 * np.abs(brute).max() / temperature
        np.testing.assert_allclose(np.log(got), log_want, atol=tol, rtol=0)
        np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-12)
        assert tol < 0.01 and got.max(1).min() < 0.99  # the softmax is seen, not one-hot


def _real_space_images(x_true, n_images, sigma, seed):
    """Images at uniform poses, Gaussian shifts and per-image defoci, rendered in real
    space (CryoEMOperator) and only then put on the band (``FourierBand.prepare``)."""
    model = load_model({"name": "adk-path", "coarse": "residue"})
    prior = NuisancePrior((8000.0, 30000.0), 500.0, shift_std_angstrom=2.0)
    op = CryoEMOperator(model, ImageConfig(BOX, PIXEL), Optics(), prior, sigma)
    w = prior.sample(jax.random.key(seed), n_images)
    clean = op.clean_paired(jnp.full((n_images, 1), x_true, jnp.float32), w)
    ys = clean + sigma * jax.random.normal(jax.random.key(seed + 1), clean.shape)
    fop = FourierOperator.from_operator(op)
    bands = jnp.asarray(fop.band.prepare(np.asarray(ys), sigma))
    return fop, Observations(bands, w)


def test_objective_is_smallest_at_the_truth_and_its_gradient_points_there():
    """Observations from a point mass at x = 0.3 (real-space renderer): the expected
    discrepancy of a point mass at x (mean over 8 simulation keys, 64 draws each) is
    smallest at 0.3 among five candidates, and its gradient at 0.6 points down."""
    fop, obs = _real_space_images(0.3, 256, sigma=2.0, seed=11)
    settings = GridSettings(level=3, shift_std_angstrom=2.0)
    refs = (np.arange(6)[:, None] + 0.5) / 6
    objective = PosteriorFeatureObjective.build(fop, refs, settings, n_draws=64)
    one = jnp.ones(1)
    keys = jax.random.split(jax.random.key(0), 8)

    @jax.jit
    def expected(x):
        return jnp.mean(jax.vmap(lambda k: objective(x[None, None], one, obs, k))(keys))

    candidates = [0.1, 0.3, 0.5, 0.7, 0.9]
    values = [float(expected(jnp.float32(x))) for x in candidates]
    assert int(np.argmin(values)) == 1, values
    assert abs(values[1]) < 0.2 * min(values[0], values[2]), values  # unbiased: ~0 at truth
    assert float(jax.grad(expected)(jnp.float32(0.6))) > 0


def test_reconstruct_with_posterior_features_and_no_angles_moves_toward_the_truth(tmp_path):
    """``--poses unknown --discrepancy mmd`` end to end on a tiny hinge set without angles
    in its STAR: the features default to ``posterior`` there (the resolved config says so),
    the weights sum to 1, and W1 to the true x is below the uniform start's."""
    import starfile
    from scipy import stats

    from cryosip.cli.main import main
    from cryosip.datasets import parse_simulate_config, simulate_dataset
    from test_poses import HINGE

    data = tmp_path / "data"
    simulate_dataset(parse_simulate_config(HINGE), data, progress=False)
    blocks = starfile.read(data / "particles.star", always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns=[
        "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"])
    starfile.write(blocks, data / "noposes.star")
    run = tmp_path / "run"
    assert main(["reconstruct", "--particles", str(data / "noposes.star"), "--model", "hinge",
                 "--poses", "unknown", "--discrepancy", "mmd",
                 "--shift-std-angstrom", "1.0", "--flow-box", "16", "--steps", "40",
                 "--contrast", "1.0", "--n-particles", "8", "--n-draws", "128",
                 "--batch-size", "128", "--bootstrap", "0", "--no-progress",
                 "--out", str(run)]) == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["objective"]["features"] == "posterior"
    ens = np.load(run / "ensemble.npz")
    np.testing.assert_allclose(ens["weights"].sum(), 1.0, rtol=1e-5)
    truth = np.load(data / "truth.npz")["x"][:, 0]
    w1_start = stats.wasserstein_distance((np.arange(8) + 0.5) / 8, truth)
    w1 = stats.wasserstein_distance(ens["positions"][:, 0], truth, ens["weights"])
    assert w1 < 0.8 * w1_start, (w1, w1_start)


@pytest.mark.parametrize(("poses", "given", "want"), [
    ("unknown", None, "posterior"), ("known", None, "pixels"),
    ("unknown", "second-moment", "second-moment"), ("known", "posterior", "posterior")])
def test_mmd_features_default_by_poses_and_keep_what_is_given(poses, given, want):
    from cryosip.pipeline.config import ReconstructConfig

    objective = {"kind": "mmd", **({"features": given} if given else {})}
    config = ReconstructConfig.model_validate(
        {"data": {"particles": "p.star", "poses": poses}, "objective": objective})
    assert config.objective.features == want
