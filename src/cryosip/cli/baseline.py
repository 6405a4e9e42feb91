"""``cryosip baseline``: a discretize-then-optimize baseline, written like a reconstruction."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

NAME = "baseline"
HELP = "fit a DTO baseline (fixed-support reweighting, per-image MAP, Gaussian mixture in x)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["reweight", "map", "gmm"], required=True)
    p.add_argument("--particles", required=True,
                   help="a RELION STAR file (3.0 or 3.1) or a cryoSPARC .cs file")
    p.add_argument("--datadir", default=None, help="folder searched first for the stacks")
    p.add_argument("--pixel-size", type=float, default=None, dest="pixel_size",
                   help="pixel size in Å; overrides the particle file's")
    p.add_argument("--model", default="adk-path", help="as for reconstruct")
    p.add_argument("--coarse", choices=["residue", "none"], default="residue")
    p.add_argument("--align-frames", action="store_true",
                   help="as for reconstruct (superpose and centre a file model's frames)")
    p.add_argument("--out", required=True, help="run folder (new or empty)")
    p.add_argument("--poses", choices=["known", "unknown"], default="known")
    p.add_argument("--support", choices=["grid", "frames"], default="grid",
                   help="grid: --n-support points per axis; frames: the path model's frames")
    p.add_argument("--n-support", type=int, default=100)
    p.add_argument("--prior-concentration", type=float, default=None,
                   help="Dirichlet prior alpha (MAP weights; reweight only)")
    p.add_argument("--n-components", type=int, default=2, help="gmm components")
    p.add_argument("--flow-box", type=int, default=32, help="Fourier crop (0: none)")
    p.add_argument("--noise-std", type=float, default=None)
    p.add_argument("--contrast", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")


def run(args: argparse.Namespace) -> int:
    from cryosip.baselines import BaselineConfig
    from cryosip.cli.reconstruct import _check_out, _model_spec, flag_error
    from cryosip.pipeline.baseline import run_baseline
    from cryosip.pipeline.config import ReconstructConfig

    args.resume = False
    _check_out(Path(args.out), args)
    try:
        data_config = ReconstructConfig(
            particles=args.particles, datadir=args.datadir, pixel_size_angstrom=args.pixel_size,
            model=_model_spec(args), poses=args.poses,
            flow_box=args.flow_box or None, noise_std=args.noise_std, contrast=args.contrast,
            seed=args.seed, progress=False,
        )
        baseline = BaselineConfig(support=args.support, n_support=args.n_support,
                                  prior_concentration=args.prior_concentration,
                                  n_components=args.n_components, seed=args.seed)
    except ValidationError as err:  # a flag out of range: one line, exit 2
        raise flag_error(err) from None
    summary = run_baseline(args.method, data_config, baseline, args.out, argv=args.argv)
    print(json.dumps(summary))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0
