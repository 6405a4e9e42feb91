"""The full-data weights phase (cryosip.flows.refine) and the weight bootstrap built on it."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp

from cryosip.baselines.em import mixture_log_likelihood
from cryosip.flows.refine import (
    ShiftedLikelihood,
    known_pose_block,
    refine_from_loglik,
    refine_weights,
)
from cryosip.measures import ParticleMeasure
from cryosip.operators import Observations
from cryosip.pipeline.bootstrap import run_bootstrap
from cryosip.pipeline.config import ReconstructConfig
from test_baselines import LinearShift


def _softmax_optimum(loglik: np.ndarray) -> np.ndarray:
    """Maximum-likelihood mixture weights by L-BFGS on softmax logits (not EM)."""
    def negative(z):
        logw = z - logsumexp(z)
        return -np.mean(logsumexp(loglik + logw[None], axis=1))

    z = minimize(negative, np.zeros(loglik.shape[1]), method="L-BFGS-B",
                 options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 10000}).x
    return np.exp(z - logsumexp(z))


def test_em_limit_is_the_maximum_likelihood_weights():
    rng = np.random.default_rng(0)
    centres = np.array([-1.0, 0.0, 0.6, 2.0])
    y = np.concatenate([rng.normal(-1.0, 0.5, 300), rng.normal(1.8, 0.5, 200)])
    loglik = -0.5 * (y[:, None] - centres[None]) ** 2 / 0.25
    fit = refine_from_loglik(loglik, np.full(4, 0.25), max_iter=20000, tol=1e-14)
    np.testing.assert_allclose(fit.weights, _softmax_optimum(loglik), atol=2e-4)
    # EM never decreases the likelihood
    assert np.all(np.diff(fit.log_likelihood_history) >= -1e-12)


def test_full_data_likelihood_covers_every_row_in_order():
    """Blocks (padded) reproduce the Gaussian log-likelihood written out with numpy."""
    rng = np.random.default_rng(1)
    n = 203  # not a multiple of the block
    nuisance = rng.normal(size=(n, 2)).astype(np.float32)
    ys = (rng.normal(size=(n, 2)) + nuisance).astype(np.float32)
    xs = np.array([[-0.5], [0.0], [0.7]], np.float32)
    op = LinearShift(noise_std=0.3)  # y = (1, -0.5) x + w + 0.3 eps
    refined = refine_weights(known_pose_block(op), xs, np.full(3, 1 / 3), Observations(
        jnp.asarray(ys), jnp.asarray(nuisance)), block=64)
    a = np.array([1.0, -0.5])
    resid = ys[:, None, :] - xs[None, :, :] * a - nuisance[:, None, :]
    expected = -0.5 * np.sum(resid**2, -1) / 0.3**2 - np.log(2 * np.pi * 0.3**2)
    np.testing.assert_allclose(refined.loglik, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(refined.weights, refine_from_loglik(expected, np.full(3, 1 / 3))
                               .weights, atol=1e-4)  # float32 EM
    assert refined.mean_loglik_after >= refined.mean_loglik_before
    assert refined.converged and refined.record()["n_images"] == n


def test_weight_bootstrap_sd_matches_the_binomial_closed_form():
    """Two separated particles: the weight of the first is the fraction of images it
    explains, so its sampling sd is sqrt(p (1 - p) / N); the refits reproduce it."""
    rng = np.random.default_rng(2)
    n, p = 2000, 0.3
    first = rng.random(n) < p
    loglik = np.where(first[:, None], [0.0, -40.0], [-40.0, 0.0])

    class _Refined:
        pass

    refined = _Refined()
    refined.likelihood = ShiftedLikelihood.from_loglik(loglik)
    point = refine_from_loglik(loglik, np.full(2, 0.5)).weights
    config = ReconstructConfig.model_validate({"data": {"particles": "p.star"},
                                               "uncertainty": {"bootstrap": 200}})
    measure = ParticleMeasure(jnp.array([[0.25], [0.75]]), jnp.asarray(point, jnp.float32))

    class _Box:
        lower, upper, periodic = (0.0,), (1.0,), (False,)
        named_states = {"closed": ((0.0,), (0.5,)), "open": ((0.5,), (1.0,))}

    boot = run_bootstrap(config, None, _Box(), None, measure, refined)
    assert boot.n_refits == 200 and boot.steps == 0
    np.testing.assert_array_equal(boot.positions, np.broadcast_to([[0.25], [0.75]], (200, 2, 1)))
    sd = boot.weights[:, 0].std(ddof=1)
    closed_form = np.sqrt(point[0] * (1 - point[0]) / n)
    assert sd == pytest.approx(closed_form, rel=0.15)  # sd of an sd over 200 refits ~ 5%
    closed = boot.bands.populations["closed"]
    assert closed["lo"] < point[0] < closed["hi"]
    assert closed["hi"] - closed["lo"] == pytest.approx(2 * 1.6525 * sd, rel=1e-3)


def test_reconstruct_ends_with_the_full_data_weights_and_their_bootstrap(tmp_path):
    """End to end on the hinge: the weights are EM's limit on every training image at the
    flow's final positions, and the default bootstrap refits them (positions fixed)."""
    from cryosip.datasets import parse_simulate_config, simulate_dataset
    from cryosip.pipeline.reconstruct import reconstruct
    from test_bootstrap import HINGE

    simulate_dataset(parse_simulate_config(HINGE), tmp_path / "data", progress=False)
    config = ReconstructConfig.model_validate({
        "data": {"particles": str(tmp_path / "data" / "particles.star"), "flow_box": 16,
                 "heldout_fraction": 0.1},
        "model": "hinge", "solver": {"n_particles": 8},
        "loop": {"steps": 10, "batch_size": 32, "history_every": 5, "checkpoint_every": 10,
                 "progress": False}})
    result = reconstruct(config, tmp_path / "run")
    refined, flow = result.flow.refinement, result.flow
    n_train = len(result.data.train_index)
    assert refined is not None and refined.loglik.shape == (n_train, 8)
    positions, weights = flow.measure.to_numpy()
    np.testing.assert_array_equal(positions, flow.positions_history[-1])  # positions kept
    # the weights are the EM optimum of the stored likelihood (an independent optimiser)
    np.testing.assert_allclose(weights, _softmax_optimum(refined.loglik.astype(float)),
                               atol=5e-3)
    assert refined.mean_loglik_after >= refined.mean_loglik_before - 1e-9
    boot = result.bootstrap
    assert boot.n_refits == 40 and boot.steps == 0
    np.testing.assert_array_equal(boot.positions[3], positions)
    assert np.ptp(boot.weights[:, np.argmax(weights)]) > 0  # resamples move the weights


