"""A sparse projection (per-atom footprints, one scatter-add) vs the dense product, in renders.

``docs/performance.md`` argues that 5x cryojax for all-atom AdK would need a projection
that touches only each atom's footprint instead of the dense ``(W+1) x n_atoms x (W+1)``
product. This script times that alternative where it matters: whole renders
(:func:`cryosip.forward.render_images`: projection, CTF, FFTs; chunked batches), forward
and forward + gradient with respect to the atom positions, with the projector's
``footprint_pixels=k`` (each atom on its own ``k x k`` footprint covering +-4 s,
scatter-added into the window) against the default dense product, interleaved in the same
run. AdK all-atom (s = 1 Å) and residue beads (s = 2.5 Å), box 64 (2 Å) and 128 (1 Å),
the prior's random poses and per-image CTFs (as ``forward_speed.py``).

Run: ``.venv/bin/python benchmarks/sparse_projection_trials.py [--batch 16 128]``; writes
``benchmarks/results/sparse_projection_trials.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cryosip.forward import (  # noqa: E402
    ImageConfig,
    Optics,
    footprint_pixels_for,
    render_images,
    window_pixels_for,
)
from cryosip.structures.base import Atoms  # noqa: E402
from forward_speed import interleaved_times, load_adk, nuisances  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sparse_projection_trials.json"


def trial(name: str, atoms: Atoms, box: int, pixel: float, batch: int, rounds: int) -> dict:
    cfg = ImageConfig(box, pixel)
    window, k = window_pixels_for(atoms, cfg), footprint_pixels_for(atoms, cfg)
    w, pos = nuisances(batch), atoms.positions_angstrom
    target = jax.random.normal(jax.random.key(3), (batch, box, box))
    calls, images = {}, {}
    for label, foot in (("dense", None), ("footprint", k)):

        def render(q, w, foot=foot):
            a = Atoms(q, atoms.amplitudes, atoms.widths_angstrom)
            return render_images(a, w, cfg, Optics(), window, foot)

        loss = lambda q, w, f=render: jnp.sum(f(q, w) * target)
        calls[(label, "fwd")] = (jax.jit(render), (pos, w))
        calls[(label, "grad")] = (jax.jit(jax.value_and_grad(loss)), (pos, w))
        images[label] = np.asarray(calls[(label, "fwd")][0](pos, w))
    times = interleaved_times(calls, rounds)
    us = {key: 1e6 * t / batch for key, t in times.items()}
    ref = images["dense"]
    return {
        "structure": name,
        "box": box,
        "batch": batch,
        "window": window,
        "footprint": k,
        "us_per_img": {f"{a}_{b}": v for (a, b), v in us.items()},
        "footprint_over_dense_fwd": us[("footprint", "fwd")] / us[("dense", "fwd")],
        "footprint_over_dense_grad": us[("footprint", "grad")] / us[("dense", "grad")],
        "rel_l2_footprint_vs_dense": float(
            np.linalg.norm(images["footprint"] - ref) / np.linalg.norm(ref)
        ),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    for (name, atoms), (box, pixel), batch in itertools.product(
        load_adk().items(), ((64, 2.0), (128, 1.0)), args.batch
    ):
        row = trial(name, atoms, box, pixel, batch, args.rounds)
        rows.append(row)
        t = row["us_per_img"]
        print(
            f"{name:>18} box {box:>3} batch {batch:>3} (W={row['window']}, k={row['footprint']}):"
            f" dense {t['dense_fwd']:7.1f} / {t['dense_grad']:7.1f} us/img,"
            f" footprint {t['footprint_fwd']:7.1f} / {t['footprint_grad']:7.1f} us/img"
            f" (fwd / fwd+grad) -> {row['footprint_over_dense_fwd']:.2f}x,"
            f" {row['footprint_over_dense_grad']:.2f}x the dense time;"
            f" relL2 {row['rel_l2_footprint_vs_dense']:.1e}",
            flush=True,
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"batches": args.batch, "rounds": args.rounds, "jax": jax.__version__}
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
