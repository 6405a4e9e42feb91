"""``cryosip evaluate``: score a run folder; JSON on stdout and in RUN/evaluation.json.

Reads only the run folder (``ensemble.npz``, ``run.json``, ``heldout.npz``): the particle
files of the run may have moved or gone (:mod:`cryosip.pipeline.runfolder`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "evaluate"
HELP = "score a recovered measure: W1/W2 to the truth and its floor, populations, held-out MMD"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder written by reconstruct or baseline")
    p.add_argument("--truth", default=None, help="truth.npz of a simulated data set")
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out image MMD")
    p.add_argument("--n-subsample", type=int, default=None, metavar="N",
                   help="d-D: score against at most N of the images' true x (default 10000)")


def run(args: argparse.Namespace) -> int:
    from cryosip.pipeline.evaluate import evaluate_run
    from cryosip.provenance import atomic_write_text

    options = {} if args.n_subsample is None else {"n_subsample": args.n_subsample}
    result = evaluate_run(args.run, args.truth, heldout=not args.no_heldout, **options)
    text = json.dumps(result, indent=2)
    atomic_write_text(Path(args.run) / "evaluation.json", text + "\n")
    print(text)
    return 0
