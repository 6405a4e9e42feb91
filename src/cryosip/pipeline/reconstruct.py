"""``reconstruct(config, out_dir)``: particle images + conformation model -> recovered measure.

The one entry function of the reconstruction. It reads the STAR file and its stack
lazily, prepares the data (:mod:`cryosip.pipeline.data`: held-out split, Fourier crop,
offset/contrast/noise in model units), builds the cryo-EM random operator, runs the
particle flow (:func:`cryosip.flows.run_flow`) with atomic checkpoints in ``out_dir`` and
writes the outputs (:mod:`cryosip.pipeline.outputs`).

Known poses: the nuisance of every image (pose, shift, CTF) comes from the STAR file and
the objective pairs particles with it (conditional MMD, or the likelihood
``p(y_n | x, w_n)``). Unknown poses, KL: every image keeps its CTF from the file, pose and
shift are integrated out on a grid (:mod:`cryosip.forward.poses`, on the Fourier band).
Unknown poses, MMD: poses are drawn from the uniform prior on SO(3), optics groups with
the data's group frequencies and CTFs from a uniform defocus range spanning the data's
defoci.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from scipy.stats import qmc

from cryosip import distributed
from cryosip.discrepancies import GaussianKernel, median_bandwidth
from cryosip.flows import (
    Checkpointer,
    Domain,
    FlowConfig,
    FlowProblem,
    FlowResult,
    FlowStatus,
    KLObjective,
    MMDObjective,
    SampleObjective,
    fit_measure,
)
from cryosip.flows.moment_objective import SecondMomentObjective, moment_scale
from cryosip.flows.posterior_objective import PosteriorFeatureObjective
from cryosip.flows.refine import known_pose_block, refine_weights
from cryosip.forward import CryoEMOperator, NuisancePrior, RadialPowerSpectrum
from cryosip.forward.fourier import FourierOperator
from cryosip.forward.poses import GridSettings, PoseMarginalKL, pose_marginal_block
from cryosip.io import read_particles
from cryosip.measures import ParticleMeasure
from cryosip.pipeline.bootstrap import BootstrapResult, run_bootstrap
from cryosip.pipeline.config import ReconstructConfig
from cryosip.pipeline.data import PreparedData, estimate_scale, prepare_data
from cryosip.pipeline.register import Registration, boundary_warning, register_translation
from cryosip.seeds import jax_key, numpy_rng
from cryosip.structures.factory import load_model
from cryosip.structures.translated import TranslatedModel

__all__ = ["ReconstructResult", "build_operator", "fit_flow", "flow_inputs", "initial_measure",
           "pose_grid_settings", "reconstruct", "refine_flow", "uses_band",
           "weights_grid_settings"]


@dataclasses.dataclass(frozen=True)
class ReconstructResult:
    """The flow's result with the data it saw and the operator it used."""

    config: ReconstructConfig
    flow: FlowResult
    data: PreparedData
    operator: CryoEMOperator
    model: object
    wall_time_s: float
    registration: Registration | None = None
    warnings: tuple[str, ...] = ()
    bootstrap: BootstrapResult | None = None  # bands (cryosip.pipeline.bootstrap)

    @property
    def registration_record(self) -> dict:
        """``registration`` for the report and provenance (method ``none`` when skipped)."""
        if self.registration is not None:
            return self.registration.record()
        reason = ("--register none" if self.config.data.registration == "none"
                  else "skipped: poses unknown (the offset is absorbed by the pose search)")
        return {"method": "none", "reason": reason}


