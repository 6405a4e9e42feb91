"""Bootstrap uncertainty of a reconstruction: bands on the density, the state populations
and the free-energy profile.

**Runs with a full-data refinement** (KL with known poses, the default:
:mod:`cryosip.flows.refine`). The estimate's last stage is EM for the weights on the
likelihood matrix ``L[n, j]`` of all training images under the final particles, so a
refit on a resample of the images is EM on the resampled rows of ``L`` (the same draws
``numpy_rng(seed, "bootstrap")``), from the point estimate's weights, positions fixed:
no image is read or rendered again, and ``B`` defaults to :data:`WEIGHT_REFITS` (40). It
is the bootstrap of the mixture weights on the particles' support: it carries the
sampling error of the images and its amplification by the noise (the deconvolution),
not the spread of the particles' positions, which for a population (the mass of a region
holding several particles) moves mass between neighbours inside the region and matters
only at its edge. Calibrated like the flow refits below (coverage in ``docs/sip-core.md``
section 9).

**Runs without it** (MMD, unknown poses): after the main flow, ``B`` refits (default
:data:`FLOW_REFITS`; ``config.uncertainty.bootstrap``, 0: none) each run the same
flow on the training images resampled with replacement (:class:`ResampledSource`: row
``i`` of the refit's data is image ``index_b[i]`` of the training source), warm-started
from the main flow's final measure, for :func:`refit_steps` steps: ``ceil(0.25 * steps)``
(at least one). The rule: the default ``B = 4`` then costs as many flow steps as the main
run, and no images are read or transformed again, so a run with it stays within 2x of its
time without it. A warm start is what lets a quarter of the steps suffice: each refit only
has to move from the full data's optimum to that of its resample, a perturbation of the
order of the sampling error, not to cross the box from the initial measure.

Every refit uses one solver: its first step size is measured once, at the warm start on
the full data (:func:`cryosip.flows.build_solver`), and then the solver's own schedule and
displacement cap apply; one solver means one compilation for all ``B`` refits. Randomness
comes from the stream ``bootstrap`` (:mod:`cryosip.seeds`): the resampled rows are
``numpy_rng(seed, "bootstrap").integers(0, N, (B, N))`` and refit ``b`` runs with the key
``fold_in(jax_key(seed, "bootstrap"), b)`` (its minibatches and nuisance draws).

Bands (:class:`Bands`) are 90% intervals ``value +- t * sd``: ``sd`` the standard deviation
of the ``B`` refits (``ddof=1``) and ``t`` the 95th percentile of Student's t with ``B - 1``
degrees of freedom (2.353 at ``B = 4``), centred on the point estimate (``B = 1``: no
spread, ``nan``). Not the 5th and 95th percentiles of the refits: with a handful of refits
those sit near the extreme refits, about +-0.85 sd at ``B = 4``, and covered the true
closed population of the hinge in 55-70% of 20 replicates where this interval covered
90-95% (``benchmarks/bootstrap_coverage.py``, ``docs/sip-core.md`` section 9; the refits'
own spread matched that of the point estimates, ratio 0.8-0.9). Centring on the point
estimate, rather than on the refits' mean, leaves out any drift the warm-started refits
share (a flow not yet converged keeps moving the same way on every resample), and the
interval always contains the point estimate. Bands are computed per coordinate axis for the
marginal density (a Gaussian KDE of bandwidth 3% of the box, as the figures draw it) and
the free energy ``-log p`` (kT, shifted to min 0, as
:func:`cryosip.plotting.free_energy_profile`) on a 200-point grid, and the mass of each
named state of the model (:func:`cryosip.pipeline.evaluate.populations`); density and
populations are clipped to their ranges.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from cryosip.flows import Domain, FlowConfig, FlowProblem, run_flow
from cryosip.flows.builder import build_solver
from cryosip.measures import ParticleMeasure
from cryosip.pipeline.evaluate import populations
from cryosip.plotting.figures import weighted_kde
from cryosip.seeds import jax_key, numpy_rng

__all__ = ["BOOTSTRAP_FRACTION", "FLOW_REFITS", "LEVEL", "WEIGHT_REFITS", "Bands",
           "BootstrapResult", "ResampledSource", "compute_bands", "n_refits", "refit_steps",
           "resample_indices", "resampled_em", "run_bootstrap"]

BOOTSTRAP_FRACTION = 0.25
"""Steps of each warm-started refit, as a fraction of the main flow's (module docstring)."""

