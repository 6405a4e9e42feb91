"""The simulate pipeline and ``cryosip simulate``: outputs, truth, noise level, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import mrcfile
import numpy as np
import pytest
import yaml

from cryosip.datasets import (
    TruthMixture,
    load_simulate_config,
    parse_simulate_config,
    simulate_dataset,
    simulation_operator,
)
from cryosip.errors import InputError
from cryosip.forward import noise_std_for_snr
from cryosip.io import read_particles

ROOT = Path(__file__).resolve().parents[1]

ISSUE_CONFIG = """
model: adk-path        # adk-domains | hinge | {trajectory: FILE, topology: FILE}
truth:                 # mixture over x; components truncated to the model's domain
  - {kind: gaussian, weight: 0.6, mean: [0.2], std: [0.08]}
  - {kind: uniform, weight: 0.1, low: [0.0], high: [1.0]}
  - {kind: beta, weight: 0.3, a: [8.0], b: [2.0]}
n_images: 10000
box_size: 64
pixel_size_angstrom: 2.0
snr: 0.1
defocus_angstrom: [10000, 25000]   # uniform range
shift_std_angstrom: 0.0
seed: 0
"""

TINY = {
    "model": {"name": "hinge", "n_beads": 6},
    "truth": [{"kind": "gaussian", "weight": 0.5, "mean": [0.3], "std": [0.1]},
              {"kind": "beta", "weight": 0.5, "a": [8.0], "b": [2.0]}],
    "n_images": 10, "box_size": 16, "pixel_size_angstrom": 3.0, "snr": 0.5,
    "defocus_angstrom": [10000, 20000], "astigmatism_angstrom": 500.0,
    "shift_std_angstrom": 2.0, "seed": 3, "render_batch_size": 4,
}


def tiny(**changes):
    return parse_simulate_config({**TINY, **changes})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "data"
    result = simulate_dataset(tiny(), out, progress=False)
    return out, result


def test_issue_config_parses_as_is(tmp_path):
    path = tmp_path / "issue.yaml"
    path.write_text(ISSUE_CONFIG)
    cfg = load_simulate_config(path)
    assert cfg.model == "adk-path" and len(cfg.truth) == 3 and cfg.snr == 0.1
    assert cfg.defocus_angstrom == (10000.0, 25000.0)


SHIPPED = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("examples/*.yaml"),
                                                     *ROOT.glob("src/cryosip/data/*.yaml")])


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_configs_parse(path):
    """Every shipped simulate config parses with the current key names (none is stale)."""
    cfg = load_simulate_config(ROOT / path)
    assert cfg.n_images > 0
    assert "render_batch_size" in yaml.safe_load((ROOT / path).read_text())


@pytest.mark.parametrize(("old", "new", "value"), [("poses", "pose_distribution", "identity"),
                                                   ("batch_size", "render_batch_size", 4)])
def test_renamed_keys_are_refused_with_the_new_name(tmp_path, old, new, value, capfd, cli_main):
    """Issue 10: simulate's ``poses``/``batch_size`` meant other things than reconstruct's;
    an old config gets one line naming the new key, from the library and from the CLI."""
    with pytest.raises(InputError) as err:
        tiny(**{old: value})
    assert (err.value.field, err.value.expected) == (old, f"a known key (renamed {new})")
    assert str(err.value) == (f"config: field {old}: expected a known key (renamed {new}), "
                              f"found '{old}'")
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump({**TINY, old: value}))
    assert cli_main(["simulate", "--config", str(config), "--out", str(tmp_path / "d")]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"renamed {new}" in lines[0] and str(config) in lines[0]
    assert not (tmp_path / "d").exists()


def test_pose_distribution_identity_renders_unrotated_poses(tmp_path):
    """``pose_distribution: identity`` reaches the prior: every Euler angle is zero."""
    simulate_dataset(tiny(pose_distribution="identity", n_images=3), tmp_path / "d",
                     progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "d" / "truth.npz")["euler_deg"],
                                  np.zeros((3, 3)))


def test_outputs_and_truth(dataset):
    out, result = dataset
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "particles.mrcs", "particles.star", "provenance.json", "truth.npz"]
    truth = np.load(out / "truth.npz")
    assert truth["x"].shape == (10, 1) and truth["euler_deg"].shape == (10, 3)
    assert truth["shift_angstrom"].shape == (10, 2) and truth["reference_x"].shape[1] == 1
    assert np.all((truth["x"] >= 0) & (truth["x"] <= 1))
    np.testing.assert_allclose(truth["defocus_u_angstrom"] - truth["defocus_v_angstrom"], 500.0,
                               rtol=1e-4)
    assert [c["kind"] for c in json.loads(str(truth["truth_spec"]))] == ["gaussian", "beta"]
    again = TruthMixture.from_npz(out / "truth.npz")
    np.testing.assert_allclose(again.quantile(np.array([0.1, 0.5, 0.9])),
                               TruthMixture(tiny().truth, [0.0], [1.0]).quantile(
                                   np.array([0.1, 0.5, 0.9])), rtol=1e-12)
    stack = read_particles(out / "particles.star")
    assert (len(stack), stack.box_size, stack.pixel_size_angstrom) == (10, 16, 3.0)
    for key in ("euler_deg", "shift_angstrom", "defocus_u_angstrom", "astigmatism_angle_deg"):
        np.testing.assert_array_equal(np.asarray(getattr(stack.nuisance, key)), truth[key])
    assert yaml.safe_load((out / "config.yaml").read_text())["n_images"] == 10
    assert json.loads((out / "provenance.json").read_text())["seed"] == 3
    with mrcfile.open(out / "particles.mrcs") as mrc:
        assert mrc.data.dtype == np.float32 and float(mrc.voxel_size.x) == 3.0


def test_noise_level_matches_snr_definition(dataset):
    """sigma = noise_std_for_snr(clean images, snr); the residual has that std."""
    out, result = dataset
    truth = np.load(out / "truth.npz")
    stack = read_particles(out / "particles.star")
    render = eqx.filter_jit(lambda op, x, w: op.clean_paired(x, w))
    clean = render(simulation_operator(tiny()), jnp.asarray(truth["x"]), stack.nuisance)
    np.testing.assert_allclose(float(truth["noise_std"]), float(noise_std_for_snr(clean, 0.5)),
                               rtol=1e-4)
    np.testing.assert_allclose(float(truth["snr"]), 0.5, rtol=1e-6)
    resid = stack.images[:] - np.asarray(clean)
    se = 1.0 / np.sqrt(2 * resid.size)
    np.testing.assert_allclose(resid.std() / float(truth["noise_std"]), 1.0, atol=5 * se)


def test_results_do_not_depend_on_render_batch_size(dataset, tmp_path):
    out, _ = dataset
    simulate_dataset(tiny(render_batch_size=10), tmp_path / "b10", progress=False)
    a = mrcfile.read(out / "particles.mrcs")
    b = mrcfile.read(tmp_path / "b10" / "particles.mrcs")
    np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max())
    np.testing.assert_array_equal(np.load(tmp_path / "b10" / "truth.npz")["x"],
                                  np.load(out / "truth.npz")["x"])


def test_given_noise_std(tmp_path):
    result = simulate_dataset(tiny(snr=None, noise_std=0.25), tmp_path / "d", progress=False)
    assert result.noise_std == 0.25
    assert float(np.load(tmp_path / "d" / "truth.npz")["noise_std"]) == 0.25


def test_refuses_non_empty_dir_and_force_replaces(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(InputError, match="force"):
        simulate_dataset(tiny(), out, progress=False)
    assert (out / "old.txt").exists()
    simulate_dataset(tiny(), out, force=True, progress=False)
    assert not (out / "old.txt").exists() and (out / "truth.npz").exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    from cryosip.datasets import simulate as module

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "write_star", boom)
    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(tiny(), tmp_path / "d", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_simulate_in_process(tmp_path, capsys, cli_main):
    main = cli_main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["simulate", "--config", str(config), "--out", str(tmp_path / "d"),
                 "--no-progress"]) == 0
    assert "wrote 10 images" in capsys.readouterr().out
    assert (tmp_path / "d" / "particles.star").exists()
    assert main(["simulate", "--config", str(config), "--out", str(tmp_path / "d")]) == 2


def test_two_dimensional_model(tmp_path):
    """AdK domains (per-residue beads): x of shape (n, 2) inside the box, a 2-D reference."""
    cfg = tiny(model={"name": "adk-domains", "coarse": "residue"}, n_images=4,
               render_batch_size=4,
               truth=[{"kind": "gaussian", "mean": [0.2, 0.8], "std": [0.1, 0.1]}])
    simulate_dataset(cfg, tmp_path / "d", progress=False)
    truth = np.load(tmp_path / "d" / "truth.npz")
    assert truth["x"].shape == (4, 2) and truth["reference_x"].shape[1] == 2
    np.testing.assert_array_equal(truth["upper"], [1.0, 1.0])
    # the images carry the signal and noise the truth file states: mean per-image variance
    # sigma^2 (snr + 1), to 5 sd of the noise's sample variance (sigma^2 sqrt(2/N)) and of the
    # signal-noise cross term (2 sigma^2 sqrt(snr/N)) over the N pixels
    images = mrcfile.read(tmp_path / "d" / "particles.mrcs").astype(np.float64)
    sigma2, snr, n_pix = float(truth["noise_std"]) ** 2, float(truth["snr"]), images.size
    np.testing.assert_allclose(images.var(axis=(1, 2)).mean(), sigma2 * (snr + 1),
                               atol=5 * sigma2 * (np.sqrt(2 / n_pix) + 2 * np.sqrt(snr / n_pix)))
