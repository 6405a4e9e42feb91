"""``cryosip simulate --config FILE.yaml --out DIR [--force]``: a synthetic data set.

Writes ``DIR/particles.mrcs``, ``DIR/particles.star`` (RELION 3.1), ``DIR/truth.npz``,
``DIR/config.yaml`` and ``DIR/provenance.json`` (see :mod:`cryosip.datasets.simulate`);
refuses a non-empty ``DIR`` unless ``--force``. Config reference: ``docs/data.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "simulate"
HELP = "simulate particle images of a conformation model with a known truth distribution."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see docs/data.md)")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cryosip.datasets import load_simulate_config, simulate_dataset

    config = load_simulate_config(args.config)
    result = simulate_dataset(
        config, args.out, force=args.force, progress=not args.no_progress,
        base_dir=Path(args.config).resolve().parent, argv=list(sys.argv),
        source=str(args.config),
    )
    print(f"wrote {result.n_images} images to {result.out_dir} "
          f"(noise_std {result.noise_std:.4g}, snr {result.snr:.4g}, "
          f"{result.wall_time_s:.1f} s)")
    return 0