def build_operator(data: PreparedData, model, known_poses: bool) -> CryoEMOperator:
    """The cryo-EM operator in model units at the flow's box (module docstring for priors)."""
    prior = NuisancePrior()
    if not known_poses:
        t = data.stack.table  # (float64 columns, no [N] float32 copies)
        mean_defocus = 0.5 * (np.asarray(t.defocus_u_angstrom) + np.asarray(t.defocus_v_angstrom))
        astig = float(np.mean(np.abs(np.asarray(t.defocus_u_angstrom)
                                     - np.asarray(t.defocus_v_angstrom))))
        prior = NuisancePrior((float(mean_defocus.min()), float(mean_defocus.max())), astig,
                              optics_group_probs=data.optics_group_probs)
    return CryoEMOperator(model, data.image_config, data.optics, prior,
                          data.scale.noise_std_model)


def uses_band(config: ReconstructConfig) -> bool:
    """Whether the flow compares images on the Fourier band (KL, and MMD on pixels)."""
    section = config.objective
    if section.kind == "kl" and config.data.poses == "unknown":
        return True  # the pose grid's likelihood lives on the band (cryosip.forward.poses)
    if section.kind == "mmd" and section.features == "posterior":
        return True  # its features are the pose grid's posteriors, on the band
    pixels_mmd = section.kind == "mmd" and section.features == "pixels"
    return config.data.likelihood_space == "fourier" and (section.kind == "kl" or pixels_mmd)


def flow_inputs(config: ReconstructConfig, data: PreparedData, operator: CryoEMOperator,
                folder: Path | None = None):
    """``(operator, observations)`` the flow runs on: the band operator and the images
    transformed once (to ``folder/prepared``, memory-mapped) when :func:`uses_band`, else
    the real-space operator and the stack read per minibatch."""
    known = config.data.poses == "known"
    if not uses_band(config):
        return operator, data.source(data.train_index, with_nuisance=known)
    band_op = FourierOperator.from_operator(operator, data.band.native_pixel_angstrom)
    # the pose grid (KL; MMD on posterior features) reads each image's CTF
    known = known or config.objective.kind == "kl" or getattr(
        config.objective, "features", None) == "posterior"
    prepared = None if folder is None else folder / "prepared"
    if prepared is not None and distributed.is_distributed():
        # one process transforms the images; the others wait, then read its file
        if distributed.is_main():
            data.band_source(data.train_index, prepared, progress=config.loop.progress)
        multihost_utils.sync_global_devices("cryosip prepared band")
    source = data.band_source(data.train_index, prepared, with_nuisance=known,
                              progress=config.loop.progress)
    return band_op, source


def initial_measure(model, n_particles: int, seed: int) -> ParticleMeasure:
    """Uniform weights; 1-D: evenly spaced over the box; d-D: a scrambled Sobol set in the
    box (low discrepancy: no holes of the size i.i.d. uniform points leave, so the full-data
    weights phase finds support wherever the data put mass)."""
    lower, upper = np.asarray(model.lower, float), np.asarray(model.upper, float)
    if lower.size == 1:
        u = (np.arange(n_particles)[:, None] + 0.5) / n_particles
    else:
        sobol = qmc.Sobol(lower.size, scramble=True, seed=numpy_rng(seed, "init"))
        u = sobol.random(n_particles)  # a power of 2 keeps its balance (the default counts)
    return ParticleMeasure.uniform(jnp.asarray(lower + u * (upper - lower), jnp.float32))


