"""A run folder that describes itself: ``run.json``, ``heldout.npz`` and :func:`load_run`.

``cryosip reconstruct`` and ``cryosip baseline`` write, beside ``ensemble.npz`` (the
recovered measure, :mod:`cryosip.pipeline.outputs`), what is needed to use, score or
extend the result once the particle files are gone; ``cryosip evaluate`` reads only these
files and never the particle file, its stacks, or a re-preparation of the data.

``run.json`` (``schema_version`` 1, written atomically; lists of numbers on one line):

* ``schema_version``, ``cryosip_version``, ``method`` (``flow-kl-wfr``, ``reweight``, ...),
  ``seed``, ``config`` (the validated config, ``model_dump(mode="json")``);
* ``model``: ``spec`` as given; ``resolved_spec``, the same with every file name made
  absolute (the model loads from any working folder; file models still need their files);
  ``frame``: ``"built-in"`` (the model's own centred frame), ``"given"`` (the file's
  coordinates: the consensus map's frame) or ``"aligned"`` (frames superposed on the first
  and centred); ``aligned``; ``registration_offset_angstrom``: the 3-D offset ``t`` (Å) the
  run moved every atom by (``r -> r + t``, :mod:`cryosip.pipeline.register`), or ``null``;
  ``dim``, ``lower``, ``upper``, ``periodic``;
* ``geometry``: the stack's ``box_size`` and ``pixel_size_angstrom``, the flow's
  ``flow_box`` and ``flow_pixel_size_angstrom`` (``pixel * box / flow_box``);
* ``scale``: ``y = contrast * G + offset + noise_std * eps`` in data units, with
  ``noise_std_model = noise_std / |contrast|`` and ``estimated`` (what was estimated);
* ``optics``: ``groups``, one per used optics group (``name`` in the particle file,
  ``voltage_kv``, ``cs_mm``, ``amplitude_contrast``, ``b_factor_angstrom2``,
  ``contrast_sign``), and ``image_group``: each image's 0-based group, in file order;
* ``split``: ``n_images``, ``heldout_index`` (0-based rows of the particle file, ascending;
  the training images are all the others) and ``n_heldout_stored``;
* ``prior``: ``poses`` (``"known"``: each image's pose and CTF from the particle file;
  ``"unknown"``: drawn from the prior) and ``nuisance_prior``, the fields of the
  :class:`~cryosip.forward.NuisancePrior` the operator used for unknown poses (``null``
  for known poses).

``heldout.npz``: the first ``n_heldout_stored = min(n_heldout, 1024)`` held-out images:
``index [n]`` (their rows), ``image_names [n]``, ``images [n, flow_box, flow_box]``
(float32, Fourier-cropped to the flow box and in model units ``(y - offset) / contrast``)
and one array per :class:`~cryosip.forward.ImageNuisance` field (``euler_deg [n, 3]``,
``shift_angstrom [n, 2]``, defoci, ..., ``optics_group [n]``).

:func:`load_run` reads them back as a :class:`LoadedRun`: the measure, the model rebuilt
from the resolved spec and moved by the offset, the geometry, scale, optics, split, prior
and the operator that renders the held-out images. A folder without ``run.json`` (written
by an older cryosip) is refused with an :class:`~cryosip.errors.InputError`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from cryosip import __version__
from cryosip.errors import InputError
from cryosip.forward import CryoEMOperator, ImageConfig, ImageNuisance, NuisancePrior, Optics
from cryosip.measures import ParticleMeasure
from cryosip.operators import Observations
from cryosip.pipeline.data import DataScale, PreparedData
from cryosip.provenance import atomic_savez, atomic_write_text
from cryosip.structures.translated import TranslatedModel

__all__ = ["HELDOUT_STORED", "RUN_SCHEMA_VERSION", "LoadedRun", "load_npz", "load_run",
           "read_run_record", "run_record", "write_run_folder"]

RUN_SCHEMA_VERSION = 1
"""Version of ``run.json``'s layout; :func:`load_run` refuses any other."""
HELDOUT_STORED = 1024
"""At most this many held-out images go to ``heldout.npz`` (4 MB at a 32-pixel flow box)."""


# ------------------------------------------------------------------ writing


def _plain(value: Any) -> Any:
    """Numbers, arrays and tuples as JSON values (lists, floats, ints)."""
    return value if isinstance(value, str) or value is None else np.asarray(value).tolist()


def _fields(module: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(module, f.name)) for f in dataclasses.fields(module)}


def _model_record(spec: Any, model, base_dir: Path) -> dict[str, Any]:
    """``model`` as the run used it: a :class:`TranslatedModel` when registration moved it;
    file names of ``spec`` are relative to ``base_dir``."""
    from cryosip.structures.factory import FileModelSpec, resolve_model_spec

    spec = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else spec
    resolved = resolve_model_spec(spec)
    is_file = isinstance(resolved, FileModelSpec)
    full = resolved.model_dump(mode="json")
    for key in ("structure", "topology", "trajectory") if is_file else ():
        if full[key] is not None:
            full[key] = str((base_dir / full[key]).resolve())
    offset = model.offset_angstrom if isinstance(model, TranslatedModel) else None
    aligned = bool(is_file and resolved.align)
    return {"spec": spec, "resolved_spec": full,
            "frame": "aligned" if aligned else ("given" if is_file else "built-in"),
            "aligned": aligned,
            "registration_offset_angstrom": None if offset is None else _plain(offset),
            "dim": int(model.dim), "lower": _plain(model.lower), "upper": _plain(model.upper),
            "periodic": [bool(p) for p in model.periodic]}


