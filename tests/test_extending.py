"""The extension points of docs/extending.md: registries, the abstract forward parts, and
the two worked examples under examples/extending/ (checked against closed forms and a
separately written renderer)."""

from __future__ import annotations

import doctest
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from cryosip.discrepancies import DISCREPANCIES, MMD, EnergyKernel, ForwardKL, mmd2
from cryosip.errors import InputError
from cryosip.flows import SampleObjective
from cryosip.forward import (
    PROJECTORS,
    AbstractCTF,
    AbstractPose,
    GaussianProjector,
    ImageConfig,
    ImageModel,
    ImageNuisance,
    Optics,
    ctf_rfft,
)
from cryosip.operators import AbstractRandomOperator, Observations
from cryosip.registry import PLUGINS_VARIABLE, Registry, load_plugins
from cryosip.rotations import euler_to_matrix
from cryosip.structures.factory import MODELS, load_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "extending"


def _example(name: str):
    """examples/extending/<name>.py imported as a plugin (once), which registers it."""
    (module_name,) = load_plugins({PLUGINS_VARIABLE: str(EXAMPLES / f"{name}.py")})
    return sys.modules[module_name]


@pytest.mark.parametrize("name", ["energy_distance", "two_domain"])
def test_examples_are_short_and_their_doctests_pass(name):
    assert len((EXAMPLES / f"{name}.py").read_text().splitlines()) < 80
    result = doctest.testmod(_example(name))
    assert result.attempted >= 3
    assert result.failed == 0


def _quantile_sample(mean: float, std: float, n: int) -> np.ndarray:
    """``n`` points at the mid-quantiles of N(mean, std^2): a near-exact sample."""
    from scipy.stats import norm

    return mean + std * norm.ppf((np.arange(n) + 0.5) / n)


def _energy_distance_gaussians(a: float, s: float, b: float, t: float) -> float:
    """2E|X-Y| - E|X-X'| - E|Y-Y'| for X ~ N(a, s^2), Y ~ N(b, t^2), written out."""
    d, sigma = a - b, math.hypot(s, t)
    e_xy = sigma * math.sqrt(2 / math.pi) * math.exp(-(d**2) / (2 * sigma**2))
    e_xy += d * math.erf(d / (sigma * math.sqrt(2)))
    return 2 * e_xy - 2 * s / math.sqrt(math.pi) - 2 * t / math.sqrt(math.pi)


def test_energy_distance_matches_closed_form_and_energy_kernel_mmd():
    energy = _example("energy_distance").EnergyDistance()
    assert type(energy) is DISCREPANCIES.get("energy")
    n = 1000
    with jax.enable_x64(True):
        x = jnp.asarray(_quantile_sample(0.0, 1.0, n))[:, None]
        y = jnp.asarray(_quantile_sample(1.5, 2.0, n))[:, None]
        w = jnp.full(n, 1.0 / n)
        value = float(energy(x, w, y, w))
        by_kernel = float(mmd2(x, w, y, w, EnergyKernel()))
        itself = float(energy(x, w, x, w))
    # mid-quantile samples: the V-statistic is within 1e-3 of the population value here
    np.testing.assert_allclose(value, _energy_distance_gaussians(0.0, 1.0, 1.5, 2.0),
                               atol=1e-3)
    np.testing.assert_allclose(value, by_kernel, rtol=1e-9)
    np.testing.assert_allclose(itself, 0.0, atol=1e-12)


def test_energy_distance_first_variation_is_its_formula():
    energy = _example("energy_distance").EnergyDistance()
    rng = np.random.default_rng(3)
    x, y = jnp.asarray(rng.normal(size=(7, 3))), jnp.asarray(rng.normal(size=(5, 3)) + 1.0)
    wx, wy = jnp.asarray(rng.dirichlet(np.ones(7))), jnp.asarray(rng.dirichlet(np.ones(5)))
    dist = lambda a, b: np.linalg.norm(np.asarray(a)[:, None] - np.asarray(b)[None], axis=-1)
    expected = 2 * dist(x, y) @ np.asarray(wy) - 2 * dist(x, x) @ np.asarray(wx)
    np.testing.assert_allclose(np.asarray(energy.first_variation(x, wx, y, wy)), expected,
                               rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(jax.grad(energy)(x, wx, x, wx))))


