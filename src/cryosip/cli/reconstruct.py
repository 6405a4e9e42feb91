"""``cryosip reconstruct``: recover the distribution over conformations from a STAR file.

Settings come from ``--config run.yaml`` (the nested :class:`~cryosip.pipeline.config.
ReconstructConfig`), then from flags: a flag given on the command line wins, a flag not
given leaves the YAML (or the default) alone. The resolved config is written to the run
folder as ``config.yaml``; ``--config RUN/config.yaml --out NEW`` reruns it exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryosip.errors import InputError, check_output_folder

NAME = "reconstruct"
HELP = "recover the distribution over conformations behind a particle stack"

_DEFAULTS_NOTE = """
Defaults (measured on the AdK path, N = 10000, box 64, SNR 0.01; see docs/tutorial.md):
KL with known poses, 32 x 2^d weighted particles for a d-dimensional model (--wfr), 100
steps, minibatches of 128 images (256 for MMD), flow box 32 (Fourier crop), displacement
cap 0.02 per step, then the weights' full-data phase (EM over every training image).
Choose MMD for a likelihood-free fit; choose --poses unknown only when no consensus
refinement exists.
A flag overrides the same key of --config (data.particles, solver.n_particles, ...).
"""

FLAGS: dict[str, tuple[str, str]] = {
    "particles": ("data.particles", "--particles"),
    "datadir": ("data.datadir", "--datadir"),
    "pixel_size": ("data.pixel_size_angstrom", "--pixel-size"),
    "poses": ("data.poses", "--poses"),
    "register": ("data.registration", "--register"),
    "flow_box": ("data.flow_box", "--flow-box"),
    "bootstrap": ("uncertainty.bootstrap", "--bootstrap"),
    "noise_std": ("data.noise_std", "--noise-std"),
    "contrast": ("data.contrast", "--contrast"),
    "shift_std": ("data.shift_std_angstrom", "--shift-std-angstrom"),
    "discrepancy": ("objective.kind", "--discrepancy"),
    "n_draws": ("objective.n_draws", "--n-draws"),
    "mmd_bandwidth": ("objective.bandwidth", "--mmd-bandwidth"),
    "mmd_features": ("objective.features", "--mmd-features"),
    "n_particles": ("solver.n_particles", "--n-particles"),
    "step_size": ("solver.step_size", "--step-size"),
    "max_displacement": ("solver.max_displacement", "--max-displacement"),
    "temperature": ("solver.temperature", "--temperature"),
    "wfr": ("solver.wfr", "--wfr"),
    "refine_weights": ("loop.refine_weights", "--refine-weights"),
    "steps": ("loop.steps", "--steps"),
    "batch_size": ("loop.batch_size", "--batch-size"),
    "progress": ("loop.progress", "--no-progress"),
    "seed": ("seed", "--seed"),
}
"""argparse dest -> (dotted config key, flag): one name per setting across CLI and YAML."""


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--coarse``, ``--align-frames`` (shared with ``baseline``)."""
    p.add_argument("--model", default=None,
                   help="adk-path | adk-domains | adk-modes | hinge | a multi-model PDB/mmCIF "
                        "| a YAML/JSON model spec (default adk-path)")
    p.add_argument("--coarse", choices=["residue", "none"], default=None,
                   help="one bead per residue for the built-in AdK models (default residue: "
                        "15x faster than all atoms)")
    p.add_argument("--align-frames", action="store_true",
                   help="superpose a file model's frames on the first and centre each one "
                        "(default: keep the coordinates as given, the consensus map's frame)")


