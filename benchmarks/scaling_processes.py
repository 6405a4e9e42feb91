"""Weak scaling of the flow over processes (issue 14): P processes pinned to one core each
against 1 process pinned to one core, on the same data and settings.

Data: ``--n-images`` (default 4000) images of the AdK closed -> open path (one bead per
residue), box 32, 4 Å pixels, SNR 0.05, bimodal truth, known poses, simulated once into
``--work``. Run: ``reconstruct``'s flow (KL, known poses, 32 weighted particles, flow box
32; the scale given, registration off, so each process spends its time in the flow) for
``--steps`` steps (default 40, chunks of 10).

* 1 process, pinned to core 0 (``os.sched_setaffinity`` before JAX starts), minibatch
  ``B`` (``--batch-size``, default 128);
* P processes (``--processes``, default 2; ``jax.distributed`` over gloo on 127.0.0.1,
  :func:`cryosip.distributed.launch_local`), process ``p`` pinned to core ``p``,
  minibatch ``P * B``: every process handles ``B`` images per step, as the single one
  (weak scaling).

Images/s = minibatch / ``per_step_s`` (the flow's median time per step over the chunks
after the first, compiled, one: :attr:`cryosip.flows.FlowResult.timings`). Beside it, each
process's CPU seconds per step (``time.process_time`` around each chunk, all its threads,
median over the chunks after the first): on a shared machine wall time depends on the
other users' load, CPU time much less, so equal CPU seconds per step in the single and the
parallel run say the parallel one does no extra work per image. The ratio
``images/s(P) / images/s(1)`` is the figure (target >= 0.85 P, 1.7 at P = 2). The machine
may be shared: the two are run ``--repeats`` times (default 3) interleaved, each ratio is
printed and stored with the load average before and after.

Run: ``.venv/bin/python benchmarks/scaling_processes.py [--repeats 3] [--steps 40]``.
Writes ``benchmarks/results/scaling_processes.json`` (``--out`` to change).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scaling_processes.json"

SIM_CONFIG = {
    "model": {"name": "adk-path", "coarse": "residue"},
    "truth": [{"kind": "gaussian", "weight": 0.6, "mean": [0.2], "std": [0.08]},
              {"kind": "gaussian", "weight": 0.4, "mean": [0.8], "std": [0.08]}],
    "box_size": 32, "pixel_size_angstrom": 4.0, "snr": 0.05,
    "defocus_angstrom": [10000, 25000], "seed": 0, "render_batch_size": 256,
}

# One process of a run: pinned to one core before JAX starts, then the flow of
# reconstruct(); process 0 writes the flow's timings. argv: config JSON, out, then the
# launcher's --coordinator/--num-processes/--process-id (absent for one process).
WORKER = """
import json, os, sys
from pathlib import Path
flag = lambda name: sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None
index = int(flag("--process-id") or 0)
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[index]})
from cryosip.cli.main import configure_process
configure_process()
from cryosip import distributed
if flag("--coordinator"):
    distributed.initialize(flag("--coordinator"), int(flag("--num-processes")), index)
import time, jax, numpy as np
import cryosip.flows.run as run
from cryosip.pipeline.config import ReconstructConfig
from cryosip.pipeline.reconstruct import reconstruct
cpu, chunk = [], run._chunk
def timed(*args):  # CPU seconds of this process (all its threads) per chunk
    c0 = time.process_time()
    out = jax.block_until_ready(chunk(*args))
    cpu.append(time.process_time() - c0)
    return out
run._chunk = timed
config = ReconstructConfig.model_validate_json(Path(sys.argv[1]).read_text())
result = reconstruct(config, sys.argv[2])
cpu_per_step = float(np.median(cpu[1:] or cpu)) / config.loop.history_every
Path(sys.argv[2], f"timings{index}.json").write_text(json.dumps({
    **result.flow.timings, "cpu_s_per_step": cpu_per_step, "steps": result.flow.n_steps,
    "batch_size": config.minibatch_size, "cores": sorted(os.sched_getaffinity(0))}))
