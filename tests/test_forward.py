"""Forward model: projection closed forms, shift/rotation direction, operator, gradients."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cryosip.forward import (
    CryoEMOperator,
    GaussianProjector,
    ImageConfig,
    ImageModel,
    ImageNuisance,
    NuisancePrior,
    Optics,
    add_noise,
    noise_std_for_snr,
    render_images,
    window_pixels_for,
)
from cryosip.structures.base import AbstractConformationModel, Atoms


class Dumbbell(AbstractConformationModel):
    """Two Gaussian beads at ``±(4 + 6 x) Å`` along the model x axis, plus one off-axis."""

    lower: jax.Array
    upper: jax.Array

    def structure_at(self, x):
        d = 4.0 + 6.0 * x[0]
        pos = jnp.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) * d
        pos = pos + jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 2.0]])
        return Atoms(pos, jnp.array([1.0, 1.5, 0.7]), jnp.array([2.0, 2.0, 2.5]))


def random_atoms(n=20, seed=0, scale=6.0):
    rng = np.random.default_rng(seed)
    return Atoms(
        jnp.asarray(rng.normal(size=(n, 3)) * scale),
        jnp.asarray(rng.uniform(0.5, 2.0, n)),
        jnp.asarray(rng.uniform(1.0, 2.0, n)),
    )


def bare(cfg):
    return ImageModel(cfg, apply_ctf=False)


def test_projection_integrates_to_total_amplitude():
    cfg, atoms = ImageConfig(64, 1.5), random_atoms(scale=4.0)
    img = bare(cfg).render(atoms, ImageNuisance.create(jnp.array([10.0, 70.0, -30.0])))
    np.testing.assert_allclose(img.sum() * 1.5**2, atoms.amplitudes.sum(), rtol=1e-5)


def test_pixel_average_equals_point_sampling_of_a_widened_gaussian():
    """Averaging over a pixel p adds p^2/12 to the variance (to O(p^4/s^4))."""
    cfg, s = ImageConfig(32, 1.0), 4.0
    avg = GaussianProjector("average").project(jnp.zeros((1, 2)), jnp.ones(1), jnp.full(1, s), cfg)
    wide = jnp.full(1, np.sqrt(s**2 + 1.0 / 12.0))
    pt = GaussianProjector("point").project(jnp.zeros((1, 2)), jnp.ones(1), wide, cfg)
    np.testing.assert_allclose(avg, pt, atol=3e-4 * float(pt.max()))


def test_shift_moves_particle_to_centre_minus_origin():
    """rlnOriginX/YAngst = o: the image equals the unshifted one rolled by -o (in pixels)."""
    cfg, atoms = ImageConfig(48, 2.0), random_atoms(scale=5.0)
    e = jnp.array([20.0, 40.0, 60.0])
    zero = ImageNuisance.create(e)
    moved = ImageNuisance.create(e, jnp.array([6.0, -4.0]))  # 3 px in x, -2 px in y
    for model in (bare(cfg), ImageModel(cfg, Optics())):
        expected = np.roll(np.asarray(model.render(atoms, zero)), (2, -3), axis=(0, 1))
        np.testing.assert_allclose(model.render(atoms, moved), expected, atol=1e-5)


def test_in_plane_rotation_direction():
    """psi = 90: A = Rz(-90) takes the model's +x axis to the image's -y axis."""
    cfg = ImageConfig(32, 1.0)
    atoms = Atoms(jnp.array([[6.0, 0.0, 0.0]]), jnp.ones(1), jnp.ones(1))
    img = np.asarray(bare(cfg).render(atoms, ImageNuisance.create(jnp.array([0.0, 0.0, 90.0]))))
    assert np.unravel_index(img.argmax(), img.shape) == (16 - 6, 16)


def test_render_images_is_batched_and_jittable():
    cfg, atoms = ImageConfig(24, 2.0), random_atoms()
    w = NuisancePrior(astigmatism_angstrom=500.0, shift_std_angstrom=2.0).sample(
        jax.random.key(0), 5
    )
    batch = jax.jit(render_images, static_argnums=2)(atoms, w, cfg, Optics())
    one = ImageModel(cfg, Optics()).render(atoms, w.take(3))
    np.testing.assert_allclose(batch[3], one, atol=1e-5)


def test_prior_and_noise_do_not_depend_on_batch_size():
    prior = NuisancePrior(shift_std_angstrom=1.0, astigmatism_angstrom=300.0)
    sample = jax.jit(prior.sample, static_argnums=1)
    a, b = sample(jax.random.key(1), 3), sample(jax.random.key(1), 7).take(slice(3))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y)
    d = a.defocus_u_angstrom - a.defocus_v_angstrom
    np.testing.assert_allclose(d, 300.0, rtol=1e-5)
    imgs = jnp.zeros((7, 4, 4))
    noise = jax.jit(add_noise)
    n3, n7 = noise(jax.random.key(2), imgs[:3], 1.0), noise(jax.random.key(2), imgs, 1.0)
    np.testing.assert_allclose(n3, n7[:3])


def test_noise_std_for_snr_definition():
    rng = np.random.default_rng(0)
    clean = jnp.asarray(rng.normal(size=(50, 16, 16)) * rng.uniform(0.5, 2.0, (50, 1, 1)))
    sigma = noise_std_for_snr(clean, 0.1)
    expected = np.sqrt(np.mean(np.var(np.asarray(clean).reshape(50, -1), axis=1)) / 0.1)
    np.testing.assert_allclose(sigma, expected, rtol=1e-5)
    noisy = jax.jit(add_noise)(jax.random.key(0), clean, sigma)
    np.testing.assert_allclose(jnp.std(noisy - clean), sigma, rtol=0.02)


@pytest.fixture
def operator():
    model = Dumbbell(jnp.zeros(1), jnp.ones(1))
    prior = NuisancePrior(astigmatism_angstrom=400.0, shift_std_angstrom=1.5)
    return CryoEMOperator(model, ImageConfig(24, 2.0), Optics(), prior, 0.5)


def test_operator_batched_methods_match_clean(operator):
    w = eqx.filter_jit(operator.sample_nuisance)(jax.random.key(0), 4)
    xs = jnp.array([[0.1], [0.7], [0.4]])
    grid = eqx.filter_jit(operator.clean_grid)(xs, w)
    assert grid.shape == (3, 4, 24, 24)
    one = eqx.filter_jit(operator.clean)(xs[2], w.take(1))
    np.testing.assert_allclose(grid[2, 1], one, atol=1e-5)
    paired = eqx.filter_jit(operator.clean_paired)(xs, w.take(jnp.arange(3)))
    np.testing.assert_allclose(paired[1], grid[1, 1], atol=1e-5)
    y = eqx.filter_jit(operator.sample)(jax.random.key(5), xs[0], w.take(0))
    # the noise: i.i.d. N(0, 0.5^2) over 576 pixels, so the sample sd is within 4 of its
    # standard errors (0.5 / sqrt(2 * 576)), the mean within 4 x 0.5 / sqrt(576), and the
    # neighbours' correlation within 4 / sqrt(576)
    noise = np.asarray(y - grid[0, 0], np.float64)
    np.testing.assert_allclose(noise.std(), 0.5, atol=4 * 0.5 / np.sqrt(2 * noise.size))
    np.testing.assert_allclose(noise.mean(), 0.0, atol=4 * 0.5 / np.sqrt(noise.size))
    lag = np.mean(noise[:, 1:] * noise[:, :-1]) / noise.var()
    np.testing.assert_allclose(lag, 0.0, atol=4 / np.sqrt(noise.size))


def _fd_check(fun, x, direction, eps=1e-5, rtol=1e-6):
    fun = jax.jit(fun)
    grad = jax.jit(jax.grad(fun))(x)
    fd = (fun(x + eps * direction) - fun(x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad, direction), fd, rtol=rtol)


def test_gradient_wrt_positions_matches_finite_differences():
    with jax.enable_x64(True):
        cfg, atoms = ImageConfig(20, 2.0), random_atoms(n=6, scale=4.0)
        atoms = jax.tree.map(lambda a: a.astype(jnp.float64), atoms)
        w = NuisancePrior(astigmatism_angstrom=300.0, shift_std_angstrom=1.0).sample(
            jax.random.key(0), 2
        )
        w = jax.tree.map(lambda a: a.astype(jnp.float64), w)
        target = jnp.asarray(np.random.default_rng(1).normal(size=(2, 20, 20)))

        def loss(pos):
            a = Atoms(pos, atoms.amplitudes, atoms.widths_angstrom)
            return jnp.sum(render_images(a, w, cfg, Optics()) * target)

        direction = jnp.asarray(
            np.random.default_rng(2).normal(size=atoms.positions_angstrom.shape)
        )
        _fd_check(loss, atoms.positions_angstrom, direction)


def test_gradient_through_conformation_matches_finite_differences(operator):
    with jax.enable_x64(True):
        w = jax.tree.map(
            lambda a: a.astype(jnp.float64), operator.sample_nuisance(jax.random.key(3), 3)
        )
        target = jnp.asarray(np.random.default_rng(1).normal(size=(3, 24, 24)))
        loss = lambda x: jnp.sum(operator.clean_grid(x[None], w)[0] * target)
        _fd_check(loss, jnp.array([0.3]), jnp.array([1.0]))


def test_projection_window_is_exact_when_safe():
    cfg, atoms = ImageConfig(64, 1.5), random_atoms(n=30, scale=5.0)
    window = window_pixels_for(atoms, cfg)
    assert window < 64
    w = NuisancePrior(astigmatism_angstrom=300.0, shift_std_angstrom=6.0).sample(
        jax.random.key(4), 6
    )
    render = jax.jit(render_images, static_argnums=(2, 4))
    full = render(atoms, w, cfg, Optics(), None)
    windowed = render(atoms, w, cfg, Optics(), window)
    np.testing.assert_allclose(windowed, full, atol=1e-5 * float(jnp.abs(full).max()))


def test_operator_sizes_its_window_from_the_model(operator):
    cfg = ImageConfig(40, 2.0)
    auto = CryoEMOperator(operator.model, cfg, Optics(), operator.prior, 0.5)
    assert auto.window_pixels is not None and auto.window_pixels < 40
    full = CryoEMOperator(operator.model, cfg, Optics(), operator.prior, 0.5, None)
    w = operator.sample_nuisance(jax.random.key(1), 3)
    xs = jnp.array([[0.0], [1.0]])
    grid = eqx.filter_jit(lambda op: op.clean_grid(xs, w))
    np.testing.assert_allclose(grid(auto), grid(full), atol=1e-5)


def test_cdf_product_vjp_matches_autodiff_of_the_formula():
    """The hand-written VJP against autodiff of ``C_y diag(a) C_x^T`` (float64)."""
    from jax.scipy.special import erf

    from cryosip.forward.projector import cdf_product

    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x, y = (jnp.asarray(rng.normal(size=9) * 3) for _ in range(2))
        a, s = jnp.asarray(rng.uniform(0.5, 2, 9)), jnp.asarray(rng.uniform(0.5, 2, 9))
        ex, ey = jnp.linspace(-7.0, 6.0, 11), jnp.linspace(-5.0, 8.0, 10)
        target = jnp.asarray(rng.normal(size=(10, 11)))

        def formula(x, y, a, s):
            cx = erf((ex[:, None] - x) / (np.sqrt(2) * s))
            cy = erf((ey[:, None] - y) / (np.sqrt(2) * s))
            return (cy * a) @ cx.T

        loss = lambda f: lambda *args: jnp.sum(f(*args) * target)
        ours = jax.grad(loss(lambda *q: cdf_product(*q, ex, ey)), argnums=(0, 1, 2, 3))
        ref = jax.grad(loss(formula), argnums=(0, 1, 2, 3))
        for got, want in zip(ours(x, y, a, s), ref(x, y, a, s), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_ctf_on_a_window_with_fourier_shift_equals_ctf_of_the_placed_window():
    from cryosip.forward import apply_ctf, ctf_rfft

    cfg, atoms = ImageConfig(48, 2.0), random_atoms(scale=4.0)
    w = ImageNuisance.create(jnp.array([20.0, 60.0, 10.0]), jnp.array([9.0, -14.0]), 12000.0)
    xy = atoms.positions_angstrom[:, :2] - w.shift_angstrom
    proj = GaussianProjector(window_pixels=22)
    crop, first = proj.project_window(xy, atoms.amplitudes, atoms.widths_angstrom, cfg)
    assert crop.shape == (22, 22) and int(first[0]) != int(first[1])
    ctf = ctf_rfft(Optics(), w, cfg)
    placed = proj.project(xy, atoms.amplitudes, atoms.widths_angstrom, cfg)
    np.testing.assert_allclose(apply_ctf(crop, ctf, first), apply_ctf(placed, ctf), atol=1e-6)


@pytest.mark.parametrize("apply", [True, False])
def test_chunked_rendering_matches_per_image_rendering(apply):
    """``cache_bytes=1`` forces one image per chunk (``lax.map``); also with a ragged tail."""
    cfg = ImageConfig(32, 2.0)
    atoms = random_atoms(scale=3.0)
    w = NuisancePrior(astigmatism_angstrom=800.0, shift_std_angstrom=3.0).sample(
        jax.random.key(4), 5
    )
    proj = GaussianProjector(window_pixels=window_pixels_for(atoms, cfg))
    chunked = ImageModel(cfg, projector=proj, apply_ctf=apply, cache_bytes=1)
    assert chunked.chunk_size(atoms.n_atoms) == 1
    one_by_one = jnp.stack([chunked.render(atoms, w.take(i)) for i in range(5)])
    for model in (chunked, dataclasses.replace(chunked, cache_bytes=2**30)):
        np.testing.assert_allclose(model.render_batch(atoms, w), one_by_one, atol=1e-6)


def test_ctf_matches_the_textbook_formula_with_angles():
    """The angle-free expansion of the astigmatic defocus against RELION's form in float64."""
    from cryosip import conventions
    from cryosip.forward import ctf_rfft

    cfg, optics = ImageConfig(40, 1.3), Optics(b_factor_angstrom2=30.0)
    for angle in (0.0, 37.0, 121.0):
        w = ImageNuisance.create(jnp.zeros(3), None, 16000.0, 13500.0, angle, 20.0)
        ky = np.fft.fftfreq(40, 1.3)[:, None]
        kx = np.fft.rfftfreq(40, 1.3)[None, :]
        k2 = kx**2 + ky**2
        lam = float(conventions.electron_wavelength_angstrom(300.0))
        dz = 14750.0 + 1250.0 * np.cos(2 * (np.arctan2(ky, kx) - np.deg2rad(angle)))
        chi = np.pi * lam * dz * k2 - 0.5 * np.pi * 2.7e7 * lam**3 * k2**2
        chi += np.deg2rad(20.0) + np.arctan(0.1 / np.sqrt(1 - 0.01))
        want = np.sin(chi) * np.exp(-7.5 * k2)
        np.testing.assert_allclose(ctf_rfft(optics, w, cfg), want, atol=2e-5)


