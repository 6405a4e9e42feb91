"""cryoSPARC ``.cs`` fixtures written as cryoSPARC writes them (for the tests).

A structured numpy array with cryoSPARC's field names and dtypes (float32 numbers, uint32
indices, fixed-length bytes paths, a few fields cryosip does not read), saved with
``np.save`` and renamed to ``.cs``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

OPTICS = ((300.0, 2.7, 0.1), (200.0, 1.4, 0.07))  # (kV, mm, w) of exposure groups 1, 2

CS_DTYPE = [
    ("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4"), ("blob/sign", "<f4"), ("ctf/type", "S1"),
    ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
    ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
    ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"), ("ctf/scale", "<f4"),
    ("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)),
    ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4"),
    ("alignments3D/error", "<f4"), ("alignments3D/class", "<u4"),
]


def cs_rows(n: int, rng: np.random.Generator, *, box: int = 64, pixel: float = 1.37,
            align_pixel: float | None = None) -> np.ndarray:
    """``n`` particles in two exposure groups (rows alternate), poses of a 3-D refinement."""
    rows = np.zeros(n, dtype=CS_DTYPE)
    group = np.arange(n) % 2
    rows["uid"] = rng.integers(1, 2**62, n)
    rows["blob/path"] = [f">J7/extract/mic{g}_particles.mrc".encode() for g in group]
    rows["blob/idx"] = np.arange(n) // 2
    rows["blob/shape"] = box
    rows["blob/psize_A"] = pixel
    rows["blob/sign"] = -1.0
    rows["ctf/type"] = b"i"
    rows["ctf/exp_group_id"] = group + 1
    for k, field in enumerate(("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")):
        rows[field] = [OPTICS[g][k] for g in group]
    rows["ctf/df1_A"] = rng.uniform(1.2e4, 2.6e4, n)
    rows["ctf/df2_A"] = rows["ctf/df1_A"] - rng.uniform(0, 2e3, n)
    rows["ctf/df_angle_rad"] = rng.uniform(-np.pi, np.pi, n)
    rows["ctf/phase_shift_rad"] = rng.uniform(0, np.pi / 2, n)
    rows["ctf/scale"] = 1.0
    rows["alignments3D/split"] = group
    rows["alignments3D/shift"] = rng.normal(0, 3.0, (n, 2))
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    rows["alignments3D/pose"] = axis * rng.uniform(0, np.pi, (n, 1))
    rows["alignments3D/psize_A"] = pixel if align_pixel is None else align_pixel
    rows["alignments3D/error"] = rng.uniform(0, 1, n)
    return rows


def drop_fields(rows: np.ndarray, *names: str) -> np.ndarray:
    """``rows`` without the fields ``names``."""
    keep = [f for f in rows.dtype.names if f not in names]
    out = np.zeros(len(rows), dtype=[(f, rows.dtype[f]) for f in keep])
    for f in keep:
        out[f] = rows[f]
    return out


def write_cs(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """Save ``rows`` as cryoSPARC does: ``np.save`` to ``.npy``, renamed to ``path``."""
    path = Path(path)
    npy = path.with_suffix(".npy")
    np.save(npy, rows)
    npy.rename(path)
    return path
