"""`cryosip toy`: a tiny run writes its files; a non-empty output folder is refused."""

import json

import numpy as np

from cryosip.cli.main import main


def _argv(out, *extra):
    return ["toy", "--problem", "a", "--discrepancy", "kl", "--n-obs", "200",
            "--n-particles", "16", "--steps", "20", "--seed", "3", "--out", str(out), *extra]


def test_toy_writes_ensemble_plot_provenance(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(out)) == 0
    with np.load(out / "ensemble.npz") as f:
        assert f["positions"].shape == (16, 1)
        np.testing.assert_allclose(f["weights"].sum(), 1.0, rtol=1e-5)
        assert f["losses"].shape == (20,)
    assert (out / "density.png").stat().st_size > 1000
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["seed"] == 3 and prov["config"]["runs"][0]["discrepancy"] == "kl"
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["w1"] > 0 and summary[0]["floor_w1"] > 0
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
