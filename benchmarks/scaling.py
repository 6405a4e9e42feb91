"""Scaling of cryosip with the data size (issue 14): simulate and reconstruct at N images.

``--part data`` (default): for each N of ``--sizes`` (default 10^4, 10^5, 10^6 images of
box 32, 4 Å pixels, SNR 0.05, AdK closed -> open path with one bead per residue, bimodal
truth as the demo), as separate child processes, each measured by its own peak resident
memory (``ru_maxrss`` of a wrapper's ``RUSAGE_CHILDREN``: the child alone):

1. ``cryosip simulate`` -> peak RSS, wall time and images/s (N / wall, start-up and
   compilation included);
2. the **preparation** of ``reconstruct`` alone (``read_particles`` + ``prepare_data`` +
   the translation registration, as ``cryosip.pipeline.reconstruct.reconstruct`` runs
   them) -> its wall time and peak RSS;
3. ``cryosip reconstruct --steps S`` (default 20; everything else default: known poses,
   KL, flow box 32, the full-data weights phase after the flow) -> peak RSS and wall time,
   with the flow's time per step (``per_step_s`` of ``summary.json``: the steps after the
   first, compiled, chunk) and the full-data phase's likelihood pass and EM seconds.

The ratios ``peak(N) / peak(smallest N)`` are printed and stored. Data sets go to
``--work`` (default ``/tmp/cryosip-scaling``; a 10^6 box-32 float32 stack is 4.1 GB) and
are deleted after each size unless ``--keep``.

``--part processes`` runs ``benchmarks/scaling_processes.py`` (weak scaling over
processes; skipped with a message when that script is absent); ``--part all`` runs both.

``--part w1``: does more data give a smaller error under the defaults? For each N of
``--sizes`` (e.g. ``10000 100000``): ``cryosip simulate`` of the same AdK path at SNR
``--snr`` (default 0.01), ``cryosip reconstruct`` with every default (100 steps, 64
particles, the full-data weights phase), ``cryosip evaluate``: W1 to the truth, its
finite-sample floor, wall times. Writes ``benchmarks/results/scaling_w1.json``.

Run: ``.venv/bin/python benchmarks/scaling.py [--sizes 10000 100000 1000000] [--steps 20]``;
``--quick`` is ``--sizes 1000 10000`` (CI / a quick check). Writes
``benchmarks/results/scaling.json`` (``--out`` to change): one row per N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
RESULTS_W1 = ROOT / "benchmarks" / "results" / "scaling_w1.json"
PROCESSES = ROOT / "benchmarks" / "scaling_processes.py"

SIM_CONFIG = {
    "model": {"name": "adk-path", "coarse": "residue"},
    "truth": [{"kind": "gaussian", "weight": 0.6, "mean": [0.2], "std": [0.08]},
              {"kind": "gaussian", "weight": 0.4, "mean": [0.8], "std": [0.08]}],
    "box_size": 32, "pixel_size_angstrom": 4.0, "snr": 0.05,
    "defocus_angstrom": [10000, 25000], "seed": 0, "render_batch_size": 256,
}

# Runs a command and prints its wall time, the peak RSS of the command alone (kB) and a
# timeline of its RSS (VmRSS sampled every 0.5 s; the largest sample of each 10 s), to see
# which stage holds the peak.
_MEASURE = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
child = subprocess.Popen(sys.argv[1:])
samples = {}
while child.poll() is None:
    try:
        with open(f"/proc/{child.pid}/status") as fh:
            rss = next(int(s.split()[1]) for s in fh if s.startswith("VmRSS:"))
        t = int((time.perf_counter() - t0) // 10) * 10
        samples[t] = max(samples.get(t, 0), rss)
    except (OSError, StopIteration):
        pass
    time.sleep(0.5)
rc = child.wait()
print("MEASURE " + json.dumps({"rc": rc, "wall_s": time.perf_counter() - t0,
      "peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
      "rss_timeline_mb": {t: kb / 1024 for t, kb in sorted(samples.items())}}))
"""

# The preparation of reconstruct alone (its first lines), timed, with the defaults.
_PREPARE = """
import json, sys, time
t0 = time.perf_counter()
from cryosip.cli.main import configure_process
configure_process()
from cryosip.io import read_particles
from cryosip.pipeline.config import ReconstructConfig
from cryosip.pipeline.data import prepare_data
from cryosip.pipeline.reconstruct import _register
from cryosip.structures.factory import load_model
t1 = time.perf_counter()
config = ReconstructConfig.model_validate({"data": {"particles": sys.argv[1]}})
known = config.data.poses == "known"
stack = read_particles(config.data.particles, require_poses=known)
t2 = time.perf_counter()
model = load_model(config.model)
data = prepare_data(stack, model, known_poses=known, flow_box=config.data.flow_box,
                    heldout_fraction=config.data.heldout_fraction, seed=config.seed)
t3 = time.perf_counter()
_register(config, data, model, known)
t4 = time.perf_counter()
print("PREPARE " + json.dumps({"import_s": t1 - t0, "read_s": t2 - t1, "prepare_s": t3 - t2,
      "register_s": t4 - t3, "total_s": t4 - t1, "n_train": int(len(data.train_index))}))
"""


