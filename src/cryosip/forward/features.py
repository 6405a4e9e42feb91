r"""Feature maps of images for MMD kernels ``k(phi(y), phi(y'))`` (they act on images, so
they live beside the forward model; the MMD itself never sees them but as a function).

:class:`RadialPowerSpectrum`: ``phi(y)_b = log mean_{|k| in ring b} |FFT(y)(k)|^2``, the
rotationally averaged power spectrum on ``n_bins`` rings up to Nyquist, in log scale. It
is invariant to in-plane rotations and shifts of the particle, so with unknown poses the
comparison of image distributions keeps the size and shape information (radius of
gyration at low frequency) that raw pixels average away. White noise adds ``D sigma^2``
per frequency in expectation, the same for observed and simulated images when noise is
simulated.

>>> import jax.numpy as jnp
>>> phi = RadialPowerSpectrum(8, n_bins=4)
>>> phi(jnp.ones((8, 8))).shape
(4,)
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cryosip import conventions

__all__ = ["RadialPowerSpectrum"]


class RadialPowerSpectrum(eqx.Module):
    """``log`` ring-averaged power of the 2-D FFT of a ``box x box`` image (module doc)."""

    box_size: int = eqx.field(static=True)
    n_bins: int = eqx.field(static=True, default=16)
    floor: float = 1e-12

    def _rings(self) -> np.ndarray:
        """``[box, box//2+1, n_bins]`` ring membership on the rfft grid, each column weighted
        by how many frequencies ``k, -k`` of the full plane it stands for (so the ring sums
        equal full-plane sums and quarter turns of the image leave them unchanged)."""
        ky, kx = conventions.rfft_frequencies(self.box_size)  # cycles per pixel
        ring = np.minimum((np.hypot(ky, kx) / 0.5 * self.n_bins).astype(int), self.n_bins)
        onehot = np.eye(self.n_bins + 1)[ring][..., : self.n_bins]  # beyond Nyquist dropped
        return onehot * conventions.rfft_column_weights(self.box_size)[None, :, None]

    def __call__(self, image: Float[Array, "box box"]) -> Float[Array, " n_bins"]:
        power = jnp.abs(jnp.fft.rfft2(image)) ** 2
        rings = jnp.asarray(self._rings())
        mean = jnp.einsum("yx,yxb->b", power, rings) / jnp.maximum(rings.sum((0, 1)), 1.0)
        return jnp.log(mean + self.floor)
