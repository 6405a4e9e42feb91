r"""Per-image results: each image's posterior over the recovered measure, ``RUN/particles.star``.

For image ``n`` and particle ``j`` of the recovered measure ``sum_j w_j delta_{x_j}``,

.. math::  p(j \mid y_n) = \frac{w_j\, p(y_n \mid x_j, \omega_n)}
                                {\sum_k w_k\, p(y_n \mid x_k, \omega_n)},

* **known poses**: ``omega_n`` is the image's pose, shift and CTF from the particle file and
  ``log p(y_n | x_j, omega_n)`` is the Gaussian likelihood of the operator the flow ran on
  (:meth:`~cryosip.operators.AbstractRandomOperator.log_likelihood_grid`; the Fourier band
  operator when the flow used it, :func:`cryosip.pipeline.reconstruct.uses_band`);
* **unknown poses**: the image keeps its CTF from the particle file and its pose and shift
  are integrated out on the grid of :mod:`cryosip.forward.poses` (rotations ``R_r`` with
  weights ``q_r``, shifts ``t`` with Gaussian prior weights ``q_t``), ``p(y_n | x_j) =
  sum_{r,t} q_r q_t p(y_n | x_j, R_r, t)``, on the Fourier band and the full-data phase's
  grid; the maximum-a-posteriori pose is the node of that grid maximising
  ``q_r q_t p(y_n | x_{j*}, R_r, t)`` given the image's most probable particle
  ``j* = argmax_j p(j | y_n)`` (one particle's templates an image: ``1 / M`` of the cost of
  maximising the particles' mixture over every pose, so it runs on the fine grid),
  written to RELION's ``rlnAngleRot/Tilt/Psi`` and
  ``rlnOriginX/YAngst`` (the input's values in those columns are replaced; its pixel
  origins ``rlnOriginX/Y`` too, so both agree). The angles are as fine as the grid: its
  spacing (:func:`cryosip.forward.poses.so3_spacing_deg`) bounds the angular error.

From ``p`` the posterior mean and standard deviation of each coordinate,
``E[x | y_n] = sum_j p(j | y_n) x_j`` and ``sd = sqrt(sum_j p(j | y_n) (x_j - E)^2)``; a
periodic coordinate of period ``L`` uses the circular mean of the angles
``theta = 2 pi (x - lower) / L`` (put back in ``[lower, upper)``) and the circular
standard deviation ``L / (2 pi) sqrt(-2 log R)``, ``R`` the length of the mean resultant.

Every image of the particle file is scored (held-out ones too: they are images of the same
data set; :data:`HELDOUT_COLUMN` says which), in blocks of :data:`BLOCK` images read in file
order and padded to one shape (one compilation): memory holds one block of images, never
the data set. Known poses cost one pass of the likelihood over the N images and M particles,
about what ``N / batch_size`` flow steps spend on their forward pass, or, when the
full-data weights phase ran (:mod:`cryosip.flows.refine`), over the held-out images only:
the training images' likelihood is the one that phase computed; unknown poses, the same
for ``p(j | y_n)`` on the pose grid, and for the MAP pose one image against one particle's
``R`` templates.

``RUN/particles.star`` (:func:`write_particles_star`, written atomically by
:func:`cryosip.io.annotate.annotate_particles`): the input's rows and blocks as they were,
plus ``rlnCryosipX1..d`` (posterior mean), ``rlnCryosipXStd1..d`` and
``rlnCryosipHeldOut`` (1 for the images the flow never saw).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from cryosip.flows.refine import likelihood_rows
from cryosip.forward.fourier import FourierOperator
from cryosip.forward.poses import PoseMarginalRows, map_poses_given_particle
from cryosip.io.annotate import annotate_particles, relion_pose_columns
from cryosip.measures import ParticleMeasure
from cryosip.operators import Observations
from cryosip.pipeline.data import PreparedData

__all__ = ["BLOCK", "HELDOUT_COLUMN", "ImagePosterior", "image_posteriors", "posterior_moments",
           "posterior_operator", "write_particles_star", "x_columns"]

HELDOUT_COLUMN = "rlnCryosipHeldOut"
"""1 for an image held out of the flow, 0 for a training image."""
BLOCK = 256
"""Images scored at a time with known poses (a quarter of it through the pose grid)."""


def x_columns(dim: int) -> tuple[list[str], list[str]]:
    """Names of the posterior mean and standard deviation columns, 1-based.

    >>> x_columns(2)
    (['rlnCryosipX1', 'rlnCryosipX2'], ['rlnCryosipXStd1', 'rlnCryosipXStd2'])
    """
    return ([f"rlnCryosipX{k + 1}" for k in range(dim)],
            [f"rlnCryosipXStd{k + 1}" for k in range(dim)])


@dataclasses.dataclass(frozen=True)
class ImagePosterior:
    """Per-image posterior summaries, in particle-file order.

    ``x_mean``, ``x_std`` ``[n_images, dim]``; ``heldout [n_images]`` (bool);
    ``rotations [n_images, 3, 3]`` and ``shifts_angstrom [n_images, 2]``, the
    maximum-a-posteriori pose (RELION's ``A`` and origin), or ``None`` when not estimated;
    ``method`` names how ``p(j | y_n)`` was computed; ``wall_time_s`` its cost.
    """

    x_mean: np.ndarray
    x_std: np.ndarray
    heldout: np.ndarray
    method: str
    wall_time_s: float
    rotations: np.ndarray | None = None
    shifts_angstrom: np.ndarray | None = None

    def record(self) -> dict:
        """``summary.json``'s ``per_image``: ``method``, ``wall_time_s`` and ``map_poses``
        (whether ``particles.star``'s angles and origins are this posterior's)."""
        return {"method": self.method, "wall_time_s": float(self.wall_time_s),
                "map_poses": self.rotations is not None}


def posterior_moments(probs, positions, lower, upper, periodic) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``x`` under ``probs [n, M]`` over ``positions [M, d]``
    (module docstring; circular on the ``periodic`` axes of the box ``[lower, upper]``).

    >>> p = np.array([[0.5, 0.5]])
    >>> m, s = posterior_moments(p, np.array([[0.0], [1.0]]), [0.0], [1.0], [False])
    >>> m.tolist(), s.tolist()
    ([[0.5]], [[0.5]])
    >>> m, _ = posterior_moments(p, np.array([[0.1], [0.9]]), [0.0], [1.0], [True])
    >>> round(float(m[0, 0]), 6) in (0.0, 1.0)
    True
    """
    probs, xs = np.asarray(probs, np.float64), np.asarray(positions, np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    mean = probs @ xs
    std = np.sqrt(np.maximum(probs @ xs**2 - mean**2, 0.0))
    for k in np.flatnonzero(np.asarray(periodic, bool)):
        period = float(upper[k]) - float(lower[k])
        theta = 2.0 * np.pi * (xs[:, k] - float(lower[k])) / period
        c, s = probs @ np.cos(theta), probs @ np.sin(theta)
        angle = np.mod(np.arctan2(s, c), 2.0 * np.pi)
        mean[:, k] = float(lower[k]) + period * angle / (2.0 * np.pi)
        r = np.clip(np.hypot(c, s), 1e-300, 1.0)
        std[:, k] = period / (2.0 * np.pi) * np.sqrt(-2.0 * np.log(r))
    return mean, std


def posterior_operator(config, operator, data: PreparedData):
    """The operator the flow ran on: the Fourier band operator when it used the band
    (:func:`cryosip.pipeline.reconstruct.uses_band`), else ``operator`` itself."""
    from cryosip.pipeline.reconstruct import uses_band

    if uses_band(config):
        return FourierOperator.from_operator(operator, data.band.native_pixel_angstrom)
    return operator


@eqx.filter_jit
def _known_probs(op, obs: Observations, xs, log_w):
    return jax.nn.softmax(op.log_likelihood_grid(obs.values, xs, obs.nuisance) + log_w, axis=1)


def _block(data: PreparedData, rows: np.ndarray, band: bool, size: int) -> Observations:
    """The images ``rows`` (model units; whitened bands when ``band``) with their
    nuisances, padded with copies of the last image to ``size``."""
    source = data.band_source(rows) if band else data.source(rows)
    obs = source.take(np.arange(len(rows)))
    pad = size - len(rows)
    return jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), obs)