def test_sin_fast_matches_sin_over_the_ctf_phase_range():
    from cryosip.forward import sin_fast

    x = np.concatenate([np.linspace(-1e4, 1e4, 200_001), [0.0, np.pi, -np.pi / 2]])
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(sin_fast(jnp.asarray(x32)), np.sin(x32.astype(float)), atol=3e-7)
    with jax.enable_x64(True):
        np.testing.assert_allclose(sin_fast(jnp.asarray(x)), np.sin(x), rtol=0, atol=1e-14)


@pytest.mark.parametrize("window", [None, 22])
def test_footprint_projection_matches_dense_values_and_gradients(window):
    """Per-atom footprints (scatter) against the dense product, near-edge atoms included."""
    from cryosip.forward import footprint_pixels_for

    cfg = ImageConfig(40, 1.5)
    atoms = random_atoms(n=30, seed=5, scale=5.0)
    pos = atoms.positions_angstrom.at[0].set(jnp.array([27.0, -1.0, 0.0]))  # outside window
    k = footprint_pixels_for(atoms, cfg)
    dense = GaussianProjector(window_pixels=window)
    foot = GaussianProjector(window_pixels=window, footprint_pixels=k)
    w = ImageNuisance.create(jnp.array([30.0, 50.0, -20.0]), jnp.array([1.3, -2.1]))
    target = jax.random.normal(jax.random.key(0), (40, 40))

    def image(proj, q):
        xy = q[:, :2] @ jnp.eye(2) - w.shift_angstrom
        return proj.project(xy, atoms.amplitudes, atoms.widths_angstrom, cfg)

    want, got = image(dense, pos), image(foot, pos)
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 2e-4
    grad = lambda proj: jax.grad(lambda q: jnp.sum(image(proj, q) * target))(pos)
    g_dense, g_foot = grad(dense), grad(foot)
    assert float(jnp.linalg.norm(g_foot - g_dense) / jnp.linalg.norm(g_dense)) < 2e-3
