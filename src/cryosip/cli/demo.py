"""``cryosip demo --out DIR``: the built-in AdK example end to end (simulate, reconstruct,
evaluate) and where its report is."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryosip.errors import InputError

NAME = "demo"
HELP = "run the built-in AdK example end to end: simulate, reconstruct, evaluate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-run", help="output folder (default demo-run)")
    p.add_argument("--size", choices=["full", "tiny"], default="full",
                   help="full: 3000 images, 200 steps (minutes); tiny: a smoke run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import shutil

    from cryosip.pipeline.demo import run_demo

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(str(out), None, "a folder", "a file")
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise InputError(str(out), None, "an empty or new folder",
                             "existing files; pass --force to replace them")
        shutil.rmtree(out)
    evaluation = run_demo(out, args.size, args.seed, progress=not args.no_progress,
                          argv=args.argv)
    keys = ("method", "w1", "floor", "populations", "n_images")
    print(json.dumps({k: evaluation[k] for k in keys if k in evaluation}, indent=2))
    print(f"report: {(out / 'run' / 'report.html').resolve()}")
    return 0
