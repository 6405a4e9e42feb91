r"""Synthetic particle data sets with their ground truth: :func:`simulate_dataset`.

For ``n`` images: ``x_i ~ truth`` (numpy stream ``"truth"`` of :mod:`cryosip.seeds`),
nuisance ``w_i ~ NuisancePrior`` and noise ``eps_i`` from the JAX key
``fold_in(jax_key(seed, "images"), i)`` (split in two), so every image depends on
``(seed, i)`` only: results do not depend on ``render_batch_size``. Clean images
``G(x_i, w_i)`` come from ``CryoEMOperator.clean_paired`` in batches written to a
memory-mapped stack; then

.. math:: \sigma = \sqrt{\tfrac1n \textstyle\sum_i \mathrm{Var}_{box}(G_i) / \mathrm{SNR}}

(the definition of :func:`cryosip.forward.noise_std_for_snr`) unless ``noise_std`` is
given, and ``y_i = G_i + sigma eps_i`` in a second pass. Output (written to a temporary
folder beside ``out_dir`` and renamed at the end, so an interrupted run leaves nothing):

* ``particles.mrcs`` (float32, voxel size set), ``particles.star`` (RELION 3.1);
* ``truth.npz``: ``x`` (n, dim), every leaf of the images' ``ImageNuisance``
  (``euler_deg`` (n, 3), ``shift_angstrom`` (n, 2), ``defocus_u_angstrom``, ...,
  ``optics_group`` (n,)), ``noise_std``, ``snr`` (achieved: mean clean variance /
  sigma^2), ``truth_spec`` (JSON), ``reference_x`` (a large reference sample of the
  truth), ``lower``, ``upper``;
* ``config.yaml`` (the validated config) and ``provenance.json``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import zipfile
from fractions import Fraction
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import yaml
from tqdm.auto import tqdm

from cryosip.datasets.config import SimulateConfig
from cryosip.errors import InputError, check_output_folder
from cryosip.forward import CryoEMOperator, ImageConfig, ImageNuisance, NuisancePrior, Optics
from cryosip.io.mrc import StackWriter
from cryosip.io.star import write_star
from cryosip.problems.truth import TruthMixture
from cryosip.provenance import utc_now, write_provenance
from cryosip.seeds import jax_key, numpy_rng
from cryosip.structures.factory import load_model

__all__ = ["REFERENCE_SIZE", "ExactSum", "SimulationResult", "simulate_dataset",
           "simulation_operator"]

REFERENCE_SIZE = 100_000
"""Size of the reference sample of the truth stored as ``reference_x``."""
_IO_BLOCK = 8192
"""Rows per block when the STAR file and ``truth.npz`` are written from the nuisance files."""


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """Where the data set went and what it holds."""

    out_dir: Path
    n_images: int
    noise_std: float
    snr: float
    wall_time_s: float


def simulation_operator(config: SimulateConfig,
                        base_dir: str | os.PathLike = ".") -> CryoEMOperator:
    """The forward operator that renders a simulate config's images (its model, optics and
    nuisance prior; ``noise_std`` = 0 until the noise is set). Not
    :func:`cryosip.pipeline.reconstruct.build_operator`, which builds the flow's operator
    from prepared particle data."""
    o = config.optics
    optics = Optics(o.voltage_kv, o.cs_mm, o.amplitude_contrast, o.b_factor_angstrom2,
                    float(o.contrast_sign))
    prior = NuisancePrior(tuple(config.defocus_angstrom), config.astigmatism_angstrom,
                          config.shift_std_angstrom, config.pose_distribution)
    image = ImageConfig(config.box_size, config.pixel_size_angstrom)
    return CryoEMOperator(load_model(config.model, base_dir), image, optics, prior, 0.0)


def _image_keys(seed: int, index: jax.Array) -> jax.Array:
    """Per-image keys ``fold_in(jax_key(seed, "images"), i)``, shape (n, 2) of split keys."""
    return _split_keys(jax_key(seed, "images"), index)


@jax.jit
def _split_keys(base: jax.Array, index: jax.Array) -> jax.Array:
    return jax.vmap(lambda i: jax.random.split(jax.random.fold_in(base, i)))(index)


@eqx.filter_jit
def _nuisance(prior: NuisancePrior, keys: jax.Array) -> ImageNuisance:
    one = jax.vmap(lambda k: prior.sample(k, 1))(keys)
    return jax.tree.map(lambda a: a[:, 0], one)


@eqx.filter_jit
def _render(op: CryoEMOperator, xs, nuisance) -> tuple[jax.Array, jax.Array]:
    images = op.clean_paired(xs, nuisance)
    return images, jnp.var(images.reshape(images.shape[0], -1), axis=1)


@eqx.filter_jit
def _noise(keys: jax.Array, box: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.normal(k, (box, box), jnp.float32))(keys)


def _batches(n: int, size: int, progress: bool, desc: str):
    starts = range(0, n, size)
    return tqdm(starts, desc=desc, disable=not progress, unit="batch", leave=False)


def _padded(index: np.ndarray, size: int) -> np.ndarray:
    """Pad a short last batch (repeat its last index) so every batch has one shape."""
    return np.concatenate([index, np.full(size - len(index), index[-1])])


class ExactSum:
    """The exact sum of float32 values, kept as an integer multiple of ``2**-172`` (below
    the smallest float32), so :attr:`mean` is the correctly rounded mean whatever the
    blocks the values arrive in: sigma from the SNR does not depend on the batch size.

    >>> s = ExactSum(); s.add(np.float32([1e8, 1.0])); s.add(np.float32([-1e8]))
    >>> s.mean
    0.3333333333333333
    """

    _SCALE = 172  # float32 values are m * 2**e, |m| < 2**24 integer, e >= -172

    def __init__(self):
        self.total, self.count = 0, 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.dtype != np.float32:
            raise TypeError(f"ExactSum adds float32 values, found {values.dtype}")
        mantissa, exponent = np.frexp(values.astype(np.float64))
        integers = (mantissa * 2.0**24).astype(np.int64)  # exact: 24 significant bits
        for e in np.unique(exponent):
            self.total += int(integers[exponent == e].sum()) << int(e - 24 + self._SCALE)
        self.count += values.size

    @property
    def mean(self) -> float:
        return float(Fraction(self.total, self.count << self._SCALE))


class _Columns:
    """Per-image arrays appended block by block to one ``.npy`` file per name in
    ``folder`` (never all in memory), read back by block, and packed into an ``.npz``."""

    def __init__(self, folder: Path, n: int):
        self.folder, self.n, self._files = folder, n, {}
        folder.mkdir()

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            if name not in self._files:
                fh = open(self.folder / f"{name}.npy", "wb")  # noqa: SIM115 - closed in close()
                np.lib.format.write_array_header_1_0(fh, {
                    "descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                    "shape": (self.n, *a.shape[1:])})
                self._files[name] = (fh, a.dtype, a.shape[1:], fh.tell())
            self._files[name][0].write(a.tobytes())

    def close(self) -> None:
        for fh, *_ in self._files.values():
            fh.close()

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        _, dtype, shape, offset = self._files[name]
        row = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        with open(self.folder / f"{name}.npy", "rb") as fh:
            fh.seek(offset + start * row)
            return np.frombuffer(fh.read((stop - start) * row), dtype).reshape(-1, *shape)

    def blocks(self, names, size: int):
        """Dicts ``{name: rows start..start+size}`` over all ``n`` rows."""
        for start in range(0, self.n, size):
            stop = min(start + size, self.n)
            yield {name: self.read(name, start, stop) for name in names}

    def write_npz(self, path: Path, arrays: dict[str, np.ndarray], names) -> None:
        """``np.savez(path, **arrays, **columns)``'s layout (stored, zip64), the columns
        copied from their files in pieces."""
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, value in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
            for name in names:
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out, \
                        open(self.folder / f"{name}.npy", "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)


_FIELDS = tuple(f.name for f in dataclasses.fields(ImageNuisance))


def _render_all(op, config, x, stack: StackWriter, columns: _Columns, progress) -> float:
    """Pass 1: clean images to the stack and nuisances to ``columns``, batch by batch;
    returns the mean clean variance (exact, :class:`ExactSum`)."""
    n, size = config.n_images, min(config.render_batch_size, config.n_images)
    variance = ExactSum()
    for start in _batches(n, size, progress, "render"):
        idx = np.arange(start, min(start + size, n))
        pad = _padded(idx, size)
        nuisance = _nuisance(op.prior, _image_keys(config.seed, jnp.asarray(pad))[:, 0])
        images, var = _render(op, jnp.asarray(x[pad]), nuisance)
        stack.write(start, np.asarray(images)[: len(idx)])
        variance.add(np.asarray(var)[: len(idx)])
        columns.append({f: np.asarray(getattr(nuisance, f))[: len(idx)] for f in _FIELDS})
    return variance.mean


def _add_noise(config, stack: StackWriter, noise_std, progress) -> None:
    """Pass 2: ``y_i = G_i + sigma eps_i`` read, noised and written back batch by batch."""
    n, size = config.n_images, min(config.render_batch_size, config.n_images)
    for start in _batches(n, size, progress, "noise"):
        idx = np.arange(start, min(start + size, n))
        keys = _image_keys(config.seed, jnp.asarray(_padded(idx, size)))
        eps = np.asarray(_noise(keys[:, 1], config.box_size))
        stack.write(start, stack.read(start, len(idx))
                    + np.float32(noise_std) * eps[: len(idx)])


def _nuisance_blocks(columns: _Columns, size: int):
    for block in columns.blocks(_FIELDS, size):
        yield ImageNuisance(**block)


def simulate_dataset(  # noqa: PLR0913 (the entry function: one config, keyword-only options)
    config: SimulateConfig, out_dir: str | os.PathLike, *, force: bool = False,
    progress: bool = True, base_dir: str | os.PathLike = ".", argv: list[str] | None = None,
    source: str = "config",
) -> SimulationResult:
    """Simulate and write a data set (module docstring); ``base_dir`` resolves model files,
    ``source`` names the config in errors."""
    started, t0 = utc_now(), time.perf_counter()
    out_dir = check_output_folder(out_dir, force=force)
    op = simulation_operator(config, base_dir)
    try:
        truth = TruthMixture(config.truth, np.asarray(op.model.lower),
                             np.asarray(op.model.upper))
    except ValueError as err:
        raise InputError(source, "truth", f"components on the model's box "
                         f"{np.asarray(op.model.lower).tolist()}..."
                         f"{np.asarray(op.model.upper).tolist()}", str(err)) from None
    rng = numpy_rng(config.seed, "truth")
    x = truth.sample(rng, config.n_images).astype(np.float32)  # O(n dim): one draw
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    columns = _Columns(tmp / "nuisance", config.n_images)
    try:
        with StackWriter(tmp / "particles.mrcs", config.n_images, config.box_size,
                         config.pixel_size_angstrom) as stack:
            mean_var = _render_all(op, config, x, stack, columns, progress)
            columns.close()
            sigma = config.noise_std or float(np.sqrt(mean_var / config.snr))
            _add_noise(config, stack, sigma, progress)
        write_star(tmp / "particles.star", _nuisance_blocks(columns, _IO_BLOCK), op.optics,
                   pixel_size_angstrom=config.pixel_size_angstrom, box_size=config.box_size)
        snr = mean_var / sigma**2
        _write_truth(tmp / "truth.npz", x, columns, truth, rng,
                     {"noise_std": np.float64(sigma), "snr": np.float64(snr)})
        shutil.rmtree(columns.folder)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"),
                                                        sort_keys=False))
        wall = time.perf_counter() - t0
        write_provenance(tmp, config, config.seed, argv, started, wall_time_s=wall)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        columns.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return SimulationResult(out_dir, config.n_images, sigma, snr, time.perf_counter() - t0)


def _write_truth(path: Path, x, columns: _Columns, truth, rng, noise: dict) -> None:
    columns.write_npz(path, {"x": x, "truth_spec": np.array(truth.spec_json()),
                             "reference_x": truth.reference_sample(rng, REFERENCE_SIZE),
                             "lower": truth.lower, "upper": truth.upper, **noise}, _FIELDS)
