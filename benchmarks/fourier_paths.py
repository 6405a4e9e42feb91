"""The Fourier band's two projections against the real-space path, at the flow's defaults.

``log_likelihood_grid`` of 32 particles against 128 images (known poses), forward and
forward + gradient in ``x``, for

* ``real``: :class:`cryosip.forward.CryoEMOperator` (window projection, CTF by an FFT round
  trip per pair, pixel likelihood);
* ``window``: :class:`cryosip.forward.fourier.FourierOperator`, ``projection="window"``
  (the same window projection, DFT onto the band by constant matrices, no FFT);
* ``analytic``: ``projection="analytic"`` (the closed form: a phase factor per frequency,
  atom and axis).

Model ``adk-path`` residue beads, flow box 32 at 4 Å (``--box``, ``--pixel``,
``--model-coarse none`` for all atoms). The three are timed in interleaved rounds; the
minimum of ``--repeats`` per round is kept and the ratios are per round.

Run: ``.venv/bin/python benchmarks/fourier_paths.py [--rounds 3] [--repeats 3]``; writes
``benchmarks/results/fourier_paths.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cryosip.cli.main import configure_process

configure_process()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cryosip.forward import CryoEMOperator, ImageConfig, NuisancePrior, Optics  # noqa: E402
from cryosip.forward.fourier import FourierOperator  # noqa: E402
from cryosip.structures.factory import load_model  # noqa: E402


def _best(fn, arg, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--pixel", type=float, default=4.0)
    p.add_argument("--model-coarse", choices=["residue", "none"], default="residue")
    p.add_argument("--particles", type=int, default=32)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/fourier_paths.json")
    args = p.parse_args(argv)

    spec = {"name": "adk-path"}
    if args.model_coarse == "residue":
        spec["coarse"] = "residue"
    model = load_model(spec)
    prior = NuisancePrior()
    w = prior.sample(jax.random.key(1), args.images)
    op = CryoEMOperator(model, ImageConfig(args.box, args.pixel), Optics(), prior, 0.5)
    ys = op.clean_paired(jax.random.uniform(jax.random.key(3), (args.images, 1)), w)
    ys = ys + 0.5 * jax.random.normal(jax.random.key(2), ys.shape)
    xs = jnp.linspace(0.01, 0.99, args.particles)[:, None]
    ops = {"real": (op, ys)}
    for projection in ("window", "analytic"):
        fop = FourierOperator.from_operator(op, projection=projection)
        ops[projection] = (fop, jnp.asarray(fop.band.prepare(np.asarray(ys), 0.5)))
    fns = {}
    for name, (o, y) in ops.items():
        value = jax.jit(lambda x, o=o, y=y: o.log_likelihood_grid(y, x, w).sum())
        fns[name] = {"fwd": value, "fwd+grad": jax.jit(jax.value_and_grad(
            lambda x, o=o, y=y: o.log_likelihood_grid(y, x, w).sum()))}
        for fn in fns[name].values():
            jax.block_until_ready(fn(xs))  # compile
    times = {name: {kind: [] for kind in kinds} for name, kinds in fns.items()}
    for _ in range(args.rounds):
        for kind in ("fwd", "fwd+grad"):
            for name in fns:
                times[name][kind].append(_best(fns[name][kind], xs, args.repeats))
    ll = {name: np.asarray(jax.jit(lambda x, o=o, y=y: o.log_likelihood_grid(y, x, w))(xs))
          for name, (o, y) in ops.items()}
    result = {
        "setup": {**vars(args), "window": op.window_pixels, "n_atoms":
                  int(model.structure_at(xs[0]).positions_angstrom.shape[0])},
        "seconds": times,
        "ratio_real_over": {name: {kind: [r / t for r, t in zip(times["real"][kind],
                                                                 times[name][kind],
                                                                 strict=True)]
                                   for kind in ("fwd", "fwd+grad")} for name in fns},
        "max_rel_ll_difference_to_real": {name: float(np.max(np.abs(ll[name] - ll["real"])
                                                             / np.abs(ll["real"])))
                                          for name in fns},
    }
    print(f"box {args.box} at {args.pixel} Å, {args.particles} x {args.images} pairs, "
          f"window {op.window_pixels}, {result['setup']['n_atoms']} atoms")
    for name in fns:
        row = [f"{kind} {np.median(times[name][kind]) * 1e3:7.1f} ms "
               f"(real/this {np.median(result['ratio_real_over'][name][kind]):.2f}x)"
               for kind in ("fwd", "fwd+grad")]
        print(f"{name:9s} " + "  ".join(row)
              + f"  max rel ll diff {result['max_rel_ll_difference_to_real'][name]:.1e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
