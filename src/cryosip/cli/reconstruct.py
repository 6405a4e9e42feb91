"""``cryosip reconstruct``: recover the distribution over conformations from a STAR file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

from cryosip.errors import InputError

NAME = "reconstruct"
HELP = "recover the distribution over conformations behind a particle stack"

_DEFAULTS_NOTE = """
Defaults (measured on the AdK path, N = 10000, box 64, SNR 0.01; see docs/tutorial.md):
KL with known poses, 32 weighted particles (--wfr), 300 steps, minibatches of 128 images
(256 for MMD),
flow box 32 (Fourier crop), displacement cap 0.02 per step. Choose MMD for a
likelihood-free fit; choose --poses unknown only when no consensus refinement exists.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = _DEFAULTS_NOTE
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--particles", required=True,
                   help="a RELION STAR file (3.0 or 3.1) or a cryoSPARC .cs file")
    p.add_argument("--datadir", default=None,
                   help="folder searched first for the particle stacks (then the particle "
                        "file's folder and its ancestors, as RELION does)")
    p.add_argument("--pixel-size", type=float, default=None, dest="pixel_size",
                   help="pixel size in Å; overrides the particle file's (default: the file's, "
                        "else the first stack's MRC voxel size)")
    p.add_argument("--model", default="adk-path",
                   help="adk-path | adk-domains | hinge | a multi-model PDB/mmCIF | a YAML/JSON "
                        "model spec (default adk-path)")
    p.add_argument("--coarse", choices=["residue", "none"], default="residue",
                   help="one bead per residue for the built-in AdK models (default residue: "
                        "15x faster than all atoms)")
    p.add_argument("--out", required=True, help="run folder (created; refused if non-empty)")
    p.add_argument("--poses", choices=["known", "unknown"], default="known")
    p.add_argument("--register", choices=["none", "translation"], default="translation",
                   help="estimate the model's 3-D offset from the images before the flow "
                        "(known poses; default translation)")
    p.add_argument("--align-frames", action="store_true",
                   help="superpose a file model's frames on the first and centre each one "
                        "(default: keep the coordinates as given, the consensus map's frame)")
    p.add_argument("--discrepancy", choices=["kl", "mmd"], default="kl")
    p.add_argument("--n-particles", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--step-size", type=float, default=None,
                   help="time step (default: set from the first gradient, see --max-displacement)")
    p.add_argument("--max-displacement", type=float, default=0.02,
                   help="largest particle move per step, in units of x (default 0.02)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per minibatch (default 128 for KL, 256 for MMD)")
    p.add_argument("--n-draws", type=int, default=256,
                   help="nuisance draws (unknown poses) per step")
    p.add_argument("--mmd-features", choices=["pixels", "power-spectrum"], default="pixels",
                   help="MMD kernel on raw pixels (noise integrated out) or on the rotationally "
                        "averaged power spectrum (invariant to in-plane pose: for --poses unknown)")
    p.add_argument("--mmd-bandwidth", type=float, default=1.0,
                   help="relative Gaussian bandwidth (pixels: h^2 = f D sigma^2; power spectrum: "
                        "f x median heuristic)")
    p.add_argument("--flow-box", type=int, default=32,
                   help="Fourier-crop images to this box for the flow (0: no crop)")
    p.add_argument("--noise-std", type=float, default=None,
                   help="noise sigma in the stack's units (default: estimated)")
    p.add_argument("--contrast", type=float, default=None,
                   help="image scale (default: estimated)")
    p.add_argument("--temperature", type=float, default=0.0, help="Langevin (entropic) term")
    p.add_argument("--wfr", action=argparse.BooleanOptionalAction, default=True,
                   help="Wasserstein-Fisher-Rao: weights move too (default on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.npz")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--no-progress", action="store_true")


def _model_spec(args) -> str | dict:
    spec: str | dict = args.model
    path = Path(args.model)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        import yaml

        spec = yaml.safe_load(path.read_text())
    if isinstance(spec, str) and spec in ("adk-path", "adk-domains") and args.coarse != "none":
        spec = {"name": spec, "coarse": args.coarse}
    if args.align_frames:
        if spec in ("adk-path", "adk-domains", "hinge") or (isinstance(spec, dict)
                                                           and "name" in spec):
            raise InputError("command line", "--align-frames", "a file model (PDB/mmCIF, "
                             "topology + trajectory)", f"the built-in model {args.model!r}")
        spec = {**spec, "align": True} if isinstance(spec, dict) else {"structure": spec,
                                                                       "align": True}
    return spec


_FLAGS = {"pixel_size_angstrom": "--pixel-size"}
"""Config fields whose command-line flag is not ``--`` + the field with ``-`` for ``_``."""


def flag_error(err: ValidationError) -> InputError:
    """The first problem of a config built from flags, as one line naming the flag."""
    first = err.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
    return InputError("command line", flag, first["msg"].removeprefix("Input should be "),
                      repr(first.get("input")))


def _check_out(out: Path, args) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(str(out), None, "a run folder", "a file")
    if out.exists() and any(out.iterdir()) and not (args.force or args.resume):
        raise InputError(str(out), None, "an empty or new run folder",
                         "existing files; pass --resume to continue or --force to overwrite")


def run(args: argparse.Namespace) -> int:
    from cryosip.pipeline.config import ReconstructConfig
    from cryosip.pipeline.run import run_reconstruction

    out = Path(args.out)
    _check_out(out, args)
    try:
        config = ReconstructConfig(
            particles=args.particles, datadir=args.datadir,
            pixel_size_angstrom=args.pixel_size, model=_model_spec(args), poses=args.poses,
            discrepancy=args.discrepancy, n_particles=args.n_particles, steps=args.steps,
            step_size=args.step_size, max_displacement=args.max_displacement,
            batch_size=args.batch_size, n_draws=args.n_draws,
            mmd_features=args.mmd_features, mmd_bandwidth=args.mmd_bandwidth,
            flow_box=args.flow_box or None, noise_std=args.noise_std, contrast=args.contrast,
            temperature=args.temperature, wfr=args.wfr, seed=args.seed,
            progress=not args.no_progress, registration=args.register,
        )
    except ValidationError as err:
        raise flag_error(err) from None
    _, summary = run_reconstruction(config, out, resume=args.resume, argv=args.argv)
    print(json.dumps({k: summary[k] for k in ("status", "steps", "wall_time_s",
                                              "scale_noise_std", "scale_contrast")}))
    print(f"report: {out / 'report.html'}")
    return 0