def test_batched_resample_em_equals_em_on_the_resampled_rows():
    from cryosip.baselines.em import em_weights, mixture_log_likelihood
    from cryosip.pipeline.bootstrap import resample_indices, resampled_em

    rng = np.random.default_rng(3)
    centres = np.linspace(-2, 2, 6)
    y = np.concatenate([rng.normal(-1.0, 0.7, 250), rng.normal(1.5, 0.5, 150)])
    loglik = -0.5 * (y[:, None] - centres[None]) ** 2 / 0.5 - 3.0 * rng.random((400, 1))
    init = em_weights(loglik).weights
    index = resample_indices(400, 3, seed=5)
    batched = resampled_em(ShiftedLikelihood.from_loglik(loglik), init, index, tol=1e-10,
                           max_iter=2000, group=2)  # two groups: 2 + 1 refits
    for b in range(3):
        rows = loglik[index[b]]
        single = em_weights(rows, init=init, max_iter=2000, tol=1e-10).weights
        # EM crawls along flat directions, so two EMs stop at slightly different weights
        # (1e-4) but at the same likelihood (float32 products)
        np.testing.assert_allclose(batched[b], single, atol=5e-4)
        np.testing.assert_allclose(mixture_log_likelihood(rows, batched[b]),
                                   mixture_log_likelihood(rows, single), rtol=0, atol=1e-6)


def test_float32_likelihood_keeps_the_loglik_and_em_matches_float64():
    rng = np.random.default_rng(4)
    loglik = rng.normal(scale=30.0, size=(500, 7))
    shifted = ShiftedLikelihood.from_loglik(loglik)
    assert shifted.p.dtype == np.float32 and np.all(shifted.p.max(axis=1) == 1.0)
    # entries within e^-87 of their row's best come back to float32 precision
    kept = loglik - loglik.max(axis=1, keepdims=True) > -80
    np.testing.assert_allclose(shifted.loglik[kept], loglik[kept], atol=2e-5)
    w, _, converged, _ = shifted.em(np.full(7, 1 / 7), max_iter=5000, tol=1e-8)
    reference = refine_from_loglik(loglik, np.full(7, 1 / 7), max_iter=5000, tol=1e-12)
    assert converged  # to 1e-8 per image (float32 products: not to 1e-12)
    np.testing.assert_allclose(w, reference.weights, atol=1e-3)
    assert mixture_log_likelihood(loglik, w) == pytest.approx(
        mixture_log_likelihood(loglik, reference.weights), abs=1e-6)


