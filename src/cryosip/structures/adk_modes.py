r"""AdK in a 3-D linear mode space: the first principal components of the DIMS frames.

:class:`AdkModes` (``dim = n_modes``, 3 by default) is a
:class:`~cryosip.structures.modes.LinearModeModel` built from the 98 AdK DIMS frames
(:mod:`cryosip.structures.adk`):

1. the **all-atom** frames (3341 atoms, hydrogens included) are superposed on frame 0 by
   their CA atoms and each is centred on its amplitude-weighted centroid (as ``adk-path``);
2. PCA of the flattened coordinates: ``r(x) = mean + sum_k x_k sqrt(lambda_k) v_k`` with
   ``v_k`` the unit principal directions and ``lambda_k`` their variances over the frames
   (divisor ``F - 1``), so ``x_k`` is in standard deviations of mode ``k`` and the box is
   ``[-3, 3]^n_modes``;
3. the sign of each mode is fixed so that frame 0 (closed) has a negative coordinate on it
   (an SVD's signs are arbitrary): ``x_0`` grows from closed to open.

The variants take their atoms from that one all-atom basis, so ``x`` means the same
structure in all of them: ``hydrogens=False`` keeps the rows of the heavy atoms, and
``coarse="residue"`` puts one bead per residue at the amplitude-weighted centroid of the
residue's atoms *at every* ``x`` (a linear map of the atoms, applied to the mean and to
each mode), with the second-moment width of
:func:`~cryosip.structures.topology.coarse_grain_residues` taken on the mean structure.
The residue beads at ``x`` are therefore exactly the residue centroids of the all-atom
structure at ``x`` (what ``load_output_model`` relies on).

The first three modes carry 93.1% of the all-atom variance of the frames (84.9, 6.3,
1.9%); the frames lie within 0.94 Å RMSD of their projection on them. ``frames_x`` holds
the frames' coordinates (scores), ``(98, n_modes)``. Named states: ``closed`` for
``x_0 < 0`` and ``open`` for ``x_0 >= 0`` (any ``x_1, x_2``): ``x_0 = 0`` is the mean of
the frames, which the path crosses between frames 46 and 47 (progress 0.47).

>>> import jax.numpy as jnp
>>> model = AdkModes(coarse="residue")
>>> model.dim, model.structure_at(jnp.zeros(3)).positions_angstrom.shape
(3, (214, 3))
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cryosip.structures.adk import load_adk_frames
from cryosip.structures.modes import BOX_STD, LinearModeModel
from cryosip.structures.path import prepare_frames
from cryosip.structures.topology import coarse_grain_residues

__all__ = ["AdkModes", "adk_principal_components"]


@functools.lru_cache(maxsize=1)
def _pca() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``(n, 3)``, all modes ``(97, n, 3)`` and scores ``(98, 97)`` (module doc)."""
    frames, amps, _, topo = load_adk_frames(True, None)
    frames = prepare_frames(frames, amps, np.flatnonzero(topo.atom_names == "CA"))
    n_frames, n_atoms, _ = frames.shape
    mean = frames.mean(axis=0)
    u, sing, vt = np.linalg.svd((frames - mean).reshape(n_frames, -1), full_matrices=False)
    u, sing, vt = u[:, :-1], sing[:-1], vt[:-1]  # F frames about their mean: F - 1 modes
    sign = -np.sign(u[0])  # frame 0 (closed) on the negative side of every mode
    std = sing / np.sqrt(n_frames - 1)
    modes = (sign[:, None] * std[:, None] * vt).reshape(-1, n_atoms, 3)
    return mean, modes, u * sign * np.sqrt(n_frames - 1)


def adk_principal_components(n_modes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean (n, 3), modes (n_modes, n, 3), scores (98, n_modes))`` of the all-atom AdK
    frames (module doc): ``frame_f = mean + sum_k scores[f, k] modes[k] + residual``.

    Modes are scaled to one standard deviation; scores are in standard deviations.
    """
    mean, modes, scores = _pca()
    if not 1 <= n_modes <= len(modes):
        raise ValueError(f"n_modes must be in [1, {len(modes)}], got {n_modes}")
    return mean, modes[:n_modes], scores[:, :n_modes]


def _variant(hydrogens: bool, coarse: str | None, n_modes: int):
    """Mean, modes, amplitudes, widths and topology of one variant (module doc)."""
    mean, modes, _ = adk_principal_components(n_modes)
    _, amps, widths, topo = load_adk_frames(True, None)
    keep = np.ones(len(amps), bool) if hydrogens else amps > 1
    stack = np.concatenate([mean[None], mean[None] + modes])[:, keep]
    amps, widths, topo = amps[keep], widths[keep], topo.take(np.flatnonzero(keep))
    if coarse == "residue":
        stack, amps, widths, topo = coarse_grain_residues(stack, amps, widths, topo)
    elif coarse is not None:
        raise ValueError(f"coarse must be None or 'residue', got {coarse!r}")
    return stack[0], stack[1:] - stack[0], amps, widths, topo


class AdkModes(LinearModeModel):
    """AdK along its first ``n_modes`` principal components, ``x`` in ``[-3, 3]^n_modes``
    (standard deviations per mode; module doc)."""

    frames_x: Float[Array, "n_frames dim"] = eqx.field(default=None)

    def __init__(self, coarse: str | None = None, hydrogens: bool = True, n_modes: int = 3):
        mean, modes, amps, widths, topo = _variant(hydrogens, coarse, n_modes)
        f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
        self.mean_angstrom, self.modes_angstrom = f32(mean), f32(modes)
        self.amplitudes, self.widths_angstrom = f32(amps), f32(widths)
        self.lower, self.upper = jnp.full(n_modes, -BOX_STD), jnp.full(n_modes, BOX_STD)
        self.topology = topo
        self.frames_x = f32(adk_principal_components(n_modes)[2])

    @property
    def named_states(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        lo, hi = (-BOX_STD,) * self.dim, (BOX_STD,) * self.dim
        return {"closed": (lo, (0.0, *hi[1:])), "open": ((0.0, *lo[1:]), hi)}
