"""Likelihoods on the Fourier band (cryosip.forward.fourier) against pixel-space references.

Independent checks: the real-space renderer with a pixel-space Gaussian likelihood (the
same numbers to rounding, float64); the analytic closed form against that renderer (a
different algorithm: continuous transforms, alias sums, no erf); a Fourier crop written
here with numpy's FFT; Parseval for the whitening.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cryosip.discrepancies import GaussianKernel
from cryosip.flows import KLObjective, MMDObjective
from cryosip.forward import CryoEMOperator, ImageConfig, NuisancePrior, Optics, render_images
from cryosip.forward.fourier import FourierBand, FourierOperator, project_band
from cryosip.forward.image_model import rotate_and_shift
from cryosip.operators import Observations
from cryosip.structures.base import Atoms
from cryosip.structures.factory import load_model


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _as64(tree):
    """Floating leaves in the widest float enabled (float64 under the ``x64`` fixture)."""
    wide = jnp.result_type(float)
    return jax.tree.map(lambda a: jnp.asarray(a, wide)
                        if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _setup(box=16, pixel=8.0, sigma=0.05, n_images=3):
    model = load_model({"name": "adk-path", "coarse": "residue"})
    prior = NuisancePrior()
    op = CryoEMOperator(model, ImageConfig(box, pixel), Optics(), prior, sigma)
    w = _as64(prior.sample(jax.random.key(1), n_images))
    clean = op.clean_paired(jnp.linspace(0.1, 0.9, n_images)[:, None], w)
    ys = clean + sigma * jax.random.normal(jax.random.key(2), clean.shape, clean.dtype)
    return model, op, w, ys


@pytest.mark.parametrize("projection, aliases", [("window", 0), ("analytic", 4)])
def test_band_likelihood_equals_pixel_likelihood(x64, projection, aliases):
    model, op, w, ys = _setup()
    xs = jnp.linspace(0.0, 1.0, 3)[:, None]
    fop = FourierOperator.from_operator(op, projection=projection, aliases=aliases)
    yb = jnp.asarray(fop.band.prepare(np.asarray(ys), op.noise_std))
    ll_pix = np.asarray(op.log_likelihood_grid(ys, xs, w))
    ll_band = np.asarray(fop.log_likelihood_grid(yb, xs, w))
    assert ll_band.shape == ll_pix.shape == (3, 3)
    np.testing.assert_allclose(ll_band, ll_pix, rtol=1e-4)  # the criterion
    # and what the flow sees: differences between particles, to far better than that
    d_pix = ll_pix - ll_pix.mean(1, keepdims=True)
    d_band = ll_band - ll_band.mean(1, keepdims=True)
    assert np.abs(d_band - d_pix).max() < 1e-5 * np.abs(d_pix).max()
    g_pix = jax.grad(lambda x: op.log_likelihood_grid(ys, x, w).sum())(xs)
    g_band = jax.grad(lambda x: fop.log_likelihood_grid(yb, x, w).sum())(xs)
    assert float(jnp.linalg.norm(g_band - g_pix)) < 1e-5 * float(jnp.linalg.norm(g_pix))


def _crop_reference(images, new_box):
    """The Fourier crop written here: keep ``|j| < new_box / 2`` and the averaged Nyquist."""
    box = images.shape[-1]
    spec = np.fft.fft2(images)
    keep = np.r_[0:new_box // 2 + 1, box - new_box // 2:box]
    small = spec[..., keep, :][..., keep] * (new_box / box) ** 2
    h = new_box // 2  # rows/cols h (+Nyquist) and h+1 (-Nyquist): average them, drop one
    small[..., h, :] = 0.5 * (small[..., h, :] + small[..., h + 1, :])
    small[..., :, h] = 0.5 * (small[..., :, h] + small[..., :, h + 1])
    small = np.delete(np.delete(small, h + 1, axis=-2), h + 1, axis=-1)
    return np.fft.ifft2(small).real


def test_analytic_band_is_the_fourier_crop_of_the_native_image(x64):
    """A native render (pixel p0), cropped here with numpy: the analytic band with the
    native pixel's sinc matches it, where the coarse-pixel renderer does not."""
    rng = np.random.default_rng(3)
    n_at = 40
    atoms = Atoms(jnp.asarray(rng.normal(size=(n_at, 3)) * 6.0),
                  jnp.asarray(rng.uniform(0.5, 2.0, n_at)),
                  jnp.asarray(rng.uniform(1.5, 2.5, n_at)))
    native, p0, flow = 64, 1.0, 32
    w = _as64(NuisancePrior().sample(jax.random.key(4), 2))
    images = np.asarray(render_images(atoms, w, ImageConfig(native, p0), Optics()))
    cropped = _crop_reference(images, flow)
    band = FourierBand(flow, p0 * native / flow, p0, aliases=1)
    ref = band.prepare(cropped, 1.0)
    coarse = band.prepare(np.asarray(render_images(atoms, w, band.image_config, Optics())), 1.0)
    for n in range(2):
        wn = w.take(jnp.asarray(n))
        m = project_band(rotate_and_shift(atoms.positions_angstrom, wn), atoms.amplitudes,
                         band.envelope(atoms.widths_angstrom), band)
        model = np.asarray(band.ctf(Optics(), wn)[:, None] * m * band.whitening(1.0)[:, None])
        err = np.linalg.norm(model - ref[n]) / np.linalg.norm(ref[n])
        err_coarse = np.linalg.norm(coarse[n] - ref[n]) / np.linalg.norm(ref[n])
        assert err < 1e-3, err
        assert err_coarse > 10 * err  # the coarse pixel's model is measurably off


