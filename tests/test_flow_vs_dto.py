"""benchmarks/flow_vs_dto.py: the pieces that decide its numbers, checked without a flow run
(nested grid columns against a brute-force point match, the claims and slopes on hand-made
rows, the 1-D truth against consistency.py's)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "flow_vs_dto.py"


@pytest.fixture(scope="module")
def fvd():
    spec = importlib.util.spec_from_file_location("flow_vs_dto", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("k", "k_max", "d"), [(11, 101, 1), (4, 31, 2), (11, 21, 2),
                                               (3, 9, 3), (5, 9, 3)])
def test_nested_columns_pick_the_coarse_grid(fvd, k, k_max, d):
    from cryosip.baselines import grid_support

    lower, upper = -3.0 * np.ones(d), 2.0 * np.ones(d)
    fine, coarse = grid_support(lower, upper, k_max), grid_support(lower, upper, k)
    picked = fine[fvd.nested_columns(k, k_max, d)]
    # brute force: every coarse point has an identical fine point, in the same order
    dist = np.abs(coarse[:, None, :] - fine[None, :, :]).max(-1)
    np.testing.assert_allclose(fine[dist.argmin(1)], coarse, atol=1e-12)
    np.testing.assert_allclose(picked, coarse, atol=1e-12)


def test_grids_must_be_nested(fvd):
    with pytest.raises(SystemExit):
        fvd.parse_args(["--k3", "3", "4"])
    assert fvd.parse_args(["--k3", "5", "3", "9"]).grids[3] == [3, 5, 9]


def _row(d, method, score, wall, cpu, k=None, floor=0.01):
    return {"d": d, "method": method, "score": score, "floor": floor, "wall_s": wall,
            "cpu_s": cpu, "K": k}


def test_claims_on_hand_made_rows(fvd):
    rows = [_row(2, "flow", 0.019, 100.0, 50.0), _row(2, "reweight", 0.05, 10.0, 5.0, 5),
            _row(3, "flow", 0.024, 100.0, 50.0),
            _row(3, "reweight", 0.03, 40.0, 20.0, 3), _row(3, "reweight", 0.02, 90.0, 60.0, 5),
            _row(3, "reweight", 0.01, 300.0, 150.0, 9)]
    c = fvd.claims(rows)
    assert c["d2"]["holds"]  # 1.9x the floor
    np.testing.assert_allclose(c["d2"]["flow_over_floor"], 1.9)
    # within the flow's 100 s wall the finest grid is 5^3 (W2 0.02 < 0.024): the claim fails
    assert c["d3"]["finest_grid_in_flow_wall_s"] == 5
    assert c["d3"]["finest_grid_in_flow_cpu_s"] == 3  # 60 cpu-s > the flow's 50
    assert not c["d3"]["beats_grid_wall"] and c["d3"]["beats_grid_cpu"]
    assert not c["d3"]["holds"]


def test_the_finest_grid_costs_at_least_the_flow(fvd):
    # the flow's full-data pass: 1e4 images x 100 particles in 50 s -> 50 us a pair, so a
    # K^3 grid at N = 1e4 takes 0.5 K^3 s: 7^3 171 s, 9^3 364 s, 13^3 1098 s
    flow = {"timings": {"refine_s": 50.0}, "N": 10_000, "n_particles": 100, "wall_s": 300.0}
    assert fvd.choose_grids(fvd.GRIDS[3], flow, 3) == [3, 5, 9]
    assert fvd.choose_grids(fvd.GRIDS[3], {**flow, "wall_s": 1000.0}, 3) == [3, 4, 5, 7, 13]
    assert fvd.choose_grids(fvd.GRIDS[3], {**flow, "wall_s": 1e5}, 3) == fvd.GRIDS[3][-1]
    assert fvd.choose_grids(fvd.GRIDS[3], {**flow, "timings": {}}, 3) == fvd.GRIDS[3][-1]


def test_slopes_recover_a_power_law(fvd):
    ns = np.array([1000, 3000, 10000, 30000])
    rows = [{"method": "flow", "N": int(n), "score": 2.0 * n**-0.5, "floor": n**-0.5}
            for n in ns]
    rows += [{"method": "reweight", "N": int(n), "score": 0.5 * n**-0.3, "floor": n**-0.5}
             for n in ns]
    s = fvd.slopes(rows)
    np.testing.assert_allclose([s["flow"], s["reweight"], s["floor"]], [-0.5, -0.3, -0.5],
                               atol=1e-10)
    assert s["holds"]


def test_1d_truth_is_consistency_truth(fvd):
    from cryosip.datasets.truth import TruthMixture

    truth = TruthMixture.from_specs(fvd.truth_specs(1), [0.0], [1.0])
    x = np.linspace(0.0, 1.0, 201)[:, None]
    # consistency.py's CDF, written out: the mixture's normal CDFs renormalised on [0, 1]
    from scipy.stats import norm

    def cdf(v):
        parts = 0.6 * norm.cdf(v, 0.3, 0.08) + 0.4 * norm.cdf(v, 0.72, 0.06)
        lo = 0.6 * norm.cdf(0.0, 0.3, 0.08) + 0.4 * norm.cdf(0.0, 0.72, 0.06)
        hi = 0.6 * norm.cdf(1.0, 0.3, 0.08) + 0.4 * norm.cdf(1.0, 0.72, 0.06)
        return (parts - lo) / (hi - lo)

    np.testing.assert_allclose(truth.cdf(x), cdf(x[:, 0]), atol=2e-4)


def test_rows_come_back_from_a_printed_table(fvd, capsys, tmp_path):
    rows = [{**_row(2, "flow", 0.0412, 1783.4, 269.7), "N": 10000, "n_particles": 128},
            {**_row(2, "reweight", 0.0533, 55.2, 20.1, 7), "N": 10000, "n_support": 49,
             "likelihood_s": 50.0, "fit_s": 5.2}]
    fvd.print_table(rows)
    log = tmp_path / "run.log"
    log.write_text("d = 2 (adk-domains): N = 10000\n" + capsys.readouterr().out)
    back = fvd.rows_from_log(log)["rows"]
    assert [r["method"] for r in back] == ["flow", "reweight"]
    assert back[0]["K"] is None and back[1]["K"] == 7 and back[1]["n_support"] == 49
    np.testing.assert_allclose([r["score"] for r in back], [0.0412, 0.0533], atol=5e-5)
    np.testing.assert_allclose([r["cpu_s"] for r in back], [269.7, 20.1], atol=0.05)
    np.testing.assert_allclose(back[1]["fit_s"], 5.2, atol=0.05)