def _moments(data: PreparedData, model, positions, weights, probs_of, refinement=None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and sd of ``x`` for every image (module docstring) and its most
    probable particle ``argmax_j p(j | y_n)``, a group of rows at a time: memory holds one
    group's ``[rows, M]`` probabilities, never ``[N, M]``.

    With ``refinement`` (:class:`cryosip.flows.refine.Refinement`: the full-data phase's
    likelihood of the training images, ``data.train_index`` order, against these
    ``positions``) the training rows are read from it, ``p(j | y_n) ~ w_j p[n, j]``, instead
    of computed again; the held-out rows (and any row whose stored likelihoods all flushed
    to 0 under these weights) go through ``probs_of(rows) -> [len(rows), M]``.
    """
    n, dim = len(data.stack), positions.shape[1]
    mean, std = np.empty((n, dim)), np.empty((n, dim))
    best = np.empty(n, np.int32)
    moments = functools.partial(posterior_moments, positions=positions, lower=model.lower,
                                upper=model.upper, periodic=model.periodic)
    todo = np.ones(n, bool)
    group = 1 << 14
    if refinement is not None:
        stored = refinement.likelihood
        train = np.asarray(data.train_index)
        if stored.shape != (len(train), len(positions)):
            raise ValueError(f"the full-data likelihood is {stored.shape}, expected "
                             f"({len(train)}, {len(positions)}) (training images, particles)")
        w = np.asarray(weights, np.float64)
        for s, part in stored.chunks(group):
            probs = part * w
            fine = probs.sum(axis=1) > 0
            rows = train[s:s + len(part)][fine]
            mean[rows], std[rows] = moments(probs[fine])
            best[rows] = probs[fine].argmax(axis=1)
            todo[rows] = False
    rest = np.flatnonzero(todo)
    for s in range(0, len(rest), group):
        rows = rest[s:s + group]
        probs = probs_of(rows)
        mean[rows], std[rows] = moments(probs)
        best[rows] = probs.argmax(axis=1)
    return mean, std, best


def _known_pose_probs(op, data: PreparedData, positions, weights):
    """``rows -> p(j | y_n) [len(rows), M]`` with each image's own pose, :data:`BLOCK` images
    at a time through ``op``."""
    band = isinstance(op, FourierOperator)
    xs = jnp.asarray(positions, jnp.float32)
    log_w = jnp.log(jnp.asarray(weights, jnp.float32))

    def probs_of(rows: np.ndarray) -> np.ndarray:
        size = min(BLOCK, len(rows))
        return np.concatenate([
            np.asarray(_known_probs(op, _block(data, rows[s:s + size], band, size), xs,
                                    log_w))[:len(rows[s:s + size])]
            for s in range(0, len(rows), size)])
    return probs_of


def _unknown_pose_probs(band_op, data: PreparedData, positions, weights, settings):
    """``rows -> p(j | y_n) [len(rows), M]`` with pose and shift integrated out on the whole
    grid of ``settings`` (:class:`cryosip.forward.poses.PoseMarginalRows`, the full-data
    phase's block function)."""
    block = PoseMarginalRows(band_op, settings)
    log_w = np.log(np.maximum(np.asarray(weights, np.float64), 1e-300))

    def probs_of(rows: np.ndarray) -> np.ndarray:
        ll = likelihood_rows(block, positions, _BandRows(data), rows, block=BLOCK)
        z = ll + log_w
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
    return probs_of


@dataclasses.dataclass(frozen=True)
class _BandRows:
    """Every image of ``data`` as whitened bands, transformed when a block is taken."""

    data: PreparedData

    def __len__(self) -> int:
        return len(self.data.stack)

    def take(self, rows) -> Observations:
        rows = np.asarray(rows)
        return self.data.band_source(rows).take(np.arange(len(rows)))


def image_posteriors(config, operator, data: PreparedData, model,  # noqa: PLR0913
                     measure: ParticleMeasure, grid: dict | None = None,
                     refinement=None) -> ImagePosterior:
    """:class:`ImagePosterior` of every image of ``data`` under the recovered ``measure``
    (``positions [M, dim]``, ``weights [M]``) of ``model`` (module docstring).

    ``operator`` is the run's real-space operator (``ReconstructResult.operator``); the
    flow's own (:func:`posterior_operator`) is built from it. Known poses go through the
    likelihood :data:`BLOCK` images at a time. Unknown poses: ``p(j | y_n)`` on the whole
    grid of the full-data phase
    (:func:`cryosip.pipeline.reconstruct.weights_grid_settings`), and the
    maximum-a-posteriori pose on that grid given the image's most probable particle
    (:func:`cryosip.forward.poses.map_poses_given_particle`, ``BLOCK // 4`` images at a
    time); ``grid`` overrides fields of that grid
    (:class:`~cryosip.forward.poses.GridSettings`). A ``refinement`` of this measure
    (``FlowResult.refinement``) gives the training images' likelihood, so only the
    held-out images are scored again.
    """
    t0 = time.perf_counter()
    positions, weights = measure.to_numpy()
    rotations = shifts = None
    reused = " (training images: the full-data phase's likelihood)" if refinement else ""
    if config.data.poses == "known":
        op = posterior_operator(config, operator, data)
        probs_of = _known_pose_probs(op, data, positions, weights)
        method = "likelihood, known poses" + reused
        mean, std, _ = _moments(data, model, positions, weights, probs_of, refinement)
    else:
        from cryosip.pipeline.reconstruct import weights_grid_settings

        band_op = FourierOperator.from_operator(operator, data.band.native_pixel_angstrom)
        fine = dataclasses.replace(weights_grid_settings(config, band_op), **(grid or {}))
        probs_of = _unknown_pose_probs(band_op, data, positions, weights, fine)
        mean, std, best = _moments(data, model, positions, weights, probs_of, refinement)
        rotations, shifts = map_poses_given_particle(band_op, positions, best, _BandRows(data),
                                                     fine, block=BLOCK // 4)
        method = (f"pose and shift integrated out on the whole grid ({fine}){reused}; "
                  "maximum-a-posteriori pose on that grid given the most probable particle")
    heldout = np.zeros(len(data.stack), bool)
    heldout[np.asarray(data.heldout_index, int)] = True
    return ImagePosterior(mean, std, heldout, method, time.perf_counter() - t0, rotations,
                          shifts)


def write_particles_star(path: str | Path, data: PreparedData,
                         posterior: ImagePosterior) -> Path:
    """``particles.star`` at ``path``: the input's rows with the per-image columns (module
    docstring, :func:`cryosip.io.annotate.annotate_particles`)."""
    means, stds = x_columns(posterior.x_mean.shape[1])
    columns = {**{c: posterior.x_mean[:, k].astype(np.float32) for k, c in enumerate(means)},
               **{c: posterior.x_std[:, k].astype(np.float32) for k, c in enumerate(stds)},
               HELDOUT_COLUMN: posterior.heldout.astype(np.int64)}
    if posterior.rotations is not None:
        columns |= relion_pose_columns(posterior.rotations, posterior.shifts_angstrom,
                                       data.stack.pixel_size_angstrom)
    return annotate_particles(data.stack.path, path, columns, table=data.stack.table)
