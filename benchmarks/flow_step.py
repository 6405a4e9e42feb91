"""The flow's time per step at the ``reconstruct`` defaults, real-space vs Fourier band (issue 11).

Defaults of ``cryosip reconstruct`` (``src/cryosip/pipeline/config.py``): known poses, flow
box 32 (a Fourier crop of box 64 at 2 Å: 4 Å pixels), 32 particles, minibatch 128 for KL
and 256 for MMD (Gaussian kernel, ``h^2 = D sigma^2``, noise integrated out), model
``adk-path`` with one bead per residue (214 beads); also the all-atom model (3341 atoms).

A step is ``jax.value_and_grad`` (positions and weights) of
``cryosip.flows.KLObjective(operator)`` or ``MMDObjective(operator, kernel)`` on
``cryosip.operators.Observations(values, nuisance)``, jitted, for

* ``real``: :class:`cryosip.forward.CryoEMOperator` on images (render + pixel likelihood);
* ``fourier``: :class:`cryosip.forward.fourier.FourierOperator` (``from_operator``, window
  projection) on the same images whitened once by ``FourierBand.prepare``.

**Per-phase breakdown of the Fourier step**, jitted pieces at the step's shapes (all
particle x image pairs, chunked over images as the operator does): structures
(``structure_at`` of the 32 particles), projection (erf-CDF tables + product:
``GaussianProjector.project_window``), band DFT (the two products with the constant DFT
matrix, halves and shift phase), CTF + likelihood (whitened CTF, band likelihood or the
conditional MMD, the mixture), the whole forward (the objective alone), and backward =
step - forward.

**Matmul time**: the matrix products the step performs, at the same shapes, timed alone
as plain batched ``jnp.matmul`` in the same run: projection product ``(W+1) x n_atoms x
(W+1)`` forward and its two backward products ``(W+1) x (W+1) x n_atoms``; the DFT's two
forward products ``2(K+1) x W x W`` and ``2(K+1) x W x 2(K+1)`` and the two backward ones
(for the window's cotangent). Each is timed on one chunk of pairs (the operator's
``chunk_size`` images x 32 particles) and multiplied by the number of chunks. The ratio
``step / matmuls`` is the issue's measure (target <= 2).

All cases of one model are interleaved round by round; ``--repeats`` independent rounds,
medians reported, ratios per repeat kept. XLA's YNN fusions are off as in the ``cryosip``
command (``configure_process``).

Run: ``.venv/bin/python benchmarks/flow_step.py [--models residue all-atom] [--repeats 3]``
(``--quick``: residue beads only, one repeat; ``--box B``: the flow box, default 32, the
pixel set so the field stays 128 Å, e.g. ``--box 64`` at 2 Å, ``--box 128`` at 1 Å).
Writes ``benchmarks/results/flow_step.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from cryosip.cli.main import configure_process

configure_process()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cryosip.discrepancies import GaussianKernel, conditional_mmd2, negative_log_likelihood  # noqa: E402
from cryosip.flows import KLObjective, MMDObjective  # noqa: E402
from cryosip.forward import CryoEMOperator, ImageConfig, NuisancePrior, Optics  # noqa: E402
from cryosip.forward.fourier import (  # noqa: E402
    FourierOperator,
    _complex_mul,
    _halves,
    _shift_phase,
    band_log_likelihood,
    window_dft,
)
from cryosip.forward.image_model import rotate_and_shift  # noqa: E402
from cryosip.forward.projector import GaussianProjector  # noqa: E402
from cryosip.operators import Observations  # noqa: E402
from cryosip.structures.factory import load_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "flow_step.json"
BOX, PIXEL, N_PARTICLES = 32, 4.0, 32
FIELD_ANGSTROM = BOX * PIXEL
MINIBATCH = {"kl": 128, "mmd": 256}
MODELS = {"residue": {"name": "adk-path", "coarse": "residue"}, "all-atom": {"name": "adk-path"}}
REFERENCE_N = 1024
PRIOR = NuisancePrior(defocus_range_angstrom=(10000.0, 25000.0), astigmatism_angstrom=1000.0)


def set_box(box: int) -> None:
    """Set the flow box for this process (module globals ``BOX``, ``PIXEL``), keeping the
    128 Å field of the default (box 32 at 4 Å)."""
    global BOX, PIXEL
    BOX, PIXEL = box, FIELD_ANGSTROM / box


def interleaved(calls: dict, rounds: int) -> dict[str, float]:
    """Minimum wall time of each call over ``rounds`` rounds, the calls interleaved."""
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, (fn, args) in calls.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def make_data(op: CryoEMOperator, n: int, snr: float = 0.1):
    """``n`` images of the model at random ``x`` with prior nuisances, noise at ``snr``;
    returns the real-space operator with that noise, and the images with their nuisances."""
    key = jax.random.key(0)
    model = op.model
    xs = jax.random.uniform(key, (n, model.dim), minval=jnp.asarray(model.lower),
                            maxval=jnp.asarray(model.upper))
    w = PRIOR.sample(jax.random.fold_in(key, 1), n)
    clean = jax.jit(jax.vmap(op.clean))(xs, w)
    sigma = float(jnp.std(clean)) / math.sqrt(snr)
    ys = clean + sigma * jax.random.normal(jax.random.fold_in(key, 2), clean.shape)
    op = CryoEMOperator(op.model, op.image_config, op.optics, op.prior, sigma,
                        window_pixels=op.window_pixels)
    return op, ys, w


def objective(kind: str, op):
    if kind == "kl":
        return KLObjective(op)
    h = float(math.sqrt(BOX * BOX) * op.noise_std)  # bandwidth 1: h^2 = D sigma^2
    return MMDObjective(op, GaussianKernel(h), n_draws=max(1, 256 // N_PARTICLES))


def step_fn(obj):
    return jax.jit(jax.value_and_grad(obj, argnums=(0, 1)))


def fourier_phases(fop: FourierOperator, kind: str, xs, weights, batch: Observations):
    """Jitted forward pieces of the Fourier step, each with its arguments (module doc)."""
    model, band, window = fop.model, fop.band, fop.window
    projector = GaussianProjector(window_pixels=window)
    config = fop.image_config
    atoms = jax.vmap(model.structure_at)(xs)
    n_obs = batch.values.shape[0]
    chunk = fop.chunk_size(xs.shape[0], atoms.positions_angstrom.shape[-2])

    def project(atoms, nuisance):
        def one(n):
            w = jax.tree.map(lambda a: a[n], nuisance)

            def crop(a):
                xy = rotate_and_shift(a.positions_angstrom, w)
                return projector.project_window(xy, a.amplitudes, a.widths_angstrom, config)
            return jax.vmap(crop)(atoms)
        return jax.lax.map(one, jnp.arange(n_obs), batch_size=min(chunk, n_obs))

    crops, firsts = jax.jit(project)(atoms, batch.nuisance)  # (n_obs, p, w, w), (n_obs, p, 2)

    def dft(crops, firsts):
        mat = jnp.asarray(window_dft(band, crops.shape[-1]), crops.dtype)
        blocks = jnp.einsum("kr,nprc,lc->npkl", mat, crops, mat)
        m = _halves(blocks, band.half + 1)
        return _complex_mul(m, _shift_phase(band, firsts).astype(m.dtype))

    bands = jax.jit(dft)(crops, firsts)  # (n_obs, p, 2, 2, K+1, K+1)

    def dft_gemm(crops, firsts):
        """The same band DFT as two 2-D products with the constant matrix on the right
        (one large GEMM each, a transpose between), instead of a batched einsum."""
        mat = jnp.asarray(window_dft(band, crops.shape[-1]), crops.dtype)  # (2(K+1), W)
        lead, w = crops.shape[:-2], crops.shape[-1]
        t = jnp.reshape(crops, (-1, w)) @ mat.T  # [.., r, l]
        t = jnp.swapaxes(jnp.reshape(t, (*lead, w, -1)), -1, -2)  # [.., l, r]
        blocks = jnp.swapaxes(jnp.reshape(jnp.reshape(t, (-1, w)) @ mat.T,
                                          (*lead, mat.shape[0], -1)), -1, -2)  # [.., k, l]
        m = _halves(blocks, band.half + 1)
        return _complex_mul(m, _shift_phase(band, firsts).astype(m.dtype))

    same = jnp.max(jnp.abs(jax.jit(dft_gemm)(crops, firsts) - bands)) / jnp.max(jnp.abs(bands))
    if not same < 1e-4:
        raise AssertionError(f"band DFT as 2-D GEMMs differs: {float(same):.2e}")

    def likelihood(bands, weights, ys, nuisance):
        ctf = jax.vmap(fop.whitened_ctf)(nuisance)  # (n_obs, 2, K+1, K+1)
        if kind == "kl":
            ll = jax.vmap(jax.vmap(band_log_likelihood, (0, None, None)))(bands, ys, ctf)
            return negative_log_likelihood(ll, jnp.log(weights))
        sim = jnp.swapaxes(ctf[:, None, :, None] * bands, 0, 1)  # (p, n_obs, ...)
        kernel = GaussianKernel(float(BOX))
        return conditional_mmd2(sim, weights, ys, kernel, 1.0)

    return {
        "structures": (jax.jit(lambda xs: jax.vmap(model.structure_at)(xs)), (xs,)),
        "projection": (jax.jit(project), (atoms, batch.nuisance)),
        "band_dft": (jax.jit(dft), (crops, firsts)),
        "band_dft_as_2d_gemms (alternative, not in the step)": (jax.jit(dft_gemm),
                                                                 (crops, firsts)),
        "ctf_likelihood": (jax.jit(likelihood), (bands, weights, batch.values, batch.nuisance)),
    }, chunk


def matmul_calls(n_atoms: int, window: int, k1: int, n_pairs: int, chunk_pairs: int):
    """Plain batched matmuls of the step's product shapes on one chunk of pairs; the
    multiplier (chunks per step) of each."""
    e, c = window + 1, min(chunk_pairs, n_pairs)
    key = iter(jax.random.split(jax.random.key(7), 16))

    def mm(m, k, n):
        a = jax.random.normal(next(key), (c, m, k))
        b = jax.random.normal(next(key), (c, k, n))
        return jax.jit(jnp.matmul), (a, b)

    shapes = {
        "projection_fwd": (e, n_atoms, e),
        "projection_bwd_u": (e, e, n_atoms),
        "projection_bwd_v": (e, e, n_atoms),
        "dft_fwd_1": (2 * k1, window, window),
        "dft_fwd_2": (2 * k1, window, 2 * k1),
        "dft_bwd_1": (window, 2 * k1, 2 * k1),
        "dft_bwd_2": (window, 2 * k1, window),
    }
    calls = {f"mm_{k}": mm(*s) for k, s in shapes.items()}
    flops = {f"mm_{k}": 2.0 * math.prod(s) * n_pairs for k, s in shapes.items()}
    # the machine's matmul rate on one large square product (a reference, not a step shape)
    big = jax.random.normal(next(key), (2, REFERENCE_N, REFERENCE_N))
    reference = (jax.jit(jnp.matmul), (big[0], big[1]))
    return calls, n_pairs / c, flops, reference


def bench_model(name: str, spec: dict, kinds, rounds: int, repeats: int) -> list[dict]:
    model = load_model(spec)
    base = CryoEMOperator(model, ImageConfig(BOX, PIXEL), Optics(), PRIOR, 1.0)
    op, images, nuisance = make_data(base, max(MINIBATCH[k] for k in kinds))
    fop = FourierOperator.from_operator(op)
    n_atoms = int(model.structure_at(jnp.asarray(model.lower)).positions_angstrom.shape[0])
    lower, upper = np.asarray(model.lower), np.asarray(model.upper)
    u = (np.arange(N_PARTICLES)[:, None] + 0.5) / N_PARTICLES
    xs = jnp.asarray(lower + u * (upper - lower), jnp.float32)
    weights = jnp.full(N_PARTICLES, 1.0 / N_PARTICLES)
    key = jax.random.key(3)
    calls, info = {}, {}
    for kind in kinds:
        b = MINIBATCH[kind]
        w = jax.tree.map(lambda a, b=b: a[:b], nuisance)
        real_batch = Observations(images[:b], w)
        band_batch = Observations(jnp.asarray(fop.band.prepare(images[:b], op.noise_std)), w)
        for label, o, batch in (("real", op, real_batch), ("fourier", fop, band_batch)):
            obj = objective(kind, o)
            calls[(kind, label, "step")] = (step_fn(obj), (xs, weights, batch, key))
            calls[(kind, label, "forward")] = (jax.jit(lambda *a, obj=obj: obj(*a)),
                                                  (xs, weights, batch, key))
        phases, chunk = fourier_phases(fop, kind, xs, weights, band_batch)
        calls.update({(kind, "fourier", k): v for k, v in phases.items()})
        mms, mult, flops, reference = matmul_calls(n_atoms, fop.window, fop.band.half + 1,
                                        N_PARTICLES * b, chunk * N_PARTICLES)
        calls.update({(kind, "matmul", k): v for k, v in mms.items()})
        calls[(kind, "reference", "matmul")] = reference
        info[kind] = {"minibatch": b, "chunk_images": chunk, "matmul_multiplier": mult,
                      "matmul_gflop": {k: f / 1e9 for k, f in flops.items()}}
    # check: the Fourier step's loss and gradient against the real-space step's
    for kind in kinds:
        (lr, (gr, _)) = calls[(kind, "real", "step")][0](*calls[(kind, "real", "step")][1])
        (lf, (gf, _)) = calls[(kind, "fourier", "step")][0](*calls[(kind, "fourier", "step")][1])
        info[kind]["loss_real"], info[kind]["loss_fourier"] = float(lr), float(lf)
        info[kind]["grad_rel_diff"] = float(jnp.linalg.norm(gf - gr) / jnp.linalg.norm(gr))
    runs = [interleaved(calls, rounds) for _ in range(repeats)]
    med = {k: float(np.median([r[k] for r in runs])) for k in calls}
    rows = []
    for kind in kinds:
        mult = info[kind]["matmul_multiplier"]
        mm_keys = [k for k in calls if k[0] == kind and k[1] == "matmul"]

        def mm_time(r, mm_keys=mm_keys, mult=mult):
            return mult * sum(r[k] for k in mm_keys)

        row = {"model": name, "n_atoms": n_atoms, "objective": kind, "box": BOX,
               "pixel_angstrom": PIXEL, "window": fop.window, "n_particles": N_PARTICLES,
               **info[kind], "repeats": repeats, "rounds": rounds}
        for label in ("real", "fourier"):
            row[f"{label}_step_s"] = med[(kind, label, "step")]
            row[f"{label}_forward_s"] = med[(kind, label, "forward")]
        row["fourier_phases_s"] = {
            k: med[(kind, "fourier", k)]
            for k in ("structures", "projection", "band_dft", "ctf_likelihood")}
        alt = "band_dft_as_2d_gemms (alternative, not in the step)"
        row["band_dft_as_2d_gemms_s"] = med[(kind, "fourier", alt)]
        row["fourier_phases_s"]["backward (step - forward)"] = (
            row["fourier_step_s"] - row["fourier_forward_s"])
        row["matmul_s"] = {k[2]: mult * med[k] for k in mm_keys}
        row["matmul_total_s"] = float(np.median([mm_time(r) for r in runs]))
        row["step_over_matmul"] = row["fourier_step_s"] / row["matmul_total_s"]
        row["step_over_matmul_per_repeat"] = [r[(kind, "fourier", "step")] / mm_time(r)
                                              for r in runs]
        rate = 2.0 * REFERENCE_N**3 / med[(kind, "reference", "matmul")]
        row["reference_matmul_gflops"] = rate / 1e9
        row["matmul_flop_time_at_reference_s"] = 1e9 * sum(row["matmul_gflop"].values()) / rate
        row["step_over_matmul_flop_time"] = (row["fourier_step_s"]
                                             / row["matmul_flop_time_at_reference_s"])
        row["real_over_fourier_per_repeat"] = [
            r[(kind, "real", "step")] / r[(kind, "fourier", "step")] for r in runs]
        row["real_over_fourier"] = row["real_step_s"] / row["fourier_step_s"]
        rows.append(row)
        print_row(row)
    return rows


def print_row(row: dict) -> None:
    ms = lambda t: f"{1e3 * t:8.2f} ms"
    print(f"{row['model']} ({row['n_atoms']} atoms), {row['objective'].upper()}, "
          f"{row['n_particles']} particles x {row['minibatch']} images, box {row['box']} "
          f"(W={row['window']}, {row['chunk_images']} images per chunk)")
    print(f"    step: real space {ms(row['real_step_s'])}, Fourier {ms(row['fourier_step_s'])}"
          f"  (real / Fourier {row['real_over_fourier']:.2f}x, per repeat "
          + " ".join(f"{r:.2f}" for r in row["real_over_fourier_per_repeat"]) + ")")
    print(f"    loss real {row['loss_real']:.6g} Fourier {row['loss_fourier']:.6g}; "
          f"gradient rel. diff {row['grad_rel_diff']:.1e}")
    print(f"    Fourier forward {ms(row['fourier_forward_s'])}; phases:")
    for k, t in row["fourier_phases_s"].items():
        print(f"        {k:>28}: {ms(t)}")
    print(f"        (the band DFT as two 2-D GEMMs instead: {ms(row['band_dft_as_2d_gemms_s'])})")
    print("    matmuls alone (same shapes):")
    for k, t in row["matmul_s"].items():
        gf = row["matmul_gflop"][k]
        print(f"        {k:>28}: {ms(t)}  ({gf / t:6.1f} GFLOP/s)")
    print(f"    matmul total {ms(row['matmul_total_s'])}; step / matmul "
          f"{row['step_over_matmul']:.2f} (per repeat "
          + " ".join(f"{r:.2f}" for r in row["step_over_matmul_per_repeat"]) + ")")
    print(f"    the same FLOPs ({sum(row['matmul_gflop'].values()):.2f} GFLOP) at the rate of a "
          f"{REFERENCE_N}^3 matmul ({row['reference_matmul_gflops']:.1f} GFLOP/s): "
          f"{ms(row['matmul_flop_time_at_reference_s'])}; step / that "
          f"{row['step_over_matmul_flop_time']:.2f}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--objectives", nargs="+", choices=["kl", "mmd"], default=["kl", "mmd"])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="independent repeats (medians)")
    parser.add_argument("--quick", action="store_true", help="residue beads, one repeat")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--merge", action="store_true", help="keep other cases' rows of --out")
    parser.add_argument("--box", type=int, default=BOX,
                        help="flow box in pixels (default 32); pixel = 128 Å / box")
    args = parser.parse_args(argv)
    if args.box < 8 or args.box % 2:
        parser.error(f"--box: expected an even number of pixels >= 8, found {args.box}")
    set_box(args.box)
    models = ["residue"] if args.quick else args.models
    repeats = 1 if args.quick else args.repeats
    rows = []
    for name in models:
        rows += bench_model(name, MODELS[name], args.objectives, args.rounds, repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv[1:], "jax": jax.__version__, "cpu_count": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    old = json.loads(out.read_text())["rows"] if args.merge and out.exists() else []
    done = {(r["model"], r["objective"], r.get("box", 32)) for r in rows}
    rows = [r for r in old if (r["model"], r["objective"], r.get("box", 32)) not in done] + rows
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
