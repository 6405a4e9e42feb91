r"""Paths through a sequence of frames, and rigid superposition of frames.

:class:`FramePath` maps a progress ``s`` in ``[0, 1]`` to coordinates: frame ``f`` of
``F`` sits at ``s = f / (F - 1)``. Between frames it is a **natural cubic spline** in
``u = s (F-1)`` (C^2, so the gradient in ``s`` is continuous: the default) or **piecewise
linear** (C^0, exactly the straight segment between frames). On segment
``k = floor(u)`` with ``t = u - k``,

.. math:: r(s) = ((c_0 t + c_1) t + c_2) t + c_3, \qquad c_i = c_i[k],

outside ``[0, 1]`` ``s`` is clipped (zero gradient there). :func:`superpose` is the
weighted Kabsch fit (least-squares rotation about the weighted centroids).

>>> import jax.numpy as jnp
>>> frames = np.array([[[0.0, 0.0, 0.0]], [[2.0, 0.0, 0.0]], [[4.0, 0.0, 0.0]]])
>>> path = FramePath.from_frames(frames, "linear")
>>> path(jnp.asarray(0.25)).tolist()
[[1.0, 0.0, 0.0]]
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from scipy.interpolate import CubicSpline

__all__ = ["FramePath", "Interpolation", "superpose", "superpose_frames"]

Interpolation = Literal["cubic", "linear"]


class FramePath(eqx.Module):
    """Spline (or polyline) through frames; ``coefficients`` has shape (4, F-1, n, 3)."""

    coefficients: Float[Array, "4 n_segments n_atoms 3"]

    @classmethod
    def from_frames(
        cls, frames: Float[np.ndarray, "n_frames n_atoms 3"], interpolation: Interpolation = "cubic"
    ) -> FramePath:
        frames = np.asarray(frames, dtype=np.float64)
        if frames.shape[0] < 2:
            raise ValueError("a path needs at least two frames")
        if interpolation == "cubic" and frames.shape[0] >= 3:
            c = CubicSpline(np.arange(frames.shape[0]), frames, axis=0, bc_type="natural").c
        else:
            zero = np.zeros_like(frames[1:])
            c = np.stack([zero, zero, frames[1:] - frames[:-1], frames[:-1]])
        return cls(jnp.asarray(c, dtype=jnp.float32))

    @property
    def n_frames(self) -> int:
        return int(self.coefficients.shape[1]) + 1

    def __call__(self, s: Float[Array, ""]) -> Float[Array, "n_atoms 3"]:
        u = jnp.clip(s, 0.0, 1.0) * (self.n_frames - 1)
        k = jnp.clip(jnp.floor(u), 0, self.n_frames - 2).astype(jnp.int32)
        t = (u - k).astype(self.coefficients.dtype)
        c = self.coefficients[:, k]
        return ((c[0] * t + c[1]) * t + c[2]) * t + c[3]


def superpose(
    mobile: Float[np.ndarray, "n 3"], target: Float[np.ndarray, "n 3"], weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation ``R`` and translation ``t`` minimising ``sum w |R m + t - target|^2``."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    mc, tc = w @ mobile, w @ target
    h = ((mobile - mc) * w[:, None]).T @ (target - tc)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rot, tc - rot @ mc


def superpose_frames(
    frames: Float[np.ndarray, "n_frames n_atoms 3"], fit_index: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Every frame rigidly fitted on frame 0 using the atoms ``fit_index`` (weighted)."""
    ref = frames[0, fit_index]
    out = np.empty_like(frames, dtype=np.float64)
    for f, frame in enumerate(frames):
        rot, shift = superpose(frame[fit_index], ref, weights)
        out[f] = frame @ rot.T + shift
    return out


def rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square deviation (Å) between two coordinate sets, no refitting."""
    return float(np.sqrt(np.mean(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=-1))))
