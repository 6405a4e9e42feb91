"""Peak memory of the full-data weights phase and its weight bootstrap against N (issue 14).

The phase after the flow (:mod:`cryosip.flows.refine`) keeps the likelihood of every
training image under every particle, ``p [N, M]`` float32, and runs EM on it; the weight
bootstrap (:func:`cryosip.pipeline.bootstrap.resampled_em`) refits EM on ``B`` resamples of
its rows. Their memory is what they add to ``reconstruct``'s peak at large ``N``; their
likelihood pass needs the forward model and is timed by ``benchmarks/scaling.py``.

For each ``N`` of ``--sizes`` a child process fills a :class:`ShiftedLikelihood` with a
synthetic ``L [N, M]`` (a 1-D Gaussian mixture observed with noise 0.1 on ``M`` grid
points; the values do not change the memory), a span of rows at a time as the likelihood
pass does (in memory up to ``MEMORY_BYTES``, else a scratch file), then runs, recording its
peak RSS (``ru_maxrss``) after each stage: the fill, ``em`` (``--iters`` iterations: memory
does not grow with them), and the bootstrap's ``resampled_em`` on the draws of
``_resample_groups`` as ``run_bootstrap`` runs them (``--refits`` B, the default 40,
groups of 8, ``--iters`` iterations).

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
from cryosip.flows.refine import SPAN_ROWS, ShiftedLikelihood
from cryosip.pipeline.bootstrap import _resample_groups, resampled_em
n, m, refits, iters = (int(a) for a in sys.argv[1:5])
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"n": n, "m": m, "refits": refits, "iters": iters, "after_imports_mb": peak()}
rng = np.random.default_rng(0)
x = np.linspace(0, 1, m, dtype=np.float32)
lik = ShiftedLikelihood(n, m)  # filled a span at a time, as the likelihood pass does
for s in range(0, n, SPAN_ROWS):
    k = min(SPAN_ROWS, n - s)
    y = np.where(rng.random(k) < 0.6, 0.2, 0.8) + 0.08 * rng.standard_normal(k)
    y = (y + 0.1 * rng.standard_normal(k)).astype(np.float32)
    lik.put(s, -0.5 * ((y[:, None] - x[None, :]) / 0.1) ** 2)
out["after_loglik_mb"], out["on_disk"] = peak(), lik.on_disk
t0 = time.perf_counter()
w, *_ = lik.em(np.full(m, 1.0 / m), max_iter=iters)
out["after_em_mb"], out["em_s"] = peak(), time.perf_counter() - t0
t0 = time.perf_counter()
resampled_em(lik, w, _resample_groups(n, refits, 0, 8), max_iter=iters)
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
              f" (on disk: {r['on_disk']}), EM {r['after_em_mb']:.0f}, bootstrap "
              f"{r['after_bootstrap_mb']:.0f} MB"
              f" (EM {r['em_s']:.1f} s, bootstrap {r['bootstrap_s']:.1f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=RESULTS.parents[2]).stdout.strip()
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "commit": commit, "command": " ".join(sys.argv),
                                    "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
