"""``cryosip convert`` and :mod:`cryosip.io.convert`: a ``.cs`` file (two exposure groups)
or cryoDRGN pickles to a RELION 3.1 STAR that ``read_star`` reads back to the same
rotations, shifts and CTF numbers; exact round trip of a table; refusals."""

from __future__ import annotations

import pickle

import jax.numpy as jnp
import numpy as np
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryosip import conventions as cv
from cryosip.forward import Optics
from cryosip.io import ParticleTable, read_cs, read_star, write_stack, write_table_star
from cryosip.rotations import euler_to_matrix
from cryosparc_files import OPTICS, cs_rows, drop_fields, write_cs


def _matrices(euler_deg) -> np.ndarray:
    return np.asarray(euler_to_matrix(jnp.asarray(euler_deg, dtype=jnp.float32)), float)


def _row_optics(table) -> np.ndarray:
    return np.array([[table.optics[i].voltage_kv, table.optics[i].cs_mm,
                      table.optics[i].amplitude_contrast] for i in table.optics_index])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cs_converted_and_read_gives_the_same_rotations_shifts_and_ctf(tmp_path, cli_main,
                                                                        capsys):
    rows = cs_rows(16, np.random.default_rng(11), box=72, pixel=1.37)
    cs = write_cs(tmp_path / "P3_J7_particles.cs", rows)
    out = tmp_path / "particles.star"
    assert cli_main(["convert", str(cs), str(out)]) == 0
    assert "wrote 16 particles (2 optics groups, with poses" in capsys.readouterr().out
    back = read_star(out)

    # rotations: the STAR's angles give RELION's A = R^T, R = exp of the rotation vector
    direct_euler, direct_shift = cv.cryosparc_to_relion_pose(
        rows["alignments3D/pose"], rows["alignments3D/shift"], rows["alignments3D/psize_A"])
    np.testing.assert_allclose(_matrices(back.euler_deg), _matrices(direct_euler),
                               rtol=0, atol=1e-6)
    scipy_a = np.swapaxes(Rotation.from_rotvec(rows["alignments3D/pose"]).as_matrix(), 1, 2)
    np.testing.assert_allclose(_matrices(back.euler_deg), scipy_a, rtol=0, atol=1e-6)
    # (read_cs takes each float32 as its shortest decimal: differences at float32 rounding)
    np.testing.assert_allclose(back.shift_angstrom, direct_shift, rtol=1e-6, atol=1e-7)

    # CTF numbers, per-particle optics, pixel size and box
    np.testing.assert_allclose(back.defocus_u_angstrom, rows["ctf/df1_A"], rtol=1e-7)
    np.testing.assert_allclose(back.defocus_v_angstrom, rows["ctf/df2_A"], rtol=1e-7)
    np.testing.assert_allclose(back.astigmatism_angle_deg, np.rad2deg(rows["ctf/df_angle_rad"]),
                               rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(back.phase_shift_deg, np.rad2deg(rows["ctf/phase_shift_rad"]),
                               rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(_row_optics(back), [OPTICS[g] for g in np.arange(16) % 2],
                               rtol=1e-12)
    assert (back.pixel_size_angstrom, back.box_size) == (1.37, 72)
    # and exactly what read_cs reads (shortest-decimal round trip)
    table = read_cs(cs)
    for field in ("euler_deg", "shift_angstrom", "defocus_u_angstrom", "defocus_v_angstrom",
                  "astigmatism_angle_deg", "phase_shift_deg"):
        np.testing.assert_array_equal(getattr(back, field), getattr(table, field), err_msg=field)
    assert back.image_names[:2].tolist() == ["000001@J7/extract/mic0_particles.mrc",
                                            "000001@J7/extract/mic1_particles.mrc"]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_cs_convert_datadir_and_no_poses(tmp_path, cli_main):
    rows = drop_fields(cs_rows(4, np.random.default_rng(12)), "alignments3D/pose",
                       "alignments3D/shift", "alignments3D/psize_A")
    cs = write_cs(tmp_path / "p.cs", rows)
    out = tmp_path / "p.star"
    assert cli_main(["convert", str(cs), str(out), "--datadir", "/data/P3"]) == 0
    particles = starfile.read(out, always_dict=True)["particles"]
    assert "rlnAngleRot" not in particles.columns
    assert particles["rlnImageName"].iloc[1] == "000001@/data/P3/J7/extract/mic1_particles.mrc"
    back = read_star(out, require_poses=False)
    assert not back.poses_known and len(back) == 4


def test_convert_refuses_existing_output_unless_forced(tmp_path, cli_main, capsys):
    cs = write_cs(tmp_path / "p.cs", cs_rows(4, np.random.default_rng(13)))
    out = tmp_path / "p.star"
    out.write_text("keep me\n")
    assert cli_main(["convert", str(cs), str(out)]) == 2
    assert "it exists" in _one_line_error(capsys)
    assert out.read_text() == "keep me\n"
    assert cli_main(["convert", str(cs), str(out), "--force"]) == 0
    assert len(read_star(out)) == 4


@pytest.mark.parametrize("argv", [
    ["convert", "only.cs"],
    ["convert", "in.star", "out.star"],
    ["convert", "missing.cs", "out.star"],
    ["convert", "--poses", "p.pkl", "out.star"],
    ["convert", "--poses", "p.pkl", "--ctf", "c.pkl", "--stack", "s.mrcs", "x.cs", "out.star"],
])
def test_convert_usage_errors_are_one_line(tmp_path, cli_main, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    assert _one_line_error(capsys).startswith("cryosip convert: error: ")
    assert not (tmp_path / "out.star").exists()


def _cryodrgn_files(folder, n, box, pixel, rng):
    """Pose and CTF pickles as cryoDRGN writes them (float32), and a stack of n images."""
    rot = Rotation.random(n, random_state=rng.integers(1 << 30)).as_matrix().astype(np.float32)
    trans = rng.normal(0, 0.03, (n, 2)).astype(np.float32)
    with open(folder / "pose.pkl", "wb") as fh:
        pickle.dump((rot, trans), fh)
    du = rng.uniform(1.2e4, 2.6e4, n)
    ctf = np.column_stack([np.full(n, box), np.full(n, pixel), du, du - rng.uniform(0, 2e3, n),
                           rng.uniform(-180, 180, n), np.where(np.arange(n) % 3, 300.0, 200.0),
                           np.full(n, 2.7), np.full(n, 0.1), rng.uniform(0, 90, n)])
    with open(folder / "ctf.pkl", "wb") as fh:
        pickle.dump(ctf.astype(np.float32), fh)
    (folder / "data").mkdir()
    write_stack(folder / "data" / "s.mrcs", np.zeros((n, box, box), np.float32), pixel)
    return rot, trans, ctf.astype(np.float32)


def test_cryodrgn_pickles_converted_and_read(tmp_path, cli_main):
    rot, trans, ctf = _cryodrgn_files(tmp_path, 9, 48, 1.37, np.random.default_rng(14))
    out = tmp_path / "out" / "p.star"
    out.parent.mkdir()
    argv = ["convert", "--poses", str(tmp_path / "pose.pkl"), "--ctf", str(tmp_path / "ctf.pkl"),
            "--stack", str(tmp_path / "data" / "s.mrcs"), str(out)]
    assert cli_main(argv) == 0
    back = read_star(out)
    np.testing.assert_allclose(_matrices(back.euler_deg), rot, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.shift_angstrom, trans * 48 * 1.37, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.column_stack([back.defocus_u_angstrom, back.defocus_v_angstrom,
                         back.astigmatism_angle_deg, _row_optics(back), back.phase_shift_deg]),
        ctf[:, 2:], rtol=1e-7)
    assert (back.pixel_size_angstrom, back.box_size, len(back.optics)) == (1.37, 48, 2)
    assert back.image_names[0] == "000001@../data/s.mrcs"  # relative to the STAR's folder


def test_cryodrgn_pickles_and_stack_must_agree(tmp_path, cli_main, capsys):
    _cryodrgn_files(tmp_path, 5, 32, 2.0, np.random.default_rng(15))
    write_stack(tmp_path / "data" / "s.mrcs", np.zeros((4, 32, 32), np.float32), 2.0)
    argv = ["convert", "--poses", str(tmp_path / "pose.pkl"), "--ctf", str(tmp_path / "ctf.pkl"),
            "--stack", str(tmp_path / "data" / "s.mrcs"), str(tmp_path / "p.star")]
    assert cli_main(argv) == 2
    assert "5 images of 32 pixels" in _one_line_error(capsys)
    assert not (tmp_path / "p.star").exists()


def test_write_table_star_round_trip_is_exact_with_three_groups(tmp_path):
    rng = np.random.default_rng(16)
    n = 30
    optics = (Optics(300.0, 2.7, 0.1), Optics(200.0, 1.4, 0.07), Optics(120.0, 0.01, 0.035))
    table = ParticleTable(
        image_names=np.array([f"{i + 1:06d}@Extract/job007/s{i % 4}.mrcs" for i in range(n)]),
        euler_deg=rng.uniform([-180, 0, -180], [180, 180, 180], (n, 3)),
        shift_angstrom=rng.normal(0, 5, (n, 2)),
        defocus_u_angstrom=rng.uniform(1e4, 3e4, n), defocus_v_angstrom=rng.uniform(1e4, 3e4, n),
        astigmatism_angle_deg=rng.uniform(-180, 180, n), phase_shift_deg=rng.uniform(0, 90, n),
        optics=optics, optics_index=rng.integers(0, 3, n), pixel_size_angstrom=1.0 / 3.0,
        box_size=100, optics_group_names=("a", "b", "c"))
    path = tmp_path / "t.star"
    write_table_star(path, table)
    back = read_star(path)
    for field in ("euler_deg", "shift_angstrom", "defocus_u_angstrom", "defocus_v_angstrom",
                  "astigmatism_angle_deg", "phase_shift_deg"):
        np.testing.assert_array_equal(getattr(back, field), getattr(table, field), err_msg=field)
    np.testing.assert_array_equal(_row_optics(back), _row_optics(table))
    assert back.pixel_size_angstrom == 1.0 / 3.0 and back.box_size == 100
    assert back.image_names.tolist() == table.image_names.tolist()
    # the file itself, read without cryosip: three optics rows named as given, origins in Å
    blocks = starfile.read(path, always_dict=True)
    assert blocks["optics"]["rlnOpticsGroupName"].tolist() == ["a", "b", "c"]
    assert blocks["optics"]["rlnVoltage"].tolist() == [300.0, 200.0, 120.0]
    assert {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(blocks["particles"].columns)
    assert "rlnOriginX" not in blocks["particles"].columns
    np.testing.assert_array_equal(blocks["particles"]["rlnOpticsGroup"], table.optics_index + 1)


def test_cs_and_its_converted_star_open_the_same_images(tmp_path):
    """With the stacks in a cryoSPARC project folder, ``read_particles`` finds them from the
    ``.cs`` (``>`` paths) and from the converted STAR, and gives the same images."""
    from cryosip.io import cs_to_star, read_particles

    extract = tmp_path / "J7" / "extract"
    extract.mkdir(parents=True)
    rng = np.random.default_rng(17)
    for g in range(2):
        write_stack(extract / f"mic{g}_particles.mrc",
                    rng.normal(size=(3, 32, 32)).astype(np.float32), 1.37)
    (tmp_path / "J9").mkdir()
    cs = write_cs(tmp_path / "J9" / "particles.cs", cs_rows(6, rng, box=32))
    star = tmp_path / "J9" / "converted.star"
    cs_to_star(cs, star)
    from_cs, from_star = read_particles(cs), read_particles(star)
    np.testing.assert_array_equal(np.asarray(from_star.images[0:6]),
                                  np.asarray(from_cs.images[0:6]))
    np.testing.assert_array_equal(from_star.table.euler_deg, from_cs.table.euler_deg)
