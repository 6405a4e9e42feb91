"""Typed, frozen, nested configuration of ``cryosip reconstruct`` (unknown keys are rejected).

One name, one meaning in the CLI, a YAML file and code: ``data.poses`` is known/unknown,
``objective.n_draws`` is nuisance draws per step, ``loop.batch_size`` is images per
minibatch. A YAML config is the same tree (``docs/tutorial.md``)::

    data: {particles: particles.star, poses: known}
    model: {name: adk-path, coarse: residue}
    objective: {kind: mmd, n_draws: 256, bandwidth: 1.0, features: pixels}
    solver: {n_particles: 32, wfr: true}
    loop: {steps: 300}
    seed: 0

Defaults were chosen by measurement on the AdK path (``docs/tutorial.md`` and
``docs/sip-core.md`` section 7 have the runs): known poses, KL, ``32 * 2^d`` particles
(64 on a 1-D path) with Wasserstein-Fisher-Rao weights, 100 steps of minibatches of 128
images at a flow box of 32 pixels (Fourier crop from 64), displacement cap 0.02 per step,
then the weights' full-data phase (EM on one likelihood pass over every training image).

>>> c = ReconstructConfig.model_validate({"data": {"particles": "p.star"},
...                                       "objective": {"kind": "mmd"}})
>>> c.objective.kind, c.minibatch_size, c.solver.wfr, c.outputs.quantiles
('mmd', 256, True, (0.1, 0.5, 0.9))
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from cryosip.discrepancies import DISCREPANCIES, AbstractSampleDiscrepancy
from cryosip.errors import InputError, from_validation, read_yaml
from cryosip.flows import SolverConfig

__all__ = ["DataSection", "KLSection", "LoopSection", "MMDSection", "OutputsSection",
           "ReconstructConfig", "SampleSection", "SolverSection", "UncertaintySection",
           "absolute_paths", "load_config", "parse_config", "read_yaml", "write_config"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataSection(_Section):
    """The particle images and how they are prepared for the flow.

    ``particles`` is a RELION STAR or a cryoSPARC ``.cs`` file; ``datadir`` is searched
    first for its stacks and ``pixel_size_angstrom`` overrides the file's pixel size
    (:func:`cryosip.io.read_particles`). ``flow_box`` Fourier-crops the images (and renders
    the model) at that box: faster, and the fine detail it drops carries little signal at
    low SNR (``None``: no crop). ``noise_std``, ``contrast``, ``offset`` (stack units):
    estimated when ``None``. ``registration="translation"`` (known poses) first estimates
    the model's global 3-D offset from the images and moves the model by it
    (:mod:`cryosip.pipeline.register`). ``likelihood_space="fourier"`` (KL, and MMD on
    pixels) transforms the images once to whitened Fourier bands beside the run and
    compares them there (:mod:`cryosip.forward.fourier`: no FFT in the flow's loop; the
    same numbers as ``"pixels"``, the real-space path, to rounding).
    ``shift_std_angstrom`` (unknown poses): the std of the Gaussian prior of the in-plane
    shifts integrated out (``None``: 1/50 of the box's width in Å).
    """

    particles: str
    datadir: str | None = None
    pixel_size_angstrom: float | None = Field(None, gt=0)
    poses: Literal["known", "unknown"] = "known"
    flow_box: int | None = Field(32, ge=8)
    heldout_fraction: float = Field(0.05, ge=0, lt=1)
    noise_std: float | None = Field(None, gt=0)
    contrast: float | None = None
    offset: float | None = None
    registration: Literal["none", "translation"] = "translation"
    likelihood_space: Literal["fourier", "pixels"] = "fourier"
    shift_std_angstrom: float | None = Field(None, ge=0)


class KLSection(_Section):
    """KL (the likelihood). Known poses use each image's own nuisance. Unknown poses keep
    each image's CTF and integrate pose and shift out on a grid
    (:mod:`cryosip.forward.poses`): rotations of level ``pose_level`` (``4 n^3``; 4: 256
    rotations 36 degrees apart, a KL step ~3x the known-pose one's CPU time at box 32),
    each image's ``pose_refine_top`` best refined to level ``2n`` (0: none), shifts
    ``~ N(0, data.shift_std_angstrom^2)``. The full-data weights phase and the per-image
    posteriors integrate on the whole grid of level ``weights_pose_level`` (``None``:
    ``2 pose_level``, 2048 rotations 17 degrees apart at the default): they run once, so
    they can afford the grid that the flow's steps cannot (the level-4 grid's quadrature
    error biased the weights: ``docs/tutorial.md``). ``n_draws`` is not used by KL (kept
    for configs written for the importance-sampling marginal it replaced)."""

    kind: Literal["kl"] = "kl"
    n_draws: int = Field(256, ge=1)
    pose_level: int = Field(4, ge=1)
    pose_refine_top: int = Field(0, ge=0)
    weights_pose_level: int | None = Field(None, ge=1)


class MMDSection(_Section):
    """MMD (likelihood-free): ``n_draws`` simulations per step, shared out as
    ``max(1, n_draws // n_particles)`` per particle. ``bandwidth`` is relative: on
    ``features="pixels"`` the Gaussian kernel has ``h^2 = bandwidth * D * sigma^2`` (``D``
    pixels, ``sigma`` the noise); on ``"power-spectrum"`` (:mod:`cryosip.forward.features`)
    ``h`` is ``bandwidth`` times the median distance between features of prior simulations;
    ``"second-moment"`` (unknown poses, :mod:`cryosip.flows.moment_objective`) compares the
    images' pose-averaged second moments, kernel ``(<a, b> / tau)^2`` with ``tau`` =
    ``bandwidth`` times the mean squared norm of clean prior simulations; ``"posterior"``
    (unknown poses, :mod:`cryosip.flows.posterior_objective`) compares the images' mean
    posterior over ``references`` fixed conformations (evenly spaced, or a Sobol set in
    d > 1) with the pose and shift integrated out on the rotation grid of
    ``reference_pose_level``, log-posteriors divided by ``temperature`` (``bandwidth`` is
    not used). Unset,
    ``features`` is ``posterior`` with unknown poses and ``pixels`` with known ones
    (:class:`ReconstructConfig`)."""

    kind: Literal["mmd"] = "mmd"
    n_draws: int = Field(256, ge=1)
    bandwidth: float = Field(1.0, gt=0)
    features: Literal["pixels", "power-spectrum", "second-moment", "posterior"] = "pixels"
    references: int = Field(16, ge=2)
    reference_pose_level: int = Field(3, ge=1)
    temperature: float = Field(1.0, gt=0)


class SampleSection(_Section):
    """Any other registered sample discrepancy (``DISCREPANCIES``, ``docs/extending.md``):
    ``{kind: energy, n_draws: 256, **options}``, the options passed to its class.
    ``n_draws`` noisy simulations per step, shared out as ``max(1, n_draws // n_particles)``
    per particle as for MMD (:class:`cryosip.flows.SampleObjective`)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    kind: str
    n_draws: int = Field(256, ge=1)

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind not in DISCREPANCIES:
            raise ValueError(DISCREPANCIES.expected())
        if not issubclass(DISCREPANCIES.get(kind), AbstractSampleDiscrepancy):
            raise ValueError("'kl', 'mmd' or a registered sample discrepancy")
        return kind

    @model_validator(mode="after")
    def _options(self) -> SampleSection:
        self.discrepancy()
        return self

    def discrepancy(self) -> AbstractSampleDiscrepancy:
        """The registered class built with this section's options."""
        try:
            return DISCREPANCIES.get(self.kind)(**(self.model_extra or {}))
        except TypeError:
            cls = DISCREPANCIES.get(self.kind).__name__
            raise ValueError(f"the options {cls} takes") from None


def _objective_tag(raw: Any) -> str:
    kind = raw.get("kind") if isinstance(raw, dict) else getattr(raw, "kind", None)
    return kind if kind in ("kl", "mmd") else "sample"


Objective = Annotated[
    Annotated[KLSection, Tag("kl")] | Annotated[MMDSection, Tag("mmd")]
    | Annotated[SampleSection, Tag("sample")],
    Discriminator(_objective_tag),
]
"""KL | MMD | any registered sample discrepancy, told apart by ``kind``."""


class SolverSection(_Section):
    """The particles and the numbers of the step (:class:`cryosip.flows.SolverConfig`).

    ``step_size=None`` sets the time step from the first gradient so that the fastest
    particle moves ``max_displacement`` (units of ``x``) at step 0; ``step_decay`` then
    shrinks it as ``h_k = h_0 / (1 + step_decay * k)``. ``wfr``: the weights move too
    (Wasserstein-Fisher-Rao, Fisher-Rao step ``weight_rate`` per iteration).
    ``n_particles=None``: ``32 * 2^d`` for a ``d``-dimensional model (64, 128, 256 for
    d = 1, 2, 3; :meth:`particles_for`): the spacing of the initial particles,
    ``~ M^(-1/d)`` of the box, shrinks with the dimension only if ``M`` grows with it.
    With unknown poses half as many (``16 * 2^d``): each particle then costs a pass over
    the pose grid (2048 rotations x 5 shifts in the full-data phase), and the images say
    less about ``x`` (AdK path, N = 10^4, SNR 0.1 and 0.03: W1 0.0333 / 0.0336 with 32
    particles against 0.0323 / 0.0330 with 64, in 86 / 83 s against 152 / 152 s;
    ``benchmarks/unknown_poses.py``, docs/tutorial.md). Measured in 1-D only.
    """

    n_particles: int | None = Field(None, ge=1)
    step_size: float | None = Field(None, gt=0)
    max_displacement: float = Field(0.02, gt=0)
    step_decay: float = Field(0.01, ge=0)
    temperature: float = Field(0.0, ge=0)
    wfr: bool = True
    weight_rate: float = Field(1.0, gt=0)
    resample_ess_fraction: float = Field(0.0, ge=0, le=1)
    resample_jitter: float = Field(0.0, ge=0)

    def particles_for(self, dim: int, unknown_poses: bool = False) -> int:
        """``n_particles``, or the default rule for a ``dim``-dimensional model (half as
        many with ``unknown_poses``)."""
        return self.n_particles or (16 if unknown_poses else 32) * 2 ** min(max(dim, 1), 3)

    def flows_config(self) -> SolverConfig:
        """The :class:`~cryosip.flows.SolverConfig` of this section."""
        return SolverConfig(step_size=self.step_size, max_displacement=self.max_displacement,
                            step_decay=self.step_decay, temperature=self.temperature,
                            weight_rate=self.weight_rate if self.wfr else 0.0,
                            resample_ess_fraction=self.resample_ess_fraction,
                            resample_jitter=self.resample_jitter)


class LoopSection(_Section):
    """The loop: ``steps`` (``None``: :meth:`ReconstructConfig.flow_steps`); ``batch_size``
    images per minibatch (``None``: 128 for KL, 256
    for MMD, whose minibatch gradients are noisier: AdK, N = 10000, SNR 0.01, known poses,
    MMD W1 0.043 at 128, 0.038 at 256); history and checkpoint cadence in steps.
    ``refine_weights`` (KL with known poses): after the last step, the weights' Fisher-Rao
    flow on all the training images at the final positions, run to its limit (EM on one
    full-data likelihood pass, :mod:`cryosip.flows.refine`)."""

    steps: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    history_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    progress: bool = True
    refine_weights: bool = True


class OutputsSection(_Section):
    """What the run folder summarises: the ``quantiles`` of the recovered measure."""

    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)


class UncertaintySection(_Section):
    """``bootstrap`` refits on resampled images for the 90% bands of the density,
    populations and free energy (0: none; ``None``: 40 weight refits when the run has a
    full-data refinement, else 4 warm-started flow refits; :mod:`cryosip.pipeline.bootstrap`)."""

    bootstrap: int | None = Field(None, ge=0)


class ReconstructConfig(_Section):
    """Every number of a reconstruction; ``data.particles`` and ``model`` say what to fit.

    ``model`` is a model spec (:func:`cryosip.structures.factory.load_model`); the default
    is the AdK path with one bead per residue, as on the command line.
    """

    data: DataSection
    model: str | dict = {"name": "adk-path", "coarse": "residue"}
    objective: Objective = KLSection()
    solver: SolverSection = SolverSection()
    loop: LoopSection = LoopSection()
    outputs: OutputsSection = OutputsSection()
    uncertainty: UncertaintySection = UncertaintySection()
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _kl_unless_said(cls, raw: Any) -> Any:
        """``objective`` without ``kind`` is KL (the default objective); MMD without
        ``features`` compares ``posterior`` features when the poses are unknown (measured
        against the others in ``docs/tutorial.md`` section 5), else ``pixels``."""
        if isinstance(raw, dict) and isinstance(raw.get("objective"), dict):
            objective = {"kind": "kl", **raw["objective"]}
            data = raw.get("data")
            poses = data.get("poses") if isinstance(data, dict) else getattr(data, "poses", None)
            if objective["kind"] == "mmd" and "features" not in objective:
                objective["features"] = "posterior" if poses == "unknown" else "pixels"
            raw = {**raw, "objective": objective}
        return raw

    def flow_steps(self, dim: int) -> int:
        """``loop.steps``, or the default: 1 for a 1-D model when the full-data weights phase
        follows (KL with ``loop.refine_weights``), else 100. In 1-D the initial particles,
        evenly spaced at 1/64 of the box, are already finer than the data resolve, the
        full-data phase sets their weights from every image, and transport only moves them
        towards the atoms of the maximum-likelihood estimate: W1 0.0151 with 1 step against
        0.0206 with 100 at N = 10^4, SNR 0.01 (docs/sip-core.md, section 7). In ``d > 1`` the
        ``32 2^d`` initial particles are coarse and transport places them. MMD on posterior
        features (no full-data phase) takes 200: W1 0.034 against 0.044 with 100 on the
        unknown-pose AdK set (N = 10^4, SNR 0.1; docs/tutorial.md section 5), 13 s more
        flow time."""
        if self.loop.steps is not None:
            return self.loop.steps
        full_data = self.loop.refine_weights and self.objective.kind == "kl"
        if dim <= 1 and full_data:
            return 1
        return 200 if getattr(self.objective, "features", None) == "posterior" else 100

    @property
    def minibatch_size(self) -> int:
        if self.loop.batch_size is not None:
            return self.loop.batch_size
        return 128 if self.objective.kind == "kl" else 256


def _field(loc: tuple) -> str:
    """The dotted key of an error location, without pydantic's union tag (``objective.mmd``)."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "objective" and parts[1] in ("kl", "mmd", "sample"):
        parts.pop(1)
    return ".".join(parts)


def parse_config(raw: Any, source: str = "config",
                 flags: dict[str, str] | None = None) -> ReconstructConfig:
    """Validate a nested mapping; an error is one :class:`InputError` naming ``source`` and
    the dotted key, or the command-line flag when ``flags`` maps that key to one."""
    if not isinstance(raw, dict):
        raise InputError(source, None, "a YAML mapping of keys", type(raw).__name__)
    try:
        return ReconstructConfig.model_validate(raw)
    except ValidationError as err:
        plain = from_validation(err, source)
        key = _field(err.errors()[0]["loc"])
        if flags and key in flags:
            raise InputError("command line", flags[key], plain.expected, plain.found) from None
        raise InputError(source, key or None, plain.expected, plain.found) from None


_BUILTIN_MODELS = ("adk-path", "adk-domains", "adk-modes", "hinge")
_MODEL_FILE_KEYS = ("structure", "topology", "trajectory")


def _model_paths(spec, base: Path):
    if isinstance(spec, str) and spec not in _BUILTIN_MODELS and (base / spec).exists():
        return str((base / spec).resolve())
    if isinstance(spec, dict):
        return {k: str((base / v).resolve()) if k in _MODEL_FILE_KEYS and isinstance(v, str)
                else v for k, v in spec.items()}
    return spec


def absolute_paths(raw: dict, base: Path) -> dict:
    """A config mapping with the file names of ``data`` (particles, datadir) and ``model``
    made absolute, relative ones taken from ``base`` (built-in model names kept)."""
    raw = dict(raw)
    if "model" in raw:
        raw["model"] = _model_paths(raw["model"], base)
    if isinstance(raw.get("data"), dict):
        raw["data"] = {k: str((base / v).resolve()) if k in ("particles", "datadir")
                       and isinstance(v, str) else v for k, v in raw["data"].items()}
    return raw


def load_config(path: str | Path) -> ReconstructConfig:
    """Read and validate a YAML config (as written to a run folder by :func:`write_config`)."""
    return parse_config(read_yaml(path), str(path))


def write_config(config: ReconstructConfig, path: str | Path) -> Path:
    """Write the resolved ``config`` as YAML, file names made absolute (from the current
    folder) so that it reruns from anywhere; :func:`load_config` reads it back."""
    from cryosip.provenance import atomic_write_text

    raw = absolute_paths(config.model_dump(mode="json"), Path.cwd())
    text = yaml.safe_dump(raw, sort_keys=False)
    atomic_write_text(Path(path), text)
    return Path(path)
