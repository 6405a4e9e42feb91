"""Cost of drawing one minibatch's rows per flow step, against N (issue 14).

The flow used to draw step ``k``'s rows as ``jax.random.permutation(k_batch, N)[:B]``: a
permutation of all ``N`` rows in every step (``O(N)``). It now draws them on the host in
epochs (:class:`cryosip.flows.run.BatchRows`): one permutation per ``N // B`` steps, a
slice per step. This times both, interleaved, for ``N`` in ``--sizes`` (``B`` = 128, the
KL default): seconds per step averaged over ``--steps`` consecutive steps (the new scheme's
average includes its one permutation at step 0, so it is an upper bound for a long run).

Run: ``.venv/bin/python benchmarks/batch_rows.py`` -> ``benchmarks/results/batch_rows.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from cryosip.flows.run import BatchRows, _keys

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "batch_rows.json"


def old_rows(key, n: int, batch: int, steps: int) -> float:
    """Seconds per step of the per-step permutation (as the jitted step ran it)."""
    draw = jax.jit(lambda k: jax.random.permutation(k, n)[:batch])
    draw(_keys(key, 0)[0]).block_until_ready()  # compile
    t0 = time.perf_counter()
    for step in range(steps):
        draw(_keys(key, step)[0]).block_until_ready()
    return (time.perf_counter() - t0) / steps


def new_rows(key, n: int, batch: int, steps: int) -> float:
    """Seconds per step of BatchRows from a fresh object (its first permutation included)."""
    t0 = time.perf_counter()
    BatchRows(key, n, batch).chunk(0, steps)
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    key = jax.random.key(0)
    rows = []
    for repeat in range(args.repeats):
        for n in args.sizes:
            load = os.getloadavg()[0]
            old, new = old_rows(key, n, args.batch, args.steps), new_rows(key, n, args.batch,
                                                                             args.steps)
            rows.append({"repeat": repeat, "n": n, "old_s_per_step": old,
                         "new_s_per_step": new, "load_average": load})
            print(f"repeat {repeat} N={n:>8d}: per-step permutation {old * 1e3:9.2f} ms, "
                  f"epochs {new * 1e3:7.3f} ms (load {load:.1f})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"batch": args.batch, "steps": args.steps,
                                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}; medians over repeats (ms per step):")
    for n in args.sizes:
        old = np.median([r["old_s_per_step"] for r in rows if r["n"] == n]) * 1e3
        new = np.median([r["new_s_per_step"] for r in rows if r["n"] == n]) * 1e3
        print(f"  N={n:>8d}: per-step permutation {old:9.2f}, epochs {new:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
