"""``cryosip baseline``: a discretize-then-optimize baseline, written like a reconstruction."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

from cryosip.cli.reconstruct import add_model_arguments
from cryosip.errors import check_output_folder, from_validation

NAME = "baseline"
HELP = "fit a DTO baseline (fixed-support reweighting, per-image MAP, Gaussian mixture in x)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["reweight", "map", "gmm"], required=True)
    p.add_argument("--particles", required=True,
                   help="a RELION STAR file (3.0 or 3.1) or a cryoSPARC .cs file")
    p.add_argument("--datadir", default=None, help="folder searched first for the stacks")
    p.add_argument("--pixel-size", type=float, default=None, dest="pixel_size",
                   help="pixel size in Å; overrides the particle file's")
    add_model_arguments(p)
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
    from cryosip.cli.reconstruct import FLAGS, _model_spec
    from cryosip.pipeline.baseline import run_baseline
    from cryosip.pipeline.config import parse_config

    check_output_folder(args.out, force=args.force)
    data = {"particles": args.particles, "datadir": args.datadir,
            "pixel_size_angstrom": args.pixel_size, "poses": args.poses,
            "flow_box": args.flow_box or None, "noise_std": args.noise_std,
            "contrast": args.contrast}
    given = {dotted: flag for dotted, flag in FLAGS.values()}
    data_config = parse_config({"data": data, "model": _model_spec(args), "seed": args.seed,
                                "loop": {"progress": False}}, "command line", flags=given)
    try:
        baseline = BaselineConfig(support=args.support, n_support=args.n_support,
                                  prior_concentration=args.prior_concentration,
                                  n_components=args.n_components, seed=args.seed)
    except ValidationError as err:  # a flag out of range: one line, exit 2
        raise from_validation(err, "command line", flags=True) from None
    summary = run_baseline(args.method, data_config, baseline, args.out, argv=args.argv)
    print(json.dumps(summary))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0
