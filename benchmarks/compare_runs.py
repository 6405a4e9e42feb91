"""Compare two ``cryosip reconstruct`` run folders: the final particles, weights and losses.

For the GPU check (``benchmarks/gpu_check.sh``): the same tiny data set, the same seed, run
once on the CPU (``JAX_PLATFORMS=cpu``) and once on the default platform. Reads each
folder's ``ensemble.npz`` and prints, for ``positions``, ``weights`` and ``losses``:

* ``max_abs``: ``max |a - b|``;
* ``max_rel``: ``max |a - b| / max |b|`` (relative to the reference run ``B``'s largest
  magnitude; an elementwise ratio would blow up on weights near zero);

and whether the image split (``train_index``, ``heldout_index``) is the same. The exit code
is 0 whatever the differences (they are a measurement, not a pass/fail); 2 on unreadable
input.

Run: ``python benchmarks/compare_runs.py RUN_A RUN_B [--json OUT.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cryosip.errors import InputError

ARRAYS = ("positions", "weights", "losses")
INDICES = ("train_index", "heldout_index")


def load_ensemble(run: str | Path) -> dict[str, np.ndarray]:
    """The arrays of ``run/ensemble.npz`` that :func:`compare` uses."""
    path = Path(run) / "ensemble.npz"
    if not path.is_file():
        raise InputError(str(path), None, "the ensemble.npz of a reconstruct run",
                         "no such file")
    with np.load(path) as data:
        missing = [k for k in (*ARRAYS, *INDICES) if k not in data.files]
        if missing:
            raise InputError(str(path), missing[0], "an array", "none")
        return {k: np.asarray(data[k]) for k in (*ARRAYS, *INDICES)}


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """Differences of run ``a`` from the reference run ``b`` (module docstring)."""
    out: dict = {}
    for key in ARRAYS:
        x, y = a[key].astype(np.float64), b[key].astype(np.float64)
        if x.shape != y.shape:
            raise InputError("ensemble.npz", key, f"shape {y.shape} (as the reference run)",
                             f"{x.shape}")
        diff = np.abs(x - y)
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        max_abs = float(np.max(diff)) if diff.size else 0.0
        out[key] = {"shape": list(x.shape), "max_abs": max_abs,
                    "max_rel": max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else
                                                                   float("inf"))}
    out["same_split"] = all(np.array_equal(a[k], b[k]) for k in INDICES)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", help="run folder (e.g. the GPU run)")
    parser.add_argument("run_b", help="reference run folder (e.g. the CPU run)")
    parser.add_argument("--json", help="also write the differences to this JSON file")
    args = parser.parse_args(argv)
    try:
        result = compare(load_ensemble(args.run_a), load_ensemble(args.run_b))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = {"run_a": args.run_a, "run_b": args.run_b, **result}
    for key in ARRAYS:
        r = result[key]
        print(f"{key:>9} {tuple(r['shape'])}: max |a-b| {r['max_abs']:.3e}, "
              f"max relative difference {r['max_rel']:.3e}")
    print(f"same image split: {result['same_split']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