def test_whitening_is_parseval():
    band = FourierBand(16, 3.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 16, 16))
    d_band = np.sum((band.prepare(a[None], 0.5) - band.prepare(b[None], 0.5)) ** 2)
    assert d_band == pytest.approx(np.sum((a - b) ** 2) / 0.25, rel=1e-5)
    assert band.weights.sum() == 256


def test_band_noise_has_the_pixel_noise_norm():
    model, op, w, _ = _setup(box=16, pixel=8.0)
    fop = FourierOperator.from_operator(op)
    zero = jnp.zeros((400, 2, *fop.band.shape))
    noise = fop.add_noise(jax.random.key(0), zero)
    sq = np.asarray(jnp.sum(noise**2, axis=(1, 2, 3, 4)))
    # ||whitened noise||^2 = ||eps||^2 ~ chi^2 with box^2 = 256 degrees of freedom
    assert abs(sq.mean() - 256) < 4 * np.sqrt(2 * 256 / 400)
    assert fop.noise_dim == 256


@pytest.mark.parametrize("kind", ["kl", "mmd"])
def test_objectives_agree_between_pixels_and_band(x64, kind):
    model, op, w, ys = _setup(n_images=4)
    fop = FourierOperator.from_operator(op)
    yb = jnp.asarray(fop.band.prepare(np.asarray(ys), op.noise_std))
    xs = jnp.linspace(0.05, 0.95, 3)[:, None]
    weights = jnp.asarray([0.2, 0.5, 0.3])
    if kind == "kl":
        pix, band = KLObjective(op), KLObjective(fop)
    else:  # the bandwidth in each space's units: pixels vs pixels / sigma
        h = 0.3 * np.sqrt(op.image_config.box_size**2) * op.noise_std
        pix = MMDObjective(op, GaussianKernel(h))
        band = MMDObjective(fop, GaussianKernel(h / op.noise_std))
    key = jax.random.key(0)
    v_pix = pix(xs, weights, Observations(ys, w), key)
    v_band = band(xs, weights, Observations(yb, w), key)
    assert float(v_band) == pytest.approx(float(v_pix), rel=1e-6)
    g_pix = jax.grad(pix, argnums=(0, 1))(xs, weights, Observations(ys, w), key)
    g_band = jax.grad(band, argnums=(0, 1))(xs, weights, Observations(yb, w), key)
    for a, b in zip(g_pix, g_band, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-9)


def test_band_source_is_written_once_and_reused(tmp_path):
    from cryosip.datasets import parse_simulate_config, simulate_dataset
    from cryosip.io import read_particles
    from cryosip.pipeline.data import prepare_data

    simulate_dataset(parse_simulate_config({
        "model": "hinge",
        "truth": [{"kind": "gaussian", "weight": 1.0, "mean": [0.5], "std": [0.2]}],
        "n_images": 40, "box_size": 24,
        "pixel_size_angstrom": 2.0, "snr": 0.5, "seed": 1}), tmp_path / "data", progress=False)
    model = load_model("hinge")
    stack = read_particles(tmp_path / "data" / "particles.star")
    data = prepare_data(stack, model, known_poses=True, flow_box=16, heldout_fraction=0.1,
                        seed=0)
    src = data.band_source(data.train_index, tmp_path / "prepared")
    assert len(src.values) == len(data.train_index)
    np.testing.assert_array_equal(np.load(tmp_path / "prepared" / "band.npy")[[2, 0]],
                                  src.values[np.array([2, 0])])
    stamp = (tmp_path / "prepared" / "band.npy").stat().st_mtime_ns
    again = data.band_source(data.train_index, tmp_path / "prepared")
    assert (tmp_path / "prepared" / "band.npy").stat().st_mtime_ns == stamp
    rows = np.array([5, 1, 3])
    batch = again.take(rows)
    direct = data.band_values(data.train_index[rows])
    np.testing.assert_array_equal(np.asarray(batch.values), direct)
    ref = data.observations(data.train_index[rows])
    np.testing.assert_array_equal(np.asarray(batch.nuisance.euler_deg),
                                  np.asarray(ref.nuisance.euler_deg))
    # the same bands as transforming the real-space observations here
    expect = data.band.prepare(np.asarray(ref.values), data.scale.noise_std_model)
    np.testing.assert_allclose(np.asarray(batch.values), expect, rtol=1e-5, atol=1e-5)
