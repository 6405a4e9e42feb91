"""Self-describing run folders (issue 10 item 3, STYLE 18): ``run.json`` and ``heldout.npz``.

Independent checks: the particle file is rewritten with two optics groups by ``starfile``
and read back here with ``starfile`` and ``mrcfile``, not with cryosip's readers; the
held-out images are checked in Fourier space against the stack's own spectrum (numpy), not
against cryosip's crop. Then the particle files are moved away and ``cryosip evaluate``
must give the same numbers, with the model, operator and images rebuilt from the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryosip.cli.main import main
from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.pipeline import load_run

HINGE = {"model": "hinge",
         "truth": [{"kind": "gaussian", "weight": 0.7, "mean": [0.25], "std": [0.08]},
                   {"kind": "gaussian", "weight": 0.3, "mean": [0.8], "std": [0.06]}],
         "n_images": 160, "box_size": 32, "pixel_size_angstrom": 2.0, "snr": 0.5,
         "defocus_angstrom": [10000, 20000], "seed": 3, "render_batch_size": 80}
FLOW = ["--steps", "3", "--n-particles", "8", "--batch-size", "16", "--flow-box", "16",
        "--no-progress"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """``(data folder, flow run, baseline run)``: a simulated hinge whose STAR is rewritten
    by ``starfile`` with two optics groups (every third image in group 2, at 200 kV)."""
    root = tmp_path_factory.mktemp("runfolder")
    data = root / "data"
    simulate_dataset(parse_simulate_config(HINGE), data, progress=False)
    blocks = starfile.read(data / "particles.star", always_dict=True)
    second = blocks["optics"].assign(rlnOpticsGroup=2, rlnOpticsGroupName="g2",
                                     rlnVoltage=200.0, rlnSphericalAberration=1.4)
    blocks["optics"] = pd.concat([blocks["optics"], second], ignore_index=True)
    blocks["particles"]["rlnOpticsGroup"] = np.where(np.arange(160) % 3 == 2, 2, 1)
    starfile.write(blocks, data / "two.star")
    star = str(data / "two.star")
    run, base = root / "run", root / "reweight"
    assert main(["reconstruct", "--particles", star, "--model", "hinge", "--out", str(run),
                 "--register", "none", *FLOW]) == 0
    assert main(["baseline", "--method", "reweight", "--particles", star, "--model", "hinge",
                 "--out", str(base), "--n-support", "11", "--flow-box", "16"]) == 0
    return data, run, base


def test_run_json_matches_the_particle_file_read_by_starfile_and_mrcfile(made):
    data, run, _ = made
    record = json.loads((run / "run.json").read_text())
    blocks = starfile.read(data / "two.star", always_dict=True)
    parts, optics = blocks["particles"], blocks["optics"]
    with mrcfile.open(data / "particles.mrcs") as mrc:
        stack, voxel = mrc.data.copy(), float(mrc.voxel_size.x)
    g = record["geometry"]
    assert (g["box_size"], g["flow_box"]) == (stack.shape[-1], 16)
    np.testing.assert_allclose([g["pixel_size_angstrom"], g["flow_pixel_size_angstrom"]],
                               [voxel, voxel * stack.shape[-1] / 16], rtol=1e-6)
    groups = record["optics"]["groups"]
    np.testing.assert_allclose([o["voltage_kv"] for o in groups], optics["rlnVoltage"],
                               rtol=1e-12)
    np.testing.assert_allclose([o["cs_mm"] for o in groups],
                               optics["rlnSphericalAberration"], rtol=1e-12)
    np.testing.assert_array_equal(record["optics"]["image_group"],
                                  parts["rlnOpticsGroup"].to_numpy() - 1)
    assert [o["name"] for o in groups] == ["1", "2"]
    with np.load(run / "ensemble.npz") as ens:
        np.testing.assert_array_equal(record["split"]["heldout_index"], ens["heldout_index"])
        train = ens["train_index"]
    held = np.asarray(record["split"]["heldout_index"])
    assert len(held) == 8 and not set(held) & set(train) and len(held) + len(train) == 160
    prov = json.loads((run / "provenance.json").read_text())
    assert record["model"]["registration_offset_angstrom"] is None  # --register none
    assert record["model"]["frame"] == "built-in" and record["prior"]["poses"] == "known"
    for key in ("offset", "contrast", "noise_std"):
        np.testing.assert_allclose(record["scale"][key], prov["scale"][key], rtol=1e-12)


def test_heldout_npz_holds_the_cropped_images_in_model_units_and_their_nuisances(made):
    data, run, _ = made
    record = json.loads((run / "run.json").read_text())
    s = record["scale"]
    parts = starfile.read(data / "two.star", always_dict=True)["particles"]
    with mrcfile.open(data / "particles.mrcs") as mrc:
        stack = mrc.data.astype(float)
    with np.load(run / "heldout.npz") as f:
        held = {k: f[k] for k in f.files}
    index = held["index"]
    np.testing.assert_array_equal(index, record["split"]["heldout_index"])
    rows = parts.iloc[index]
    np.testing.assert_array_equal(held["image_names"], rows["rlnImageName"].to_numpy())
    angles = rows[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(held["euler_deg"], angles, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(held["defocus_u_angstrom"], rows["rlnDefocusU"], rtol=1e-6)
    np.testing.assert_array_equal(held["optics_group"], rows["rlnOpticsGroup"] - 1)
    # Fourier crop 32 -> 16 in model units: inside the small grid's Nyquist the spectrum
    # of each stored image is (16/32)^2 times the spectrum of (y - offset) / contrast
    small, big = 16, stack.shape[-1]
    f_big = np.fft.fft2((stack[index] - s["offset"]) / s["contrast"]) * (small / big) ** 2
    f_small = np.fft.fft2(held["images"].astype(float))
    k = np.arange(-(small // 2) + 1, small // 2)  # strictly inside the small grid's Nyquist
    a = f_small[:, k % small][:, :, k % small]
    b = f_big[:, k % big][:, :, k % big]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))


def test_evaluate_gives_the_same_numbers_after_the_particle_files_are_gone(made, capsys):
    data, run, base = made
    truth = data.parent / "truth.npz"
    shutil.copy(data / "truth.npz", truth)
    assert main(["evaluate", "--run", str(run), "--truth", str(truth)]) == 0
    before = json.loads(capsys.readouterr().out)
    held_before = np.asarray(load_run(run).heldout.values)
    gone = data.parent / "moved-away"
    data.rename(gone)
    try:
        assert main(["evaluate", "--run", str(run), "--truth", str(truth)]) == 0
        after = json.loads(capsys.readouterr().out)
        assert main(["evaluate", "--run", str(base), "--truth", str(truth)]) == 0
        baseline = json.loads(capsys.readouterr().out)
        np.testing.assert_array_equal(np.asarray(load_run(run).heldout.values), held_before)
    finally:
        gone.rename(data)
    assert after == before
    for scores in (after, baseline):
        assert scores["n_heldout_scored"] == 8
        assert scores["heldout_mmd"] < scores["heldout_mmd_uniform"], scores
    assert baseline["method"] == "reweight"


def test_loaded_run_has_the_operator_prepared_from_the_star_file(made):
    """Held-out images, split and every field of the operator rebuilt from run.json equal
    what the pipeline prepares from the particle file with the run's scale."""
    import jax

    from cryosip.io import read_particles
    from cryosip.pipeline.data import prepare_data
    from cryosip.pipeline.reconstruct import build_operator

    data, run, _ = made
    loaded = load_run(run)
    model = loaded.model
    s = loaded.scale
    stack = read_particles(data / "two.star")
    prepared = prepare_data(stack, model, known_poses=True,
                            flow_box=16, heldout_fraction=0.05, seed=loaded.seed,
                            offset=s.offset, contrast=s.contrast,
                            noise_std=s.noise_std * stack.box_size / 16)  # stack units
    assert prepared.scale.noise_std == pytest.approx(s.noise_std)
    np.testing.assert_array_equal(prepared.heldout_index, loaded.heldout_index)
    np.testing.assert_array_equal(prepared.train_index, loaded.train_index)
    obs = prepared.observations(prepared.heldout_index)
    np.testing.assert_allclose(np.asarray(loaded.heldout.values), np.asarray(obs.values),
                               rtol=0, atol=1e-6)
    for a, b in zip(jax.tree.leaves(loaded.heldout.nuisance), jax.tree.leaves(obs.nuisance),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    want, got = build_operator(prepared, model, True), loaded.operator
    assert (got.image_config, got.window_pixels) == (want.image_config, want.window_pixels)
    np.testing.assert_allclose(float(got.noise_std), float(want.noise_std), rtol=1e-12)
    for a, b in zip(jax.tree.leaves(got.optics), jax.tree.leaves(want.optics), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


def _copy_without(run: Path, dst: Path, *names: str) -> Path:
    shutil.copytree(run, dst)
    for name in names:
        (dst / name).unlink()
    return dst


def test_an_old_run_folder_is_refused_on_one_line(made, tmp_path, capsys):
    data, run, _ = made
    old = _copy_without(run, tmp_path / "old", "run.json", "heldout.npz")
    assert main(["evaluate", "--run", str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json" in err[0] and "re-run reconstruct" in err[0], err
    # against the truth alone it is still scored, with the same W1 as the full folder
    truth = str(data / "truth.npz")
    assert main(["evaluate", "--run", str(old), "--truth", truth, "--no-heldout"]) == 0
    w1_old = json.loads(capsys.readouterr().out)["w1"]
    assert main(["evaluate", "--run", str(run), "--truth", truth, "--no-heldout"]) == 0
    assert json.loads(capsys.readouterr().out)["w1"] == w1_old
    record = json.loads((run / "run.json").read_text())
    for name, text in (("future", json.dumps({**record, "schema_version": 99})),
                       ("garbage", "{not json")):
        folder = _copy_without(run, tmp_path / name)
        (folder / "run.json").write_text(text)
        assert main(["evaluate", "--run", str(folder), "--no-heldout"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "run.json" in err[0], err


def test_unknown_poses_record_the_prior_and_skip_the_heldout_mmd(made, tmp_path):
    """The prior the operator drew nuisances from comes back field by field."""
    from cryosip.io import read_particles
    from cryosip.pipeline.config import ReconstructConfig
    from cryosip.pipeline.data import prepare_data
    from cryosip.pipeline.evaluate import evaluate_run
    from cryosip.pipeline.reconstruct import build_operator
    from cryosip.pipeline.runfolder import write_run_folder
    from cryosip.structures.factory import load_model

    data, _, _ = made
    model = load_model("hinge")
    config = ReconstructConfig(data={"particles": str(data / "two.star"), "poses": "unknown"},
                               model="hinge", seed=4)
    prepared = prepare_data(read_particles(data / "two.star", require_poses=False), model,
                            known_poses=False, flow_box=16, heldout_fraction=0.05, seed=4,
                            offset=0.0, contrast=1.0, noise_std=0.02)
    prior = build_operator(prepared, model, False).prior
    out = tmp_path / "unknown"
    out.mkdir()
    np.savez(out / "ensemble.npz", positions=np.array([[0.3], [0.6]]), weights=[0.5, 0.5])
    write_run_folder(out, config, prepared, model, method="test", prior=prior)
    loaded = load_run(out)
    assert not loaded.known_poses and loaded.seed == 4
    assert loaded.prior.optics_group_probs == prior.optics_group_probs
    np.testing.assert_allclose(loaded.prior.defocus_range_angstrom,
                               prior.defocus_range_angstrom, rtol=1e-12)
    parts = starfile.read(data / "two.star", always_dict=True)["particles"]
    mean_defocus = 0.5 * (parts["rlnDefocusU"] + parts["rlnDefocusV"])
    np.testing.assert_allclose(loaded.prior.defocus_range_angstrom,
                               [mean_defocus.min(), mean_defocus.max()], rtol=1e-6)
    scores = evaluate_run(out)
    assert "heldout_mmd" not in scores and set(scores["populations"]) == {"closed", "open"}


def test_a_file_model_is_recorded_with_absolute_paths_frame_and_offset(made, tmp_path,
                                                                       monkeypatch):
    """A relative structure file, aligned and moved by a registration offset, loads back
    from run.json in another working folder with the same atoms."""
    import hinge_sim
    from cryosip.io import read_particles
    from cryosip.pipeline.config import ReconstructConfig
    from cryosip.pipeline.data import prepare_data
    from cryosip.pipeline.runfolder import write_run_folder
    from cryosip.structures.factory import load_model
    from cryosip.structures.translated import TranslatedModel

    data, _, _ = made
    frames = np.stack([hinge_sim.hinge_structure(a) for a in (0.0, 30.0, 60.0)])
    (tmp_path / "models").mkdir()
    hinge_sim.write_multimodel_pdb(tmp_path / "models" / "f.pdb", frames)
    monkeypatch.chdir(tmp_path / "models")
    spec = {"structure": "f.pdb", "align": True}
    model = TranslatedModel(load_model(spec), [6.0, -4.0, 3.0])
    config = ReconstructConfig(data={"particles": str(data / "two.star")}, model=spec)
    prepared = prepare_data(read_particles(data / "two.star"), model, known_poses=True,
                            flow_box=16, heldout_fraction=0.05, seed=0, offset=0.0,
                            contrast=1.0, noise_std=0.02)
    out = tmp_path / "run"
    out.mkdir()
    np.savez(out / "ensemble.npz", positions=np.array([[0.5]]), weights=[1.0])
    write_run_folder(out, config, prepared, model, method="test", prior=None)
    monkeypatch.chdir(tmp_path)
    loaded = load_run(out)
    m = loaded.record["model"]
    assert (m["frame"], m["aligned"], m["spec"]) == ("aligned", True, spec)
    assert m["resolved_spec"]["structure"] == str(tmp_path / "models" / "f.pdb")
    np.testing.assert_allclose(m["registration_offset_angstrom"], [6.0, -4.0, 3.0], rtol=0)
    x = jnp.array([0.5])
    # aligned frames are centred, so the rebuilt model's centroid is the offset itself
    got = np.asarray(loaded.model.structure_at(x).positions_angstrom)
    np.testing.assert_allclose(got.mean(axis=0), [6.0, -4.0, 3.0], atol=1e-3)
    np.testing.assert_allclose(got, np.asarray(model.structure_at(x).positions_angstrom),
                               rtol=0, atol=1e-5)


def test_a_given_noise_sd_is_the_stacks_and_the_crop_scales_it(made):
    """The Fourier crop to the flow box scales white noise by flow_box / box (checked on
    numpy noise), so a --noise-std given in the stack's units is converted, not taken as
    the cropped images' sd (which tempered every likelihood by (box / flow_box)^2)."""
    from cryosip.io import read_particles
    from cryosip.pipeline.data import fourier_crop, prepare_data
    from cryosip.structures.factory import load_model

    noise = np.random.default_rng(0).normal(size=(400, 32, 32))
    assert fourier_crop(noise, 16).std() == pytest.approx(0.5, rel=0.03)
    data, _, _ = made
    stack = read_particles(data / "two.star")
    prepared = prepare_data(stack, load_model("hinge"), known_poses=True, flow_box=16,
                            heldout_fraction=0.05, seed=0, offset=0.0, contrast=1.0,
                            noise_std=2.0)
    assert prepared.scale.noise_std == pytest.approx(2.0 * 16 / stack.box_size)
