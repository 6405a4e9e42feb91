"""Bootstrap bands (cryosip.pipeline.bootstrap): resampling, percentile bands, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.errors import InputError
from cryosip.pipeline.bootstrap import (
    ResampledSource,
    compute_bands,
    n_refits,
    refit_steps,
    resample_indices,
    run_bootstrap,
)
from cryosip.pipeline.config import ReconstructConfig, parse_config
from cryosip.pipeline.outputs import (
    bootstrap_arrays,
    bootstrap_record,
    write_ensemble,
    write_figures,
)
from cryosip.pipeline.reconstruct import reconstruct

HINGE = {
    "model": "hinge",
    "truth": [{"kind": "gaussian", "weight": 0.7, "mean": [0.25], "std": [0.08]},
              {"kind": "gaussian", "weight": 0.3, "mean": [0.8], "std": [0.06]}],
    "n_images": 96, "box_size": 32, "pixel_size_angstrom": 2.0, "snr": 0.5,
    "defocus_angstrom": [10000, 20000], "shift_std_angstrom": 0.0, "seed": 3,
    "render_batch_size": 48,
}


class _Box:
    """A 1-D model with two named states (the hinge's split at 0.5)."""

    lower, upper, periodic = (0.0,), (1.0,), (False,)
    named_states = {"closed": ((0.0,), (0.5,)), "open": ((0.5,), (1.0,))}


class _Rows:
    """A source whose observation i is the number i (to see which rows were taken)."""

    def __len__(self) -> int:
        return 10

    def take(self, rows):
        return np.asarray(rows) * 1.0


def test_resampling_is_with_replacement_and_reproducible():
    a, b = resample_indices(200, 3, seed=7), resample_indices(200, 3, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 200) and a.min() >= 0 and a.max() < 200
    # with replacement: a resample of 200 repeats some rows (P(no repeat) ~ 1e-86)
    assert all(len(np.unique(row)) < 200 for row in a)
    # and leaves about 1/e of the rows out (binomial sd ~ 0.034)
    assert abs(np.mean([200 - len(np.unique(r)) for r in a]) / 200 - np.exp(-1)) < 0.1
    assert not np.array_equal(a, resample_indices(200, 3, seed=8))
    assert not np.array_equal(a[0], a[1])  # each refit draws its own resample


def test_resampled_source_maps_rows_through_the_index():
    src = ResampledSource(_Rows(), np.array([3, 3, 9, 0]))
    assert len(src) == 4
    np.testing.assert_array_equal(src.take(np.array([0, 1, 2, 3])), [3, 3, 9, 0])
    np.testing.assert_array_equal(src.take(np.array([2, 0])), [9, 3])
    with pytest.raises(ValueError, match="resample rows"):
        ResampledSource(_Rows(), np.array([0, 10]))


def test_refit_steps_rule():
    assert [refit_steps(s) for s in (1, 4, 20, 300, 301)] == [1, 1, 5, 75, 76]


def _measure(closed: float) -> tuple[np.ndarray, np.ndarray]:
    """Two particles at 0.25 and 0.75 holding ``closed`` and ``1 - closed``."""
    return np.array([[0.25], [0.75]]), np.array([closed, 1.0 - closed])


def test_population_interval_is_t_times_the_refits_sd_around_the_point():
    refits = [_measure(c) for c in (0.74, 0.66, 0.72, 0.68, 0.70)]
    bands = compute_bands(_measure(0.71), np.stack([r[0] for r in refits]),
                          np.stack([r[1] for r in refits]), _Box())
    closed = bands.populations["closed"]
    # sd (ddof 1) = sqrt((2 * 0.04^2 + 2 * 0.02^2) / 4) = sqrt(0.001); Student's t
    # 95th percentile at 4 degrees of freedom = 2.1318 (tables)
    half = 2.1318 * np.sqrt(0.001)
    assert closed["value"] == pytest.approx(0.71)
    assert closed["lo"] == pytest.approx(0.71 - half, abs=1e-4)
    assert closed["hi"] == pytest.approx(0.71 + half, abs=1e-4)
    assert bands.populations["open"]["lo"] == pytest.approx(0.29 - half, abs=1e-4)
    assert closed["lo"] <= closed["value"] <= closed["hi"]
    # density band: at x = 0.25 the KDE peak scales with the closed mass (bandwidth 0.03)
    i = np.argmin(np.abs(bands.grid[0] - 0.25))
    peak = 1 / (0.03 * np.sqrt(2 * np.pi))
    assert bands.density_lo[0, i] == pytest.approx((0.71 - half) * peak, rel=1e-3)
    assert bands.density_hi[0, i] == pytest.approx((0.71 + half) * peak, rel=1e-3)
    assert np.all(bands.free_energy_lo <= bands.free_energy_hi + 1e-12)


def test_identical_refits_give_bands_of_zero_width_at_the_point_estimate():
    pos, w = _measure(0.62)
    bands = compute_bands((pos, w), np.stack([pos, pos]), np.stack([w, w]), _Box())
    assert bands.populations["closed"] == pytest.approx({"value": 0.62, "lo": 0.62, "hi": 0.62})
    np.testing.assert_allclose(bands.density_lo, bands.density)
    np.testing.assert_allclose(bands.free_energy_hi, bands.free_energy)


def test_bootstrap_setting_default_and_bad_value():
    config = ReconstructConfig.model_validate({"data": {"particles": "p.star"}})
    assert config.uncertainty.bootstrap is None  # the default count of the run's kind
    assert (n_refits(config), n_refits(config, refinement=object())) == (4, 40)
    with pytest.raises(InputError, match="uncertainty.bootstrap"):
        parse_config({"data": {"particles": "p.star"}, "uncertainty": {"bootstrap": -1}})
    off = config.model_copy(update={"uncertainty": config.uncertainty.model_copy(
        update={"bootstrap": 0})})
    assert run_bootstrap(off, None, None, None, None) is None  # 0 disables: nothing runs


@pytest.fixture(scope="module")
def hinge_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hinge_boot") / "data"
    simulate_dataset(parse_simulate_config(HINGE), out, progress=False)
    return out


def test_reconstruct_with_two_refits_end_to_end(hinge_data, tmp_path):
    """The CI guard: B = 2 warm-started refits, their bands in ensemble.npz, summary and
    figures."""
    config = ReconstructConfig.model_validate({
        "data": {"particles": str(hinge_data / "particles.star"), "flow_box": 16,
                 "heldout_fraction": 0.1},
        "model": "hinge", "solver": {"n_particles": 8}, "uncertainty": {"bootstrap": 2},
        "loop": {"steps": 20, "batch_size": 32, "history_every": 5, "checkpoint_every": 10,
                 "progress": False, "refine_weights": False}})
    result = reconstruct(config, tmp_path / "run")
    boot = result.bootstrap
    assert boot is not None and boot.n_refits == 2 and boot.steps == 5
    assert boot.positions.shape == (2, 8, 1) and boot.weights.shape == (2, 8)
    np.testing.assert_allclose(boot.weights.sum(axis=1), 1.0, rtol=1e-5)
    main = result.flow.measure.to_numpy()[0]
    # warm starts that move: each refit left the main measure, and the two differ
    assert np.all(np.max(np.abs(boot.positions - main[None]), axis=(1, 2)) > 1e-5)
    assert not np.allclose(boot.positions[0], boot.positions[1])
    pops = boot.bands.populations
    assert set(pops) == {"closed", "open"}
    for p in pops.values():
        assert 0.0 <= p["lo"] <= p["hi"] <= 1.0 and 0.0 <= p["value"] <= 1.0
    assert pops["closed"]["value"] + pops["open"]["value"] == pytest.approx(1.0, abs=1e-5)

    out = tmp_path / "run"
    pos, w = result.flow.measure.to_numpy()
    write_ensemble(out / "ensemble.npz", pos, w, {}, bootstrap_arrays(boot))
    with np.load(out / "ensemble.npz") as f:
        assert f["bootstrap_positions"].shape == (2, 8, 1)
        assert f["band_density_lo"].shape == f["band_grid"].shape == (1, 200)
        assert list(f["population_names"]) == ["closed", "open"]
        np.testing.assert_allclose(f["population_lo"][0], pops["closed"]["lo"])
        assert f["bootstrap_populations"].shape == (2, 2)
    record = json.loads(json.dumps(bootstrap_record(boot)))
    assert set(record["populations"]["closed"]) == {"value", "lo", "hi"}
    assert record["bootstrap"]["refits"] == 2 and record["bootstrap"]["steps_per_refit"] == 5
    figures = write_figures(out, result.model, pos, w, {}, None, bootstrap=boot)
    assert {p.name for p, _ in figures} == {"density.png", "free_energy.png"}
    assert all("bootstrap" in caption for _, caption in figures)
