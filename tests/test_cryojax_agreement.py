"""cryosip images agree with cryojax rendering the same Gaussian atoms, pose and CTF (< 1%).

cryojax's conventions differ from RELION's in three documented ways (cryosip.conventions):
angles negated, offset = -origin, CTF sign -1 and astigmatism angle 90 - rlnDefocusAngle.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from cryosip import conventions as cv
from cryosip.forward import ImageConfig, ImageModel, ImageNuisance, Optics
from cryosip.structures.base import Atoms

cxs = pytest.importorskip("cryojax.simulator")

CASES = [  # box, pixel, euler, shift, dU, dV, angle, phase, B
    (48, 1.5, (30.0, 50.0, -70.0), (3.0, -1.5), 12000.0, 10000.0, 35.0, 0.0, 0.0),
    (33, 2.0, (-120.0, 100.0, 15.0), (-2.5, 4.0), 20000.0, 18500.0, 120.0, 0.0, 40.0),
    (40, 1.2, (200.0, 10.0, 80.0), (0.0, 0.0), 8000.0, 8000.0, 0.0, 45.0, 0.0),
]


def _atoms(seed=0, n=40):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) * 7.0, rng.uniform(0.5, 2, n), rng.uniform(1.0, 2.0, n)


def _cryojax_image(pos, amp, wid, box, pix, euler, shift, du, dv, ang, phase, b, translate):
    phi, theta, psi = cv.relion_to_cryojax_euler(euler)
    off = cv.relion_to_cryojax_offset(shift)
    pose = cxs.EulerAnglePose(off[0], off[1], phi, theta, psi)
    defocus, astig, angle = cv.relion_to_cryojax_ctf(du, dv, ang)
    ctf = cxs.AstigmaticCTF(
        defocus_in_angstroms=defocus,
        astigmatism_in_angstroms=astig,
        astigmatism_angle=angle,
        spherical_aberration_in_mm=2.7,
    )
    envelope = None
    if b > 0:
        from cryojax.ndimage import FourierGaussian

        envelope = FourierGaussian(b_factor=b)
    theory = cxs.ContrastTransferTheory(
        ctf, envelope, amplitude_contrast_ratio=0.1, phase_shift=phase
    )
    model = cxs.make_image_model(
        cxs.GaussianMixtureVolume(pos, amp, wid**2),
        cxs.BasicImageConfig((box, box), pix, 300.0),
        pose,
        theory,
        cxs.GaussianMixtureProjection(sampling_mode="average"),
        translate_mode=translate,
    )
    return np.asarray(model.simulate())


@pytest.mark.parametrize("case", CASES)
def test_images_agree_with_cryojax(case):
    box, pix, euler, shift, du, dv, ang, phase, b = case
    pos, amp, wid = _atoms()
    atoms = Atoms(jnp.asarray(pos), jnp.asarray(amp), jnp.asarray(wid))
    w = ImageNuisance.create(jnp.asarray(euler), jnp.asarray(shift), du, dv, ang, phase)
    optics = Optics(300.0, 2.7, 0.1, b, contrast_sign=cv.CRYOJAX_CONTRAST_SIGN)
    ours = np.asarray(ImageModel(ImageConfig(box, pix), optics).render(atoms, w))
    ref = _cryojax_image(pos, amp, wid, box, pix, euler, shift, du, dv, ang, phase, b, "atom")
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.01
    # RELION sign: exactly the negative
    relion = ImageModel(ImageConfig(box, pix), Optics(300.0, 2.7, 0.1, b)).render(atoms, w)
    np.testing.assert_allclose(np.asarray(relion), -ours, atol=1e-6 * np.abs(ours).max())


def test_projection_without_ctf_matches_cryojax_fft_translation():
    box, pix, euler, shift = 48, 1.5, (10.0, 80.0, 45.0), (2.0, -3.0)
    pos, amp, wid = _atoms(seed=1)
    phi, theta, psi = cv.relion_to_cryojax_euler(euler)
    off = cv.relion_to_cryojax_offset(shift)
    model = cxs.make_image_model(
        cxs.GaussianMixtureVolume(pos, amp, wid**2),
        cxs.BasicImageConfig((box, box), pix, 300.0),
        cxs.EulerAnglePose(off[0], off[1], phi, theta, psi),
        None,
        cxs.GaussianMixtureProjection(),
        translate_mode="fft",
    )
    ref = np.asarray(model.simulate())
    atoms = Atoms(jnp.asarray(pos), jnp.asarray(amp), jnp.asarray(wid))
    w = ImageNuisance.create(jnp.asarray(euler), jnp.asarray(shift))
    ours = np.asarray(ImageModel(ImageConfig(box, pix), apply_ctf=False).render(atoms, w))
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.01