def _objective(config: ReconstructConfig, operator: CryoEMOperator):
    section = config.objective
    if section.kind == "kl" and config.data.poses == "unknown":
        return PoseMarginalKL(operator, pose_grid_settings(config, operator))
    if section.kind == "kl":
        return KLObjective(operator, n_draws=section.n_draws)
    # any random operator can be plugged in; one without a conformation model counts as 1-D
    n_particles = config.solver.particles_for(getattr(getattr(operator, "model", None),
                                                      "dim", 1), config.data.poses == "unknown")
    n_draws = max(1, section.n_draws // n_particles)  # n_draws is per step
    if section.kind != "mmd":  # a registered sample discrepancy (config.SampleSection)
        return SampleObjective(operator, section.discrepancy(), n_draws=n_draws)
    if section.features == "posterior":
        if not isinstance(operator, FourierOperator):
            raise TypeError("objective.features 'posterior' needs the band operator "
                            f"(cryosip.forward.FourierOperator), got {type(operator).__name__}")
        reference = initial_measure(operator.model, section.references, config.seed).positions
        settings = dataclasses.replace(pose_grid_settings(config, operator),
                                       level=section.reference_pose_level, top_k=0)
        return PosteriorFeatureObjective.build(operator, reference, settings,
                                               section.temperature, max(2, n_draws))
    if section.features == "second-moment":
        tau = section.bandwidth * moment_scale(operator, operator.model.lower,
                                               operator.model.upper,
                                               jax_key(config.seed, "bandwidth"))
        return SecondMomentObjective(operator, tau, n_draws=max(2, n_draws))
    if section.features == "power-spectrum":
        phi = RadialPowerSpectrum(operator.image_config.box_size)
        h = section.bandwidth * _feature_scale(operator, phi, config.seed, n_draws)
        return MMDObjective(operator, GaussianKernel(h), n_draws=n_draws,
                            marginalise_noise=False, feature_map=phi)
    n_pix = operator.image_config.box_size**2
    h = float(np.sqrt(section.bandwidth * n_pix) * operator.noise_std)
    return MMDObjective(operator, GaussianKernel(h), n_draws=n_draws)


def pose_grid_settings(config: ReconstructConfig, operator) -> GridSettings:
    """The pose grid of ``config`` (unknown poses, :mod:`cryosip.forward.poses`): the shift
    prior's std defaults to 1/50 of the box's width."""
    config_ = operator.image_config
    std = config.data.shift_std_angstrom
    if std is None:
        std = config_.box_size * config_.pixel_size_angstrom / 50.0
    section = config.objective
    return GridSettings(level=getattr(section, "pose_level", 4),
                        top_k=getattr(section, "pose_refine_top", 0), shift_std_angstrom=std)


def weights_grid_settings(config: ReconstructConfig, operator) -> GridSettings:
    """The pose grid of the full-data weights phase and the per-image posteriors (unknown
    poses): the whole grid of ``objective.weights_pose_level`` (default twice the flow's
    level), no per-image refinement."""
    flow = pose_grid_settings(config, operator)
    level = getattr(config.objective, "weights_pose_level", None) or 2 * flow.level
    return dataclasses.replace(flow, level=level, top_k=0)


def _feature_scale(operator, phi, seed: int, n: int = 256) -> float:
    """Median distance between features of noisy prior simulations (median heuristic)."""
    key = jax_key(seed, "bandwidth")
    w = operator.sample_nuisance(key, n)
    xs = jax.random.uniform(jax.random.fold_in(key, 1), (n, operator.model.dim),
                            minval=jnp.asarray(operator.model.lower),
                            maxval=jnp.asarray(operator.model.upper))
    sims = eqx.filter_jit(lambda: jax.vmap(operator.sample)(
        jax.random.split(jax.random.fold_in(key, 2), n), xs, w))()
    return float(median_bandwidth(jax.vmap(phi)(sims)))


def fit_flow(config: ReconstructConfig, operator, model, observations,
             checkpointer: Checkpointer | None = None, resume: bool = False) -> FlowResult:
    """The particle flow of ``config`` on any operator and observations (or a source).

    ``observations`` is an :class:`~cryosip.operators.Observations` or anything with
    ``len`` and ``take(rows)`` (a :class:`~cryosip.pipeline.data.StackSource`). Benchmarks
    call this with their own operator and in-memory observations.
    """
    domain = Domain(jnp.asarray(model.lower, jnp.float32), jnp.asarray(model.upper, jnp.float32),
                    tuple(model.periodic))
    problem = FlowProblem(_objective(config, operator),
                          initial_measure(model, config.solver.particles_for(
                              model.dim, config.data.poses == "unknown"), config.seed),
                          observations, domain)
    n = len(observations)
    every = config.loop.history_every
    loop = FlowConfig(
        max_steps=config.flow_steps(getattr(model, "dim", 1)),
        batch_size=min(config.minibatch_size, n),
        history_every=every,
        checkpoint_every=max(every, config.loop.checkpoint_every // every * every),
        progress=config.loop.progress,
    )
    flow = fit_measure(problem, config.solver.flows_config(), loop,
                       jax_key(config.seed, "flow"), checkpointer, resume)
    return refine_flow(config, operator, observations, flow)


def refine_flow(config: ReconstructConfig, operator, observations, flow: FlowResult
                ) -> FlowResult:
    """``flow`` with its weights replaced by the full-data phase's
    (:mod:`cryosip.flows.refine`) when ``config.loop.refine_weights`` applies: KL, with each
    image's nuisance known or, unknown poses, on the pose grid; otherwise ``flow`` as it is."""
    known = config.data.poses == "known"
    if not (config.loop.refine_weights and config.objective.kind == "kl"
            and flow.status != FlowStatus.DIVERGED):
        return flow
    positions, weights = flow.measure.to_numpy()
    block = (known_pose_block(operator) if known else  # unknown: pose grid (forward.poses)
             pose_marginal_block(operator, weights_grid_settings(config, operator)))
    refined = refine_weights(block, positions, weights, observations,
                             progress=config.loop.progress)
    measure = ParticleMeasure(jnp.asarray(positions), jnp.asarray(refined.weights))
    timings = {**flow.timings, "refine_s": refined.likelihood_s + refined.em_s}
    return dataclasses.replace(flow, measure=measure, timings=timings, refinement=refined)


def reconstruct(config: ReconstructConfig, out_dir: str | Path,
                resume: bool = False) -> ReconstructResult:
    """Run the reconstruction of ``config`` with checkpoints in ``out_dir`` (module docstring)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    section = config.data
    known = section.poses == "known"
    stack = read_particles(section.particles, require_poses=known, datadir=section.datadir,
                           pixel_size_angstrom=section.pixel_size_angstrom)
    model = load_model(config.model)
    data = prepare_data(stack, model, known_poses=known, flow_box=section.flow_box,
                        heldout_fraction=section.heldout_fraction, seed=config.seed,
                        offset=section.offset, contrast=section.contrast,
                        noise_std=section.noise_std)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs passed their checks
    registration, model, data = _register(config, data, model, known)
    operator = build_operator(data, model, known)
    flow_op, source = flow_inputs(config, data, operator, out_dir)
    flow = fit_flow(config, flow_op, model, source, Checkpointer(out_dir / "checkpoint.npz"),
                    resume)
    warnings = registration.warnings if registration is not None else ()
    edge = boundary_warning(model, *flow.measure.to_numpy())
    warnings += (edge,) if edge else ()
    boot = run_bootstrap(config, flow_op, model, source, flow.measure, flow.refinement)
    return ReconstructResult(config, flow, data, operator, model, time.perf_counter() - t0,
                             registration, warnings, boot)


def _register(config: ReconstructConfig, data: PreparedData, model, known: bool):
    """``(registration, model, data)``: the model moved by its estimated offset and the
    contrast re-estimated with it (known poses and ``registration="translation"``), else as
    given (:mod:`cryosip.pipeline.register`)."""
    if not known or config.data.registration == "none":
        if not known and config.data.registration != "none":
            logging.getLogger("cryosip").info("registration skipped: poses unknown")
        return None, model, data
    registration = register_translation(data, model, seed=config.seed)
    model = TranslatedModel(model, registration.offset_angstrom)
    scale = estimate_scale(data, model, known, 500, config.seed, config.data.offset,
                           config.data.contrast, config.data.noise_std)
    return registration, model, dataclasses.replace(data, scale=scale)
