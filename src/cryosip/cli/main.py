"""``cryosip`` entry point: dispatches to one module per subcommand.

Each subcommand module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. ``main(argv)`` is callable in-process (tests use it) and returns the
exit code; errors of the user's input (:class:`cryosip.errors.InputError`) print one line
and give exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cryosip import __version__
from cryosip.errors import InputError

# One line per subcommand module (cryosip.cli.<name>).
SUBCOMMANDS: tuple[str, ...] = (
    "toy",
    "simulate",
    "reconstruct",
    "evaluate",
    "demo",
    "baseline",
    "convert",
    "inspect",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryosip",
        description="Recover distributions over conformations from cryo-EM particle images.",
    )
    parser.add_argument("--version", action="version", version=f"cryosip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"cryosip.cli.{name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = ["cryosip", *(sys.argv[1:] if argv is None else argv)]
    try:
        return int(args._run(args) or 0)
    except InputError as err:
        print(f"cryosip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
