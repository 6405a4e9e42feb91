"""Named random streams: every random draw of a run derives from the user's seed and a name.

A stream is ``(seed, name)``: :func:`numpy_rng` gives a ``numpy.random.Generator`` seeded
with ``[seed, code(name)]`` and :func:`jax_key` the key ``fold_in(key(seed), code(name))``,
where ``code`` is the first 31 bits of the BLAKE2b digest of the name (stable across
processes, platforms and Python versions, unlike ``hash``). Streams of different names are
independent; the same ``(seed, name)`` always gives the same draws. Names are registered in
:data:`STREAMS` with what they draw, so the list below is the whole story of a run's
randomness.

>>> int(numpy_rng(0, "split").integers(1000)) == int(numpy_rng(0, "split").integers(1000))
True
>>> code("split") != code("init")
True
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np

__all__ = ["STREAMS", "code", "jax_key", "numpy_rng"]

STREAMS: dict[str, str] = {
    "split": "the held-out permutation of the images",
    "scale": "the images used to estimate offset, contrast and noise, and their prior draws",
    "registration": "the images used to estimate the model's 3-D offset",
    "init": "the initial particle positions (d > 1)",
    "bandwidth": "the prior simulations of the MMD median-heuristic bandwidth",
    "flow": "minibatches, nuisance draws and Langevin noise of the flow",
    "evaluate": "the true x scored by the held-out image-space MMD",
    "floor": "the finite-sample floor's repeats (1-D) or fresh truth sample (d-D)",
    "subsample": "the true x that evaluate's W2 (d > 1) compares with",
    "figure": "the truth sample drawn in evaluate's comparison figure",
    "truth": "the true conformations of a simulated data set",
    "images": "poses, CTFs and noise of a simulated data set",
    "baseline": "the support and initialisation of a discretize-then-optimise baseline",
    "toy": "the observations of a toy problem",
    "bootstrap": "the resampled images and the keys of the bootstrap refits",
}
"""Every stream name, with what it draws (a name not listed here is refused)."""


def code(name: str) -> int:
    """The 31-bit code of a registered stream name."""
    if name not in STREAMS:
        raise KeyError(f"unknown random stream {name!r}; register it in cryosip.seeds.STREAMS")
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little") >> 1


def numpy_rng(seed: int, name: str) -> np.random.Generator:
    """The numpy generator of stream ``name`` for the user's ``seed``."""
    return np.random.default_rng([int(seed), code(name)])


def jax_key(seed: int, name: str) -> jax.Array:
    """The JAX key of stream ``name`` for the user's ``seed``."""
    return jax.random.fold_in(jax.random.key(int(seed)), code(name))
