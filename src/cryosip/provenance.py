"""Provenance of a run and atomic file writes.

Every command that writes results writes ``provenance.json`` beside them: cryosip version,
git commit of the source tree (when it is a git checkout), argv, the validated config, the
seed, start/end times (UTC, ISO 8601), host and JAX backend.

>>> rec = provenance_record(config={"steps": 3}, seed=0, argv=["cryosip", "toy"])
>>> rec["seed"], rec["config"]["steps"]
(0, 3)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cryosip import __version__

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_savez", "git_sha",
           "provenance_record", "write_provenance", "utc_now"]


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def git_sha() -> str | None:
    """The commit of the cryosip source tree, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def provenance_record(config: Any, seed: int | None, argv: list[str] | None = None,
                      started: str | None = None, **extra: Any) -> dict[str, Any]:
    """A JSON-ready record; ``config`` may be a pydantic model or a mapping."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    import jax

    return _jsonable({
        "cryosip_version": __version__,
        "git_sha": git_sha(),
        "argv": list(sys.argv if argv is None else argv),
        "config": config,
        "seed": seed,
        "started_utc": started or utc_now(),
        "finished_utc": utc_now(),
        "python": platform.python_version(),
        "host": platform.node(),
        "jax_backend": jax.default_backend(),
        **extra,
    })


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` only when the block succeeds
    (a temporary file in the same folder, fsync, rename); the file gets the mode an
    ordinary ``open()`` would (0666 less the umask; ``mkstemp`` alone makes it 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_savez(path: str | Path, **arrays: Any) -> None:
    """``np.savez`` to ``path`` atomically (``path`` should end in ``.npz``)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def write_provenance(out_dir: str | Path, config: Any, seed: int | None,
                     argv: list[str] | None = None, started: str | None = None,
                     **extra: Any) -> Path:
    path = Path(out_dir) / "provenance.json"
    record = provenance_record(config, seed, argv, started, **extra)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
