r"""Particle data prepared for a flow: split, optional Fourier crop, scale and noise in model units.

The observed images ``y = a G(x, w) + b + sigma eps`` are mapped to model units,
``y' = (y - b) / a`` with noise ``sigma / |a|`` (:mod:`cryosip.pipeline.estimate`), after an
optional **Fourier crop** from ``box`` to ``flow_box`` pixels (the pixel grows by
``box / flow_box``; frequencies beyond the new Nyquist are dropped; white noise stays
white). Values are divided by ``(box/flow_box)^2`` so a constant image keeps its value, and
the model renders pixel averages at the coarser pixel, so the two agree.

A fraction of the images is **held out** (never used by the flow) for the evaluation's
image-space MMD; the split is a permutation from the run's seed (stream ``"split"`` of
:mod:`cryosip.seeds`; the scale estimate's images and prior draws use ``"scale"``).

Images are read from the memory-mapped stack only when a minibatch asks for them
(:meth:`PreparedData.observations`).

**Optics groups.** ``PreparedData.optics`` is ``Optics.stack(stack.optics)``: one entry
per optics group of the particle file (the reader keeps the groups particles use, in
order), indexed by each image's ``optics_group`` (``stack.optics_index``, 0-based), so
voltage, Cs and amplitude contrast, like defocus, are taken per image. Pixel size and box
are common to all groups (the reader refuses files where they differ). When poses are
unknown the prior draws each simulated image's group with the training images' group
frequencies (:attr:`PreparedData.optics_group_probs`), independently of pose and
defocus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from cryosip.baselines.support import grid_support
from cryosip.errors import InputError
from cryosip.forward import CryoEMOperator, ImageConfig, ImageNuisance, NuisancePrior, Optics
from cryosip.forward.fourier import FourierBand
from cryosip.io import ParticleStack
from cryosip.operators import Observations
from cryosip.pipeline import estimate
from cryosip.provenance import atomic_write_text
from cryosip.rotations import sample_uniform_euler
from cryosip.seeds import numpy_rng
from cryosip.structures.base import AbstractConformationModel

__all__ = ["BandFile", "BandSource", "DataScale", "PreparedData", "StackSource", "fourier_crop",
           "prepare_data"]


def fourier_crop(images: np.ndarray, new_box: int) -> np.ndarray:
    """Crop the centred 2-D spectrum of ``images [n, box, box]`` to ``new_box``; mean kept.

    >>> fourier_crop(np.ones((1, 8, 8)), 4).round(6).tolist() == np.ones((1, 4, 4)).tolist()
    True
    """
    box = images.shape[-1]
    if new_box == box:
        return np.asarray(images, np.float32)
    spec = np.fft.fftshift(np.fft.fft2(images), axes=(-2, -1))
    lo = box // 2 - new_box // 2
    spec = spec[..., lo:lo + new_box, lo:lo + new_box]
    out = np.fft.ifft2(np.fft.ifftshift(spec, axes=(-2, -1))).real
    return (out * (new_box / box) ** 2).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DataScale:
    """``y = contrast * G + offset + noise_std * eps`` (data units at the flow box: the
    Fourier crop keeps offset and contrast but scales the noise sd by ``flow_box / box``,
    so a ``noise_std`` given in the stack's units is converted), as estimated or given."""

    offset: float
    contrast: float
    noise_std: float
    estimated: tuple[str, ...]

    @property
    def noise_std_model(self) -> float:
        return self.noise_std / abs(self.contrast)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Everything the flow needs from a particle stack (module docstring).

    ``optics`` is stacked (fields of shape ``(groups,)``), indexed by ``optics_group``.
    """

    stack: ParticleStack
    train_index: np.ndarray
    heldout_index: np.ndarray
    flow_box: int
    flow_pixel_size_angstrom: float
    optics: Optics
    scale: DataScale

    @property
    def image_config(self) -> ImageConfig:
        return ImageConfig(self.flow_box, self.flow_pixel_size_angstrom)

    @property
    def optics_group_probs(self) -> tuple[float, ...]:
        """Fraction of the training images in each optics group (``optics`` order)."""
        counts = np.bincount(self.stack.optics_index[self.train_index],
                             minlength=self.optics.n_groups)
        return tuple(float(c) for c in counts / max(1, counts.sum()))

    def raw_images(self, index: np.ndarray) -> np.ndarray:
        """Cropped images in data units (no scaling), in the order of ``index``."""
        order = np.argsort(index)
        images = np.empty((len(index), self.flow_box, self.flow_box), np.float32)
        images[order] = fourier_crop(self.stack.images[np.asarray(index)[order]], self.flow_box)
        return images

    def observations(self, index: np.ndarray, with_nuisance: bool = True) -> Observations:
        """Observations in model units for the images at ``index`` (read from the stack)."""
        s = self.scale
        values = (self.raw_images(index) - s.offset) / s.contrast
        nuisance = None
        if with_nuisance:
            nuisance = self.stack.nuisance_at(index)
        return Observations(jnp.asarray(values), nuisance)

    def source(self, index: np.ndarray, with_nuisance: bool = True) -> StackSource:
        """The images at ``index`` as a lazily read source of minibatches."""
        return StackSource(self, np.asarray(index), with_nuisance)

    @property
    def band(self) -> FourierBand:
        """The flow box's Fourier band (:mod:`cryosip.forward.fourier`); the stack's pixel
        is the native one (before the Fourier crop)."""
        return FourierBand(self.flow_box, self.flow_pixel_size_angstrom,
                           float(self.stack.pixel_size_angstrom))

    def band_values(self, index: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Whitened band observations ``(n, 2, 2, K+1, K+1)`` of the images at ``index``."""
        index = np.asarray(index)
        out = np.empty((len(index), 2, *self.band.shape), np.float32)
        self._fill_band(out, index, chunk)
        return out

    def _fill_band(self, out: np.ndarray, index: np.ndarray, chunk: int,
                   progress: bool = False) -> None:
        s, band = self.scale, self.band
        starts = range(0, len(index), chunk)
        for start in tqdm(starts, desc="prepare band", disable=not progress, leave=False):
            rows = index[start:start + chunk]
            values = (self.raw_images(rows) - s.offset) / s.contrast
            out[start:start + len(rows)] = band.prepare(values, s.noise_std_model)

    def band_source(self, index: np.ndarray, folder: str | Path | None = None,
                    with_nuisance: bool = True, progress: bool = False) -> BandSource:
        """The images at ``index`` as whitened bands, transformed once.

        With ``folder`` the bands go to ``folder/band.npy`` (written in blocks under a
        temporary name and renamed, with ``band.json`` describing them; rows read back with
        :class:`BandFile`) and are reused when ``band.json`` matches; without it they are
        held in memory."""
        index = np.asarray(index)
        if folder is None:
            return BandSource(self, index, self.band_values(index), with_nuisance)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path, meta_path = folder / "band.npy", folder / "band.json"
        meta = self._band_meta(index)
        if not (path.exists() and meta_path.exists()
                and json.loads(meta_path.read_text()) == meta):
            tmp = folder / f".band.{os.getpid()}.npy"
            shape = (len(index), 2, *self.band.shape)
            # written block by block with plain writes (a writable memory map's dirty pages
            # would count in the process's memory, O(N))
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": shape})
                for start in range(0, len(index), 1024):
                    rows = index[start:start + 1024]
                    block = np.empty((len(rows), *shape[1:]), np.float32)
                    self._fill_band(block, rows, 1024)
                    f.write(block.tobytes())
            os.replace(tmp, path)
            atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
        return BandSource(self, index, BandFile(path), with_nuisance)

    def _band_meta(self, index: np.ndarray) -> dict:
        s = self.scale
        digest = hashlib.sha256(np.ascontiguousarray(index, np.int64).tobytes()).hexdigest()
        return {"stack": str(self.stack.path), "n": int(len(index)), "index_sha256": digest,
                "flow_box": self.flow_box, "pixel": self.flow_pixel_size_angstrom,
                "offset": float(s.offset), "contrast": float(s.contrast),
                "noise_std_model": float(s.noise_std_model)}


@dataclasses.dataclass(frozen=True)
class StackSource:
    """Observations read from the memory-mapped stack only when a minibatch asks for them.

    ``len(source)`` images; ``source.take(i)`` -> :class:`Observations` of rows
    ``index[i]``. This is what the flow driver streams, so memory holds minibatches only.
    """

    data: PreparedData
    index: np.ndarray
    with_nuisance: bool = True

    def __len__(self) -> int:
        return int(len(self.index))

    def take(self, rows) -> Observations:
        return self.data.observations(self.index[np.asarray(rows)], self.with_nuisance)


class BandFile:
    """Rows of a float32 ``.npy`` file read with ``pread`` (no memory map: mapped pages
    would count in the process's memory as a run reads its way through a large file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            self.offset = f.tell()
        if dtype != np.float32:
            raise InputError(self.path, "dtype", "float32", str(dtype))
        self.shape = shape
        self.row_bytes = 4 * int(np.prod(shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows))
        out = np.empty((len(rows), *self.shape[1:]), np.float32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, r in enumerate(rows):
                buf = os.pread(fd, self.row_bytes, self.offset + int(r) * self.row_bytes)
                out[i] = np.frombuffer(buf, np.float32).reshape(self.shape[1:])
        finally:
            os.close(fd)
        return out


@dataclasses.dataclass(frozen=True)
class BandSource:
    """Whitened band observations (:mod:`cryosip.forward.fourier`), transformed once.

    ``values[i]`` is the band of image ``index[i]`` (an array or a memory map);
    ``take(rows)`` -> :class:`Observations` with the images' nuisances. The flow's loop
    reads these and never transforms an image."""

    data: PreparedData
    index: np.ndarray
    values: np.ndarray
    with_nuisance: bool = True

    def __len__(self) -> int:
        return int(len(self.index))

    def take(self, rows) -> Observations:
        rows = np.asarray(rows)
        order = np.argsort(rows)  # read in file order
        values = np.empty((len(rows), *self.values.shape[1:]), np.float32)
        values[order] = self.values[rows[order]]
        nuisance = None
        if self.with_nuisance:
            nuisance = self.data.stack.nuisance_at(self.index[rows])
        return Observations(jnp.asarray(values), nuisance)


def _stacked_optics(stack: ParticleStack) -> Optics:
    """``Optics.stack(stack.optics)``, after checking every image's group is one of them."""
    index = np.asarray(stack.optics_index)
    n = len(stack.optics)
    if n == 0 or index.min(initial=0) < 0 or index.max(initial=0) >= n:
        raise InputError(stack.path, "rlnOpticsGroup", f"optics groups 1..{n}",
                         f"indices {np.unique(index).tolist()} (0-based)")
    return Optics.stack(stack.optics)


def _split(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = numpy_rng(seed, "split").permutation(n)
    n_held = int(round(heldout_fraction * n)) if n > 1 else 0
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def _grid(model: AbstractConformationModel, n_per_axis: int) -> jax.Array:
    """A regular grid of ``n_per_axis ** dim`` points (cell centres) in the model's box."""
    mesh = grid_support(model.lower, model.upper, n_per_axis, cell_centres=True)
    return jnp.asarray(mesh, jnp.float32)


def _reference_images(operator: CryoEMOperator, nuisance: ImageNuisance,
                      xs: jax.Array, chunk: int = 128) -> np.ndarray:
    """``G(x_k, w_n)`` as ``[n, K, box, box]`` (numpy), rendered in chunks of images."""
    render = eqx.filter_jit(lambda w: jnp.swapaxes(operator.clean_grid(xs, w), 0, 1))
    parts = []
    for start in range(0, len(nuisance), chunk):
        index = jnp.arange(start, min(start + chunk, len(nuisance)))
        parts.append(np.asarray(render(nuisance.take(index))))
    return np.concatenate(parts)


def estimate_scale(  # noqa: PLR0913 - offset, contrast and noise are each fixed or estimated
        data: PreparedData, model: AbstractConformationModel, known_poses: bool,
                   n_images: int, seed: int, offset=None, contrast=None, noise_std=None,
                   n_grid: int = 12) -> DataScale:
    """Offset, contrast and noise of the training images (given values are kept)."""
    rng = numpy_rng(seed, "scale")
    index = np.sort(rng.choice(data.train_index, min(n_images, len(data.train_index)),
                               replace=False))
    images = data.raw_images(index)
    mask = estimate.background_mask(data.flow_box)
    b_hat, s_hat = estimate.background_stats(images, mask)
    b = b_hat if offset is None else offset
    # a given noise sd is the stack's; the Fourier crop to the flow box keeps the mean and
    # the signal but scales white noise by flow_box / box (fourier_crop's normalisation)
    s = s_hat if noise_std is None else noise_std * data.flow_box / data.stack.box_size
    done = tuple(n for n, v in (("offset", offset), ("noise_std", noise_std)) if v is None)
    if contrast is not None:
        return DataScale(b, contrast, s, done)
    op = CryoEMOperator(model, data.image_config, data.optics, NuisancePrior(), 1.0)
    if known_poses:
        # n_grid per axis in 1-D/2-D; in d-D about n_grid^2 points in all (12^3 renders took
        # 38 s and ~3.5 GB of a tiny 3-D run for a scalar contrast)
        grid = _grid(model, max(3, min(n_grid, round(n_grid ** (2 / model.dim)))))
        ref = _reference_images(op, data.stack.nuisance_at(index), grid)
        a, _ = estimate.contrast_mixture_em(images, ref, b, s)
    else:
        x_ref = 0.5 * (jnp.asarray(model.lower) + jnp.asarray(model.upper))
        w = _empirical_prior_draws(data, rng, len(index))
        ref = _reference_images(op, w, x_ref[None])[:, 0]
        a = estimate.contrast_from_power(images, ref, b, s, mask)
    if not np.isfinite(a) or a == 0:
        raise InputError(data.stack.path, "images", "a detectable particle signal",
                         f"contrast estimate {a}; pass --contrast and --noise-std")
    return DataScale(b, a, s, (*done, "contrast"))


def _empirical_prior_draws(data: PreparedData, rng: np.random.Generator, n: int):
    """Uniform poses, zero shifts, CTFs drawn from the data's own per-image CTF parameters."""
    w = data.stack.nuisance_at(rng.choice(data.train_index, n))
    euler = sample_uniform_euler(jax.random.key(int(rng.integers(2**31))), n)
    return eqx.tree_at(lambda v: (v.euler_deg, v.shift_angstrom), w,
                       (euler, jnp.zeros_like(w.shift_angstrom)))


def prepare_data(  # noqa: PLR0913 - keyword-only; offset, contrast, noise each fixed or estimated
        stack: ParticleStack, model: AbstractConformationModel, *, known_poses: bool,
                 flow_box: int | None, heldout_fraction: float, seed: int,
                 n_scale_images: int = 500, offset=None, contrast=None, noise_std=None,
                 ) -> PreparedData:
    """Split, choose the flow's box and estimate the data scale (module docstring)."""
    box = stack.box_size
    flow_box = box if flow_box is None else flow_box
    if flow_box > box or flow_box < 8 or flow_box % 2:
        raise InputError(stack.path, "box", f"an even flow box in [8, {box}]",
                         f"--flow-box {flow_box}")
    train, held = _split(len(stack), heldout_fraction, seed)
    pixel = stack.pixel_size_angstrom * box / flow_box
    data = PreparedData(stack, train, held, flow_box, pixel, _stacked_optics(stack),
                        DataScale(0.0, 1.0, 1.0, ()))
    scale = estimate_scale(data, model, known_poses, n_scale_images, seed, offset, contrast,
                           noise_std)
    return dataclasses.replace(data, scale=scale)
