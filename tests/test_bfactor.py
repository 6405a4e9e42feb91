"""The CTF B-factor is read back: rlnCtfBfactor (STAR) and ctf/bfactor (cryoSPARC).

RELION keeps the B-factor per particle, cryosip per optics group: a group whose particles
share one value takes it, a group with several is split (io/star.py docstring). The STAR
fixtures are text written here as RELION 3.1 / 3.0 write it (not by cryosip); the expected
groups are worked out in the test from the rows written.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from cryosip.errors import InputError
from cryosip.forward import ImageNuisance, Optics
from cryosip.io import cs_to_star, read_cs, read_star, write_star
from cryosparc_files import cs_rows, write_cs

PARTICLE_COLUMNS = ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                    "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV",
                    "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor",
                    "rlnOpticsGroup")


def _relion31(path, bfactors, groups, *, with_b=True):
    """A RELION 3.1 particle STAR: optics groups 1 (300 kV) and 2 (200 kV)."""
    optics = ("\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n"
              "_rlnOpticsGroup #2\n_rlnVoltage #3\n_rlnSphericalAberration #4\n"
              "_rlnAmplitudeContrast #5\n_rlnImagePixelSize #6\n_rlnImageSize #7\n"
              "_rlnImageDimensionality #8\n"
              "opticsGroup1 1 300.000000 2.700000 0.100000 1.500000 64 2\n"
              "opticsGroup2 2 200.000000 1.400000 0.070000 1.500000 64 2\n\n")
    cols = [c for c in PARTICLE_COLUMNS if with_b or c != "rlnCtfBfactor"]
    lines = ["\n# version 30001\n\ndata_particles\n\nloop_"]
    lines += [f"_{c} #{k + 1}" for k, c in enumerate(cols)]
    for i, (b, g) in enumerate(zip(bfactors, groups, strict=True)):
        row = [f"{i + 1:06d}@Extract/job007/x.mrcs", "10.0", "20.0", "30.0", "0.0", "0.0",
               "15000.0", "14500.0", "30.0", f"{b:.6f}", "1.000000", str(g)]
        lines.append(" ".join(v for v, c in zip(row, PARTICLE_COLUMNS, strict=True)
                              if c in cols))
    path.write_text(optics + "\n".join(lines) + "\n\n")
    return path


def _per_particle_b(table) -> np.ndarray:
    """Each particle's B-factor through its group (float64, as read)."""
    groups = np.array([o.b_factor_angstrom2 for o in table.optics], dtype=float)
    return groups[np.asarray(table.optics_index)]


def test_write_star_then_read_star_keeps_the_b_factor(tmp_path):
    w = ImageNuisance.create(jnp.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]),
                             defocus_u_angstrom=15000.0)
    optics = Optics(voltage_kv=200.0, cs_mm=1.4, amplitude_contrast=0.07,
                    b_factor_angstrom2=37.25)
    write_star(tmp_path / "p.star", w, optics, pixel_size_angstrom=2.0, box_size=64)
    table = read_star(tmp_path / "p.star")
    assert len(table.optics) == 1
    got = table.optics[0]
    np.testing.assert_allclose(
        [got.voltage_kv, got.cs_mm, got.amplitude_contrast, got.b_factor_angstrom2],
        [200.0, 1.4, 0.07, 37.25], rtol=0, atol=0)


def test_relion31_b_factor_constant_per_group_goes_to_the_group(tmp_path):
    b = [0.0, 25.0, 0.0, 25.0]
    table = read_star(_relion31(tmp_path / "p.star", b, [1, 2, 1, 2]))
    assert table.optics_group_names == ("1", "2")
    np.testing.assert_allclose([o.b_factor_angstrom2 for o in table.optics], [0.0, 25.0],
                               atol=0)
    np.testing.assert_allclose(_per_particle_b(table), b, atol=0)


