"""benchmarks/compare_runs.py (the GPU check's CPU/GPU agreement), on hand-made run folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"


@pytest.fixture(scope="module")
def compare_runs():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(folder: Path, positions, weights, losses, heldout=(3, 4)) -> Path:
    folder.mkdir()
    np.savez(folder / "ensemble.npz", positions=np.asarray(positions, np.float32),
             weights=np.asarray(weights, np.float32), losses=np.asarray(losses, np.float32),
             train_index=np.array([0, 1, 2]), heldout_index=np.array(heldout))
    return folder


def test_differences_by_hand(compare_runs, tmp_path, capsys):
    ref = write_run(tmp_path / "cpu", [[0.5], [-2.0]], [0.25, 0.75], [1.0, 4.0])
    run = write_run(tmp_path / "gpu", [[0.5], [-1.5]], [0.25, 0.75], [1.0, 3.0], heldout=(4, 3))
    out = tmp_path / "cmp.json"
    assert compare_runs.main([str(run), str(ref), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    # |a - b| / max |b|: positions 0.5 / 2, weights 0, losses 1 / 4
    assert result["positions"]["max_abs"] == pytest.approx(0.5)
    assert result["positions"]["max_rel"] == pytest.approx(0.25)
    assert result["weights"]["max_rel"] == 0.0
    assert result["losses"]["max_rel"] == pytest.approx(0.25)
    assert result["same_split"] is False
    assert "max relative difference 2.500e-01" in capsys.readouterr().out


def test_identical_runs_and_bad_input(compare_runs, tmp_path, capsys):
    a = write_run(tmp_path / "a", [[0.1, 0.2]], [1.0], [2.0])
    b = write_run(tmp_path / "b", [[0.1, 0.2]], [1.0], [2.0])
    assert compare_runs.main([str(a), str(b)]) == 0
    assert "max relative difference 0.000e+00" in capsys.readouterr().out
    assert compare_runs.main([str(a), str(tmp_path / "missing")]) == 2
    assert "ensemble.npz: expected the ensemble.npz of a reconstruct run" in capsys.readouterr().err
    c = write_run(tmp_path / "c", [[0.1, 0.2], [0.3, 0.4]], [0.5, 0.5], [2.0])
    assert compare_runs.main([str(c), str(b)]) == 2
    assert "field positions: expected shape (1, 2)" in capsys.readouterr().err
