"""Ground-truth check of the conventions: backprojecting noiseless simulated images with
their own poses, shifts and CTFs gives back the structure's map; transposed poses, the
opposite shift sign or the opposite contrast sign do not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cryosip.forward import (
    ImageConfig,
    ImageModel,
    ImageNuisance,
    NuisancePrior,
    Optics,
    backproject,
    map_correlation,
    render_images,
    render_volume,
)
from cryosip.structures.base import Atoms

BOX, PIX = 32, 2.0


@pytest.fixture(scope="module")
def dataset():
    """A chiral four-cluster structure and 400 noiseless CTF images of it."""
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0], [0, 7, 0], [-3, -4, 6], [-6, 2, -5]])
    pos = centres[np.arange(32) % 4] + rng.normal(size=(32, 3)) * 1.5
    atoms = Atoms(jnp.asarray(pos), jnp.asarray(rng.uniform(0.5, 2, 32)), jnp.full(32, 2.0))
    prior = NuisancePrior((8000.0, 15000.0), astigmatism_angstrom=500.0, shift_std_angstrom=4.0)
    w = prior.sample(jax.random.key(0), 400)
    cfg = ImageConfig(BOX, PIX)
    images = jax.jit(render_images, static_argnums=2)(atoms, w, cfg, Optics())
    return images, w, cfg, render_volume(atoms, BOX, PIX)


def _corr(images, w, cfg, truth, optics=None):
    vol = jax.jit(backproject, static_argnums=2)(images, w, cfg, optics or Optics())
    return float(map_correlation(vol, truth))


def test_backprojection_recovers_the_map(dataset):
    images, w, cfg, truth = dataset
    assert _corr(images, w, cfg, truth) > 0.9


def test_wrong_conventions_are_detected(dataset):
    images, w, cfg, truth = dataset
    good = _corr(images, w, cfg, truth)
    e = w.euler_deg
    transposed = ImageNuisance(  # the angles of A^T
        jnp.stack([-e[:, 2], -e[:, 1], -e[:, 0]], -1), *jax.tree.leaves(w)[1:]
    )
    flipped_shift = ImageNuisance(e, -w.shift_angstrom, *jax.tree.leaves(w)[2:])
    assert _corr(images, transposed, cfg, truth) < good - 0.15
    assert _corr(images, flipped_shift, cfg, truth) < good - 0.3
    assert _corr(images, w, cfg, truth, Optics(contrast_sign=-1.0)) < -0.9


def test_render_volume_integrates_and_is_zyx_ordered():
    atoms = Atoms(jnp.array([[6.0, 0.0, -4.0]]), jnp.array([2.0]), jnp.array([1.5]))
    vol = np.asarray(render_volume(atoms, 24, 1.0))
    np.testing.assert_allclose(vol.sum(), 2.0, rtol=1e-3)
    assert np.unravel_index(vol.argmax(), vol.shape) == (12 - 4, 12, 12 + 6)


def test_projection_of_the_map_is_the_image_at_identity_pose():
    """Sum over z of the voxel-averaged map (times the voxel size) = the pixel-averaged
    projection: the map and the projector share one convention."""
    rng = np.random.default_rng(1)
    atoms = Atoms(
        jnp.asarray(rng.normal(size=(12, 3)) * 4.0),
        jnp.asarray(rng.uniform(0.5, 2, 12)),
        jnp.asarray(rng.uniform(1.0, 2.0, 12)),
    )
    vol = render_volume(atoms, 24, 1.5)
    w = ImageNuisance.create(jnp.zeros((1, 3)))
    img = ImageModel(ImageConfig(24, 1.5), apply_ctf=False).render_batch(atoms, w)[0]
    np.testing.assert_allclose(vol.sum(0) * 1.5, img, atol=1e-4 * float(img.max()))
