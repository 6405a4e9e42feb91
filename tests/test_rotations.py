"""RELION Euler angles: orthonormality, round trips, explicit composition, Haar sampling."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from cryosip.rotations import euler_to_matrix, matrix_to_euler, sample_uniform_euler

angle = st.floats(-180.0, 180.0, allow_nan=False)
tilt = st.floats(0.0, 180.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(angle, tilt, angle)
def test_matrix_is_a_proper_rotation(rot, tlt, psi):
    a = np.asarray(euler_to_matrix(jnp.array([rot, tlt, psi])), dtype=float)
    np.testing.assert_allclose(a @ a.T, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(a), 1.0, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(angle, tilt, angle)
def test_euler_matrix_round_trip(rot, tlt, psi):
    a = euler_to_matrix(jnp.array([rot, tlt, psi]))
    back = euler_to_matrix(matrix_to_euler(a))
    np.testing.assert_allclose(back, a, atol=2e-4)


def test_degenerate_tilts_round_trip():
    for t in (0.0, 180.0):
        a = euler_to_matrix(jnp.array([25.0, t, 70.0]))
        np.testing.assert_allclose(euler_to_matrix(matrix_to_euler(a)), a, atol=1e-5)


def test_matches_explicit_zyz_composition():
    """A = Rz(-psi) Ry(-tilt) Rz(-rot) (active rotations): RELION's Euler_angles2matrix."""
    e = np.array([[30.0, 40.0, 50.0], [-120.0, 170.0, 10.0], [0.0, 90.0, 0.0]])
    for rot, tlt, psi in e:
        expected = Rotation.from_euler("ZYZ", [-psi, -tlt, -rot], degrees=True).as_matrix()
        got = np.asarray(euler_to_matrix(jnp.array([rot, tlt, psi])))
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_tilt_90_views_model_x_axis_along_z():
    """rot = psi = 0, tilt = 90: the model's -x axis points along the image z (viewing) axis."""
    a = np.asarray(euler_to_matrix(jnp.array([0.0, 90.0, 0.0])))
    np.testing.assert_allclose(a @ np.array([1.0, 0, 0]), [0, 0, 1.0], atol=1e-6)


def test_uniform_sampling_matches_haar_moments():
    """Haar on SO(3): E[A] = 0, E[A_ij^2] = 1/3, E[tr A] = 0, E[(tr A)^2] = 1."""
    n = 20000
    a = np.asarray(euler_to_matrix(sample_uniform_euler(jax.random.key(3), n)), dtype=float)
    se = 1.0 / np.sqrt(n)
    np.testing.assert_allclose(a.mean(0), 0.0, atol=5 * 0.6 * se)
    np.testing.assert_allclose((a**2).mean(0), 1 / 3, atol=5 * 0.3 * se)
    tr = np.trace(a, axis1=1, axis2=2)
    np.testing.assert_allclose(tr.mean(), 0.0, atol=5 * se)
    np.testing.assert_allclose((tr**2).mean(), 1.0, atol=5 * 1.5 * se)
    # viewing direction (third row) uniform on the sphere: z-component uniform on [-1, 1]
    counts, _ = np.histogram(a[:, 2, 2], bins=10, range=(-1, 1))
    np.testing.assert_allclose(counts / n, 0.1, atol=0.01)