LEVEL = 0.90
"""Nominal coverage of the bands (module docstring)."""

FLOW_REFITS = 4
"""Default number of warm-started flow refits (runs without a full-data refinement)."""

WEIGHT_REFITS = 40
"""Default number of weight refits (runs with a full-data refinement: each is an EM on the
resampled rows of the likelihood matrix, milliseconds to a second)."""

REFIT_MAX_ITER = 300
"""EM iterations of a weight refit at most (EM crawls along directions that trade mass
between neighbouring particles; those moves do not change a population)."""

REFIT_TOL = 1e-7
"""EM tolerance of a weight refit (mean log-likelihood per image; it starts at the point
estimate, a sampling error away from its own optimum)."""

N_GRID = 200
"""Grid points per axis of the density and free-energy bands."""


class ResampledSource:
    """``source`` seen through ``index``: ``take(rows)`` is ``source.take(index[rows])``.

    ``len`` is ``len(index)``; with ``index`` drawn with replacement this is a bootstrap
    resample of the source (an image may appear several times, another not at all).
    """

    def __init__(self, source, index: np.ndarray):
        self.source = source
        self.index = np.asarray(index, dtype=np.int64)
        n = len(source)
        if self.index.size and (self.index.min() < 0 or self.index.max() >= n):
            raise ValueError(f"resample rows must lie in [0, {n}); "
                             f"found [{self.index.min()}, {self.index.max()}]")

    def __len__(self) -> int:
        return int(self.index.size)

    def take(self, rows):
        return self.source.take(self.index[np.asarray(rows)])


def resample_indices(n: int, n_refits: int, seed: int) -> np.ndarray:
    """``[n_refits, n]`` rows drawn uniformly with replacement (stream ``bootstrap``)."""
    return numpy_rng(seed, "bootstrap").integers(0, n, size=(n_refits, n))


def refit_steps(steps: int) -> int:
    """Steps of one refit: ``ceil(BOOTSTRAP_FRACTION * steps)``, at least 1."""
    return max(1, math.ceil(BOOTSTRAP_FRACTION * steps))


@dataclasses.dataclass(frozen=True)
class Bands:
    """90% bands over the refits (module docstring). ``grid [d, G]``; ``density``,
    ``free_energy`` and their ``_lo``/``_hi`` are ``[d, G]`` (marginals per axis, the point
    estimate's curve without suffix); ``populations`` maps a state to ``{value, lo, hi}``."""

    grid: np.ndarray
    density: np.ndarray
    density_lo: np.ndarray
    density_hi: np.ndarray
    free_energy: np.ndarray
    free_energy_lo: np.ndarray
    free_energy_hi: np.ndarray
    populations: dict[str, dict[str, float]]
    refit_populations: dict[str, list[float]]


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """The ``B`` refits (``positions [B, n_particles, dim]``, ``weights [B, n_particles]``),
    their steps, seed and wall time, and the :class:`Bands` they give."""

    positions: np.ndarray
    weights: np.ndarray
    steps: int
    seed: int
    wall_time_s: float
    bands: Bands

    @property
    def n_refits(self) -> int:
        return int(self.positions.shape[0])


