#!/bin/bash
# End to end, Fourier band vs pixels (issue 11): `cryosip reconstruct` on one data set with
# data.likelihood_space fourier and pixels, interleaved, then `cryosip evaluate` against its
# truth; prints wall time and W1 per run.
#
#   bash benchmarks/band_end_to_end.sh RUN_CONFIG.yaml OUT_DIR [REPEATS]
#
# RUN_CONFIG.yaml is a run's config (e.g. demo-run/run/config.yaml from `cryosip demo`); its
# data.particles folder must hold truth.npz. Bootstrap refits are turned off and progress bars
# hidden; everything else is the config's.
CONFIG=${1:?usage: band_end_to_end.sh RUN_CONFIG.yaml OUT_DIR [REPEATS]}
OUT=${2:?usage: band_end_to_end.sh RUN_CONFIG.yaml OUT_DIR [REPEATS]}
REPS=${3:-2}
CRYOSIP=${CRYOSIP:-.venv/bin/cryosip}
DATA=$(dirname "$(sed -n 's/^  particles: //p' "$CONFIG")")
mkdir -p "$OUT"
for rep in $(seq 1 "$REPS"); do
  for space in fourier pixels; do
    run=$OUT/$space-$rep
    rm -rf "$run"
    sed -e "s#likelihood_space: .*#likelihood_space: $space#" -e "s#bootstrap: .*#bootstrap: 0#" \
        -e "s#progress: true#progress: false#" "$CONFIG" > "$OUT/$space.yaml"
    t0=$(date +%s.%N)
    "$CRYOSIP" reconstruct --config "$OUT/$space.yaml" --out "$run" > "$run.log" 2>&1
    t1=$(date +%s.%N)
    "$CRYOSIP" evaluate --run "$run" --truth "$DATA/truth.npz" > "$run.eval" 2>&1
    w1=$(python3 -c "import json; print(json.load(open('$run/evaluation.json'))['w1'])")
    echo "$space repeat $rep: wall $(python3 -c "print(round($t1 - $t0, 1))") s, W1 $w1"
  done
done
