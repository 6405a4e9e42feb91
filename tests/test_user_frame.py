"""A user's model in the data's frame, end to end, on an independent simulator.

``hinge_sim.py`` (numpy only) simulates a two-domain hinge (562 pseudo-atoms, hinge angle
0-60 deg, bimodal truth) in the frame of its consensus map (origin at domain A's centroid:
no frame is centred on its own centroid), projects it with its own Gaussian projection and
RELION's CTF at SNR 0.1, and writes a RELION 3.1 STAR + MRC stack and a 61-model PDB of the
hinge at 0, 1, ..., 60 deg. ``cryosip reconstruct --model frames.pdb`` must recover the
angle's distribution: W1 (deg, x = angle / 60 through the frames) within 3x of what the
built-in hinge model reaches with cryosip's own simulator at the same SNR, size and flow
settings (``BUILTIN_W1_FRACTION``, measured by ``builtin_reference`` below).
"""

from __future__ import annotations

import json

import gemmi
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import wasserstein_distance

import hinge_sim
from cryosip.structures import load_model

ANGLE_RANGE_DEG = 60.0
CI = dict(n=300, args=["--steps", "30", "--n-particles", "16", "--batch-size", "64"])
SLOW = dict(n=3000, args=[])
# W1 of the built-in hinge (cryosip simulate + reconstruct, truth 0.5 N(0.25, 0.083^2) +
# 0.5 N(0.75, 0.083^2) in x, box 64, 3 A/px, SNR 0.1, known poses, same flow arguments),
# as a fraction of the model's range (its x is the hinge angle over 40..160 deg): see
# builtin_reference() and docs/tutorial.md for the command and the numbers.
BUILTIN_W1_FRACTION = {300: 0.073, 3000: 0.0205}


def _w1_deg(run, truth_deg) -> float:
    z = np.load(run / "ensemble.npz")
    return float(wasserstein_distance(ANGLE_RANGE_DEG * z["positions"][:, 0], truth_deg,
                                      z["weights"]))


def _reconstruct(cli_main, data, run, extra):
    argv = ["reconstruct", "--particles", str(data / "particles.star"), "--model",
            str(data / "frames.pdb"), "--out", str(run), "--no-progress", *extra]
    assert cli_main(argv) == 0
    return json.loads((run / "provenance.json").read_text())


def test_file_model_keeps_the_given_frame(tmp_path):
    frames = np.stack([hinge_sim.hinge_structure(a) for a in (0.0, 30.0, 60.0)])
    hinge_sim.write_multimodel_pdb(tmp_path / "f.pdb", frames)
    kept = load_model(str(tmp_path / "f.pdb"))
    aligned = load_model({"structure": str(tmp_path / "f.pdb"), "align": True})
    for f, x in enumerate((0.0, 0.5, 1.0)):
        got = np.asarray(kept.structure_at(jnp.array([x])).positions_angstrom)
        np.testing.assert_allclose(got, frames[f], atol=1e-3)  # PDB has 3 decimals
        moved = np.asarray(aligned.structure_at(jnp.array([x])).positions_angstrom)
        np.testing.assert_allclose(moved.mean(0), 0.0, atol=1e-3)
    # the given frames are not centred: aligning moves frame 2 by several Å
    assert np.linalg.norm(frames[2].mean(0)) > 3.0


def test_pdb_written_by_the_simulator_reads_as_written(tmp_path):
    """gemmi (another reader) sees the PDB as the simulator meant it."""
    frames = np.stack([hinge_sim.hinge_structure(a) for a in (0.0, 60.0)])
    hinge_sim.write_multimodel_pdb(tmp_path / "f.pdb", frames)
    st = gemmi.read_structure(str(tmp_path / "f.pdb"))
    assert len(st) == 2
    xyz = np.array([a.pos.tolist() for ch in st[1] for r in ch for a in r])
    np.testing.assert_allclose(xyz, frames[1], atol=1e-3)


def _check_recovery(cli_main, tmp_path, size):
    data = tmp_path / "data"
    truth = hinge_sim.simulate(data, size["n"], snr=0.1, seed=0)
    prov = _reconstruct(cli_main, data, tmp_path / "run", size["args"])
    w1 = _w1_deg(tmp_path / "run", truth)
    reference = BUILTIN_W1_FRACTION[size["n"]] * ANGLE_RANGE_DEG
    assert w1 < 3 * reference, (w1, reference)
    reg = prov["registration"]
    assert np.linalg.norm(reg["offset_angstrom"]) < 0.5  # the frame was already right
    return w1, prov


def test_hinge_pdb_recovers_the_angle_distribution(cli_main, tmp_path):
    _check_recovery(cli_main, tmp_path, CI)


@pytest.mark.slow
def test_hinge_pdb_recovers_the_angle_distribution_3000(cli_main, tmp_path):
    w1, _ = _check_recovery(cli_main, tmp_path, SLOW)
    print(f"W1 = {w1:.3f} deg")


def test_register_none_is_worse_on_a_moved_model(cli_main, tmp_path):
    """The PDB moved by (6, -4, 3) Å: registration finds it, --register none is worse."""
    data = tmp_path / "data"
    truth = hinge_sim.simulate(data, CI["n"], snr=0.1, seed=0, model_shift=(6.0, -4.0, 3.0))
    reg = _reconstruct(cli_main, data, tmp_path / "reg", CI["args"])
    none = _reconstruct(cli_main, data, tmp_path / "none", [*CI["args"], "--register", "none"])
    np.testing.assert_allclose(reg["registration"]["offset_angstrom"], [-6, 4, -3], atol=0.5)
    assert none["registration"]["method"] == "none"
    assert any("frame" in w for w in reg["warnings"])
    w1_reg, w1_none = _w1_deg(tmp_path / "reg", truth), _w1_deg(tmp_path / "none", truth)
    assert w1_reg < 3 * BUILTIN_W1_FRACTION[CI["n"]] * ANGLE_RANGE_DEG
    assert w1_none > 2 * w1_reg, (w1_none, w1_reg)


def test_align_frames_flag(cli_main, tmp_path, capsys):
    from argparse import Namespace

    from cryosip.cli.reconstruct import _model_spec

    args = Namespace(model="frames.pdb", coarse="residue", align_frames=True)
    assert _model_spec(args) == {"structure": "frames.pdb", "align": True}
    argv = ["reconstruct", "--particles", "p.star", "--model", "hinge", "--align-frames",
            "--out", str(tmp_path / "run")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--align-frames" in err[0]