def _optics_record(data: PreparedData) -> dict[str, Any]:
    stack = data.stack
    names = tuple(getattr(stack.table, "optics_group_names", ())) or tuple(
        str(k + 1) for k in range(len(stack.optics)))
    groups = [{"name": str(name), **_fields(optics)}
              for name, optics in zip(names, stack.optics, strict=True)]
    return {"groups": groups, "image_group": _plain(stack.optics_index)}


def run_record(config, data: PreparedData, model, *, method: str,
               prior: NuisancePrior | None) -> dict[str, Any]:
    """The ``run.json`` record (module docstring); ``prior=None`` means known poses.

    ``model`` is the model as the run used it: loaded from ``config``'s spec and, when the
    run registered it, wrapped in a :class:`~cryosip.structures.translated.TranslatedModel`.
    """
    s, stack = data.scale, data.stack
    n_stored = min(len(data.heldout_index), HELDOUT_STORED)
    return {
        "schema_version": RUN_SCHEMA_VERSION, "cryosip_version": __version__,
        "method": method, "seed": int(config.seed), "config": config.model_dump(mode="json"),
        "model": _model_record(config.model, model, Path.cwd()),
        "geometry": {"box_size": int(stack.box_size),
                     "pixel_size_angstrom": float(stack.pixel_size_angstrom),
                     "flow_box": int(data.flow_box),
                     "flow_pixel_size_angstrom": float(data.flow_pixel_size_angstrom)},
        "scale": {"offset": float(s.offset), "contrast": float(s.contrast),
                  "noise_std": float(s.noise_std), "noise_std_model": float(s.noise_std_model),
                  "estimated": list(s.estimated)},
        "optics": _optics_record(data),
        "split": {"n_images": len(stack), "heldout_index": _plain(data.heldout_index),
                  "n_heldout_stored": n_stored},
        "prior": {"poses": "known" if prior is None else "unknown",
                  "nuisance_prior": None if prior is None else _fields(prior)},
    }


def _dumps(obj: Any, depth: int = 0) -> str:
    """JSON indented by two spaces, lists of numbers kept on one line."""
    pad, end = "  " * (depth + 1), "  " * depth
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(k)}: {_dumps(v, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{end}}}"
    if isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        return "[\n" + ",\n".join(pad + _dumps(v, depth + 1) for v in obj) + f"\n{end}]"
    return json.dumps(obj)


def write_run_folder(out_dir: str | Path, config, data: PreparedData, model, *,
                     method: str, prior: NuisancePrior | None) -> Path:
    """Write ``run.json`` and ``heldout.npz`` into ``out_dir`` (module docstring).

    ``model`` as in :func:`run_record`; ``prior`` is the operator's nuisance prior for
    unknown poses, ``None`` for known poses.
    """
    out_dir = Path(out_dir)
    record = run_record(config, data, model, method=method, prior=prior)
    index = np.asarray(data.heldout_index)[:record["split"]["n_heldout_stored"]]
    obs = data.observations(index, with_nuisance=True)
    all_names = data.stack.table.image_names  # index first: never build all N names
    names = (np.asarray([all_names[i] for i in index]) if isinstance(all_names, list | tuple)
             else np.asarray(all_names[index])).astype(str)
    atomic_savez(out_dir / "heldout.npz", index=index, image_names=names,
                 images=np.asarray(obs.values, np.float32),
                 **{f.name: np.asarray(getattr(obs.nuisance, f.name))
                    for f in dataclasses.fields(obs.nuisance)})
    atomic_write_text(out_dir / "run.json", _dumps(record) + "\n")
    return out_dir / "run.json"


# ------------------------------------------------------------------ reading


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else repr(err)


