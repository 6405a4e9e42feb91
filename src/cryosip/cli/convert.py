"""``cryosip convert``: a cryoSPARC ``.cs`` file, or cryoDRGN pickles, to a RELION 3.1 STAR.

    cryosip convert IN.cs OUT.star [--datadir DIR] [--pixel-size A] [--force]
    cryosip convert --poses P.pkl --ctf C.pkl --stack S.mrcs OUT.star [--force]

A ``.cs`` file needs no stacks (``--datadir`` is put in front of its stack paths). An
existing ``OUT.star`` is refused unless ``--force``; the file is written atomically. The
work is done by :mod:`cryosip.io.convert`.
"""

from __future__ import annotations

import argparse

from cryosip.errors import InputError

NAME = "convert"
HELP = "convert a cryoSPARC .cs file or cryoDRGN pickles to a RELION 3.1 STAR file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="IN OUT.star",
                        help="IN.cs and OUT.star; only OUT.star with --poses/--ctf/--stack")
    parser.add_argument("--datadir", help="folder put in front of the .cs stack paths")
    parser.add_argument("--pixel-size", type=float, help="pixel size in Å (overrides the .cs)")
    parser.add_argument("--poses", help="cryoDRGN pose pickle (with --ctf and --stack)")
    parser.add_argument("--ctf", help="cryoDRGN CTF pickle (with --poses and --stack)")
    parser.add_argument("--stack", help="the .mrcs stack the cryoDRGN pickles describe")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT.star")


def _check_usage(args: argparse.Namespace) -> bool:
    """True for cryoDRGN pickles, False for a .cs file; usage errors as :class:`InputError`."""
    drgn = [args.poses, args.ctf, args.stack]
    if any(drgn):
        if not all(drgn) or len(args.paths) != 1 or args.datadir or args.pixel_size:
            raise InputError("command line", None, "--poses P.pkl --ctf C.pkl --stack S.mrcs "
                             "OUT.star", " ".join(args.argv[2:]))
        return True
    if len(args.paths) != 2:
        raise InputError("command line", None, "IN.cs OUT.star", " ".join(args.paths))
    if not args.paths[0].endswith(".cs"):
        raise InputError(args.paths[0], None, "a cryoSPARC .cs file (or --poses/--ctf/--stack)",
                         "another file type")
    return False


def run(args: argparse.Namespace) -> int:
    from cryosip.io.convert import cryodrgn_to_star, cs_to_star

    if _check_usage(args):
        out = args.paths[0]
        table = cryodrgn_to_star(args.poses, args.ctf, args.stack, out, force=args.force)
    else:
        out = args.paths[1]
        table = cs_to_star(args.paths[0], out, args.datadir, force=args.force,
                           pixel_size_angstrom=args.pixel_size)
    print(f"wrote {len(table)} particles ({len(table.optics)} optics groups, "
          f"{'with' if table.poses_known else 'without'} poses, "
          f"{table.pixel_size_angstrom:g} Å/pixel) to {out}")
    return 0
