#!/usr/bin/env bash
# GPU check (issue 14, item 3): one short script (< 8 minutes on one GPU), run from the repo
# root. It installs nothing. Install first, in a fresh environment on the GPU machine:
#
#     pip install -e ".[cuda,test]"        # the cuda extra is jax[cuda12]==0.10.2
#
# then:
#
#     bash benchmarks/gpu_check.sh [OUT] [--quick]
#
# OUT (default gpu-check-out) receives everything, and OUT/summary.json sums it up:
#   (b) jax.devices() and the default backend                       -> devices.json
#   (c) forward speed: log-likelihood + gradient, cryosip vs cryojax on the same device
#       (benchmarks/forward_speed.py --likelihood --boxes 64 --batch 128: AdK all atoms and
#       residue beads, every cryojax projection method)             -> forward_speed.json
#   (d) the flow's time per step (KL, 32 particles x 128 images, residue beads) at box 64
#       and 128 (benchmarks/flow_step.py --box)                     -> flow_step_box*.json
#   (e) agreement of a run on the default platform with a JAX_PLATFORMS=cpu run: a tiny
#       simulated data set (hinge, box 32), `cryosip reconstruct` for a few steps, same seed;
#       also on the default platform with JAX_DEFAULT_MATMUL_PRECISION=highest (a GPU's f32
#       matmuls default to TF32)                                    -> compare_*.json
# Each step's log is OUT/<step>.log. --quick (for a CPU smoke test, e.g.
# `JAX_PLATFORMS=cpu bash benchmarks/gpu_check.sh /tmp/gpucheck --quick`, ~3 minutes on 2
# busy cores): beads only, batch 16, no dense cryojax, flow step at box 64 only, 128 images,
# 5 steps of 8 particles, no third run. PYTHON picks the interpreter (default: .venv/bin/python
# if present, else python).
set -euo pipefail

OUT=gpu-check-out
QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -*) echo "gpu_check.sh: unknown option $arg (expected [OUT] [--quick])" >&2; exit 2 ;;
        *) OUT="$arg" ;;
    esac
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
if [ ! -f benchmarks/flow_step.py ]; then
    echo "gpu_check.sh: run from the repository root" >&2; exit 2
fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
    echo "gpu_check.sh: $OUT is not empty (expected a new or empty folder)" >&2; exit 2
fi
mkdir -p "$OUT"
CRYOSIP=("$PYTHON" -m cryosip.cli.main)
T0=$(date +%s)
step() {  # step NAME CMD...: run CMD, log to OUT/NAME.log (and the screen), time it
    local name=$1; shift
    local t=$(date +%s)
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log"
    echo "$name $(( $(date +%s) - t ))" >> "$OUT/times.txt"
}

if [ "$QUICK" = 1 ]; then
    FWD=(--quick --structures beads --batch 16 --rounds 1)
    BOXES=(64); N_IMAGES=128; STEPS=5; PARTICLES=8
    RUNS=(cpu default)
else
    FWD=(--boxes 64 --batch 128 --rounds 3)
    BOXES=(64 128); N_IMAGES=400; STEPS=20; PARTICLES=32
    RUNS=(cpu default highest)
fi

# (b) the devices
# (configure_process first, as the cryosip command: its XLA:CPU flag must be accepted here)
step devices "$PYTHON" -c "
import json, os, sys
from cryosip.cli.main import configure_process
configure_process()
import jax
d = jax.devices()
print('XLA_FLAGS', repr(os.environ['XLA_FLAGS']))
print('jax', jax.__version__, 'backend', jax.default_backend())
print(d)
json.dump({'jax': jax.__version__, 'xla_flags': os.environ['XLA_FLAGS'], 'backend': jax.default_backend(),
           'devices': [str(x) for x in d], 'platforms': sorted({x.platform for x in d})},
          open(sys.argv[1], 'w'), indent=2)" "$OUT/devices.json"

# (c) forward speed vs cryojax, same device
step forward_speed "$PYTHON" benchmarks/forward_speed.py --likelihood "${FWD[@]}" \
    --out "$OUT/forward_speed.json"

# (d) the flow's time per step
for box in "${BOXES[@]}"; do
    step "flow_step_box$box" "$PYTHON" benchmarks/flow_step.py --quick --models residue \
        --objectives kl --rounds 2 --box "$box" --out "$OUT/flow_step_box$box.json"
done

# (e) the same tiny reconstruction on the CPU and on the default platform
cat > "$OUT/simulate.yaml" <<EOF
model: hinge
truth:
  - {kind: gaussian, weight: 0.5, mean: [0.25], std: [0.1]}
  - {kind: beta, weight: 0.5, a: [8.0], b: [2.0]}
n_images: $N_IMAGES
box_size: 32
pixel_size_angstrom: 2.0
snr: 1.0
defocus_angstrom: [10000, 20000]
shift_std_angstrom: 1.0
seed: 0
render_batch_size: 64
EOF
step simulate env JAX_PLATFORMS=cpu "${CRYOSIP[@]}" simulate --config "$OUT/simulate.yaml" \
    --out "$OUT/data" --no-progress
for run in "${RUNS[@]}"; do
    case "$run" in
        cpu) ENV=(JAX_PLATFORMS=cpu) ;;
        default) ENV=() ;;
        highest) ENV=(JAX_DEFAULT_MATMUL_PRECISION=highest) ;;
    esac
    step "reconstruct_$run" env "${ENV[@]}" "${CRYOSIP[@]}" reconstruct \
        --particles "$OUT/data/particles.star" --model hinge --out "$OUT/run_$run" \
        --steps "$STEPS" --n-particles "$PARTICLES" --seed 0 --no-progress
done
for run in "${RUNS[@]}"; do
    [ "$run" = cpu ] && continue
    step "compare_$run" "$PYTHON" benchmarks/compare_runs.py "$OUT/run_$run" "$OUT/run_cpu" \
        --json "$OUT/compare_$run.json"
done

# the summary
"$PYTHON" - "$OUT" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, sys
from pathlib import Path

out, total = Path(sys.argv[1]), int(sys.argv[2])
load = lambda p: json.loads((out / p).read_text())
summary = {"devices": load("devices.json"), "total_s": total,
           "step_s": {k: int(v) for k, v in (line.split() for line in
                                            (out / "times.txt").read_text().splitlines())}}
summary["forward_speed"] = [
    {"structure": r["structure"], "box": r["box"], "batch": r["batch"],
     "cryosip_img_s": r["cryosip-fourier"]["img_s"],
     "cryojax_best": r.get("cryojax_best"),
     "cryojax_img_s": r[r["cryojax_best"]]["img_s"] if r.get("cryojax_best") else None,
     "ratio_vs_cryojax": r.get("ratio"), "ratio_vs_cryojax_any": r["ratio_any"]}
    for r in load("forward_speed.json")["rows"]]
summary["flow_step"] = [
    {"box": r["box"], "pixel_angstrom": r["pixel_angstrom"], "objective": r["objective"],
     "model": r["model"], "n_particles": r["n_particles"], "minibatch": r["minibatch"],
     "fourier_step_s": r["fourier_step_s"], "real_step_s": r["real_step_s"]}
    for p in sorted(out.glob("flow_step_box*.json")) for r in load(p.name)["rows"]]
summary["agreement_vs_cpu"] = {
    p.stem.removeprefix("compare_"): {k: v for k, v in load(p.name).items()
                                      if k not in ("run_a", "run_b")}
    for p in sorted(out.glob("compare_*.json"))}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
print(f"wrote {out / 'summary.json'} ({total} s)")
EOF