def load_npz(path: Path, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` (pickles refused); an InputError names a
    missing file, a file that is not ``.npz`` or a missing key of ``keys``."""
    if not path.is_file():
        raise InputError(str(path), None, "an existing .npz file", "no such file")
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # not .npz; pickles are refused here
        raise InputError(str(path), None, "a numpy .npz file", _first_line(err)) from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise InputError(str(path), None, "a numpy .npz file", "a single .npy array")
    with f:
        missing = [k for k in keys if k not in f.files]
        if missing:
            raise InputError(str(path), missing[0], "an array of that name",
                             f"only {sorted(f.files)}")
        try:
            return {k: f[k] for k in f.files}
        except (ValueError, OSError, EOFError) as err:  # object arrays, a broken member
            raise InputError(str(path), None, "numeric arrays", _first_line(err)) from None


_SECTIONS = ("method", "seed", "model", "geometry", "scale", "optics", "split", "prior")


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of ``run_dir``, checked for its version and sections."""
    path = run_dir / "run.json"
    if not path.is_file():
        raise InputError(str(path), None, "the run description that reconstruct and baseline "
                         "of this cryosip version write", "no such file (a run folder of an "
                         "older version: re-run reconstruct with this version)")
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise InputError(str(path), None, "a JSON run description", _first_line(err)) from None
    version = record.get("schema_version") if isinstance(record, dict) else None
    if version != RUN_SCHEMA_VERSION:
        raise InputError(str(path), "schema_version", f"{RUN_SCHEMA_VERSION} (re-run "
                         "reconstruct with this version)", repr(version))
    missing = [k for k in _SECTIONS if k not in record]
    if missing:
        raise InputError(str(path), missing[0], "this section", "no such key")
    return record


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run folder read back by :func:`load_run` (module docstring).

    ``positions [n_particles, dim]`` and ``weights [n_particles]`` are the recovered
    measure; ``record`` is ``run.json``. The model, the operator and the held-out images
    are built on first use.
    """

    path: Path
    record: dict[str, Any]
    positions: np.ndarray
    weights: np.ndarray

    @property
    def method(self) -> str:
        return str(self.record["method"])

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    @property
    def known_poses(self) -> bool:
        return self.record["prior"]["poses"] == "known"

    @property
    def measure(self) -> ParticleMeasure:
        return ParticleMeasure(jnp.asarray(self.positions, jnp.float32),
                               jnp.asarray(self.weights, jnp.float32))

    @property
    def image_config(self) -> ImageConfig:
        """The flow's geometry (box ``flow_box`` of ``flow_pixel_size_angstrom`` pixels)."""
        g = self.record["geometry"]
        return ImageConfig(int(g["flow_box"]), float(g["flow_pixel_size_angstrom"]))

    @property
    def scale(self) -> DataScale:
        s = self.record["scale"]
        return DataScale(float(s["offset"]), float(s["contrast"]), float(s["noise_std"]),
                         tuple(s["estimated"]))

    @property
    def optics(self) -> Optics:
        """Every used optics group, stacked (indexed by ``ImageNuisance.optics_group``)."""
        groups = [{k: v for k, v in g.items() if k != "name"}
                  for g in self.record["optics"]["groups"]]
        return Optics.stack([Optics(**g) for g in groups])

    @property
    def image_group(self) -> np.ndarray:
        """Each image's 0-based optics group, in particle-file order."""
        return np.asarray(self.record["optics"]["image_group"], int)

    @property
    def heldout_index(self) -> np.ndarray:
        return np.asarray(self.record["split"]["heldout_index"], int)

    @property
    def train_index(self) -> np.ndarray:
        n = int(self.record["split"]["n_images"])
        return np.setdiff1d(np.arange(n), self.heldout_index)

    @property
    def prior(self) -> NuisancePrior:
        """The nuisance prior of unknown poses (known poses: the default, never drawn)."""
        fields = self.record["prior"]["nuisance_prior"] or {}
        return NuisancePrior(**{k: _tuples(v) for k, v in fields.items()})

    @functools.cached_property
    def model(self):
        """The model rebuilt from the resolved spec, moved by the registration offset."""
        from cryosip.structures.factory import load_model

        m = self.record["model"]
        model = load_model(m["resolved_spec"])
        offset = m.get("registration_offset_angstrom")
        return model if offset is None else TranslatedModel(model, offset)

    @functools.cached_property
    def operator(self) -> CryoEMOperator:
        """The forward operator of the run: model, flow geometry, optics, prior, noise."""
        return CryoEMOperator(self.model, self.image_config, self.optics, self.prior,
                              self.scale.noise_std_model)

    @functools.cached_property
    def _heldout_file(self) -> dict[str, np.ndarray]:
        return load_npz(self.path / "heldout.npz", ("index", "images"))

    @property
    def heldout_rows(self) -> np.ndarray:
        """Rows (0-based, particle file) of the images in ``heldout.npz``."""
        return self._heldout_file["index"]

    @property
    def heldout(self) -> Observations:
        """The stored held-out images in model units with their nuisances."""
        f = self._heldout_file
        names = [fld.name for fld in dataclasses.fields(ImageNuisance)]
        missing = [k for k in names if k not in f]
        if missing:
            raise InputError(str(self.path / "heldout.npz"), missing[0],
                             "an array of that name", f"only {sorted(f)}")
        nuisance = ImageNuisance(**{k: jnp.asarray(f[k]) for k in names})
        return Observations(jnp.asarray(f["images"], jnp.float32), nuisance)


def load_run(run_dir: str | Path) -> LoadedRun:
    """The run folder ``run_dir`` (``run.json`` and ``ensemble.npz``) as a :class:`LoadedRun`.

    Reads no particle file and no stack; the model is rebuilt on first use of ``.model``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(str(run_dir), None, "a run folder", "no such folder")
    ens = load_npz(run_dir / "ensemble.npz", ("positions", "weights"))
    record = read_run_record(run_dir)
    return LoadedRun(run_dir, record, ens["positions"].astype(float),
                     ens["weights"].astype(float))
