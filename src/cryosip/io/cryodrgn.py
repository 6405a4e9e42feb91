"""cryoDRGN pose and CTF pickles (read and write; cryoDRGN itself is not needed).

* Pose pickle: the tuple ``(rot, trans)``, ``rot`` (n, 3, 3) rotation matrices and
  ``trans`` (n, 2) shifts as a fraction of the box, as ``cryodrgn parse_pose_star`` writes.
* CTF pickle: a float32 array (n, 9) with columns ``D`` (box, pixels), ``Apix`` (Å),
  ``dfu``, ``dfv`` (Å), ``dfang`` (degrees), ``volt`` (kV), ``cs`` (mm), ``w`` (amplitude
  contrast), ``phase_shift`` (degrees), as ``cryodrgn parse_ctf_star`` writes.

Poses convert through :func:`cryosip.conventions.relion_to_cryodrgn_pose` and its inverse.

Pickles are read with a restricted unpickler (:class:`SafeUnpickler`): only the globals
that numpy arrays, dtypes and scalars need (protocols 2-5) are admitted, so a crafted
``.pkl`` cannot run code on load (``pickle.load`` would call whatever it names).

>>> import tempfile, os, jax.numpy as jnp
>>> path = os.path.join(tempfile.mkdtemp(), "poses.pkl")
>>> euler, shift = np.array([[10.0, 40.0, 70.0]]), np.array([[2.0, -4.0]])
>>> write_cryodrgn_poses(path, euler, shift, box_size=64, pixel_size_angstrom=2.0)
>>> e, s = read_cryodrgn_poses(path, box_size=64, pixel_size_angstrom=2.0)
>>> np.round(e, 4).tolist(), np.round(s, 6).tolist()
([[10.0, 40.0, 70.0]], [[2.0, -4.0]])
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from cryosip import conventions
from cryosip.errors import InputError

__all__ = ["ALLOWED_GLOBALS", "CTF_COLUMNS", "SafeUnpickler", "read_cryodrgn_ctf",
           "read_cryodrgn_poses", "write_cryodrgn_ctf", "write_cryodrgn_poses"]

CTF_COLUMNS = ("D", "Apix", "dfu", "dfv", "dfang", "volt", "cs", "w", "phase_shift")


def write_cryodrgn_poses(path: str | os.PathLike, euler_deg: np.ndarray,
                         shift_angstrom: np.ndarray, *, box_size: int,
                         pixel_size_angstrom: float) -> None:
    """Pickle ``(rot, trans)`` for RELION angles (degrees) and origins (Å)."""
    rot, trans = conventions.relion_to_cryodrgn_pose(
        np.asarray(euler_deg), np.asarray(shift_angstrom), box_size, pixel_size_angstrom)
    with open(path, "wb") as fh:
        pickle.dump((rot.astype(np.float32), trans.astype(np.float32)), fh)


#: ``(module, name)`` a pose or CTF pickle may name: numpy's array/dtype/scalar rebuilders
#: (``numpy.core`` before numpy 2, ``numpy._core`` since) and ``_codecs.encode`` (bytes in
#: protocol 2). Tuples, lists, bytes and numbers need no global.
ALLOWED_GLOBALS = frozenset({
    *((f"numpy.{core}.multiarray", n) for core in ("core", "_core")
      for n in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _Refused(Exception):
    pass


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that admits only :data:`ALLOWED_GLOBALS` (numpy arrays, dtypes, tuples)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise _Refused(f"{module}.{name}")
        if module.startswith("numpy.core."):  # numpy 2 moved it; avoid its deprecation shim
            module = module.replace("numpy.core.", "numpy._core.", 1)
        return super().find_class(module, name)


def _load(path: str | os.PathLike):
    if not Path(path).is_file():
        raise InputError(str(path), None, "an existing pickle", "no such file")
    with open(path, "rb") as fh:
        try:
            return SafeUnpickler(fh).load()
        except _Refused as err:
            raise InputError(str(path), None, "a pickle of numpy arrays and tuples only",
                             f"a pickle naming {err} (refused: loading it could run code)"
                             ) from None
        except Exception as err:  # noqa: BLE001 - any unpickling failure is bad input
            raise InputError(str(path), None, "a pickle",
                             f"unreadable ({str(err).splitlines()[0] if str(err) else err!r})"
                             ) from None


def _float_array(path: str | os.PathLike, value, field: str, expected: str) -> np.ndarray:
    """``value`` as a float array; anything else (a dict, ragged lists) is bad input."""
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(str(path), field, expected, f"a {type(value).__name__} that is not "
                         "a numeric array") from None


def read_cryodrgn_poses(path: str | os.PathLike, *, box_size: int,
                        pixel_size_angstrom: float) -> tuple[np.ndarray, np.ndarray]:
    """``(euler_deg (n, 3), shift_angstrom (n, 2))`` in RELION conventions."""
    data = _load(path)
    if isinstance(data, tuple) and len(data) != 2:
        raise InputError(str(path), None, "a rotation array or a (rot, trans) tuple",
                         f"a tuple of {len(data)} items")
    rot, trans = (data if isinstance(data, tuple) else (data, None))
    rot = _float_array(path, rot, "rot", "an (n, 3, 3) array")
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(str(path), "rot", "an (n, 3, 3) array", f"shape {rot.shape}")
    trans = (np.zeros((len(rot), 2)) if trans is None
             else _float_array(path, trans, "trans", f"an ({len(rot)}, 2) array"))
    if trans.shape != (len(rot), 2):
        raise InputError(str(path), "trans", f"an ({len(rot)}, 2) array", f"shape {trans.shape}")
    return conventions.cryodrgn_to_relion_pose(rot, trans, box_size, pixel_size_angstrom)


def write_cryodrgn_ctf(  # noqa: PLR0913 - one keyword per column of cryoDRGN's CTF array
        path: str | os.PathLike, *, box_size: int, pixel_size_angstrom: float,
                       defocus_u_angstrom, defocus_v_angstrom, astigmatism_angle_deg,
                       voltage_kv: float, cs_mm: float, amplitude_contrast: float,
                       phase_shift_deg=0.0) -> None:
    """Pickle the (n, 9) cryoDRGN CTF array (columns :data:`CTF_COLUMNS`)."""
    du = np.asarray(defocus_u_angstrom, dtype=float)
    cols = [box_size, pixel_size_angstrom, du, defocus_v_angstrom, astigmatism_angle_deg,
            voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg]
    array = np.stack([np.broadcast_to(np.asarray(c, float), du.shape) for c in cols], axis=1)
    with open(path, "wb") as fh:
        pickle.dump(array.astype(np.float32), fh)


def read_cryodrgn_ctf(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The CTF pickle as a dict of columns named by :data:`CTF_COLUMNS`."""
    array = _float_array(path, _load(path), "ctf", f"an (n, {len(CTF_COLUMNS)}) array")
    if array.ndim != 2 or array.shape[1] != len(CTF_COLUMNS):
        raise InputError(str(path), "ctf", f"an (n, {len(CTF_COLUMNS)}) array",
                         f"shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError(str(path), "ctf", "finite numbers", "NaN/inf values")
    return {name: array[:, k] for k, name in enumerate(CTF_COLUMNS)}