"""


def simulate(work: Path, n_images: int) -> Path:
    """The data set (once): ``work/data``; returns its folder."""
    from cryosip.datasets import parse_simulate_config, simulate_dataset

    data = work / "data"
    if not (data / "particles.star").is_file():
        simulate_dataset(parse_simulate_config({**SIM_CONFIG, "n_images": n_images}), data,
                         force=True, progress=False)
    return data


def run_config(data: Path, batch_size: int, steps: int):
    """The flow's settings (module docstring), scale from the simulation."""
    import numpy as np

    from cryosip.pipeline.config import ReconstructConfig

    noise_std = float(np.load(data / "truth.npz")["noise_std"])
    return ReconstructConfig.model_validate({
        "data": {"particles": str(data / "particles.star"), "registration": "none",
                 "noise_std": noise_std, "contrast": 1.0, "offset": 0.0},
        "model": SIM_CONFIG["model"], "seed": 0, "uncertainty": {"bootstrap": 0},
        "loop": {"steps": steps, "batch_size": batch_size, "history_every": 10,
                 "progress": False}})


def one_run(work: Path, name: str, config, processes: int) -> dict:
    """Run ``config`` on ``processes`` pinned processes; process 0's timings."""
    from cryosip.distributed import launch_local

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "config.json").write_text(config.model_dump_json())
    command = [sys.executable, "-c", WORKER, str(out / "config.json"), str(out)]
    t0 = time.perf_counter()
    if processes == 1:
        code = subprocess.run(command, check=False).returncode
    else:
        code = launch_local(command, processes).returncode
    if code:
        raise SystemExit(f"{name}: a process exited with code {code}")
    timings = json.loads((out / "timings0.json").read_text())
    timings["wall_s"] = time.perf_counter() - t0
    timings["images_per_s"] = timings["batch_size"] / timings["per_step_s"]
    timings["cpu_s_per_step_each"] = [
        json.loads((out / f"timings{p}.json").read_text())["cpu_s_per_step"]
        for p in range(processes)]
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--n-images", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=128, help="images per process "
                        "per step")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the data and runs (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < args.processes:
        parser.error(f"{args.processes} processes need as many cores; this process may use "
                     f"{len(os.sched_getaffinity(0))}")
    work = args.work or Path(tempfile.mkdtemp(prefix="cryosip-processes-"))
    data = simulate(work, args.n_images)
    rows = []
    for repeat in range(args.repeats):
        load_before = os.getloadavg()[0]
        single = one_run(work, "single", run_config(data, args.batch_size, args.steps), 1)
        multi = one_run(work, "multi", run_config(data, args.processes * args.batch_size,
                                                  args.steps), args.processes)
        ratio = multi["images_per_s"] / single["images_per_s"]
        cpu_ratio = max(multi["cpu_s_per_step_each"]) / single["cpu_s_per_step"]
        rows.append({"repeat": repeat, "single": single, "multi": multi, "ratio": ratio,
                     "cpu_per_step_ratio": cpu_ratio,
                     "load_average_before": load_before,
                     "load_average_after": os.getloadavg()[0]})
        load_after = rows[-1]["load_average_after"]
        print(f"repeat {repeat}: 1 process {single['images_per_s']:.1f} images/s, "
              f"{args.processes} processes {multi['images_per_s']:.1f} images/s, ratio "
              f"{ratio:.2f}; CPU s per step and process {single['cpu_s_per_step']:.3f} vs "
              f"{max(multi['cpu_s_per_step_each']):.3f} (load average {load_before:.1f} -> "
              f"{load_after:.1f})", flush=True)
    ratios = [r["ratio"] for r in rows]
    record = {
        "command": "python benchmarks/scaling_processes.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "data": {**SIM_CONFIG, "n_images": args.n_images}, "rows": rows,
        "ratios": ratios, "median_ratio": sorted(ratios)[len(ratios) // 2],
        "target": 0.85 * args.processes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"ratios {[round(r, 2) for r in ratios]} (target >= {0.85 * args.processes:.2f}); "
          f"wrote {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
