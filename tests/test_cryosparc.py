"""cryoSPARC ``.cs`` files: the pose converters against scipy, the reader on files written
as cryoSPARC writes them (two exposure groups), its errors, and cryoDRGN's own parser
where cryoDRGN is installed."""

from __future__ import annotations

import argparse
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryosip import conventions as cv
from cryosip.errors import InputError
from cryosip.io import read_cs
from cryosip.rotations import euler_to_matrix
from cryosparc_files import OPTICS, cs_rows, drop_fields, write_cs


def _matrices(euler_deg) -> np.ndarray:
    return np.asarray(euler_to_matrix(jnp.asarray(euler_deg, dtype=jnp.float32)), float)


# ------------------------------------------------------------------ conventions


def test_cryosparc_pose_is_the_transpose_of_relions_matrix_scipy():
    """RELION's A from the converted angles equals scipy's matrix of the rotation vector,
    transposed; the shift is the pixels times the pixel size, same sign."""
    rotvec = Rotation.random(200, random_state=3).as_rotvec()
    shift_px = np.random.default_rng(3).normal(0, 4, (200, 2))
    euler, shift = cv.cryosparc_to_relion_pose(rotvec, shift_px, 1.37)
    want = np.swapaxes(Rotation.from_rotvec(rotvec).as_matrix(), 1, 2)
    np.testing.assert_allclose(_matrices(euler), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(shift, shift_px * 1.37, rtol=1e-15)


def test_cryosparc_pose_round_trip_incl_identity_and_half_turns():
    rotvec = np.concatenate([Rotation.random(300, random_state=4).as_rotvec(),
                             [[0, 0, 0], [np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi],
                              [np.pi / np.sqrt(2), -np.pi / np.sqrt(2), 0], [1e-7, 0, 0]]])
    shift_px = np.random.default_rng(4).normal(0, 4, (len(rotvec), 2))
    pixel = np.random.default_rng(5).uniform(0.5, 3.0, len(rotvec))  # per particle
    euler, shift = cv.cryosparc_to_relion_pose(rotvec, shift_px, pixel)
    back_v, back_px = cv.relion_to_cryosparc_pose(euler, shift, pixel)
    # 1e-7 rad about x has |sin tilt| < 1e-6: matrix_to_euler's degenerate branch (rot = 0)
    np.testing.assert_allclose(Rotation.from_rotvec(back_v).as_matrix(),
                               Rotation.from_rotvec(rotvec).as_matrix(), rtol=0, atol=2e-7)
    np.testing.assert_allclose(Rotation.from_rotvec(back_v[:-1]).as_matrix(),
                               Rotation.from_rotvec(rotvec[:-1]).as_matrix(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(back_px, shift_px, rtol=1e-14, atol=1e-14)
    angle = np.linalg.norm(rotvec, axis=1)
    generic = (angle < np.pi - 1e-3) & ((angle == 0) | (angle > 1e-5))  # unique, not degenerate
    np.testing.assert_allclose(back_v[generic], rotvec[generic], rtol=0, atol=1e-9)


# ------------------------------------------------------------------ reader


def test_read_cs_two_exposure_groups(tmp_path):
    rows = cs_rows(10, np.random.default_rng(0), pixel=1.37, align_pixel=2.74)
    table = read_cs(write_cs(tmp_path / "P1_J7_particles.cs", rows), require_poses=True)
    assert len(table) == 10 and table.poses_known
    assert table.image_names[:3].tolist() == ["000001@>J7/extract/mic0_particles.mrc",
                                             "000001@>J7/extract/mic1_particles.mrc",
                                             "000002@>J7/extract/mic0_particles.mrc"]
    assert table.pixel_size_angstrom == 1.37 and table.box_size == 64
    assert table.optics_group_names == ("exp_group1", "exp_group2")
    per_row = [table.optics[i] for i in table.optics_index]
    np.testing.assert_allclose([[o.voltage_kv, o.cs_mm, o.amplitude_contrast] for o in per_row],
                               [OPTICS[g] for g in np.arange(10) % 2], rtol=1e-12)
    np.testing.assert_allclose(table.defocus_u_angstrom, rows["ctf/df1_A"], rtol=1e-7)
    np.testing.assert_allclose(table.defocus_v_angstrom, rows["ctf/df2_A"], rtol=1e-7)
    np.testing.assert_allclose(table.astigmatism_angle_deg,
                               rows["ctf/df_angle_rad"] * 180 / np.pi, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(table.phase_shift_deg,
                               rows["ctf/phase_shift_rad"] * 180 / np.pi, rtol=1e-6, atol=1e-5)
    want = np.swapaxes(Rotation.from_rotvec(rows["alignments3D/pose"]).as_matrix(), 1, 2)
    np.testing.assert_allclose(_matrices(table.euler_deg), want, rtol=0, atol=1e-6)
    # shifts are in pixels of the alignment (alignments3D/psize_A), not of the blob
    np.testing.assert_allclose(table.shift_angstrom, rows["alignments3D/shift"] * 2.74, rtol=1e-6)


def test_read_cs_groups_from_optics_without_exp_group_id_and_given_pixel(tmp_path, caplog):
    rows = drop_fields(cs_rows(6, np.random.default_rng(1)), "ctf/exp_group_id",
                       "alignments3D/psize_A")
    table = read_cs(write_cs(tmp_path / "p.cs", rows), pixel_size_angstrom=1.5)
    assert table.optics_group_names == ("1", "2")
    assert table.optics_index.tolist() == [0, 1, 0, 1, 0, 1]
    assert table.pixel_size_angstrom == 1.5
    assert "overrides the file's 1.37" in caplog.text
    np.testing.assert_allclose(table.shift_angstrom, rows["alignments3D/shift"] * 1.5, rtol=1e-6)


def test_read_cs_without_poses(tmp_path):
    rows = drop_fields(cs_rows(4, np.random.default_rng(2)), "alignments3D/pose",
                       "alignments3D/shift", "alignments3D/psize_A")
    path = write_cs(tmp_path / "p.cs", rows)
    table = read_cs(path)
    assert not table.poses_known
    np.testing.assert_array_equal(table.euler_deg, np.zeros((4, 3)))
    with pytest.raises(InputError) as err:
        read_cs(path, require_poses=True)
    assert err.value.field == "alignments3D/pose"


def _with(rows, field, values):
    out = rows.copy()
    out[field] = values
    return out


def _retyped(rows, field, dtype):
    dt = [(f, dtype if f == field else rows.dtype[f]) for f in rows.dtype.names]
    out = np.zeros(len(rows), dtype=dt)
    for f in rows.dtype.names:
        out[f] = rows[f] if f != field else 0
    return out


BAD = {
    "missing ctf/df1_A": (lambda r: drop_fields(r, "ctf/df1_A"), "ctf/df1_A", "a field"),
    "missing blob/path": (lambda r: drop_fields(r, "blob/path"), "blob/path", "a field"),
    "no pixel size": (lambda r: drop_fields(r, "blob/psize_A"), "blob/psize_A", "--pixel-size"),
    "string defocus": (lambda r: _retyped(r, "ctf/df2_A", "S8"), "ctf/df2_A", "numbers"),
    "float index": (lambda r: _retyped(r, "blob/idx", "<f4"), "blob/idx", "integers"),
    "NaN defocus": (lambda r: _with(r, "ctf/df2_A", [1e4, np.nan, 1e4, 1e4]), "ctf/df2_A",
                    "row 2"),
    "inf pose": (lambda r: _with(r, "alignments3D/pose", [[0, 0, np.inf]] * 4),
                 "alignments3D/pose", "finite"),
    "pixel differs": (lambda r: _with(r, "blob/psize_A", [1.0, 1.2, 1.0, 1.2]), "blob/psize_A",
                      "group exp_group1: 1 Å; group exp_group2: 1.2 Å"),
    "box differs": (lambda r: _with(r, "blob/shape", [[64, 64], [96, 96]] * 2), "blob/shape",
                    "group exp_group1: 64 px; group exp_group2: 96 px"),
    "not square": (lambda r: _with(r, "blob/shape", [[64, 60]] * 4), "blob/shape", "square"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_read_cs_bad_fields_name_file_and_field(tmp_path, case):
    make, field, words = BAD[case]
    path = write_cs(tmp_path / "bad.cs", make(cs_rows(4, np.random.default_rng(6))))
    with pytest.raises(InputError) as err:
        read_cs(path)
    assert err.value.field == field and err.value.source == str(path)
    assert words in str(err.value), str(err.value)


@pytest.mark.parametrize("content", ["missing", "garbage", "plain array", "pickled object",
                                     "CSDAT"])
def test_read_cs_unreadable_files(tmp_path, content):
    path = tmp_path / "x.cs"
    if content == "CSDAT":  # cryosparc-tools' compressed format (magic b"\x94CSDAT")
        path.write_bytes(b"\x94CSDAT" + bytes(64))
    elif content == "garbage":
        path.write_bytes(b"\x93NUMPY garbage that is not an npy header")
    elif content == "plain array":
        np.save(path.with_suffix(".npy"), np.zeros((3, 4)))
        path.with_suffix(".npy").rename(path)
    elif content == "pickled object":
        np.save(path.with_suffix(".npy"), np.array([{"a": 1}], dtype=object))
        path.with_suffix(".npy").rename(path)
    with pytest.raises(InputError) as err:
        read_cs(path)
    assert err.value.source == str(path) and "\n" not in str(err.value)
    if content == "CSDAT":
        assert "NUMPY_FORMAT" in str(err.value)


# ------------------------------------------------------------------ cryoDRGN's parser


def test_cryodrgn_parse_pose_and_ctf_csparc_agree(tmp_path):
    """cryoDRGN's own ``parse_pose_csparc``/``parse_ctf_csparc`` on the same ``.cs`` file
    (skips where cryoDRGN is not installed; benchmarks/cryodrgn_cs_check.py says how)."""
    pytest.importorskip("cryodrgn")
    pose_cmd = pytest.importorskip("cryodrgn.commands.parse_pose_csparc")
    ctf_cmd = pytest.importorskip("cryodrgn.commands.parse_ctf_csparc")
    rows = cs_rows(12, np.random.default_rng(8), box=80)
    path = write_cs(tmp_path / "p.cs", rows)
    results = []
    for cmd, out in ((pose_cmd, tmp_path / "pose.pkl"), (ctf_cmd, tmp_path / "ctf.pkl")):
        parser = argparse.ArgumentParser()
        cmd.add_args(parser)
        cmd.main(parser.parse_args([str(path), "-o", str(out)]))
        with open(out, "rb") as fh:
            results.append(pickle.load(fh))
    (rot, trans), ctf = results
    table = read_cs(path)
    np.testing.assert_allclose(rot, _matrices(table.euler_deg), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(trans) * 80 * 1.37, table.shift_angstrom, atol=1e-5)
    ours = np.column_stack([
        np.full(12, 80), np.full(12, 1.37), table.defocus_u_angstrom, table.defocus_v_angstrom,
        table.astigmatism_angle_deg,
        [[table.optics[i].voltage_kv, table.optics[i].cs_mm, table.optics[i].amplitude_contrast]
         for i in table.optics_index], table.phase_shift_deg])
    np.testing.assert_allclose(np.asarray(ctf, float), ours, rtol=1e-5, atol=1e-4)