def _marginals(positions, weights, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(density [d, G], free energy [d, G])`` of one weighted measure."""
    dens, free = [], []
    for axis, g in enumerate(grid):
        h = 0.03 * float(g[-1] - g[0])
        p = weighted_kde(np.asarray(positions)[:, axis], np.asarray(weights), g, h)
        f = -np.log(np.maximum(p, 1e-6 * p.max()))
        dens.append(p)
        free.append(f - f.min())
    return np.stack(dens), np.stack(free)


def _centred(value, refits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``value -+ t_{0.95, B-1} * sd(refits)`` over axis 0 (module docstring)."""
    n = refits.shape[0]
    if n < 2:
        half = np.full(np.shape(value), np.nan)
    else:
        half = stats.t.ppf(0.95, n - 1) * refits.std(axis=0, ddof=1)
    return value - half, value + half


def compute_bands(measure: tuple[np.ndarray, np.ndarray], refit_positions: np.ndarray,
                  refit_weights: np.ndarray, model) -> Bands:
    """The bands of ``B`` refits around the point estimate ``measure = (positions, weights)``
    on the box and named states of ``model`` (module docstring)."""
    positions, weights = (np.asarray(a, float) for a in measure)
    lower, upper = np.asarray(model.lower, float), np.asarray(model.upper, float)
    grid = np.stack([np.linspace(a, b, N_GRID) for a, b in zip(lower, upper, strict=True)])
    density, free = _marginals(positions, weights, grid)
    curves = [_marginals(p, w, grid) for p, w in zip(refit_positions, refit_weights,
                                                      strict=True)]
    d_lo, d_hi = _centred(density, np.stack([c[0] for c in curves]))
    f_lo, f_hi = _centred(free, np.stack([c[1] for c in curves]))
    d_lo = np.maximum(d_lo, 0.0)
    states = dict(getattr(model, "named_states", None) or {})
    pops, refits = {}, {}
    if states:
        point = populations(positions, weights, states)
        per_refit = [populations(np.asarray(p, float), np.asarray(w, float), states)
                     for p, w in zip(refit_positions, refit_weights, strict=True)]
        for name in states:
            values = [r[name]["recovered"] for r in per_refit]
            value = point[name]["recovered"]
            lo, hi = np.clip(_centred(value, np.asarray(values)), 0.0, 1.0)
            pops[name] = {"value": value, "lo": float(lo), "hi": float(hi)}
            refits[name] = [float(v) for v in values]
    return Bands(grid, density, d_lo, d_hi, free, f_lo, f_hi, pops, refits)


def n_refits(config, refinement=None) -> int:
    """``config.uncertainty.bootstrap``, or its default when ``None``:
    :data:`WEIGHT_REFITS` with a full-data refinement, :data:`FLOW_REFITS` without."""
    chosen = config.uncertainty.bootstrap
    if chosen is None:
        return WEIGHT_REFITS if refinement is not None else FLOW_REFITS
    return int(chosen)


def resampled_em(likelihood, init: np.ndarray, index, max_iter: int = REFIT_MAX_ITER,
                 tol: float = REFIT_TOL, group: int = 8) -> np.ndarray:
    """``[B, M]`` EM weights of the ``B`` resamples ``index`` (``[B, N]`` rows, or an
    iterable of groups, each an iterable of ``[N]`` draws) of the rows of the full-data
    likelihood (:class:`cryosip.flows.refine.ShiftedLikelihood`): a resample's EM is EM with
    row counts ``c_b`` (how often each row was drawn), so ``group`` refits share each
    iteration's pass over the one stored matrix (memory: ``N group`` bytes of uint8 counts,
    and one refit's ``[N]`` draws at a time)."""
    n = likelihood.n
    groups = ([index[g:g + group] for g in range(0, len(index), group)]
              if isinstance(index, np.ndarray) else index)
    out = []
    for rows in groups:
        cols = []
        for r in rows:  # one refit's draws at a time; counts as uint8 (float32 if >255)
            c = np.bincount(r, minlength=n)
            cols.append(c.astype(np.uint8 if c.max() <= np.iinfo(np.uint8).max else np.float32))
        counts = np.stack(cols, axis=1)
        init_g = np.repeat(np.asarray(init, np.float64)[:, None], counts.shape[1], axis=1)
        out.append(likelihood.em(init_g, counts, max_iter=max_iter, tol=tol)[0].T)
    return np.concatenate(out)


def _resample_groups(n: int, count: int, seed: int, group: int):
    """:func:`resample_indices`'s rows, drawn one refit at a time from the same generator
    (the same draws), ``group`` refits a group: memory ``O(N group)`` bytes of counts
    instead of ``O(N B)`` indices."""
    rng = numpy_rng(seed, "bootstrap")
    for g in range(0, count, group):
        yield (rng.integers(0, n, size=n) for _ in range(min(group, count - g)))


def _weight_refits(measure: ParticleMeasure, refinement, count: int, seed: int):
    """EM on resampled rows of the full-data likelihood, from the point estimate's weights
    (positions fixed; module docstring)."""
    positions, weights = measure.to_numpy()
    n = refinement.likelihood.n
    refit = resampled_em(refinement.likelihood, weights, _resample_groups(n, count, seed, 8))
    return (np.broadcast_to(positions, (count, *positions.shape)).copy(),
            refit.astype(np.float32))


def run_bootstrap(config, operator, model, source, measure: ParticleMeasure,  # noqa: PLR0913
                  refinement=None) -> BootstrapResult | None:
    """Bootstrap refits of the reconstruction of ``config`` on resamples of ``source``
    (module docstring): EM on the rows of ``refinement.loglik`` when the run has a full-data
    refinement (:mod:`cryosip.flows.refine`), else warm-started flows from ``measure``;
    ``None`` when the count (:func:`n_refits`) is 0."""
    from cryosip.pipeline.reconstruct import _objective  # reconstruct imports this module

    count = n_refits(config, refinement)
    if count <= 0:
        return None
    t0 = time.perf_counter()
    if refinement is not None:
        positions, weights = _weight_refits(measure, refinement, count, config.seed)
        bands = compute_bands(measure.to_numpy(), positions, weights, model)
        return BootstrapResult(positions, weights, 0, int(config.seed),
                               time.perf_counter() - t0, bands)
    n = len(source)
    steps = refit_steps(config.flow_steps(model.dim))
    domain = Domain(jnp.asarray(model.lower, jnp.float32), jnp.asarray(model.upper, jnp.float32),
                    tuple(model.periodic))
    objective = _objective(config, operator)
    loop = FlowConfig(max_steps=steps, batch_size=min(config.minibatch_size, n),
                      history_every=min(config.loop.history_every, steps), progress=False)
    base_key = jax_key(config.seed, "bootstrap")
    solver, _ = build_solver(config.solver.flows_config(),
                             FlowProblem(objective, measure, source, domain), base_key,
                             loop.batch_size)
    positions, weights = [], []
    for b, index in enumerate(resample_indices(n, count, config.seed)):
        result = run_flow(solver, objective, measure, ResampledSource(source, index),
                          jax.random.fold_in(base_key, b), loop)
        p, w = result.measure.to_numpy()
        positions.append(p)
        weights.append(w)
    positions, weights = np.stack(positions), np.stack(weights)
    bands = compute_bands(measure.to_numpy(), positions, weights, model)
    return BootstrapResult(positions, weights, steps, int(config.seed),
                           time.perf_counter() - t0, bands)


def bootstrap_record(boot: BootstrapResult | None) -> dict[str, Any]:
    """``populations`` (``{state: {value, lo, hi}}``) and ``bootstrap`` (refits, steps,
    level, wall time) for ``summary.json``; ``{}`` without a bootstrap."""
    if boot is None:
        return {}
    kind = ("weights: EM on the resampled full-data likelihood, positions fixed"
            if boot.steps == 0 else "flow: warm-started refits")
    return {"populations": boot.bands.populations,
            "bootstrap": {"refits": boot.n_refits, "kind": kind,
                          "steps_per_refit": boot.steps,
                          "interval": "90%: value +- t(0.95, B-1) x sd of the refits",
                          "wall_time_s": boot.wall_time_s}}