def _cryosip() -> list[str]:
    script = Path(sys.executable).parent / "cryosip"
    return [str(script)] if script.exists() else [shutil.which("cryosip") or "cryosip"]


def measured(cmd: list[str], log: Path) -> tuple[dict, str]:
    """``(measure, stdout)`` of ``cmd`` run as a child of a fresh wrapper (own peak RSS)."""
    with open(log, "w") as fh:
        out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], stdout=subprocess.PIPE,
                             stderr=fh, text=True, check=False)
    lines = out.stdout.splitlines()
    measure = json.loads(next(s for s in lines if s.startswith("MEASURE "))[8:])
    if measure["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {measure['rc']}); see {log}")
    return measure, "\n".join(s for s in lines if not s.startswith("MEASURE "))


def run_size(n: int, work: Path, steps: int, keep: bool) -> dict:
    folder = work / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = folder / "simulate.yaml"
    config.write_text(yaml.safe_dump({**SIM_CONFIG, "n_images": n}, sort_keys=False))
    data, run = folder / "data", folder / "run"
    try:
        sim, _ = measured([*_cryosip(), "simulate", "--config", str(config), "--out",
                           str(data), "--no-progress"], folder / "simulate.log")
        stack_bytes = (data / "particles.mrcs").stat().st_size
        prep, text = measured([sys.executable, "-c", _PREPARE, str(data / "particles.star")],
                              folder / "prepare.log")
        times = json.loads(next(s for s in text.splitlines() if s.startswith("PREPARE "))[8:])
        rec, _ = measured([*_cryosip(), "reconstruct", "--particles",
                           str(data / "particles.star"), "--steps", str(steps), "--out",
                           str(run), "--no-progress"], folder / "reconstruct.log")
        summary = json.loads((run / "summary.json").read_text())
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "n_images": n, "stack_bytes": stack_bytes,
        "simulate_peak_rss_mb": sim["peak_rss_kb"] / 1024, "simulate_wall_s": sim["wall_s"],
        "simulate_images_per_s": n / sim["wall_s"],
        "prepare_peak_rss_mb": prep["peak_rss_kb"] / 1024,
        "prepare_read_s": times["read_s"], "prepare_split_scale_s": times["prepare_s"],
        "prepare_register_s": times["register_s"], "prepare_total_s": times["total_s"],
        "reconstruct_peak_rss_mb": rec["peak_rss_kb"] / 1024,
        "reconstruct_wall_s": rec["wall_s"], "reconstruct_steps": steps,
        "per_step_s": summary["per_step_s"], "n_images_train": summary["n_images_train"],
        # the full-data weights phase after the flow (cryosip.flows.refine), when it ran
        "refine_likelihood_s": summary.get("refinement", {}).get("likelihood_s"),
        "refine_em_s": summary.get("refinement", {}).get("em_s"),
        "reconstruct_wall_time_s": summary.get("wall_time_s"),
        "summary_parts": {k: summary.get(k) for k in ("refinement", "bootstrap", "per_image")},
        "reconstruct_rss_timeline_mb": rec.get("rss_timeline_mb"),
        "reconstruct_log_tail": (folder / "reconstruct.log").read_text()[-3000:]
        if keep else None,
    }


def print_row(row: dict) -> None:
    print(f"N={row['n_images']:>8d}  simulate {row['simulate_peak_rss_mb']:7.0f} MB "
          f"{row['simulate_images_per_s']:7.0f} img/s ({row['simulate_wall_s']:.0f} s) | "
          f"prepare {row['prepare_peak_rss_mb']:6.0f} MB {row['prepare_total_s']:6.1f} s "
          f"(read {row['prepare_read_s']:.1f} s) | reconstruct "
          f"{row['reconstruct_peak_rss_mb']:6.0f} MB, {row['per_step_s']:.3f} s/step, "
          f"{row['reconstruct_wall_s']:.0f} s (full-data phase: likelihood "
          f"{row['refine_likelihood_s'] or 0:.0f} s, EM {row['refine_em_s'] or 0:.0f} s)",
          flush=True)


