"""A STAR written by cryosip is read by cryoDRGN's own reader to the same numbers.

Runs only where cryoDRGN (and the torch its commands import) is installed; it is not a
cryosip dependency, so this skips in CI. ``benchmarks/cryodrgn_star_check.py`` is the longer
check (two optics groups, CTF curves) and says how to make a venv that has cryoDRGN.
"""

from __future__ import annotations

import argparse
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from cryosip import conventions
from cryosip.forward import ImageNuisance, Optics
from cryosip.io import write_star

pytest.importorskip("cryodrgn")
parse_pose_star = pytest.importorskip("cryodrgn.commands.parse_pose_star")
parse_ctf_star = pytest.importorskip("cryodrgn.commands.parse_ctf_star")


def _run(module, star, out):
    """A cryoDRGN command as its CLI runs it (``add_args`` then ``main``); its pickle."""
    parser = argparse.ArgumentParser()
    module.add_args(parser)
    module.main(parser.parse_args([str(star), "-o", str(out)]))
    with open(out, "rb") as fh:
        return pickle.load(fh)


def test_cryodrgn_parse_pose_and_ctf_star_agree_with_cryosip(tmp_path):
    rng = np.random.default_rng(7)
    n, box, pixel = 12, 80, 1.37
    optics = Optics(voltage_kv=200.0, cs_mm=1.4, amplitude_contrast=0.07)
    du = rng.uniform(1.2e4, 2.6e4, n)
    a = {
        k: v.astype(np.float32)
        for k, v in dict(
            euler_deg=rng.uniform([-180, 0, -180], [180, 180, 180], (n, 3)),
            shift_angstrom=rng.normal(0, 6, (n, 2)),
            defocus_u_angstrom=du,
            defocus_v_angstrom=du - rng.uniform(0, 2e3, n),
            astigmatism_angle_deg=rng.uniform(-180, 180, n),
            phase_shift_deg=rng.uniform(0, 90, n),
        ).items()
    }
    star = tmp_path / "p.star"
    write_star(
        star,
        ImageNuisance(**{k: jnp.asarray(v) for k, v in a.items()}),
        optics,
        pixel_size_angstrom=pixel,
        box_size=box,
    )

    rot, trans = _run(parse_pose_star, star, tmp_path / "pose.pkl")
    want_rot, want_trans = conventions.relion_to_cryodrgn_pose(
        a["euler_deg"].astype(float), a["shift_angstrom"].astype(float), box, pixel
    )
    np.testing.assert_allclose(rot, want_rot, rtol=0, atol=1e-5)
    np.testing.assert_allclose(trans, want_trans, rtol=0, atol=1e-6)

    ctf = np.asarray(_run(parse_ctf_star, star, tmp_path / "ctf.pkl"), dtype=float)
    want = np.column_stack(
        [np.full(n, box), np.full(n, pixel)]
        + [
            a[k].astype(float)
            for k in ("defocus_u_angstrom", "defocus_v_angstrom", "astigmatism_angle_deg")
        ]
        + [np.full(n, v) for v in (optics.voltage_kv, optics.cs_mm, optics.amplitude_contrast)]
        + [a["phase_shift_deg"].astype(float)]
    )
    np.testing.assert_allclose(ctf, want, rtol=1e-3)