def test_two_domain_model_geometry_matches_its_formula():
    _example("two_domain")
    model = load_model({"name": "two-domain", "arm_length_angstrom": 10.0})
    for bend, twist in [(0.0, 0.0), (0.5, 0.3), (1.0, 1.0)]:
        pos = np.asarray(model.structure_at(jnp.array([bend, twist])).positions_angstrom)
        distance = np.linalg.norm(pos[27:].mean(0) - pos[:27].mean(0))
        beta = np.deg2rad(120.0) * bend
        np.testing.assert_allclose(distance, 2 * 10.0 * np.cos(beta / 2), rtol=1e-5)
        np.testing.assert_allclose(pos.mean(0), 0.0, atol=1e-4)
    # a quarter twist, no bend: domain B's lattice turned about e_x by 90 degrees
    pos = np.asarray(model.structure_at(jnp.array([0.0, 1.0])).positions_angstrom)
    rest = np.asarray(model.structure_at(jnp.array([0.0, 0.0])).positions_angstrom)
    quarter = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    centre = rest[27:].mean(0)
    np.testing.assert_allclose(pos[27:], (rest[27:] - centre) @ quarter.T + centre, atol=1e-4)


def _numpy_projection(xy: np.ndarray, amps: np.ndarray, widths: np.ndarray, box: int,
                      pixel: float) -> np.ndarray:
    """Pixel averages of projected Gaussians, written apart from cryosip's projector:
    per atom, erf differences over the pixel edges of each axis, outer product."""
    edges = (np.arange(box + 1) - box // 2 - 0.5) * pixel
    img = np.zeros((box, box))
    for (x, y), a, s in zip(xy, amps, widths, strict=True):
        px = np.diff(erf((edges - x) / (np.sqrt(2) * s))) / 2
        py = np.diff(erf((edges - y) / (np.sqrt(2) * s))) / 2
        img += a * np.outer(py, px)
    return img / pixel**2


def test_two_domain_model_renders_like_an_independent_projection():
    _example("two_domain")
    model = load_model({"name": "two-domain"})
    atoms = model.structure_at(jnp.array([0.4, 0.7]))
    euler = np.array([30.0, 50.0, -20.0])
    pose = ImageNuisance.create(jnp.asarray(euler), shift_angstrom=jnp.array([2.0, -1.0]))
    config = ImageConfig(48, 1.5)
    image = np.asarray(ImageModel(config, apply_ctf=False).render(atoms, pose))
    r = np.asarray(euler_to_matrix(jnp.asarray(euler)))
    xy = np.asarray(atoms.positions_angstrom) @ r[:2].T - np.array([2.0, -1.0])
    expected = _numpy_projection(xy, np.ones(54), np.full(54, 1.5), 48, 1.5)
    np.testing.assert_allclose(image, expected, atol=2e-5 * expected.max())
    np.testing.assert_allclose(image.sum() * 1.5**2, 54.0, rtol=1e-4)  # every bead inside


def test_model_registry_errors_list_the_registered_names():
    _example("two_domain")
    assert {"adk-path", "adk-domains", "hinge", "two-domain"} <= set(MODELS.names())
    with pytest.raises(InputError, match="field model.name: expected one of .*'two-domain'"):
        load_model({"name": "three-domain"})
    with pytest.raises(InputError, match="field model: expected one of .*'hinge'"):
        load_model("three-domain")
    with pytest.raises(InputError, match="field model.colour: expected a known key"):
        load_model({"name": "two-domain", "colour": "red"})
    with pytest.raises(InputError, match="field model.arm_length_angstrom"):
        load_model({"name": "two-domain", "arm_length_angstrom": -1.0})


def test_registry_refuses_a_taken_name_and_a_wrong_kind():
    shapes = Registry("shape", base=int)
    shapes.register("bool")(bool)
    shapes.register("bool")(bool)  # the same definition again is fine
    with pytest.raises(ValueError, match="already registered"):
        shapes.register("bool")(type("Other", (int,), {}))
    with pytest.raises(TypeError, match="subclass of int"):
        shapes.register("text")(str)
    with pytest.raises(InputError, match="shape: field name: expected one of 'bool'"):
        shapes.get("text")
    assert DISCREPANCIES.get("mmd") is MMD and DISCREPANCIES.get("kl") is ForwardKL
    assert PROJECTORS.get("gaussian") is GaussianProjector


def test_registered_mmd_and_kl_are_the_functions_they_wrap():
    from cryosip.discrepancies import GaussianKernel, negative_log_likelihood

    rng = np.random.default_rng(5)
    x, y = jnp.asarray(rng.normal(size=(6, 2))), jnp.asarray(rng.normal(size=(4, 2)))
    wx, wy = jnp.full(6, 1 / 6), jnp.full(4, 1 / 4)
    k = GaussianKernel(1.3)
    np.testing.assert_allclose(float(MMD(k)(x, wx, y, wy)), float(mmd2(x, wx, y, wy, k)),
                               rtol=1e-6)
    # V-statistic first variation: 2 sum_j p_j k(x, x_j) - 2 sum_j q_j k(x, y_j)
    sq = lambda a, b: np.sum((np.asarray(a)[:, None] - np.asarray(b)[None]) ** 2, -1)
    kern = lambda d2: np.exp(-d2 / (2 * 1.3**2))
    expected = 2 * kern(sq(x, x)) @ np.asarray(wx) - 2 * kern(sq(x, y)) @ np.asarray(wy)
    np.testing.assert_allclose(np.asarray(MMD(k).first_variation(x, wx, y, wy)), expected,
                               rtol=1e-5, atol=1e-6)
    ll = jnp.asarray(rng.normal(size=(5, 6)))
    np.testing.assert_allclose(float(ForwardKL()(ll, jnp.log(wx))),
                               float(negative_log_likelihood(ll, jnp.log(wx))), rtol=1e-6)
    with pytest.raises(ValueError, match="estimator"):
        MMD(k, estimator="w")


class MatrixPose(AbstractPose):
    """A pose given by its rotation matrix (no Euler angles) and a shift, with the
    defocus a CTF below reads."""

    matrix: jax.Array
    shift: jax.Array
    defocus_angstrom: jax.Array

    def rotation_matrix(self):
        return self.matrix

    def in_plane_shift_angstrom(self):
        return self.shift


class PhaseFlipCTF(AbstractCTF):
    """A made-up CTF: sign(cos(pi * defocus * k^2 / 1e5)) on the rfft grid."""

    def transfer(self, nuisance, config):
        ky, kx = config.rfft_frequencies()
        return jnp.sign(jnp.cos(jnp.pi * nuisance.defocus_angstrom * (kx**2 + ky**2) / 1e5))


def test_image_model_takes_any_pose_and_ctf():
    atoms = load_model({"name": "hinge", "n_beads": 6}).structure_at(jnp.array([0.3]))
    euler = jnp.array([10.0, 70.0, 40.0])
    config = ImageConfig(32, 2.0)
    pose = MatrixPose(euler_to_matrix(euler), jnp.array([1.0, 3.0]), jnp.array(12000.0))
    relion = ImageNuisance.create(euler, shift_angstrom=jnp.array([1.0, 3.0]))
    bare = ImageModel(config, apply_ctf=False)
    np.testing.assert_allclose(np.asarray(bare.render(atoms, pose)),
                               np.asarray(bare.render(atoms, relion)), atol=1e-6)
    flipped = np.asarray(ImageModel(config, PhaseFlipCTF()).render(atoms, pose))
    ky, kx = config.rfft_frequencies()
    flip = np.sign(np.cos(np.pi * 12000.0 * (kx**2 + ky**2) / 1e5))
    expected = np.fft.irfft2(flip * np.fft.rfft2(np.asarray(bare.render(atoms, relion))),
                             s=(32, 32))
    np.testing.assert_allclose(flipped, expected, atol=1e-5 * np.abs(expected).max())
    optics = Optics()
    np.testing.assert_array_equal(np.asarray(optics.transfer(relion, config)),
                                  np.asarray(ctf_rfft(optics, relion, config)))


def test_plugins_reach_the_command_line(tmp_path, monkeypatch, cli_main, capsys):
    config = tmp_path / "two.yaml"
    config.write_text(
        "model: {name: two-domain, max_bend_deg: 90.0}\n"
        "truth: [{kind: uniform, low: [0.0, 0.0], high: [1.0, 1.0]}]\n"
        "n_images: 6\nbox_size: 24\npixel_size_angstrom: 2.0\nsnr: 1.0\n")
    monkeypatch.setenv(PLUGINS_VARIABLE, str(tmp_path / "missing.py"))
    assert cli_main(["simulate", "--config", str(config), "--out", str(tmp_path / "a"),
                     "--no-progress"]) == 2
    assert "CRYOSIP_PLUGINS: expected a Python file" in capsys.readouterr().err
    monkeypatch.setenv(PLUGINS_VARIABLE, str(EXAMPLES / "two_domain.py"))
    assert cli_main(["simulate", "--config", str(config), "--out", str(tmp_path / "b"),
                     "--no-progress"]) == 0
    import starfile

    table = starfile.read(tmp_path / "b" / "particles.star")
    assert len(table["particles"]) == 6


def test_entry_point_plugins_are_imported(monkeypatch):
    import importlib.metadata
    from types import SimpleNamespace

    points = [SimpleNamespace(name="std", value="colorsys")]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: points)
    assert load_plugins({}) == ["colorsys"]
    points.append(SimpleNamespace(name="broken", value="cryosip_no_such_plugin"))
    with pytest.raises(InputError, match="entry point 'broken': expected an importable module"):
        load_plugins({})