def add_arguments(p: argparse.ArgumentParser) -> None:  # default=None: the YAML's value stays
    p.epilog = _DEFAULTS_NOTE
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", default=None,
                   help="a YAML config (the tree of RUN/config.yaml); flags override its keys")
    p.add_argument("--particles", default=None,
                   help="a RELION STAR file (3.0 or 3.1) or a cryoSPARC .cs file")
    p.add_argument("--datadir", default=None,
                   help="folder searched first for the particle stacks (then the particle "
                        "file's folder and its ancestors, as RELION does)")
    p.add_argument("--pixel-size", type=float, default=None, dest="pixel_size",
                   help="pixel size in Å; overrides the particle file's (default: the file's, "
                        "else the first stack's MRC voxel size)")
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="run folder (created; refused if non-empty)")
    p.add_argument("--poses", choices=["known", "unknown"], default=None,
                   help="known (from the STAR file, default) or unknown (uniform prior)")
    p.add_argument("--register", choices=["none", "translation"], default=None,
                   help="estimate the model's 3-D offset from the images before the flow "
                        "(known poses; default translation)")
    p.add_argument("--discrepancy", default=None,
                   help="kl | mmd | a registered sample discrepancy (docs/extending.md; "
                        "default kl)")
    p.add_argument("--n-particles", type=int, default=None,
                   help="default 32 x 2^d (64, 128, 256 for d = 1, 2, 3)")
    p.add_argument("--steps", type=int, default=None, help="default 100")
    p.add_argument("--step-size", type=float, default=None,
                   help="time step (default: set from the first gradient, see --max-displacement)")
    p.add_argument("--max-displacement", type=float, default=None,
                   help="largest particle move per step, in units of x (default 0.02)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per minibatch (default 128 for KL, 256 for MMD)")
    p.add_argument("--n-draws", type=int, default=None,
                   help="nuisance draws per step (default 256; MMD shares them out among the "
                        "particles)")
    p.add_argument("--mmd-features",
                   choices=["pixels", "power-spectrum", "second-moment", "posterior"],
                   default=None,
                   help="MMD kernel on raw pixels (noise integrated out, default), on the "
                        "rotationally averaged power spectrum (invariant to in-plane pose), "
                        "the images' pose-averaged second moments (noise removed; for --poses "
                        "unknown), or each image's posterior over fixed reference "
                        "conformations with the pose integrated out (for --poses unknown)")
    p.add_argument("--mmd-bandwidth", type=float, default=None,
                   help="relative Gaussian bandwidth (pixels: h^2 = f D sigma^2; power spectrum: "
                        "f x median heuristic; default 1)")
    p.add_argument("--flow-box", type=int, default=None,
                   help="Fourier-crop images to this box for the flow (0: no crop; default 32)")
    p.add_argument("--bootstrap", type=int, default=None, metavar="B",
                   help="bootstrap refits on resampled images for the 90%% bands of the "
                        "density, populations and free energy (default 40 weight refits with "
                        "the full-data phase, else 4 warm-started flows; 0: none)")
    p.add_argument("--noise-std", type=float, default=None,
                   help="noise sigma in the stack's units, before the Fourier crop "
                        "(default: estimated)")
    p.add_argument("--shift-std-angstrom", type=float, default=None, dest="shift_std",
                   help="--poses unknown: std (Å) of the Gaussian prior of the in-plane shifts "
                        "(default: 1/50 of the box's width)")
    p.add_argument("--contrast", type=float, default=None,
                   help="image scale (default: estimated)")
    p.add_argument("--temperature", type=float, default=None,
                   help="Langevin (entropic) term (default 0)")
    p.add_argument("--wfr", action=argparse.BooleanOptionalAction, default=None,
                   help="Wasserstein-Fisher-Rao: weights move too (default on)")
    p.add_argument("--refine-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="KL, known poses: end with the weights' full-data optimum at the "
                        "final positions (default on)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.npz")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   default=None)
    add_process_arguments(p)


def add_process_arguments(p: argparse.ArgumentParser) -> None:
    """Several processes (docs/scaling.md): JAX's runtime, data-parallel flow."""
    g = p.add_argument_group("processes", "the flow data parallel over processes "
                             "(jax.distributed; under SLURM srun or mpirun: no flag needed)")
    g.add_argument("--processes", type=int, default=None,
                   help="launch this many processes on 127.0.0.1 (one node) and wait for them")
    g.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0's coordinator (with --num-processes, "
                        "--process-id)")
    g.add_argument("--num-processes", type=int, default=None, dest="num_processes",
                   help="P, the number of processes (with --coordinator)")
    g.add_argument("--process-id", type=int, default=None, dest="process_id",
                   help="this process's id, 0..P-1 (0 writes the outputs)")


_BUILTIN = ("adk-path", "adk-domains", "adk-modes", "hinge")
_BUILTIN_ADK = ("adk-path", "adk-domains", "adk-modes")  # the ones with residue beads


def _model_spec(args) -> str | dict:
    """The model spec of ``--model``/``--coarse``/``--align-frames`` (defaults: adk-path,
    residue beads)."""
    name = args.model or "adk-path"
    coarse = args.coarse or "residue"
    spec: str | dict = name
    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        import yaml

        spec = yaml.safe_load(path.read_text())
    if isinstance(spec, str) and spec in _BUILTIN_ADK and coarse != "none":
        spec = {"name": spec, "coarse": coarse}
    if args.align_frames:
        if spec in _BUILTIN or (isinstance(spec, dict) and "name" in spec):
            raise InputError("command line", "--align-frames", "a file model (PDB/mmCIF, "
                             "topology + trajectory)", f"the built-in model {name!r}")
        spec = {**spec, "align": True} if isinstance(spec, dict) else {"structure": spec,
                                                                       "align": True}
    return spec


