"""``cryosip`` entry point: dispatches to one module per subcommand.

Each subcommand module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. ``main(argv)`` is callable in-process (tests use it) and returns the
exit code; errors of the user's input (:class:`cryosip.errors.InputError`) print one line
and give exit code 2. ``main`` first calls :func:`configure_process`: importing cryosip sets
nothing, the entry point sets what its process needs. This module imports neither JAX nor
matplotlib, so the settings take effect for every subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import MutableMapping

from cryosip import __version__
from cryosip.errors import InputError
from cryosip.registry import load_plugins

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
"""The XLA flag whose empty value turns off XLA:CPU's experimental "YNN" fusions."""


def configure_process(environ: MutableMapping[str, str] | None = None) -> None:
    """Set the process settings the ``cryosip`` command runs under, in ``environ``
    (default ``os.environ``); a value the user already gave is kept.

    - ``XLA_FLAGS`` gets ``--xla_cpu_experimental_ynn_fusion_type=`` appended unless it
      already names that flag: XLA:CPU's YNN fusions make the projector's backward pass
      about 3x slower and a flow step about 1.4x slower (``benchmarks/forward_speed.py``,
      ``docs/performance.md``). XLA reads the variable when JAX starts its CPU backend (the
      first array operation), so this must run before that; importing JAX is harmless.
    - ``MPLBACKEND`` is set to ``Agg`` unless set: the command only writes figures to files.

    >>> env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    >>> configure_process(env)
    >>> env["XLA_FLAGS"], env["MPLBACKEND"]
    ('--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type=', 'Agg')
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if YNN_FLAG not in flags:
        env["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()
    env.setdefault("MPLBACKEND", "Agg")


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
    configure_process()
    args = build_parser().parse_args(argv)
    args.argv = ["cryosip", *(sys.argv[1:] if argv is None else argv)]
    try:
        load_plugins()  # registers the models, discrepancies, projectors of plugins
        return int(args._run(args) or 0)
    except InputError as err:
        print(f"cryosip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