class _Shift(AbstractRandomOperator):
    """y = x + nuisance + noise, nuisance ~ N(0, 1): the push-forward of delta_a is
    N(a, 1 + noise_std^2)."""

    noise_std: float = 0.1

    def sample_nuisance(self, key, n_draws):
        return jax.random.normal(key, (n_draws, 1))

    def clean(self, x, nuisance):
        return x + nuisance


@pytest.mark.parametrize("known", [False, True])
def test_sample_objective_is_the_energy_distance_of_the_push_forward(known):
    """SampleObjective with the example's energy distance, one particle at ``a`` against
    observations of N(b, 1.01): value and d/da against the Gaussian closed form."""
    energy = _example("energy_distance").EnergyDistance()
    a, b, s = 0.3, 1.2, math.sqrt(1.01)
    ys = jnp.asarray(_quantile_sample(b, s, 1000)[:, None], jnp.float32)
    nuisance = jnp.asarray(_quantile_sample(0.0, 1.0, 1000)[:, None]) if known else None
    objective = SampleObjective(_Shift(), energy, n_draws=4000)
    batch = Observations(ys, nuisance)
    x, w = jnp.array([[a]]), jnp.ones(1)
    value, grad = jax.value_and_grad(objective)(x, w, batch, jax.random.key(1))
    # Monte Carlo over 4000 simulations: keys 0-2 err by up to 0.022 on the value (0.440)
    # and 0.022 on the gradient (-0.947); a wrong sign, weight or noise is off by > 0.1
    np.testing.assert_allclose(float(value), _energy_distance_gaussians(a, s, b, s), atol=0.03)
    # d/da [2 E|X - Y|] with X ~ N(a, s^2): 2 erf((a - b) / (2 s)), the other terms constant
    np.testing.assert_allclose(float(grad[0, 0]), 2 * math.erf((a - b) / (2 * s)), atol=0.05)


