"""Benchmark: recovery of the toy problems by MMD and KL flows against the sample floor.

Prints a table (problem, discrepancy, solver, init, W1, floor, W1/floor, W2, wall time)
and writes ``benchmarks/results/toy_flows.json``.

    .venv/bin/python benchmarks/toy_flows.py            # N = 5000 on toy a, b and c
    .venv/bin/python benchmarks/toy_flows.py --only a   # toy a only
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from cryosip import __version__
from cryosip.problems.runner import ToyRunConfig, run_toy

RUNS = [
    dict(problem="a", discrepancy="mmd", wfr=False),
    dict(problem="a", discrepancy="kl", wfr=False),
    dict(problem="a", discrepancy="mmd", wfr=True),
    dict(problem="a", discrepancy="kl", wfr=True),
    dict(problem="a", discrepancy="mmd", wfr=True, init="wrong_mode"),
    dict(problem="a", discrepancy="kl", wfr=True, init="wrong_mode"),
    dict(problem="b", discrepancy="mmd", wfr=True, n_obs=2000),
    dict(problem="b", discrepancy="kl", wfr=True, n_obs=2000),
    dict(problem="c", discrepancy="mmd", wfr=True),
    dict(problem="c", discrepancy="kl", wfr=True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["a", "b", "c"], default=None)
    parser.add_argument("--n-obs", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "toy_flows.json")
    args = parser.parse_args()
    rows = []
    header = (f"{'problem':7} {'discr':5} {'solver':6} {'init':10} {'W1':>7} {'floor':>7} "
              f"{'ratio':>6} {'W2':>7} {'W2floor':>7} {'wall_s':>7}")
    print(header)
    for spec in RUNS:
        if args.only and spec["problem"] != args.only:
            continue
        spec = {"n_obs": args.n_obs, "steps": args.steps, **spec}
        run = run_toy(ToyRunConfig(**spec))
        s = run.summary()
        s["ratio"] = s["w1"] / s["floor_w1"]
        rows.append(s)
        print(f"{s['problem']:7} {s['discrepancy']:5} {'wfr' if s['wfr'] else 'w':6} "
              f"{s['init']:10} {s['w1']:7.4f} {s['floor_w1']:7.4f} {s['ratio']:6.2f} "
              f"{s['w2']:7.4f} {s['floor_w2']:7.4f} {s['wall_s']:7.1f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cryosip_version": __version__, "host": platform.node(),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_obs": args.n_obs, "steps": args.steps}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from cryosip.cli.main import configure_process

    configure_process()  # as the cryosip command: XLA's CPU YNN fusions off
    main()