def data_part(sizes: list[int], steps: int, work: Path, keep: bool) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        rows.append(run_size(n, work, steps, keep))
        print_row(rows[-1])
    base = rows[0]
    for row in rows:
        for key in ("simulate_peak_rss_mb", "prepare_peak_rss_mb", "reconstruct_peak_rss_mb",
                    "per_step_s"):
            row[f"{key}_ratio"] = row[key] / base[key]
    print(f"ratios to N={base['n_images']}:")
    for row in rows:
        print(f"  N={row['n_images']:>8d}: simulate RSS x{row['simulate_peak_rss_mb_ratio']:.3f}"
              f", prepare RSS x{row['prepare_peak_rss_mb_ratio']:.3f}, reconstruct RSS "
              f"x{row['reconstruct_peak_rss_mb_ratio']:.3f}, time/step "
              f"x{row['per_step_s_ratio']:.3f}")
    return rows


def w1_size(n: int, snr: float, work: Path, keep: bool, reuse: bool = False) -> dict:
    """Simulate ``n`` images at ``snr`` (or, with ``reuse``, take the data set a ``--keep``
    run left with the same config), reconstruct with the defaults, evaluate."""
    folder = work / f"w1_n{n}"
    config, data, run = folder / "simulate.yaml", folder / "data", folder / "run"
    text = yaml.safe_dump({**SIM_CONFIG, "snr": snr, "n_images": n}, sort_keys=False)
    reuse = reuse and (data / "particles.star").is_file() and config.read_text() == text
    shutil.rmtree(run if reuse else folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    try:
        sim = {"wall_s": None} if reuse else measured(
            [*_cryosip(), "simulate", "--config", str(config), "--out", str(data),
             "--no-progress"], folder / "simulate.log")[0]
        rec, _ = measured([*_cryosip(), "reconstruct", "--particles",
                           str(data / "particles.star"), "--out", str(run), "--no-progress"],
                          folder / "reconstruct.log")
        _, text = measured([*_cryosip(), "evaluate", "--run", str(run), "--truth",
                            str(data / "truth.npz")], folder / "evaluate.log")
        evaluation = json.loads((run / "evaluation.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {"n_images": n, "snr": snr, "simulate_wall_s": sim["wall_s"],
            "reconstruct_wall_s": rec["wall_s"], "reconstruct_peak_rss_mb":
            rec["peak_rss_kb"] / 1024, "summary": summary, "evaluation": evaluation}


def w1_part(sizes: list[int], snr: float, work: Path, keep: bool, reuse: bool,
            save: Callable[[list[dict]], None]) -> list[dict]:
    """Rows of :func:`w1_size`, ``save``d after each size (a long run keeps what it did)."""
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        rows.append(w1_size(n, snr, work, keep, reuse))
        save(rows)
        ev = rows[-1]["evaluation"]
        print(f"N={n:>8d}  W1 {ev.get('w1')} (to the law {ev.get('w1_to_truth')}, floor "
              f"{ev.get('floor')} +- {ev.get('floor_std')})  reconstruct "
              f"{rows[-1]['reconstruct_wall_s']:.0f} s", flush=True)
    return rows


def processes_part(argv: list[str]) -> int | None:
    if not PROCESSES.exists():
        print(f"--part processes: {PROCESSES.relative_to(ROOT)} not found; skipped")
        return None
    return subprocess.run([sys.executable, str(PROCESSES), *argv], check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("data", "processes", "all", "w1"), default="data")
    parser.add_argument("--snr", type=float, default=0.01, help="--part w1: the data's SNR")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="--sizes 1000 10000")
    parser.add_argument("--steps", type=int, default=20, help="reconstruct's flow steps")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir())
                        / "cryosip-scaling", help="scratch folder for the data sets")
    parser.add_argument("--keep", action="store_true", help="keep the data sets and runs")
    parser.add_argument("--reuse-data", action="store_true",
                        help="--part w1: reuse a data set kept by an earlier run (same config)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args, rest = parser.parse_known_args(argv)
    if rest and args.part in ("data", "w1"):
        parser.error(f"unknown arguments {rest} (only --part processes passes them on)")
    sizes = [1_000, 10_000] if args.quick else sorted(args.sizes)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True, check=False).stdout.strip()
    record = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "commit": commit, "load_average_start": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "simulate_config": SIM_CONFIG, "steps": args.steps}
    if args.part in ("data", "all"):
        record["data"] = data_part(sizes, args.steps, args.work, args.keep)
        record["load_average_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.part == "w1":
        out = RESULTS_W1 if args.out == RESULTS else args.out
        out.parent.mkdir(parents=True, exist_ok=True)

        def save(rows: list[dict]) -> None:
            out.write_text(json.dumps({**record, "w1": rows, "load_average_end":
                                       os.getloadavg()}, indent=1) + "\n")
            print(f"wrote {out}", flush=True)

        w1_part(sizes, args.snr, args.work, args.keep, args.reuse_data, save)
    if args.part in ("processes", "all"):
        code = processes_part(rest)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
