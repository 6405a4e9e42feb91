"""Conventions: image centre, wavelength, CTF sign and astigmatism axis, cryoDRGN/cryojax."""

import jax.numpy as jnp
import numpy as np
import pytest

from cryosip import conventions as cv
from cryosip.forward import ImageConfig, ImageNuisance, Optics, ctf_rfft
from cryosip.rotations import euler_to_matrix


def cryodrgn_r_from_relion(a, b, y):
    """cryoDRGN ``utils.R_from_relion`` (v3), re-typed here as the outside reference."""
    a, b, y = np.deg2rad([a, b, y])
    ca, sa, cb, sb, cy, sy = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(y), np.sin(y)
    ra = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    rb = np.array([[cb, 0, -sb], [0, 1, 0], [sb, 0, cb]])
    ry = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    r = ry @ rb @ ra
    r[0, 1] *= -1
    r[1, 0] *= -1
    r[1, 2] *= -1
    r[2, 1] *= -1
    return r


def test_image_centre_even_and_odd():
    assert cv.image_centre_index(64) == 32
    assert cv.image_centre_index(65) == 32
    np.testing.assert_allclose(cv.pixel_centres_angstrom(4, 2.0), [-4, -2, 0, 2])
    np.testing.assert_allclose(cv.pixel_centres_angstrom(5, 1.0), [-2, -1, 0, 1, 2])


@pytest.mark.parametrize(("kv", "angstrom"), [(300.0, 0.019687), (200.0, 0.025079)])
def test_electron_wavelength(kv, angstrom):
    np.testing.assert_allclose(cv.electron_wavelength_angstrom(kv), angstrom, rtol=5e-5)


def test_ctf_is_plus_w_at_zero_frequency_for_relion_sign():
    cfg, w = ImageConfig(16, 2.0), ImageNuisance.create(jnp.zeros(3))
    np.testing.assert_allclose(
        ctf_rfft(Optics(amplitude_contrast=0.07), w, cfg)[0, 0], 0.07, rtol=1e-5
    )
    flipped = Optics(amplitude_contrast=0.07, contrast_sign=cv.CRYOJAX_CONTRAST_SIGN)
    np.testing.assert_allclose(ctf_rfft(flipped, w, cfg)[0, 0], -0.07, rtol=1e-5)


def test_astigmatism_angle_zero_puts_defocus_u_along_kx():
    cfg = ImageConfig(32, 1.5)
    astig = ImageNuisance.create(jnp.zeros(3), None, 20000.0, 10000.0, 0.0)
    iso_u = ImageNuisance.create(jnp.zeros(3), None, 20000.0, 20000.0, 0.0)
    iso_v = ImageNuisance.create(jnp.zeros(3), None, 10000.0, 10000.0, 0.0)
    c, cu, cv_ = (ctf_rfft(Optics(), w, cfg) for w in (astig, iso_u, iso_v))
    np.testing.assert_allclose(c[0, :], cu[0, :], atol=1e-5)  # k_y = 0: the k_x axis
    np.testing.assert_allclose(c[:, 0], cv_[:, 0], atol=1e-5)  # k_x = 0: the k_y axis


def test_phase_shift_of_90_degrees_turns_sin_into_cos():
    cfg = ImageConfig(16, 2.0)
    w = ImageNuisance.create(jnp.zeros(3), None, 15000.0, 15000.0, 0.0, 90.0)
    np.testing.assert_allclose(
        ctf_rfft(Optics(amplitude_contrast=0.0), w, cfg)[0, 0], 1.0, rtol=1e-6
    )


def test_cryodrgn_pose_matches_parse_pose_star():
    rng = np.random.default_rng(0)
    euler = np.column_stack(
        [rng.uniform(-180, 180, 5), rng.uniform(0, 180, 5), rng.uniform(-180, 180, 5)]
    )
    shift = rng.normal(size=(5, 2)) * 3.0
    rot, trans = cv.relion_to_cryodrgn_pose(euler, shift, box_size=64, pixel_size_angstrom=2.0)
    expected = np.stack([cryodrgn_r_from_relion(*e) for e in euler])
    np.testing.assert_allclose(rot, expected, atol=1e-6)
    # parse_pose_star: trans = rlnOriginXAngst / Apix / D
    np.testing.assert_allclose(trans, shift / 2.0 / 64, rtol=1e-12)
    euler_back, shift_back = cv.cryodrgn_to_relion_pose(rot, trans, 64, 2.0)
    np.testing.assert_allclose(euler_to_matrix(jnp.asarray(euler_back)), rot, atol=1e-5)
    np.testing.assert_allclose(shift_back, shift, rtol=1e-12)


def test_cryojax_pose_takes_negated_relion_angles():
    cxs = pytest.importorskip("cryojax.simulator")
    euler = np.array([30.0, 50.0, -70.0])
    phi, theta, psi = cv.relion_to_cryojax_euler(euler)
    pose = cxs.EulerAnglePose(phi_angle=phi, theta_angle=theta, psi_angle=psi)
    np.testing.assert_allclose(
        pose.rotation.as_matrix(), euler_to_matrix(jnp.asarray(euler)), atol=1e-5
    )
    np.testing.assert_allclose(cv.cryojax_to_relion_euler(cv.relion_to_cryojax_euler(euler)), euler)
