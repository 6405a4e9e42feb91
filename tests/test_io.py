"""Particle I/O: .mrcs stacks, RELION STAR 3.0/3.1, cryoDRGN pickles, agreement with cryojax."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import given, settings
from hypothesis import strategies as st

from cryosip.forward import ImageNuisance, Optics
from cryosip.io import (
    open_stack,
    read_cryodrgn_ctf,
    read_cryodrgn_poses,
    read_particles,
    read_star,
    write_cryodrgn_ctf,
    write_cryodrgn_poses,
    write_stack,
    write_star,
)
from cryosip.rotations import euler_to_matrix

f32 = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def nuisance_arrays(n, rng):
    return dict(
        euler_deg=rng.uniform(-180, 180, (n, 3)).astype(np.float32),
        shift_angstrom=rng.normal(0, 5, (n, 2)).astype(np.float32),
        defocus_u_angstrom=rng.uniform(1e4, 2.5e4, n).astype(np.float32),
        defocus_v_angstrom=rng.uniform(1e4, 2.5e4, n).astype(np.float32),
        astigmatism_angle_deg=rng.uniform(0, 180, n).astype(np.float32),
        phase_shift_deg=rng.uniform(0, 90, n).astype(np.float32),
    )


def as_nuisance(arrays):
    return ImageNuisance(**{k: jnp.asarray(v) for k, v in arrays.items()})


def test_stack_round_trip_is_lazy(tmp_path):
    images = np.random.default_rng(0).normal(size=(5, 12, 12)).astype(np.float32)
    write_stack(tmp_path / "s.mrcs", images, pixel_size_angstrom=1.5)
    with open_stack(tmp_path / "s.mrcs") as stack:
        assert isinstance(stack.data, np.memmap) and not stack.data.flags.writeable
        np.testing.assert_array_equal(stack[1:4], images[1:4])
        assert (len(stack), stack.box_size, stack.pixel_size_angstrom) == (5, 12, 1.5)


# every leaf of ImageNuisance with its per-image shape, taken from the type itself, so a new
# leaf is round-tripped (or fails) without editing this list
_ONE = ImageNuisance.create(np.zeros((1, 3), np.float32))
_LEAVES = {f.name: np.shape(getattr(_ONE, f.name))[1:] for f in dataclasses.fields(ImageNuisance)}
_FLOATS = {k: v for k, v in _LEAVES.items()
           if jnp.issubdtype(getattr(_ONE, k).dtype, jnp.floating)}
_N_FLOATS = sum(int(np.prod(shape)) for shape in _FLOATS.values())


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(*[f32] * _N_FLOATS), min_size=1, max_size=6))
def test_star_round_trip_is_exact(tmp_path_factory, rows):
    """Every leaf of ImageNuisance written by cryosip reads back bit-identical (the float
    pose and CTF numbers drawn here, the optics group the single one written)."""
    a = np.array(rows, dtype=np.float32)
    widths = np.cumsum([0] + [int(np.prod(shape)) for shape in _FLOATS.values()])
    arrays = {k: a[:, lo:hi].reshape(len(a), *shape)
              for (k, shape), lo, hi in zip(_FLOATS.items(), widths[:-1], widths[1:],
                                            strict=True)}
    path = tmp_path_factory.mktemp("star") / "p.star"
    optics = Optics(voltage_kv=200.0, cs_mm=0.01, amplitude_contrast=0.07)
    written = ImageNuisance.create(**{k: jnp.asarray(v) for k, v in arrays.items()})
    write_star(path, written, optics, pixel_size_angstrom=1.23, box_size=96)
    table = read_star(path)
    read = table.nuisance()
    assert set(_LEAVES) > set(_FLOATS)  # optics_group, an integer leaf, checked too
    for key in _LEAVES:
        got, want = np.asarray(getattr(read, key)), np.asarray(getattr(written, key))
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=key)
    assert table.optics == (optics,) and table.pixel_size_angstrom == 1.23
    assert table.box_size == 96


def test_read_particles_matches_written(tmp_path):
    rng = np.random.default_rng(1)
    arrays = nuisance_arrays(7, rng)
    images = rng.normal(size=(7, 16, 16)).astype(np.float32)
    write_stack(tmp_path / "particles.mrcs", images, 2.0)
    write_star(tmp_path / "particles.star", as_nuisance(arrays), Optics(),
               pixel_size_angstrom=2.0, box_size=16)
    stack = read_particles(tmp_path / "particles.star")
    assert (len(stack), stack.box_size, stack.pixel_size_angstrom) == (7, 16, 2.0)
    np.testing.assert_array_equal(stack.images[[4, 0, 6]], images[[4, 0, 6]])
    np.testing.assert_array_equal(np.asarray(stack.nuisance.euler_deg), arrays["euler_deg"])
    np.testing.assert_array_equal(np.asarray(stack.nuisance.shift_angstrom),
                                  arrays["shift_angstrom"])


def test_star_30_pixels_and_magnification(tmp_path):
    """RELION 3.0: shifts in pixels, pixel size = detector pixel (µm) * 1e4 / magnification."""
    df = pd.DataFrame({
        "rlnImageName": ["000001@s.mrcs", "000002@s.mrcs"],
        "rlnAngleRot": [10.0, 20.0], "rlnAngleTilt": [30.0, 40.0], "rlnAnglePsi": [5.0, 6.0],
        "rlnOriginX": [1.5, -2.0], "rlnOriginY": [0.5, 3.0],
        "rlnDefocusU": [12000.0, 15000.0], "rlnDefocusV": [11000.0, 14000.0],
        "rlnDefocusAngle": [30.0, 60.0], "rlnVoltage": [300.0, 300.0],
        "rlnSphericalAberration": [2.7, 2.7], "rlnAmplitudeContrast": [0.1, 0.1],
        "rlnDetectorPixelSize": [5.0, 5.0], "rlnMagnification": [25000.0, 25000.0],
    })
    starfile.write(df, tmp_path / "p30.star")
    table = read_star(tmp_path / "p30.star")
    assert table.pixel_size_angstrom == 2.0 and table.box_size is None
    np.testing.assert_allclose(table.shift_angstrom, [[3.0, 1.0], [-4.0, 6.0]])
    np.testing.assert_allclose(table.defocus_v_angstrom, [11000.0, 14000.0])
    assert table.optics == (Optics(300.0, 2.7, 0.1),)
    given_px = read_star(tmp_path / "p30.star", pixel_size_angstrom=1.0)
    np.testing.assert_allclose(given_px.shift_angstrom, [[1.5, 0.5], [-2.0, 3.0]])


def test_cryodrgn_pickles_round_trip_and_shift_sign(tmp_path):
    rng = np.random.default_rng(2)
    a = nuisance_arrays(6, rng)
    a["euler_deg"][:, 1] = np.abs(a["euler_deg"][:, 1])  # tilt in [0, 180]: unique angles
    write_cryodrgn_poses(tmp_path / "pose.pkl", a["euler_deg"], a["shift_angstrom"],
                         box_size=64, pixel_size_angstrom=2.0)
    import pickle

    rot, trans = pickle.load(open(tmp_path / "pose.pkl", "rb"))
    np.testing.assert_allclose(rot, euler_to_matrix(jnp.asarray(a["euler_deg"])), atol=1e-6)
    # cryoDRGN trans = +rlnOriginXAngst / (pixel size * box): same sign, fraction of box
    np.testing.assert_allclose(trans, a["shift_angstrom"] / 128.0, rtol=1e-6)
    euler, shift = read_cryodrgn_poses(tmp_path / "pose.pkl", box_size=64,
                                       pixel_size_angstrom=2.0)
    np.testing.assert_allclose(euler_to_matrix(jnp.asarray(euler)), rot, atol=1e-5)
    np.testing.assert_allclose(shift, a["shift_angstrom"], rtol=1e-5, atol=1e-5)
    write_cryodrgn_ctf(tmp_path / "ctf.pkl", box_size=64, pixel_size_angstrom=2.0,
                       defocus_u_angstrom=a["defocus_u_angstrom"],
                       defocus_v_angstrom=a["defocus_v_angstrom"],
                       astigmatism_angle_deg=a["astigmatism_angle_deg"], voltage_kv=300.0,
                       cs_mm=2.7, amplitude_contrast=0.1)
    ctf = read_cryodrgn_ctf(tmp_path / "ctf.pkl")
    np.testing.assert_array_equal(ctf["D"], 64.0)
    np.testing.assert_allclose(ctf["dfu"], a["defocus_u_angstrom"], rtol=1e-7)
    np.testing.assert_allclose(ctf["dfang"], a["astigmatism_angle_deg"], rtol=1e-7)
    np.testing.assert_allclose(ctf["volt"], 300.0)


def test_star_read_into_cryojax_gives_the_same_numbers(tmp_path):
    """A cryosip STAR parsed independently (``starfile``) into cryojax objects via the
    documented conversions: same rotation matrices, offsets and defocus as cryosip's.

    cryojax 0.6.0 ships no STAR reader (it moved out of the package), so the file is
    parsed with ``starfile`` and fed to cryojax's ``EulerAnglePose``/``AstigmaticCTF``.
    """
    cs = pytest.importorskip("cryojax.simulator")
    from cryosip import conventions

    arrays = nuisance_arrays(5, np.random.default_rng(3))
    write_star(tmp_path / "p.star", as_nuisance(arrays), Optics(), pixel_size_angstrom=2.0,
               box_size=32)
    raw = starfile.read(tmp_path / "p.star")["particles"]
    euler = raw[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    shift = raw[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float)
    angles = conventions.relion_to_cryojax_euler(euler)
    offset = conventions.relion_to_cryojax_offset(shift)
    ours = np.asarray(euler_to_matrix(jnp.asarray(read_star(tmp_path / "p.star").euler_deg)))
    for i in range(5):
        pose = cs.EulerAnglePose(offset[i, 0], offset[i, 1], *angles[i])
        np.testing.assert_allclose(np.asarray(pose.rotation.as_matrix()), ours[i], atol=1e-5)
        np.testing.assert_allclose([pose.offset_x_in_angstroms, pose.offset_y_in_angstroms],
                                   -arrays["shift_angstrom"][i], rtol=1e-6)
    mean, astig, angle = conventions.relion_to_cryojax_ctf(
        raw["rlnDefocusU"].to_numpy(float), raw["rlnDefocusV"].to_numpy(float),
        raw["rlnDefocusAngle"].to_numpy(float))
    np.testing.assert_allclose(angle, 90.0 - arrays["astigmatism_angle_deg"], rtol=1e-6)
    np.testing.assert_allclose(mean, 0.5 * (arrays["defocus_u_angstrom"]
                                            + arrays["defocus_v_angstrom"]), rtol=1e-6)
    np.testing.assert_allclose(astig, arrays["defocus_u_angstrom"]
                               - arrays["defocus_v_angstrom"], rtol=1e-5, atol=1e-2)


def test_two_stacks_and_two_optics_groups(tmp_path):
    """Rows from two stacks (1-based indices, any order) and two optics groups."""
    rng = np.random.default_rng(4)
    a, b = (rng.normal(size=(3, 8, 8)).astype(np.float32) for _ in range(2))
    write_stack(tmp_path / "a.mrcs", a, 1.0)
    (tmp_path / "sub").mkdir()
    write_stack(tmp_path / "sub" / "b.mrcs", b, 1.0)
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnVoltage": [300.0, 200.0],
                           "rlnSphericalAberration": [2.7, 2.0],
                           "rlnAmplitudeContrast": [0.1, 0.07],
                           "rlnImagePixelSize": [1.0, 1.0], "rlnImageSize": [8, 8]})
    names = ["000003@a.mrcs", "000001@sub/b.mrcs", "000001@a.mrcs", "000002@sub/b.mrcs"]
    particles = pd.DataFrame({"rlnImageName": names, "rlnAngleRot": 0.0, "rlnAngleTilt": 0.0,
                              "rlnAnglePsi": 0.0, "rlnDefocusU": 1e4,
                              "rlnOpticsGroup": [1, 2, 1, 2]})
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "p.star")
    stack = read_particles(tmp_path / "p.star")
    np.testing.assert_array_equal(stack.images[:], np.stack([a[2], b[0], a[0], b[1]]))
    assert [stack.optics[i].voltage_kv for i in stack.optics_index] == [300.0, 200.0] * 2
    np.testing.assert_array_equal(stack.table.defocus_v_angstrom, 1e4)  # V defaults to U
