"""Nested reconstruct configs (issue 10 item 1): YAML + flags (a flag given wins), errors
naming the YAML key or the flag, config.yaml written to the run folder, and a rerun from it
giving the same ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cryosip.cli.main import build_parser, main
from cryosip.cli.reconstruct import merged_config
from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.errors import InputError
from cryosip.pipeline.config import ReconstructConfig, load_config, write_config

YAML = """\
data: {particles: p.star, flow_box: 16, heldout_fraction: 0.2}
model: hinge
objective: {kind: mmd, n_draws: 64, bandwidth: 2.0}
solver: {n_particles: 12, temperature: 0.1}
loop: {steps: 7, batch_size: 20}
seed: 4
"""


def _args(argv):
    return build_parser().parse_args(["reconstruct", "--out", "o", *argv])


def test_flags_override_only_the_keys_given(tmp_path):
    (tmp_path / "run.yaml").write_text(YAML)
    config = merged_config(_args(["--config", str(tmp_path / "run.yaml"), "--steps", "9",
                                  "--n-draws", "32", "--no-progress"]))
    # from the flags
    assert (config.loop.steps, config.objective.n_draws, config.loop.progress) == (9, 32, False)
    # from the YAML, untouched by the flags' argparse defaults
    assert config.objective.kind == "mmd" and config.objective.bandwidth == 2.0
    assert (config.solver.n_particles, config.loop.batch_size, config.seed) == (12, 20, 4)
    assert config.data.flow_box == 16 and config.model == "hinge"
    # a relative particle path in a YAML is relative to the YAML's folder
    assert config.data.particles == str((tmp_path / "p.star").resolve())
    # defaults where neither says anything
    assert config.solver.wfr is True and config.data.poses == "known"
    assert config.solver.max_displacement == 0.02 and config.outputs.quantiles == (0.1, 0.5, 0.9)


def test_flags_alone_give_the_documented_defaults():
    config = merged_config(_args(["--particles", "p.star"]))
    assert config == ReconstructConfig.model_validate({"data": {"particles": "p.star"}})
    assert config.model == {"name": "adk-path", "coarse": "residue"}
    assert (config.objective.kind, config.minibatch_size, config.solver.n_particles,
            config.loop.steps, config.data.flow_box) == ("kl", 128, None, None, 32)
    # the particle count's rule: 32 * 2^d (64, 128, 256), unless set
    assert [config.solver.particles_for(d) for d in (1, 2, 3)] == [64, 128, 256]
    # half as many with unknown poses (each costs a pass over the pose grid)
    assert [config.solver.particles_for(d, True) for d in (1, 2, 3)] == [32, 64, 128]
    # the steps' rule: 1 in 1-D before the full-data phase, else 100, unless set
    assert [config.flow_steps(d) for d in (1, 2, 3)] == [1, 100, 100]
    no_phase = ReconstructConfig.model_validate(
        {"data": {"particles": "p"}, "loop": {"refine_weights": False}})
    mmd = ReconstructConfig.model_validate({"data": {"particles": "p"},
                                            "objective": {"kind": "mmd"}})
    assert no_phase.flow_steps(1) == mmd.flow_steps(1) == 100
    # MMD on posterior features (the MMD default with unknown poses): 200
    unknown_mmd = ReconstructConfig.model_validate(
        {"data": {"particles": "p", "poses": "unknown"}, "objective": {"kind": "mmd"}})
    assert [unknown_mmd.flow_steps(d) for d in (1, 2)] == [200, 200]
    assert merged_config(_args(["--particles", "p", "--steps", "7"])).flow_steps(1) == 7
    assert merged_config(_args(["--particles", "p", "--flow-box", "0"])).data.flow_box is None


def test_another_discrepancy_on_the_command_line_keeps_only_the_draws(tmp_path):
    (tmp_path / "run.yaml").write_text(YAML)
    config = merged_config(_args(["--config", str(tmp_path / "run.yaml"),
                                  "--discrepancy", "kl"]))
    assert config.objective.kind == "kl" and config.objective.n_draws == 64


@pytest.mark.parametrize("text, field, found", [
    (YAML.replace("n_particles", "n_partcles"), "solver.n_partcles", "'n_partcles'"),
    (YAML.replace("bandwidth: 2.0", "bandwidth: -1"), "objective.bandwidth", "-1"),
    (YAML.replace("kind: mmd", "kind: wasserstein"), "objective.kind", "'wasserstein'"),
    (YAML + "data_x: 1\n", "data_x", "'data_x'"),
    (YAML.replace("kind: mmd, ", "").replace(", bandwidth: 2.0", ""), None, None),  # KL
    ("- just\n- a list\n", None, "list"),
])
def test_a_bad_yaml_names_the_file_and_the_dotted_key(tmp_path, text, field, found):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    if field is None and found is None:  # objective without kind: KL, the default
        assert merged_config(_args(["--config", str(path)])).objective.kind == "kl"
        return
    with pytest.raises(InputError) as err:
        merged_config(_args(["--config", str(path)]))
    assert err.value.source == str(path) and err.value.field == field
    if found is not None:
        assert err.value.found == found


def test_a_bad_flag_names_the_flag_and_the_cli_exits_2(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(YAML)
    with pytest.raises(InputError) as err:
        merged_config(_args(["--config", str(tmp_path / "run.yaml"), "--mmd-bandwidth", "0"]))
    assert (err.value.source, err.value.field) == ("command line", "--mmd-bandwidth")
    with pytest.raises(InputError, match="--discrepancy mmd"):  # KL has no bandwidth
        merged_config(_args(["--particles", "p", "--mmd-bandwidth", "2"]))
    assert main(["reconstruct", "--config", str(tmp_path / "missing.yaml"),
                 "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "missing.yaml" in lines[0]
    assert main(["reconstruct", "--out", str(tmp_path / "o2")]) == 2  # no particles anywhere
    assert "--particles" in capsys.readouterr().err


def test_written_config_reads_back_equal_and_is_plain_yaml(tmp_path):
    (tmp_path / "run.yaml").write_text(YAML)
    config = merged_config(_args(["--config", str(tmp_path / "run.yaml")]))
    write_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())  # another reader's view
    assert raw["objective"] == {"kind": "mmd", "n_draws": 64, "bandwidth": 2.0,
                                "features": "pixels", "references": 16,
                                "reference_pose_level": 3, "temperature": 1.0}
    assert raw["outputs"] == {"quantiles": [0.1, 0.5, 0.9]} and raw["seed"] == 4


HINGE = {
    "model": "hinge",
    "truth": [{"kind": "gaussian", "weight": 1.0, "mean": [0.4], "std": [0.1]}],
    "n_images": 40, "box_size": 16, "pixel_size_angstrom": 4.0, "snr": 0.5,
    "defocus_angstrom": [10000, 20000], "shift_std_angstrom": 0.0, "seed": 3,
}


def test_the_written_config_read_by_the_cli_is_the_run_config(tmp_path):
    """CI-sized half of the rerun test below: ``--config RUN/config.yaml`` resolves to the
    config the run had (from flags, relative paths made absolute), key for key."""
    config = merged_config(_args(["--particles", "p.star", "--model", "hinge", "--steps", "4",
                                  "--discrepancy", "mmd", "--n-draws", "8", "--seed", "2",
                                  "--flow-box", "0", "--no-wfr"]))
    assert config.data.particles == "p.star"  # as given (error messages name it so)
    write_config(config, tmp_path / "config.yaml")
    again = merged_config(_args(["--config", str(tmp_path / "config.yaml")]))
    absolute = config.data.model_copy(update={"particles": str(Path("p.star").resolve())})
    assert again == config.model_copy(update={"data": absolute})


@pytest.mark.slow  # two tiny runs: about 30 s on 2 shared CPU cores, mostly XLA compilation
def test_rerun_from_the_run_folders_config_gives_the_same_ensemble(tmp_path, capsys):
    simulate_dataset(parse_simulate_config(HINGE), tmp_path / "data", progress=False)
    first = tmp_path / "first"
    argv = ["reconstruct", "--particles", str(tmp_path / "data" / "particles.star"),
            "--model", "hinge", "--steps", "4", "--n-particles", "4", "--batch-size", "16",
            "--flow-box", "0", "--discrepancy", "mmd", "--n-draws", "8", "--seed", "2",
            "--step-size", "0.01", "--register", "none", "--no-progress", "--out", str(first)]
    assert main(argv) == 0, capsys.readouterr().err
    written = load_config(first / "config.yaml")
    assert (written.objective.kind, written.loop.steps, written.seed) == ("mmd", 4, 2)
    again = tmp_path / "again"
    assert main(["reconstruct", "--config", str(first / "config.yaml"),
                 "--out", str(again)]) == 0, capsys.readouterr().err
    a, b = np.load(first / "ensemble.npz"), np.load(again / "ensemble.npz")
    np.testing.assert_array_equal(a["positions"], b["positions"])
    np.testing.assert_array_equal(a["weights"], b["weights"])
    assert load_config(again / "config.yaml") == written


def test_the_tutorials_yaml_example_is_a_valid_config():
    text = (Path(__file__).parents[1] / "docs" / "tutorial.md").read_text()
    block = next(b.split("```")[0] for b in text.split("```yaml\n")[1:]
                 if b.startswith("# run.yaml"))
    config = ReconstructConfig.model_validate(yaml.safe_load(block))
    assert config.objective.kind == "mmd" and config.solver.n_particles == 32


def test_file_names_in_a_yaml_are_relative_to_its_folder(tmp_path):
    sub = tmp_path / "project"
    sub.mkdir()
    (sub / "frames.pdb").write_text("")
    (sub / "run.yaml").write_text("data: {particles: p.star, datadir: stacks}\n"
                                  "model: {structure: frames.pdb, align: true}\n")
    config = merged_config(_args(["--config", str(sub / "run.yaml")]))
    assert config.model == {"structure": str((sub / "frames.pdb").resolve()), "align": True}
    assert config.data.datadir == str((sub / "stacks").resolve())
    (sub / "run.yaml").write_text("data: {particles: p.star}\nmodel: frames.pdb\n")
    assert merged_config(_args(["--config", str(sub / "run.yaml")])).model == str(
        (sub / "frames.pdb").resolve())


def test_refine_weights_flag():
    assert merged_config(_args(["--particles", "p.star"])).loop.refine_weights is True
    off = merged_config(_args(["--particles", "p.star", "--no-refine-weights"]))
    assert off.loop.refine_weights is False
