"""Candidate supports for fixed-support baselines: a grid on the box, or a path's frames.

>>> grid_support([0.0], [1.0], 5)[:, 0].tolist()
[0.0, 0.25, 0.5, 0.75, 1.0]
>>> grid_support([0.0, 0.0], [1.0, 2.0], 3).shape
(9, 2)
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

__all__ = ["grid_support", "trajectory_support"]


def grid_support(
    lower: Float[np.ndarray, " dim"] | float,
    upper: Float[np.ndarray, " dim"] | float,
    n_per_axis: int,
) -> Float[np.ndarray, "n_support dim"]:
    """The tensor grid with ``n_per_axis`` equispaced points per axis on ``[lower, upper]``
    (end points included; one point = the centre), ``n_per_axis ** dim`` rows."""
    lo, hi = np.atleast_1d(np.asarray(lower, float)), np.atleast_1d(np.asarray(upper, float))
    if n_per_axis == 1:
        return ((lo + hi) / 2)[None, :]
    axes = [np.linspace(a, b, n_per_axis) for a, b in zip(lo, hi, strict=True)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def trajectory_support(model) -> Float[np.ndarray, "n_frames dim"]:
    """The conformations ``x`` of the frames of a path model (e.g. the 98 AdK frames).

    Uses the model's ``frame_positions`` (array ``[n_frames, dim]`` or ``[n_frames]``) if
    it has one; otherwise ``n_frames`` equispaced points on ``[lower, upper]`` (a path
    parametrised by progress with frames at equal spacing).
    """
    frames = getattr(model, "frame_positions", None)
    if callable(frames):
        frames = frames()
    if frames is not None:
        arr = np.asarray(frames, float)
        return arr[:, None] if arr.ndim == 1 else arr
    n_frames = getattr(model, "n_frames", None)
    if n_frames is None:
        raise TypeError(
            f"{type(model).__name__} has neither frame_positions nor n_frames: "
            "pass an explicit support array instead"
        )
    return grid_support(np.asarray(model.lower), np.asarray(model.upper), int(n_frames))