def test_registered_discrepancy_is_an_objective_kind(tmp_path, monkeypatch, cli_main, capsys):
    """``objective: {kind: energy, ...}`` validates once the example is registered, builds
    the SampleObjective; an unknown kind is one line naming the registered ones, exit 2."""
    from cryosip.pipeline.config import parse_config
    from cryosip.pipeline.reconstruct import _objective

    _example("energy_distance")
    config = parse_config({"data": {"particles": "p.star"}, "solver": {"n_particles": 8},
                           "objective": {"kind": "energy", "n_draws": 64}})
    built = _objective(config, _Shift())
    assert isinstance(built, SampleObjective) and built.n_draws == 8
    assert type(built.discrepancy).__name__ == "EnergyDistance"
    assert config.model_dump()["objective"] == {"kind": "energy", "n_draws": 64}
    with pytest.raises(InputError, match="field objective: expected the options "
                                         "EnergyDistance takes"):
        parse_config({"data": {"particles": "p.star"},
                      "objective": {"kind": "energy", "scale": 2.0}}, "run.yaml")
    run = tmp_path / "run.yaml"
    run.write_text("data: {particles: p.star}\nobjective: {kind: wasserstein}\n")
    assert cli_main(["reconstruct", "--config", str(run), "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "run.yaml: field objective.kind: expected one of " in err and "'energy'" in err
    assert "found 'wasserstein'" in err
    assert cli_main(["reconstruct", "--particles", "p.star", "--out", str(tmp_path / "v"),
                     "--discrepancy", "wasserstein"]) == 2
    assert "field --discrepancy: expected one of " in capsys.readouterr().err


@pytest.mark.slow
def test_registered_discrepancy_runs_reconstruct(tmp_path, monkeypatch, cli_main):
    """``objective: {kind: energy}`` from a YAML (the example registered through
    CRYOSIP_PLUGINS) drives a tiny hinge reconstruct, and the run folder names it (~45 s)."""
    import json

    import yaml

    sim = tmp_path / "two.yaml"
    sim.write_text(
        "model: hinge\ntruth: [{kind: gaussian, weight: 1.0, mean: [0.8], std: [0.04]}]\n"
        "n_images: 240\nbox_size: 32\npixel_size_angstrom: 2.0\nsnr: 0.5\n"
        "shift_std_angstrom: 0.0\nseed: 3\n")
    assert cli_main(["simulate", "--config", str(sim), "--out", str(tmp_path / "data"),
                     "--no-progress"]) == 0
    run = tmp_path / "run.yaml"
    run.write_text(
        "data: {particles: data/particles.star, flow_box: 16, registration: none}\n"
        "model: hinge\nobjective: {kind: energy, n_draws: 64}\n"
        "solver: {n_particles: 8, wfr: false, max_displacement: 0.05, step_decay: 0.0}\n"
        "loop: {steps: 15, batch_size: 120, progress: false}\n")
    monkeypatch.setenv(PLUGINS_VARIABLE, str(EXAMPLES / "energy_distance.py"))
    assert cli_main(["reconstruct", "--config", str(run), "--out", str(tmp_path / "r")]) == 0
    written = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert written["objective"] == {"kind": "energy", "n_draws": 64}
    provenance = json.loads((tmp_path / "r" / "provenance.json").read_text())
    assert provenance["config"]["objective"]["kind"] == "energy"
    with np.load(tmp_path / "r" / "ensemble.npz") as ens:
        x, w = ens["positions"].ravel(), ens["weights"]
    # evenly spaced start: mean 0.5; the truth sits at 0.8, so only a gradient that pulls
    # towards the data lifts the mean
    assert float(np.sum(w * x)) > 0.6
