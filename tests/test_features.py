"""Image features for MMD: the radial power spectrum is pose-invariant in the plane."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cryosip.forward.features import RadialPowerSpectrum


def test_radial_power_spectrum_is_invariant_to_quarter_turns_and_cyclic_shifts():
    image = jax.random.normal(jax.random.key(0), (16, 16))
    phi = RadialPowerSpectrum(16, n_bins=6)
    ref = np.asarray(phi(image))
    np.testing.assert_allclose(np.asarray(phi(jnp.rot90(image))), ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(phi(jnp.roll(image, (3, -5), (0, 1)))), ref,
                               rtol=1e-5)


def test_radial_power_spectrum_of_white_noise_is_flat():
    """E|FFT(e)(k)|^2 = D sigma^2 at every frequency: every ring near log(D sigma^2)."""
    sigma, box = 2.0, 32
    noise = sigma * jax.random.normal(jax.random.key(1), (400, box, box))
    feats = np.asarray(jax.vmap(RadialPowerSpectrum(box, n_bins=8))(noise))
    mean_power = np.exp(feats).mean(axis=0)
    np.testing.assert_allclose(mean_power, box**2 * sigma**2, rtol=0.05)
