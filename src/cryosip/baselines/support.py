"""Candidate supports for fixed-support baselines: a grid on the box, or a path's frames.

>>> grid_support([0.0], [1.0], 5)[:, 0].tolist()
[0.0, 0.25, 0.5, 0.75, 1.0]
>>> grid_support([0.0, 0.0], [1.0, 2.0], 3).shape
(9, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from cryosip.errors import InputError

__all__ = ["grid_support", "tensor_grid", "trajectory_support"]


def tensor_grid(axes: Sequence[np.ndarray]) -> Float[np.ndarray, "n_points dim"]:
    """Every combination of the 1-D ``axes`` (first axis slowest), one point a row: the one
    tensor grid of cryosip (support grids, scale-estimate grids, registration searches)."""
    mesh = np.meshgrid(*[np.asarray(a, float) for a in axes], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def grid_support(
    lower: Float[np.ndarray, " dim"] | float,
    upper: Float[np.ndarray, " dim"] | float,
    n_per_axis: int,
    *,
    cell_centres: bool = False,
) -> Float[np.ndarray, "n_support dim"]:
    """The tensor grid with ``n_per_axis`` equispaced points per axis on ``[lower, upper]``,
    ``n_per_axis ** dim`` rows: end points included (one point = the centre), or with
    ``cell_centres`` the centres ``lower + (i + 1/2) (upper - lower) / n`` of ``n`` equal cells.

    >>> grid_support([0.0], [1.0], 4, cell_centres=True)[:, 0].tolist()
    [0.125, 0.375, 0.625, 0.875]
    """
    lo, hi = np.atleast_1d(np.asarray(lower, float)), np.atleast_1d(np.asarray(upper, float))
    if cell_centres or n_per_axis == 1:
        unit = (np.arange(n_per_axis) + 0.5) / n_per_axis
        return tensor_grid([a + unit * (b - a) for a, b in zip(lo, hi, strict=True)])
    return tensor_grid([np.linspace(a, b, n_per_axis) for a, b in zip(lo, hi, strict=True)])


def trajectory_support(model) -> Float[np.ndarray, "n_frames dim"]:
    """The conformations ``x`` of the frames of a path model (e.g. the 98 AdK frames):
    ``n_frames`` equispaced points on ``[lower, upper]`` (a path parametrised by progress
    with frames at equal spacing), or a model's own ``frames_x`` (e.g. ``adk-modes``: the
    frames' coordinates on its modes)."""
    frames_x = getattr(model, "frames_x", None)
    if frames_x is not None:
        return np.asarray(frames_x, float)
    n_frames = getattr(model, "n_frames", None)
    if n_frames is None:
        raise InputError("--support", "support", "a model with frames (a path, or frames_x)",
                         f"{type(model).__name__}: pass --support grid instead")
    return grid_support(np.asarray(model.lower), np.asarray(model.upper), int(n_frames))
