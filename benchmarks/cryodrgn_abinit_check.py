"""cryoDRGN ``abinit_het`` (zdim 1) on the unknown-pose benchmark's images, side by side.

Issue 13: on the same SNR 0.1 images as ``benchmarks/unknown_pose_mmd.py`` (AdK path,
bimodal truth, box 64, shifts with std 2 Å, CTF from the STAR file), cryoDRGN's ab initio
heterogeneous reconstruction (pose search by branch and bound, a VAE with a 1-D latent)
runs from the STAR file and its CTF pickle with no poses. Reported: its wall time (CTF
parsing excluded), the number of epochs and images, and ``|Spearman|`` between its latent
``z`` (the encoder's mean, ``z.pkl``) and the true ``x`` of every image; beside it, when
given (``--cryosip``), the cryosip rows of ``unknown_pose_mmd.json`` (wall time, W1,
per-image ``|Spearman|``).

In cryoDRGN 4.3.1 the classic ``abinit_het`` is the command ``abinit_het_old`` (``abinit``
is now cryoDRGN-AI); this script runs ``abinit_het_old`` with its defaults except
``--zdim 1``, ``-n EPOCHS``, ``--no-analysis``, ``--seed`` and, with ``--small``, the
encoder/decoder widths (``--enc-dim/--dec-dim 128``, ``--pretrain`` = the image count),
with ``--fast`` a coarser pose search (``--t-ngrid 3 --t-extent 3 --l-end 20``) and with
``--n-use N`` only the first N images (``--ind``), so that it fits on two CPU cores.
cryoDRGN inverts the data by default, which matches
cryosip's RELION-like white particles (``docs/conventions.md``).

How to run. cryoDRGN is not a cryosip dependency, and this script imports nothing of
cryosip (it reads the simulated folder: ``particles.star``, its stack, ``truth.npz``)::

    python3.11 -m venv /tmp/q-drgn
    /tmp/q-drgn/bin/pip install torch==2.13.0       # a CPU wheel
    /tmp/q-drgn/bin/pip install cryodrgn==4.3.1
    .venv/bin/python benchmarks/unknown_pose_mmd.py --n-images 2000 ...   # makes the data
    nice -n 10 /tmp/q-drgn/bin/python benchmarks/cryodrgn_abinit_check.py \\
        --data /tmp/cryosip-unknown-pose-mmd/adk_bimodal_n2000_snr0.1_shift2.0_seed0 \\
        --epochs 2 --small --cryosip benchmarks/results/unknown_pose_mmd.json
    # on the N = 10^4 set, at cryosip's flow box and with jemalloc (apt-get install
    # libjemalloc2), as run for docs/tutorial.md:
    /tmp/q-drgn/bin/python benchmarks/cryodrgn_abinit_check.py \\
        --data /tmp/cryosip-unknown-pose-mmd/adk_bimodal_n10000_snr0.1_shift2.0_seed0 \\
        --epochs 2 --small --fast --n-use 1000 --downsample 32 \\
        --jemalloc /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \\
        --cryosip benchmarks/results/unknown_pose_mmd_posterior_n1e4.json
    # all 10^4 images, 5 epochs (one pose search; 70 min here):
    #   the same with --epochs 5, without --n-use, and
    #   --out benchmarks/results/cryodrgn_abinit_check_n1e4_ds32_e5.json

JSON to ``benchmarks/results/cryodrgn_abinit_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

OUT = Path(__file__).resolve().parent / "results" / "cryodrgn_abinit_check.json"


JEMALLOC_CONF = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def cryodrgn(*args: str, log: Path, jemalloc: Path | None = None) -> float:
    """Run ``cryodrgn ARGS`` (this interpreter's), output to ``log``; wall seconds. With
    ``jemalloc`` (a ``libjemalloc.so.2``) preloaded and told to keep its pages: on these
    machines, with glibc's malloc, 41% of the pose search's CPU time was system time (most
    likely page faults from large tensors handed back to the kernel after every batch);
    with jemalloc it was 0 and a batch ran about twice as fast (docs/tutorial.md)."""
    exe = Path(sys.executable).with_name("cryodrgn")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if jemalloc is not None:
        env.update(LD_PRELOAD=str(jemalloc), MALLOC_CONF=JEMALLOC_CONF)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run([str(exe), *args], check=True, stdout=fh, stderr=subprocess.STDOUT,
                       env=env)
    return time.perf_counter() - t0


def latent(folder: Path) -> np.ndarray:
    with open(folder / "z.pkl", "rb") as fh:
        return np.asarray(pickle.load(fh))[:, 0]


def cryosip_rows(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    keep = ("w1", "flow_wall_s", "per_image", "steps")
    return {name: {k: v for k, v in row.items() if k in keep} for name, row in rows.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a simulated folder")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--small", action="store_true", help="narrower networks, short pretrain")
    p.add_argument("--n-use", type=int, default=None,
                   help="only the first N images (cryoDRGN's --ind); default all")
    p.add_argument("--fast", action="store_true",
                   help="a coarser pose search: --t-ngrid 3 --t-extent 3 --l-end 20")
    p.add_argument("--downsample", type=int, default=None,
                   help="run on the images downsampled to this box (cryodrgn downsample; "
                        "cryosip's flow runs at box 32)")
    p.add_argument("--jemalloc", type=Path, default=None,
                   help="preload this libjemalloc.so.2 (apt-get install libjemalloc2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/q-abinit"))
    p.add_argument("--cryosip", type=Path, default=None, help="unknown_pose_mmd.json")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    star = args.data / "particles.star"
    truth = np.asarray(np.load(args.data / "truth.npz")["x"])[:, 0]
    ctf = args.work / "ctf.pkl"
    cryodrgn("parse_ctf_star", str(star), "-o", str(ctf), log=args.work / "ctf.log")
    run = args.work / "abinit"
    n_use = len(truth) if args.n_use is None else min(args.n_use, len(truth))
    truth = truth[:n_use]
    extra = (["--enc-dim", "128", "--dec-dim", "128", "--pretrain", str(n_use)]
             if args.small else [])
    extra += ["--t-ngrid", "3", "--t-extent", "3", "--l-end", "20"] if args.fast else []
    if n_use < len(np.load(args.data / "truth.npz")["x"]):
        index = args.work / f"ind{n_use}.pkl"
        with open(index, "wb") as fh:
            pickle.dump(np.arange(n_use), fh)
        extra += ["--ind", str(index)]
    source = [str(star), "--datadir", str(args.data)]
    if args.downsample:
        small = args.work / f"ds{args.downsample}.mrcs"
        cryodrgn("downsample", *source, "-D", str(args.downsample), "-o", str(small),
                 log=args.work / "downsample.log")
        source = [str(small)]  # cryoDRGN rescales the CTF's pixel size to the new box
    cmd = ["abinit_het_old", *source, "--ctf", str(ctf),
           "--zdim", "1", "-n", str(args.epochs), "-o", str(run), "--no-analysis",
           "--seed", str(args.seed), *extra]
    wall = cryodrgn(*cmd, log=args.work / "abinit.log", jemalloc=args.jemalloc)
    z = latent(run)
    rho = stats.spearmanr(z, truth).statistic
    result = {
        "cryodrgn": {"command": "cryodrgn " + " ".join(cmd), "version": _version(),
                     "n_images": n_use, "epochs": args.epochs, "fast": args.fast,
                     "small": args.small, "downsample": args.downsample,
                     "jemalloc": args.jemalloc is not None, "wall_s": wall,
                     "abs_spearman_z_vs_true_x": float(abs(rho))},
        "cryosip": cryosip_rows(args.cryosip),
        "data": str(args.data),
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


def _version() -> str:
    import cryodrgn as package

    return package.__version__


if __name__ == "__main__":
    raise SystemExit(main())
