"""Registration: the likelihood in the model's offset t, and recovery of a known offset.

The data come from the independent numpy simulator of ``hinge_sim.py`` (not cryosip's
renderer); the model is its multi-model PDB moved by a known offset.
"""

from __future__ import annotations

import numpy as np
import pytest

import hinge_sim
from cryosip.io import read_particles
from cryosip.pipeline.data import prepare_data
from cryosip.pipeline.register import (
    boundary_weight_fraction,
    mixture_loglik,
    register_translation,
    shift_correlations,
)
from cryosip.structures import HingeModel, load_model
from cryosip.structures.translated import TranslatedModel

BOX, PIXEL = 16, 2.0


def _random_problem(seed=0, n=3, k=2):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, BOX, BOX))
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    refs = np.stack([[np.exp(-((xx - rng.uniform(-2, 2)) ** 2 + (yy - rng.uniform(-2, 2)) ** 2)
                             / (2 * rng.uniform(1.5, 3) ** 2)) for _ in range(k)]
                     for _ in range(n)])
    return images, refs, rng


def test_correlation_at_pixel_shifts_equals_rolled_inner_product():
    """Identity poses: t = (2p, -1p, z) moves every image by (+2, -1) pixels (x, y); the
    Fourier-phase form and the correlation maps both equal <y, roll(G)>; z does nothing."""
    images, refs, _ = _random_problem()
    corr = shift_correlations(images, refs, np.zeros((3, 3)), PIXEL)
    t = np.array([2 * PIXEL, -1 * PIXEL, 7.3])
    direct = np.einsum("nij,nkij->nk", images, np.roll(refs, (-1, 2), axis=(-2, -1)))
    np.testing.assert_allclose(corr.value(t), direct, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(corr.coarse(t[None])[0], direct, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(corr.power, np.sum(refs**2, axis=(-2, -1)), rtol=1e-12)


def test_gradient_and_hessian_match_finite_differences():
    images, refs, rng = _random_problem(1)
    euler = rng.uniform(-180, 180, (3, 3))
    corr = shift_correlations(images, refs, euler, PIXEL)
    t, h = rng.normal(size=3), 1e-5
    _, grad, hess = corr.value(t, order=2)
    for i in range(3):
        e = np.eye(3)[i] * h
        fd = (corr.value(t + e) - corr.value(t - e)) / (2 * h)
        np.testing.assert_allclose(grad[..., i], fd, rtol=1e-5, atol=1e-7)
        _, gp, _ = corr.value(t + e, order=2)
        _, gm, _ = corr.value(t - e, order=2)
        np.testing.assert_allclose(hess[..., i, :], (gp - gm) / (2 * h), rtol=1e-5, atol=1e-6)


def test_mixture_loglik_closed_form():
    """One image, two components: log(pi_1 e^{u_1} + pi_2 e^{u_2}) written out."""
    c, p = np.array([[2.0, -1.0]]), np.array([[3.0, 1.0]])
    a, s = 0.5, 2.0
    u = (a * c - 0.5 * a**2 * p) / s**2
    expected = np.log(0.3 * np.exp(u[0, 0]) + 0.7 * np.exp(u[0, 1]))
    ell, gamma = mixture_loglik(c, p, a, s, np.log([0.3, 0.7]))
    np.testing.assert_allclose(ell, expected, rtol=1e-12)
    np.testing.assert_allclose(gamma.sum(), 1.0, rtol=1e-12)


@pytest.fixture(scope="module")
def shifted_data(tmp_path_factory):
    """300 independent images; the PDB given is the truth moved by (6, -4, 3) Å."""
    out = tmp_path_factory.mktemp("shifted")
    hinge_sim.simulate(out, 300, snr=0.1, seed=3, model_shift=(6.0, -4.0, 3.0))
    stack = read_particles(str(out / "particles.star"), require_poses=True)
    model = load_model(str(out / "frames.pdb"))
    data = prepare_data(stack, model, known_poses=True, flow_box=32, heldout_fraction=0.05,
                        seed=0)
    return data, model


def test_registration_recovers_a_known_offset(shifted_data, caplog):
    data, model = shifted_data
    with caplog.at_level("WARNING", logger="cryosip"):
        reg = register_translation(data, model)
    # the model must move by -(6, -4, 3) Å to sit where the images were simulated
    np.testing.assert_allclose(reg.offset_angstrom, [-6.0, 4.0, -3.0], atol=0.5)
    np.testing.assert_allclose(reg.offset_pixels, np.array(reg.offset_angstrom) / 3.0,
                               rtol=1e-12)
    assert reg.loglik_gain > 100.0  # registered vs none, on the same images
    assert any("may not be in the consensus map's frame" in r.message for r in caplog.records)
    assert reg.warnings and "pixels" in reg.warnings[0]


def test_registration_of_a_model_in_place_stays_put(shifted_data):
    data, model = shifted_data
    reg = register_translation(data, TranslatedModel(model, [-6.0, 4.0, -3.0]))
    assert np.linalg.norm(reg.offset_angstrom) < 0.5
    assert reg.warnings == ()


def test_boundary_weight_fraction():
    model = HingeModel(n_beads=4)
    x = np.array([[0.005], [0.5], [0.995], [0.3]])
    w = np.array([0.2, 0.3, 0.25, 0.25])
    np.testing.assert_allclose(boundary_weight_fraction(model, x, w), 0.45, rtol=1e-12)