def test_resample_groups_draw_the_documented_rows():
    from cryosip.pipeline.bootstrap import _resample_groups, resample_indices

    groups = [list(g) for g in _resample_groups(300, 20, seed=4, group=8)]
    assert [len(g) for g in groups] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate(groups), resample_indices(300, 20, seed=4))


def test_scratch_file_likelihood_equals_the_one_in_memory(monkeypatch, tmp_path):
    """``p`` above the memory budget goes to a scratch file read in chunks: the same rows,
    the same EM and the same bootstrap refits as the array in memory (chunks of 64 rows, so
    the sums run over 8 chunks), and the file is gone once closed."""
    from cryosip.flows import refine
    from cryosip.pipeline.bootstrap import resample_indices, resampled_em

    rng = np.random.default_rng(6)
    loglik = rng.normal(scale=20.0, size=(500, 9))
    in_memory = ShiftedLikelihood.from_loglik(loglik)
    monkeypatch.setattr(refine, "CHUNK_ROWS", 64)
    on_disk = ShiftedLikelihood.from_loglik(loglik, memory_bytes=0, scratch=str(tmp_path))
    assert on_disk.on_disk and not in_memory.on_disk
    # an unnamed file (Linux): nothing is left in the folder, even if the run is killed
    assert not list(tmp_path.iterdir())
    assert os.fstat(on_disk._file.fileno()).st_size == 4 * 500 * 9
    np.testing.assert_array_equal(on_disk.p, in_memory.p)
    np.testing.assert_array_equal(on_disk.row_max, in_memory.row_max)
    assert [s for s, _ in on_disk.chunks()] == list(range(0, 500, 64))
    init = np.full(9, 1 / 9)
    w_mem, it_mem, _, h_mem = in_memory.em(init, max_iter=300, tol=1e-12)
    w_disk, it_disk, _, h_disk = on_disk.em(init, max_iter=300, tol=1e-12)
    np.testing.assert_allclose(w_disk, w_mem, rtol=1e-5, atol=1e-7)  # sums in another order
    np.testing.assert_allclose(h_disk, h_mem, rtol=1e-9)
    index = resample_indices(500, 3, seed=1)
    np.testing.assert_allclose(resampled_em(on_disk, w_mem, index, max_iter=50),
                               resampled_em(in_memory, w_mem, index, max_iter=50),
                               rtol=1e-5, atol=1e-7)
    on_disk.close()


def test_one_pass_em_is_the_textbook_iteration():
    """The fused EM (one pass gives the log-likelihood of the weights and their update)
    makes the textbook iterates ``w <- w * mean_n(p_nj / (p w)_n)`` written out in float64,
    with the history of the mean log-likelihood of each."""
    rng = np.random.default_rng(8)
    loglik = rng.normal(scale=3.0, size=(300, 5))
    lik = ShiftedLikelihood.from_loglik(loglik)
    w, iters, _, history = lik.em(np.full(5, 0.2), max_iter=7, tol=0.0)
    p = np.exp(loglik)
    ref = [np.full(5, 0.2)]
    for _ in range(7):
        ref.append(ref[-1] * (p / (p @ ref[-1])[:, None]).mean(axis=0))
    assert iters == 7
    np.testing.assert_allclose(w, ref[-1], rtol=1e-5)
    np.testing.assert_allclose(history[:, 0], [np.mean(np.log(p @ r)) for r in ref],
                               rtol=1e-6)


def test_likelihood_pass_in_spans_equals_one_block_loop(monkeypatch):
    """Spans of 100 rows (blocks of 32, a partial last span) store the rows the plain
    block loop gives, in order."""
    from cryosip.flows import refine

    rng = np.random.default_rng(9)
    n = 333
    nuisance = rng.normal(size=(n, 2)).astype(np.float32)
    ys = (rng.normal(size=(n, 2)) + nuisance).astype(np.float32)
    xs = np.array([[-0.5], [0.0], [0.7], [1.1]], np.float32)
    block = known_pose_block(LinearShift(noise_std=0.3))
    obs = Observations(jnp.asarray(ys), jnp.asarray(nuisance))
    whole = refine.likelihood_rows(block, xs, obs, np.arange(n), block=32)
    monkeypatch.setattr(refine, "SPAN_ROWS", 100)
    stored = refine._all_rows(block, xs, obs, 32, False)
    np.testing.assert_allclose(stored.loglik, whole, rtol=1e-6, atol=1e-5)
