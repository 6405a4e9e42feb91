"""Peak memory of the full-data weights phase and its weight bootstrap against N (issue 14).

The phase after the flow (:mod:`cryosip.flows.refine`) keeps the likelihood of every
training image under every particle, ``p [N, M]`` float32, and runs EM on it; the weight
bootstrap (:func:`cryosip.pipeline.bootstrap.resampled_em`) refits EM on ``B`` resamples of
its rows. Their memory is what they add to ``reconstruct``'s peak at large ``N``; their
likelihood pass needs the forward model and is timed by ``benchmarks/scaling.py``.

For each ``N`` of ``--sizes`` a child process builds a synthetic ``L [N, M]`` (a 1-D
Gaussian mixture observed with noise 0.1 on ``M`` grid points; the values do not change
the memory), then runs, recording its peak RSS (``ru_maxrss``) after each stage:
``from_loglik`` (in place), ``em`` (``--iters`` iterations: memory does not grow with
them), and the bootstrap's ``resample_indices`` + ``resampled_em`` (``--refits`` B, the
default 40, groups of 8, ``--iters`` iterations).

Run: ``.venv/bin/python benchmarks/refine_memory.py`` -> ``benchmarks/results/refine_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "refine_memory.json"

_CHILD = """
import json, resource, sys, time
import numpy as np
from cryosip.flows.refine import ShiftedLikelihood
from cryosip.pipeline.bootstrap import resample_indices, resampled_em
n, m, refits, iters = (int(a) for a in sys.argv[1:5])
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"n": n, "m": m, "refits": refits, "iters": iters, "after_imports_mb": peak()}
rng = np.random.default_rng(0)
x = np.linspace(0, 1, m, dtype=np.float32)
loglik = np.empty((n, m), np.float32)
for s in range(0, n, 1 << 16):
    y = np.where(rng.random(min(1 << 16, n - s)) < 0.6, 0.2, 0.8) + 0.08 * rng.standard_normal(
        min(1 << 16, n - s))
    y = (y + 0.1 * rng.standard_normal(y.shape)).astype(np.float32)
    loglik[s:s + len(y)] = -0.5 * ((y[:, None] - x[None, :]) / 0.1) ** 2
out["after_loglik_mb"] = peak()
t0 = time.perf_counter()
lik = ShiftedLikelihood.from_loglik(loglik, in_place=True)
w, *_ = lik.em(np.full(m, 1.0 / m), max_iter=iters)
out["after_em_mb"], out["em_s"] = peak(), time.perf_counter() - t0
t0 = time.perf_counter()
index = resample_indices(n, refits, 0)
out["after_resample_indices_mb"] = peak()
resampled_em(lik, w, index, max_iter=iters)
out["after_bootstrap_mb"], out["bootstrap_s"] = peak(), time.perf_counter() - t0
print("RESULT " + json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--particles", type=int, default=64, help="M (the 1-D default)")
    parser.add_argument("--refits", type=int, default=40, help="B (the default with refine)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for n in args.sizes:
        text = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(args.particles),
                               str(args.refits), str(args.iters)], capture_output=True,
                              text=True, check=True).stdout
        rows.append(json.loads(next(s for s in text.splitlines()
                                    if s.startswith("RESULT "))[7:]))
        r = rows[-1]
        print(f"N={n:>8d}: imports {r['after_imports_mb']:.0f} MB, L {r['after_loglik_mb']:.0f}"
              f", EM {r['after_em_mb']:.0f}, resample indices "
              f"{r['after_resample_indices_mb']:.0f}, bootstrap {r['after_bootstrap_mb']:.0f} MB"
              f" (EM {r['em_s']:.1f} s, bootstrap {r['bootstrap_s']:.1f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
