"""Cost of drawing one minibatch's rows per flow step, against N (issue 14).

The flow used to draw step ``k``'s rows as ``jax.random.permutation(k_batch, N)[:B]``: a
permutation of all ``N`` rows in every step (``O(N)``). It now draws them on the host in
epochs (:class:`cryosip.flows.run.BatchRows`): one permutation per ``N // B`` steps, a
slice per step. This times both, interleaved, for ``N`` in ``--sizes`` (``B`` = 128, the
KL default): seconds per step averaged over ``--steps`` consecutive steps (the new scheme's
average includes its one permutation at step 0, so it is an upper bound for a long run).

``--flow``: instead, the time per step of :func:`cryosip.flows.run_flow` itself on
``N`` in-memory 1-D observations (a quadratic objective on the batch mean, 8 particles,
``B`` = 128, 40 steps in chunks of 10: ``per_step_s``, the chunks after the compiled
first), N interleaved over the repeats: what is left of a step that depends on N.

Run: ``.venv/bin/python benchmarks/batch_rows.py [--flow]`` ->
``benchmarks/results/batch_rows.json`` (``batch_rows_flow.json``).
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


def flow_step(n: int, batch: int) -> float:
    """``per_step_s`` of run_flow on ``n`` in-memory observations."""
    import jax.numpy as jnp

    from cryosip.flows import FlowConfig, WassersteinFlow, run_flow
    from cryosip.measures import ParticleMeasure
    from cryosip.operators import Observations

    def objective(x, w, batch_obs, key):
        return jnp.sum(w * jnp.sum((x - batch_obs.values.mean()) ** 2, 1))

    obs = Observations(jnp.asarray(np.random.default_rng(0).random((n, 1)), jnp.float32))
    result = run_flow(WassersteinFlow(0.1), objective,
                      ParticleMeasure.uniform(jnp.zeros((8, 1))), obs, jax.random.key(0),
                      FlowConfig(max_steps=40, batch_size=batch, history_every=10,
                                 progress=False))
    return result.timings["per_step_s"]


def flow_main(args) -> int:
    rows = []
    for repeat in range(args.repeats):
        for n in args.sizes:
            load = os.getloadavg()[0]
            rows.append({"repeat": repeat, "n": n, "per_step_s": flow_step(n, args.batch),
                         "load_average": load})
            print(f"repeat {repeat} N={n:>8d}: run_flow {rows[-1]['per_step_s'] * 1e3:.3f} ms "
                  f"per step (load {load:.1f})", flush=True)
    out = args.out.with_name("batch_rows_flow.json") if args.out == RESULTS else args.out
    out.write_text(json.dumps({"batch": args.batch, "rows": rows, "date":
                               time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1)
                   + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--flow", action="store_true", help="time run_flow's steps instead")
    args = parser.parse_args(argv)
    if args.flow:
        return flow_main(args)
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
