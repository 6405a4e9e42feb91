r"""White Gaussian noise and its level from a signal-to-noise ratio.

Definition used throughout cryosip: for clean images ``G_n`` (``n = 1..N``),

.. math::  \mathrm{SNR} = \frac{\frac1N\sum_n \mathrm{Var}_{\text{box}}(G_n)}{\sigma^2},

the variance of each clean image over all pixels of the box, averaged over the images,
divided by the noise variance. So ``sigma = sqrt(mean_n var(G_n) / SNR)``. (The box
matters: a larger box around the same particle lowers the SNR.)

>>> import jax.numpy as jnp
>>> float(noise_std_for_snr(jnp.array([[[1.0, -1.0]]]), 0.25))
2.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["add_noise", "noise_std_for_snr"]


def noise_std_for_snr(clean_images: Float[Array, "n box box"], snr: float) -> Float[Array, ""]:
    """``sigma`` such that mean-over-images of the per-image pixel variance / sigma^2 = snr."""
    per_image = jnp.var(clean_images.reshape(clean_images.shape[0], -1), axis=1)
    return jnp.sqrt(jnp.mean(per_image) / snr)


def add_noise(
    key: PRNGKeyArray, clean_images: Float[Array, "n box box"], noise_std: float | Array
) -> Float[Array, "n box box"]:
    """``clean + noise_std * eps``; image ``i`` uses ``fold_in(key, i)`` (prefix-stable)."""
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(clean_images.shape[0]))
    eps = jax.vmap(lambda k: jax.random.normal(k, clean_images.shape[1:], clean_images.dtype))
    return clean_images + noise_std * eps(keys)