def _set(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        node = tree.get(key)
        tree[key] = node = dict(node) if isinstance(node, dict) else {}
        tree = node
    tree[last] = value


def merged_config(args: argparse.Namespace):
    """The config of ``--config`` with the flags given on the command line applied on top."""
    from cryosip.pipeline.config import absolute_paths, parse_config, read_yaml

    raw, source = {}, "command line"
    if args.config is not None:  # its file names are relative to its folder
        source = str(args.config)
        raw = absolute_paths(read_yaml(args.config), Path(args.config).parent)
    given: dict[str, str] = {}
    objective = raw.get("objective") if isinstance(raw.get("objective"), dict) else {}
    if args.discrepancy is not None and objective.get("kind", "kl") != args.discrepancy:
        # another kind: only the per-step draws carry over (its other keys mean nothing here)
        raw["objective"] = {k: v for k, v in objective.items() if k == "n_draws"}
    flags = {dest: getattr(args, dest) for dest in FLAGS if getattr(args, dest) is not None}
    kind = args.discrepancy or objective.get("kind", "kl")
    for dest in ("mmd_bandwidth", "mmd_features"):
        if dest in flags and kind != "mmd":
            raise InputError("command line", FLAGS[dest][1], "--discrepancy mmd with it",
                             f"objective {kind!r}")
    if args.flow_box == 0:
        flags["flow_box"] = None
    for dest, value in flags.items():
        dotted, flag = FLAGS[dest]
        _set(raw, dotted, value)
        given[dotted] = flag
    if args.model is not None or args.coarse is not None or args.align_frames:
        raw["model"] = _model_spec(args)
        given["model"] = "--model"
    if not isinstance(raw.get("data"), dict) or "particles" not in raw["data"]:
        raise InputError("command line", "--particles", "a particle file (or data.particles "
                         "in --config)", "none")
    return parse_config(raw, source, flags=given)


def _child_argv(argv: list[str]) -> list[str]:
    """``argv`` (after the program name) without ``--processes N``."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--processes":
            skip = True
        elif not token.startswith("--processes="):
            out.append(token)
    return out


def launch(args: argparse.Namespace) -> int:
    """``--processes P``: this command on P local processes (the first failure stops all)."""
    from cryosip.distributed import launch_local

    if args.processes < 1:
        raise InputError("command line", "--processes", "an integer >= 1", str(args.processes))
    if args.coordinator is not None or args.num_processes is not None or (
            args.process_id is not None):
        raise InputError("command line", "--processes", "no --coordinator/--num-processes/"
                         "--process-id with it (it sets them)", "both")
    check_output_folder(args.out, force=args.force, resume=args.resume)
    config = merged_config(args)  # a bad flag fails here once, not in every process
    if config.minibatch_size % args.processes:  # equal shares (cryosip.distributed)
        raise InputError("command line", "--batch-size", "a multiple of --processes "
                         f"({args.processes})", str(config.minibatch_size))
    command = [sys.executable, "-m", "cryosip.cli.main", *_child_argv(args.argv[1:])]
    result = launch_local(command, args.processes)
    if result.returncode:
        print(f"cryosip {NAME}: error: process {result.failed_process} of {args.processes} "
              f"exited with code {result.returncode} (its messages are above); the other "
              "processes were stopped", file=sys.stderr)
    return result.returncode


def run(args: argparse.Namespace) -> int:
    from cryosip import distributed

    if args.processes is not None and args.processes != 1:
        return launch(args)
    out = check_output_folder(args.out, force=args.force, resume=args.resume)
    config = merged_config(args)
    # before anything starts JAX's backend; every process has checked the folder by now, as
    # process 0 writes nothing until all have joined
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    from cryosip.pipeline.run import run_reconstruction

    _, summary = run_reconstruction(config, out, resume=args.resume, argv=args.argv)
    if distributed.is_main():
        print(json.dumps({k: summary[k] for k in ("status", "steps", "wall_time_s",
                                                  "scale_noise_std", "scale_contrast")}))
        print(f"report: {out / 'report.html'}")
    return 0
