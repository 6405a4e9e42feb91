"""``cryosip inspect``: what cryosip understood from a particle file, running nothing."""

from __future__ import annotations

import argparse
import json

NAME = "inspect"
HELP = ("show what cryosip reads from a particle file (RELION STAR or cryoSPARC .cs): "
        "particles, optics groups, pixel size, shifts, defocus, stacks")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a RELION STAR file (3.0 or 3.1) or a cryoSPARC .cs file")
    p.add_argument("--datadir", default=None,
                   help="folder searched first for the stacks (then the file's folder and "
                        "its ancestors)")
    p.add_argument("--pixel-size", type=float, default=None, dest="pixel_size",
                   help="pixel size in Å; overrides the file's")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from cryosip.io.inspect import format_report, inspect_particles

    summary = inspect_particles(args.file, datadir=args.datadir,
                                pixel_size_angstrom=args.pixel_size)
    print(json.dumps(summary) if args.json else format_report(summary))
    return 0
