"""Second-moment MMD (polynomial kernel) against closed forms written here with numpy."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from cryosip.discrepancies.moments import SecondMomentMMD, second_moment_mmd2
from cryosip.flows.moment_objective import SecondMomentObjective, pose_from_prior
from cryosip.forward.pose import ImageNuisance, NuisancePrior
from cryosip.operators import AbstractRandomOperator, Observations


def _frobenius(c, p, y, q, noise_var, scale):
    """``||sum_a w_a c_a c_a^T + s^2 I - sum_n q_n y_n y_n^T||_F^2 / tau^2`` with numpy."""
    n_p, n_d, dim = c.shape
    w = np.repeat(p / n_d, n_d)
    flat = c.reshape(n_p * n_d, dim)
    m_sim = np.einsum("a,ai,aj->ij", w, flat, flat) + noise_var * np.eye(dim)
    m_obs = np.einsum("n,ni,nj->ij", q, y, y)
    return np.sum((m_sim - m_obs) ** 2) / scale**2


def distinct_pair_sum(c, p, y, q, k_sim, k_cross, k_obs):
    """``ss - 2 sy + yy`` by loops over distinct pairs (module docstring's weights) with
    the kernels ``k_sim(c_a, c_b)``, ``k_cross(c_a, y_n)`` and ``k_obs(y_n, y_m)``."""
    n_p, n_d, _ = c.shape
    ss = 0.0
    for i in range(n_p):
        for j in range(n_p):
            for a in range(n_d):
                for b in range(n_d):
                    if i != j:
                        ss += p[i] * p[j] / n_d**2 * k_sim(c[i, a], c[j, b])
                    elif a != b:
                        ss += p[i] ** 2 / (n_d * (n_d - 1)) * k_sim(c[i, a], c[i, b])
    sy = sum(p[i] / n_d * q[n] * k_cross(c[i, a], y[n])
             for i in range(n_p) for a in range(n_d) for n in range(len(q)))
    yy = sum(q[n] * q[m] * k_obs(y[n], y[m]) for n in range(len(q)) for m in range(len(q))
             if n != m) / (1 - np.sum(q**2))
    return ss - 2 * sy + yy


def _distinct_pairs(c, p, y, q, noise_var):
    """The unbiased statistic with the noise integrated into the polynomial kernel."""
    dim = c.shape[-1]
    noisy = lambda a, b: (a @ b) ** 2 + noise_var * (a @ a + b @ b) + noise_var**2 * dim
    cross = lambda a, b: (a @ b) ** 2 + noise_var * b @ b
    return distinct_pair_sum(c, p, y, q, noisy, cross, lambda a, b: (a @ b) ** 2)


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(4, 3, 6))
    p = rng.dirichlet(np.ones(4))
    y = rng.normal(size=(7, 6)) * 1.3 + 0.2
    q = rng.dirichlet(np.ones(7))
    return c, p, y, q


@pytest.mark.parametrize("noise_var", [0.0, 0.7])
def test_v_statistic_is_the_frobenius_distance_of_second_moments(small, noise_var):
    c, p, y, q = small
    got = second_moment_mmd2(jnp.asarray(c), jnp.asarray(p), jnp.asarray(y), jnp.asarray(q),
                             noise_var, scale=2.5, estimator="v")
    np.testing.assert_allclose(float(got), _frobenius(c, p, y, q, noise_var, 2.5), rtol=2e-5)


def test_u_statistic_sums_distinct_pairs_with_the_noise_integrated(small):
    c, p, y, q = small
    got = second_moment_mmd2(jnp.asarray(c), jnp.asarray(p), jnp.asarray(y), jnp.asarray(q),
                             0.4, estimator="u")
    np.testing.assert_allclose(float(got), _distinct_pairs(c, p, y, q, 0.4), rtol=2e-5)


def _gaussian_draws(key, means, cov_chol, shape):
    z = jax.random.normal(key, (*shape, cov_chol.shape[0]))
    return means + z @ cov_chol.T


def test_noise_removal_is_unbiased_on_gaussian_mixtures():
    """Particles ``i`` simulate clean ``N(m_i, S)``; the data are ``N(m'_i, S + s^2 I)``
    with weights ``p``: the mean of the U-statistic over repeats is the closed form
    ``||sum_i p_i (m_i m_i^T - m'_i m'_i^T)||_F^2`` (0 when ``m' = m``); the V-statistic,
    and the U-statistic without the noise's removal, are off by far more."""
    dim, n_p, n_d, m, s2, reps = 3, 3, 4, 24, 0.5, 4000
    rng = np.random.default_rng(1)
    means = rng.normal(size=(n_p, dim))
    shifted = means + np.array([0.6, 0.0, -0.3])
    chol = np.linalg.cholesky(0.3 * np.eye(dim) + 0.1)
    p = jnp.asarray([0.5, 0.3, 0.2])

    def one(key, data_means, estimator, noise_var):
        k_sim, k_obs, k_rows = jax.random.split(key, 3)
        sims = _gaussian_draws(k_sim, jnp.asarray(means)[:, None], jnp.asarray(chol), (n_p, n_d))
        rows = jax.random.choice(k_rows, n_p, (m,), p=p)
        obs_chol = jnp.linalg.cholesky(jnp.asarray(chol @ chol.T) + s2 * jnp.eye(dim))
        obs = _gaussian_draws(k_obs, jnp.asarray(data_means)[rows], obs_chol, (m,))
        return second_moment_mmd2(sims, p, obs, jnp.full(m, 1.0 / m), noise_var,
                                  estimator=estimator)

    keys = jax.random.split(jax.random.key(2), reps)
    pw = np.asarray(p)
    for data_means in (means, shifted):
        outer = lambda a, pw=pw: np.einsum("i,ij,ik->jk", pw, a, a)
        expected = np.sum((outer(means) - outer(data_means)) ** 2)
        vals = np.asarray(jax.vmap(lambda k, d=data_means: one(k, d, "u", s2))(keys))
        sem = vals.std() / np.sqrt(reps)
        np.testing.assert_allclose(vals.mean(), expected, atol=4 * sem)
        for biased in (jax.vmap(lambda k, d=data_means: one(k, d, "v", s2))(keys),
                       jax.vmap(lambda k, d=data_means: one(k, d, "u", 0.0))(keys)):
            assert abs(float(np.mean(biased)) - expected) > 10 * sem


def test_discrepancy_member_on_flat_samples_is_the_one_draw_statistic(small):
    c, p, y, q = small
    flat = jnp.asarray(c[:, 0])
    d = SecondMomentMMD(noise_var=0.3, estimator="v")
    want = _frobenius(c[:, :1], p, y, q, 0.3, 1.0)
    np.testing.assert_allclose(float(d(flat, jnp.asarray(p), jnp.asarray(y), jnp.asarray(q))),
                               want, rtol=2e-5)


class _Rotation2D(AbstractRandomOperator):
    """``y = R_theta x + s e`` in the plane, ``theta ~ U(0, 2 pi)``: the second moment
    ``E[y y^T] = (|x|^2 / 2 + s^2) I`` sees ``|x|`` and nothing of the angle."""

    noise_std: float = 0.5

    def sample_nuisance(self, key, n_draws):
        return jax.random.uniform(key, (n_draws,), maxval=2 * jnp.pi)

    def clean(self, x, theta):
        c, s = jnp.cos(theta), jnp.sin(theta)
        return jnp.stack([c * x[0] - s * x[1], s * x[0] + c * x[1]])


def test_objective_value_matches_the_rotation_closed_form():
    """Data: radius 1 (any angle), noisy. Particles at radius ``r``: the expected value is
    ``2 ((r^2 - 1) / 2)^2`` (two diagonal entries), whatever the particles' angles."""
    op = _Rotation2D()
    n = 4000
    k_theta, k_noise = jax.random.split(jax.random.key(3))
    theta = op.sample_nuisance(k_theta, n)
    ys = jax.vmap(op.clean, (None, 0))(jnp.array([1.0, 0.0]), theta)
    ys = op.add_noise(k_noise, ys)
    batch = Observations(ys)
    objective = SecondMomentObjective(op, scale=1.0, n_draws=16)
    keys = jax.random.split(jax.random.key(4), 200)
    for r in (1.0, 1.5):
        positions = jnp.array([[0.0, r], [r / np.sqrt(2), -r / np.sqrt(2)]])
        values = jax.vmap(lambda k, x=positions: objective(x, jnp.array([0.5, 0.5]), batch,
                                                           k))(keys)
        np.testing.assert_allclose(float(values.mean()), 2 * ((r**2 - 1) / 2) ** 2, atol=0.01)


def test_objective_ignores_the_batch_poses_and_keeps_its_ctf():
    prior = NuisancePrior(shift_std_angstrom=2.0)
    draws = prior.sample(jax.random.key(0), 5)
    given = ImageNuisance.create(jnp.full((5, 3), 33.0), jnp.full((5, 2), 7.0),
                                 defocus_u_angstrom=jnp.arange(5.0) * 1000 + 9000,
                                 optics_group=1)
    mixed = pose_from_prior(draws, given)
    np.testing.assert_array_equal(np.asarray(mixed.euler_deg), np.asarray(draws.euler_deg))
    np.testing.assert_array_equal(np.asarray(mixed.shift_angstrom),
                                  np.asarray(draws.shift_angstrom))
    np.testing.assert_array_equal(np.asarray(mixed.defocus_u_angstrom),
                                  np.asarray(given.defocus_u_angstrom))
    np.testing.assert_array_equal(np.asarray(mixed.optics_group), [1] * 5)
    assert eqx.tree_equal(jax.tree.structure(mixed), jax.tree.structure(given))


def test_reconstruct_runs_the_second_moment_objective_with_unknown_poses(tmp_path):
    """``--poses unknown --discrepancy mmd --mmd-features second-moment`` end to end on a
    tiny hinge set: the run's resolved config says second-moment and it writes its measure
    (weights summing to 1)."""
    from cryosip.cli.main import main
    from cryosip.datasets import parse_simulate_config, simulate_dataset

    sim = {"model": "hinge", "truth": [{"kind": "gaussian", "weight": 1.0, "mean": [0.5],
                                        "std": [0.1]}],
           "n_images": 48, "box_size": 16, "pixel_size_angstrom": 4.0, "snr": 1.0,
           "defocus_angstrom": [10000, 20000], "seed": 1, "render_batch_size": 64}
    data = tmp_path / "data"
    simulate_dataset(parse_simulate_config(sim), data, progress=False)
    run = tmp_path / "run"
    args = ["reconstruct", "--particles", str(data / "particles.star"), "--model", "hinge",
            "--out", str(run), "--poses", "unknown", "--discrepancy", "mmd",
            "--mmd-features", "second-moment", "--steps", "2", "--n-particles", "4",
            "--n-draws", "8", "--batch-size", "24", "--flow-box", "8", "--no-progress",
            "--bootstrap", "0"]
    assert main(args) == 0
    ensemble = np.load(run / "ensemble.npz")
    np.testing.assert_allclose(ensemble["weights"].sum(), 1.0, rtol=1e-5)
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["objective"]["features"] == "second-moment"
    assert resolved["data"]["poses"] == "unknown"