def test_relion31_group_with_several_b_factors_is_split_and_keeps_its_optics(tmp_path):
    b = [5.0, 40.0, 5.0, -12.5, 40.0, 0.0]
    groups = [1, 2, 1, 2, 2, 1]
    table = read_star(_relion31(tmp_path / "p.star", b, groups))
    # group 1: B 0 and 5 -> 1.1, 1.2; group 2: B -12.5 and 40 -> 2.1, 2.2 (increasing B)
    assert table.optics_group_names == ("1.1", "1.2", "2.1", "2.2")
    np.testing.assert_allclose([o.b_factor_angstrom2 for o in table.optics],
                               [0.0, 5.0, -12.5, 40.0], atol=0)
    np.testing.assert_allclose([o.voltage_kv for o in table.optics], [300, 300, 200, 200],
                               atol=0)
    np.testing.assert_allclose([o.cs_mm for o in table.optics], [2.7, 2.7, 1.4, 1.4], atol=0)
    np.testing.assert_array_equal(table.optics_index, [1, 3, 1, 2, 3, 0])
    np.testing.assert_allclose(_per_particle_b(table), b, atol=0)


def test_no_b_factor_column_means_zero(tmp_path):
    table = read_star(_relion31(tmp_path / "p.star", [0.0, 0.0], [2, 1], with_b=False))
    assert table.optics_group_names == ("1", "2")
    np.testing.assert_allclose([o.b_factor_angstrom2 for o in table.optics], [0.0, 0.0],
                               atol=0)


def test_relion30_groups_are_the_distinct_optics_and_b_factor_rows(tmp_path):
    head = ("\n# RELION; version 3.0\n\ndata_\n\nloop_\n_rlnImageName #1\n_rlnVoltage #2\n"
            "_rlnSphericalAberration #3\n_rlnAmplitudeContrast #4\n_rlnDefocusU #5\n"
            "_rlnDefocusV #6\n_rlnDefocusAngle #7\n_rlnCtfBfactor #8\n_rlnAngleRot #9\n"
            "_rlnAngleTilt #10\n_rlnAnglePsi #11\n_rlnDetectorPixelSize #12\n"
            "_rlnMagnification #13\n")
    rows = [(300.0, 10.0), (300.0, 0.0), (300.0, 10.0), (200.0, 10.0)]
    body = "".join(f"{i + 1:06d}@x.mrcs {v:.6f} 2.700000 0.100000 15000.0 15000.0 0.0 "
                   f"{b:.6f} 1.0 2.0 3.0 5.000000 50000.000000\n"
                   for i, (v, b) in enumerate(rows))
    (tmp_path / "p.star").write_text(head + body)
    table = read_star(tmp_path / "p.star")
    assert len(table.optics) == 3
    np.testing.assert_allclose(_per_particle_b(table), [b for _, b in rows], atol=0)
    voltage = np.array([o.voltage_kv for o in table.optics])[np.asarray(table.optics_index)]
    np.testing.assert_allclose(voltage, [v for v, _ in rows], atol=0)


def test_a_b_factor_that_is_not_a_number_is_an_input_error(tmp_path):
    path = _relion31(tmp_path / "p.star", [0.0, 1.0], [1, 1])
    path.write_text(path.read_text().replace("1.000000 1.000000 1\n\n", "nan 1.000000 1\n\n"))
    with pytest.raises(InputError, match="rlnCtfBfactor"):
        read_star(path)


def test_cryosparc_bfactor_is_read_and_survives_conversion_to_star(tmp_path):
    rows = cs_rows(6, np.random.default_rng(3))
    with_b = np.zeros(len(rows), dtype=rows.dtype.descr + [("ctf/bfactor", "<f4")])
    for name in rows.dtype.names:
        with_b[name] = rows[name]
    # exposure groups alternate 1, 2 (cryosparc_files); group 1 shares B = 12.3,
    # group 2 carries 7.5 and 20 -> exp_group2.1, exp_group2.2
    with_b["ctf/bfactor"] = [12.3, 7.5, 12.3, 20.0, 12.3, 7.5]
    cs = write_cs(tmp_path / "p.cs", with_b)
    table = read_cs(cs)
    assert table.optics_group_names == ("exp_group1", "exp_group2.1", "exp_group2.2")
    expected = [12.3, 7.5, 12.3, 20.0, 12.3, 7.5]  # float32 12.3 read as the decimal 12.3
    np.testing.assert_allclose(_per_particle_b(table), expected, rtol=0, atol=0)
    cs_to_star(cs, tmp_path / "p.star")
    star = read_star(tmp_path / "p.star")
    np.testing.assert_allclose(_per_particle_b(star), expected, rtol=0, atol=0)
    no_b = read_cs(write_cs(tmp_path / "q.cs", rows))
    np.testing.assert_allclose(_per_particle_b(no_b), 0.0, atol=0)
