"""Particle files as other tools write them: one test per reader flavour (issue 9).

Every fixture is written here the way RELION (or mrcfile, numpy's pickle) writes it: STAR
text by hand with ``data_optics`` + ``data_particles`` and ``rlnImageName``
``"000001@Extract/job007/Micrographs/x.mrcs"``; sloppy MRC headers by patching the bytes
of a file written by ``mrcfile`` (map ID at byte 208, machine stamp at 212, mode at 12).
Expected numbers are computed in the test from the values written, not by cryosip.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import os
import pickle
import sys
import types
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryosip.errors import InputError
from cryosip.forward import Optics
from cryosip.io import (
    ParticleTable,
    open_stack,
    read_cryodrgn_ctf,
    read_cryodrgn_poses,
    read_particles,
    read_star,
    read_table,
    resolve_stack_path,
)

OPTICS_HEADER = ("rlnOpticsGroupName", "rlnOpticsGroup", "rlnMtfFileName",
                 "rlnMicrographOriginalPixelSize", "rlnVoltage", "rlnSphericalAberration",
                 "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
                 "rlnImageDimensionality")


def loop(block: str, columns, rows) -> str:
    """A STAR loop as RELION 3.1 writes it (``# version 30001``, ``_rlnX #k``)."""
    head = [f"\n# version 30001\n\ndata_{block}\n\nloop_"]
    head += [f"_{c} #{k + 1}" for k, c in enumerate(columns)]
    body = [" ".join(f"{v:>12.6f}" if isinstance(v, float) else str(v) for v in row)
            for row in rows]
    return "\n".join(head + body) + "\n\n"


def optics_rows(groups):
    """``groups``: (number, voltage, Cs, amplitude contrast, pixel, box) per group."""
    return [(f"opticsGroup{g}", g, "mtf_k2_200kV.star", px, v, cs, w, px, box, 2)
            for g, v, cs, w, px, box in groups]


def write_star31(path: Path, groups, particles: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(particles)
    rows = list(zip(*particles.values(), strict=True))
    path.write_text(loop("optics", OPTICS_HEADER, optics_rows(groups))
                    + loop("particles", columns, rows))
    return path


def particles_cols(names, **extra) -> dict:
    n = len(names)
    cols = {"rlnImageName": list(names), "rlnAngleRot": [10.0 * k for k in range(n)],
            "rlnAngleTilt": [90.0] * n, "rlnAnglePsi": [-30.0] * n,
            "rlnDefocusU": [15000.0 + 100 * k for k in range(n)],
            "rlnDefocusV": [14000.0 + 100 * k for k in range(n)],
            "rlnDefocusAngle": [30.0] * n}
    cols.update(extra)
    return cols


def mrc_stack(path: Path, n: int = 6, box: int = 8, voxel: float = 1.77) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(n).normal(size=(n, box, box)).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.voxel_size = voxel
    return images


def patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


GROUP_300 = (1, 300.0, 2.7, 0.1, 1.77, 8)
GROUP_200 = (2, 200.0, 1.4, 0.07, 1.77, 8)


# --- MRC headers -------------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "what"), [(208, "Map ID"), (212, "machine stamp")])
def test_sloppy_mrc_header_reads_with_a_logged_warning(tmp_path, caplog, offset, what):
    images = mrc_stack(tmp_path / "s.mrcs")
    patch(tmp_path / "s.mrcs", offset, b"\0\0\0\0")
    with pytest.raises(ValueError):  # mrcfile alone refuses it
        mrcfile.mmap(tmp_path / "s.mrcs", mode="r")
    with caplog.at_level(logging.WARNING, logger="cryosip"):
        with open_stack(tmp_path / "s.mrcs") as stack:
            np.testing.assert_array_equal(stack[:], images)
    assert [r.name for r in caplog.records] == ["cryosip"]
    assert what.lower() in caplog.records[0].getMessage().lower()


def test_mrc_unreadable_even_permissively_is_an_input_error(tmp_path):
    mrc_stack(tmp_path / "s.mrcs")
    patch(tmp_path / "s.mrcs", 12, (99).to_bytes(4, "little"))  # data mode 99
    with pytest.raises(InputError) as err:
        open_stack(tmp_path / "s.mrcs")
    assert "header" in str(err.value) and "99" in str(err.value)


@pytest.mark.parametrize(("suffix", "compress", "name"),
                         [(".mrcs.gz", gzip.compress, "gzip"),
                          (".mrcs.bz2", bz2.compress, "bzip2"),
                          (".mrcs", gzip.compress, "gzip")])  # gzip bytes, plain name
def test_compressed_stack_has_its_own_error(tmp_path, suffix, compress, name):
    mrc_stack(tmp_path / "plain.mrcs")
    (tmp_path / f"x{suffix}").write_bytes(compress((tmp_path / "plain.mrcs").read_bytes()))
    star = write_star31(tmp_path / "p.star", [GROUP_300],
                        particles_cols([f"000001@x{suffix}"], rlnOpticsGroup=[1]))
    with pytest.raises(InputError) as err:
        read_particles(star)
    text = str(err.value)
    assert f"{name}-compressed" in text and "decompress" in text and "truncated" not in text


# --- RELION 3.1 origins and optics groups ------------------------------------------------


def test_star31_origins_in_pixels_use_the_group_pixel_size(tmp_path):
    mrc_stack(tmp_path / "s.mrcs", n=3)
    px = [[1.5, -2.0], [0.25, 3.0], [0.0, -0.5]]
    cols = particles_cols([f"{k:06d}@s.mrcs" for k in (1, 2, 3)], rlnOpticsGroup=[1, 1, 1],
                          rlnOriginX=[p[0] for p in px], rlnOriginY=[p[1] for p in px])
    star = write_star31(tmp_path / "p.star", [GROUP_300], cols)
    table = read_star(star)
    np.testing.assert_allclose(table.shift_angstrom, np.array(px) * 1.77, rtol=1e-12)
    # both kinds, agreeing to RELION's 6 decimals: accepted
    cols["rlnOriginXAngst"] = [round(p[0] * 1.77, 6) for p in px]
    cols["rlnOriginYAngst"] = [round(p[1] * 1.77, 6) for p in px]
    both = read_star(write_star31(tmp_path / "both.star", [GROUP_300], cols))
    np.testing.assert_allclose(both.shift_angstrom, np.array(px) * 1.77, atol=1e-6)
    # both kinds, disagreeing (row 2's Y given in pixels as if it were Å): refused
    cols["rlnOriginYAngst"][1] = 3.0
    with pytest.raises(InputError) as err:
        read_star(write_star31(tmp_path / "bad.star", [GROUP_300], cols))
    assert "rlnOriginYAngst" in str(err.value) and "row 2" in str(err.value)


def test_particles_in_group_2_of_2_get_group_2_optics(tmp_path):
    """Regression: all particles in group 2 of 2 must read 200 kV, not group 1's 300 kV."""
    mrc_stack(tmp_path / "s.mrcs", n=3)
    cols = particles_cols([f"{k:06d}@s.mrcs" for k in (1, 2, 3)], rlnOpticsGroup=[2, 2, 2])
    star = write_star31(tmp_path / "p.star", [GROUP_300, GROUP_200], cols)
    stack = read_particles(star)
    assert stack.optics == (Optics(200.0, 1.4, 0.07),)
    np.testing.assert_array_equal(stack.optics_index, [0, 0, 0])
    assert stack.table.optics_group_names == ("2",)
    voltages = [stack.optics[i].voltage_kv for i in stack.optics_index]
    np.testing.assert_allclose(voltages, [200.0] * 3)


def test_several_groups_per_particle_and_unused_groups_ignored(tmp_path):
    mrc_stack(tmp_path / "s.mrcs", n=4)
    odd = (2, 120.0, 0.0, 0.2, 9.99, 512)  # unused: its pixel size and box do not matter
    group3 = (3, 200.0, 1.4, 0.07, 1.77, 8)
    cols = particles_cols([f"{k:06d}@s.mrcs" for k in (1, 2, 3, 4)],
                          rlnOpticsGroup=[3, 1, 3, 1])
    star = write_star31(tmp_path / "p.star", [GROUP_300, odd, group3], cols)
    table = read_table(star)
    assert table.optics_group_names == ("1", "3")
    assert table.optics == (Optics(300.0, 2.7, 0.1), Optics(200.0, 1.4, 0.07))
    np.testing.assert_array_equal(table.optics_index, [1, 0, 1, 0])
    assert (table.pixel_size_angstrom, table.box_size) == (1.77, 8)
    assert len(read_particles(star)) == 4


@pytest.mark.parametrize(("changed", "field", "values"),
                         [((3, 200.0, 1.4, 0.07, 1.5, 8), "rlnImagePixelSize", "1.5"),
                          ((3, 200.0, 1.4, 0.07, 1.77, 16), "rlnImageSize", "16")])
def test_groups_that_differ_in_pixel_size_or_box_are_named(tmp_path, changed, field, values):
    cols = particles_cols(["000001@s.mrcs", "000002@s.mrcs"], rlnOpticsGroup=[1, 3])
    star = write_star31(tmp_path / "p.star", [GROUP_300, changed], cols)
    with pytest.raises(InputError) as err:
        read_table(star)
    text = str(err.value)
    assert field in text and "group 1:" in text and f"group 3: {values}" in text


# --- RELION 3.0 pixel sizes ----------------------------------------------------------------


def write_star30(path: Path, names, **extra) -> Path:
    n = len(names)
    cols = particles_cols(names, rlnVoltage=[300.0] * n, rlnSphericalAberration=[2.7] * n,
                          rlnAmplitudeContrast=[0.1] * n, rlnOriginX=[2.0] * n,
                          rlnOriginY=[-1.0] * n, **extra)
    text = "\ndata_\n\nloop_\n" + "\n".join(f"_{c} #{k + 1}" for k, c in enumerate(cols))
    rows = zip(*cols.values(), strict=True)
    path.write_text(text + "\n" + "\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    return path


def test_star30_rows_that_disagree_on_pixel_size_are_refused(tmp_path):
    names = ["000001@s.mrcs", "000002@s.mrcs", "000003@s.mrcs"]
    star = write_star30(tmp_path / "p.star", names, rlnDetectorPixelSize=[5.0, 5.0, 5.0],
                        rlnMagnification=[25000.0, 25000.0, 20000.0])
    with pytest.raises(InputError) as err:
        read_star(star)
    assert "row 3" in str(err.value) and "2.5" in str(err.value)


def test_star30_given_pixel_size_overrides_and_is_logged(tmp_path, caplog):
    names = ["000001@s.mrcs", "000002@s.mrcs"]
    star = write_star30(tmp_path / "p.star", names, rlnImagePixelSize=[1.0, 1.0])
    with caplog.at_level(logging.INFO, logger="cryosip"):
        table = read_star(star, pixel_size_angstrom=1.25)
    assert table.pixel_size_angstrom == 1.25
    np.testing.assert_allclose(table.shift_angstrom, [[2.5, -1.25]] * 2, rtol=1e-12)
    assert "1.25" in caplog.text and "overrides" in caplog.text


def test_star30_falls_back_to_the_mrc_voxel_size(tmp_path, caplog):
    mrc_stack(tmp_path / "stacks" / "s.mrcs", n=2, voxel=2.5)
    star = write_star30(tmp_path / "p.star", ["000001@stacks/s.mrcs", "000002@stacks/s.mrcs"])
    with caplog.at_level(logging.WARNING, logger="cryosip"):
        stack = read_particles(star)
    assert stack.pixel_size_angstrom == 2.5
    np.testing.assert_allclose(stack.table.shift_angstrom, [[5.0, -2.5]] * 2, rtol=1e-12)
    assert "voxel size" in caplog.text and "s.mrcs" in caplog.text
    mrc_stack(tmp_path / "stacks" / "s.mrcs", n=2, voxel=0.0)
    with pytest.raises(InputError) as err:
        read_particles(star)
    assert "--pixel-size" in str(err.value)


# --- stack paths and subsets ---------------------------------------------------------------


def test_relion_project_paths_resolve_from_an_ancestor(tmp_path):
    images = mrc_stack(tmp_path / "Extract" / "job007" / "Micrographs" / "x.mrcs")
    names = ["000003@Extract/job007/Micrographs/x.mrcs", "000001@Extract/job007/Micrographs/x.mrcs"]
    star = write_star31(tmp_path / "Refine3D" / "job012" / "run_data.star", [GROUP_300],
                        particles_cols(names, rlnOpticsGroup=[1, 1]))
    stack = read_particles(star)
    np.testing.assert_array_equal(stack.images[:], images[[2, 0]])


def test_datadir_first_then_basename_and_cryosparc_prefix(tmp_path):
    here = mrc_stack(tmp_path / "project" / "J5" / "x.mrcs")
    elsewhere = mrc_stack(tmp_path / "moved" / "x.mrcs", n=7)
    star = write_star31(tmp_path / "project" / "p.star", [GROUP_300],
                        particles_cols(["000002@>J5/x.mrcs"], rlnOpticsGroup=[1]))
    np.testing.assert_array_equal(read_particles(star).images[:], here[[1]])
    moved = read_particles(star, datadir=tmp_path / "moved")  # DIR/basename(name)
    np.testing.assert_array_equal(moved.images[:], elsewhere[[1]])
    assert resolve_stack_path(">J5/x.mrcs", star, None) == tmp_path / "project" / "J5" / "x.mrcs"


def test_missing_stack_error_lists_every_place_tried(tmp_path):
    star = write_star31(tmp_path / "a" / "b" / "p.star", [GROUP_300],
                        particles_cols(["000001@Extract/x.mrcs"], rlnOpticsGroup=[1]))
    (tmp_path / "dd").mkdir()
    with pytest.raises(InputError) as err:
        read_particles(star, datadir=tmp_path / "dd")
    text = str(err.value)
    assert "\n" not in text
    for place in (tmp_path / "dd" / "Extract" / "x.mrcs", tmp_path / "dd" / "x.mrcs",
                  tmp_path / "a" / "b" / "Extract" / "x.mrcs",
                  tmp_path / "a" / "Extract" / "x.mrcs", tmp_path / "Extract" / "x.mrcs"):
        assert str(place) in text, place
    with pytest.raises(InputError, match="--datadir"):
        read_particles(star, datadir=tmp_path / "no-such-folder")


def test_subset_of_a_stack_is_read_and_only_indices_beyond_it_fail(tmp_path):
    images = mrc_stack(tmp_path / "s.mrcs", n=6)
    cols = particles_cols(["000005@s.mrcs", "000002@s.mrcs"], rlnOpticsGroup=[1, 1])
    stack = read_particles(write_star31(tmp_path / "p.star", [GROUP_300], cols))
    np.testing.assert_array_equal(stack.images[:], images[[4, 1]])
    cols = particles_cols(["000005@s.mrcs", "000009@s.mrcs"], rlnOpticsGroup=[1, 1])
    with pytest.raises(InputError) as err:
        read_particles(write_star31(tmp_path / "bad.star", [GROUP_300], cols))
    assert "index 9 in row 2" in str(err.value) and "6 images" in str(err.value)


# --- dispatch on .cs -----------------------------------------------------------------------


def test_cs_files_dispatch_to_read_cs_and_resolve_blob_paths(tmp_path, monkeypatch):
    """``.cs`` goes to ``cryosip.io.cryosparc.read_cs`` (a stand-in here, so this checks
    the dispatch and the ``>``-prefixed blob paths, not the ``.cs`` parser)."""
    images = mrc_stack(tmp_path / "J3" / "imported" / "x.mrcs", n=4)
    calls = []

    def read_cs(path, *, pixel_size_angstrom=None, require_poses=False):
        calls.append((Path(path).name, pixel_size_angstrom, require_poses))
        z = np.zeros(2)
        return ParticleTable(np.array(["000004@>J3/imported/x.mrcs", "000001@>J3/imported/x.mrcs"]),
                             np.zeros((2, 3)), np.zeros((2, 2)), z + 1e4, z + 1e4, z, z,
                             (Optics(),), np.zeros(2, int), 1.77, 8, True, ("0",))

    monkeypatch.setitem(sys.modules, "cryosip.io.cryosparc",
                        types.SimpleNamespace(read_cs=read_cs))
    (tmp_path / "J3" / "particles.cs").write_bytes(b"")
    stack = read_particles(tmp_path / "J3" / "particles.cs", pixel_size_angstrom=1.77)
    np.testing.assert_array_equal(stack.images[:], images[[3, 0]])
    assert calls == [("particles.cs", 1.77, True)]
    read_table(tmp_path / "J3" / "particles.cs")
    assert calls[-1] == ("particles.cs", None, False)


# --- cryoDRGN pickles ----------------------------------------------------------------------


class _WritesAFile:
    def __init__(self, target: Path, via: str):
        self.target, self.via = target, via

    def __reduce__(self):
        if self.via == "open":
            return (open, (str(self.target), "w"))
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("via", ["open", "system"])
def test_crafted_pickle_is_refused_and_writes_nothing(tmp_path, via):
    target = tmp_path / "pwned.txt"
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump((_WritesAFile(target, via), np.zeros((1, 2))), fh)
    for read in (lambda p: read_cryodrgn_poses(p, box_size=8, pixel_size_angstrom=1.0),
                 read_cryodrgn_ctf):
        with pytest.raises(InputError) as err:
            read(tmp_path / "evil.pkl")
        assert "refused" in str(err.value) and "\n" not in str(err.value)
    assert not target.exists()
    with open(tmp_path / "evil.pkl", "rb") as fh:  # the fixture is real: pickle.load writes
        pickle.load(fh)
    assert target.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickles_written_as_cryodrgn_writes_them_still_read(tmp_path, protocol):
    rng = np.random.default_rng(protocol)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3, 3)))
    rot = (q * np.sign(np.linalg.det(q))[:, None, None]).astype(np.float32)
    trans = rng.uniform(-0.05, 0.05, (3, 2)).astype(np.float32)
    with open(tmp_path / "pose.pkl", "wb") as fh:
        pickle.dump((rot, trans), fh, protocol=protocol)
    euler, shift = read_cryodrgn_poses(tmp_path / "pose.pkl", box_size=64,
                                       pixel_size_angstrom=2.0)
    np.testing.assert_allclose(shift, trans * 128.0, rtol=1e-6)  # fraction of box -> Å
    ctf = np.tile(np.array([64, 2.0, 1.5e4, 1.4e4, 30.0, 300, 2.7, 0.1, 0], np.float32),
                  (3, 1))
    data = pickle.dumps(ctf, protocol=protocol)
    if protocol == 2:  # numpy 1.x names its module numpy.core: still admitted
        data = data.replace(b"numpy._core", b"numpy.core")
        assert b"numpy.core.multiarray" in data
    (tmp_path / "ctf.pkl").write_bytes(data)
    np.testing.assert_allclose(read_cryodrgn_ctf(tmp_path / "ctf.pkl")["dfu"], 1.5e4)


# --- many stacks: no file stays open -------------------------------------------------------


def test_many_stacks_hold_no_file_open_and_read_like_a_memory_map(tmp_path):
    """RELION's Extract writes one stack per micrograph (thousands): one memory map each
    would pass the usual 1024 open-file limit. Reads must equal the arrays written, for
    big-endian, int16 and extended-header files too, any order, repeated rows."""
    stacks, names = [], []
    for s in range(40):
        images = np.random.default_rng(s).normal(size=(5, 8, 8))
        images = (images * 100).astype(np.int16) if s % 3 == 1 else images.astype(np.float32)
        path = tmp_path / "Extract" / f"m{s}.mrcs"
        path.parent.mkdir(exist_ok=True)
        with mrcfile.new(path) as mrc:
            if s % 3 == 2:  # big-endian with an extended header
                mrc.set_extended_header(np.zeros(10, dtype=[("v", "<i4")]))
                mrc.set_data(images.astype(">f4"))
            else:
                mrc.set_data(images)
            mrc.set_image_stack()
            mrc.voxel_size = 1.77
        stacks.append(images.astype(np.float32))
        names += [f"{i:06d}@Extract/m{s}.mrcs" for i in (5, 1, 3)]
    star = write_star31(tmp_path / "p.star", [GROUP_300],
                        particles_cols(names, rlnOpticsGroup=[1] * len(names)))
    particles = read_particles(star)
    rows = np.random.default_rng(0).integers(0, len(names), 300)
    got = particles.images[rows]
    fd = Path("/proc/self/fd")
    if fd.is_dir():  # no descriptor of this process points at a stack (others may come and go)
        open_files = []
        for entry in fd.iterdir():
            try:
                open_files.append(os.readlink(entry))
            except OSError:  # closed while listing
                continue
        # this test's stacks only: another test's failed read may keep its stack open in a
        # traceback pytest still holds until the garbage collector runs
        mine = [f for f in open_files if f.startswith(str(tmp_path)) and f.endswith(".mrcs")]
        assert not mine, open_files
    expected = np.stack([stacks[r // 3][(4, 0, 2)[r % 3]] for r in rows])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(particles.images[4:7],
                                  np.stack([stacks[1][0], stacks[1][2], stacks[2][4]]))


def test_star31_without_a_pixel_column_uses_the_voxel_size_and_a_given_one_wins(tmp_path,
                                                                                caplog):
    mrc_stack(tmp_path / "s.mrcs", n=2, voxel=1.25)
    cols = particles_cols(["000001@s.mrcs", "000002@s.mrcs"], rlnOpticsGroup=[1, 1],
                          rlnOriginX=[2.0, 0.0], rlnOriginY=[0.0, -4.0])
    text = write_star31(tmp_path / "p.star", [GROUP_300], cols).read_text()
    lines = [ln for ln in text.splitlines() if "rlnImagePixelSize" not in ln]
    optics_row = next(k for k, ln in enumerate(lines) if ln.startswith("opticsGroup1"))
    fields = lines[optics_row].split()
    lines[optics_row] = " ".join(fields[:7] + fields[8:])  # drop the pixel-size value too
    (tmp_path / "p.star").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO, logger="cryosip"):
        table = read_table(tmp_path / "p.star")
        assert table.pixel_size_angstrom == 1.25 and "voxel size" in caplog.text
        np.testing.assert_allclose(table.shift_angstrom, [[2.5, 0.0], [0.0, -5.0]])
        given = read_table(tmp_path / "p.star", pixel_size_angstrom=2.0)
    np.testing.assert_allclose(given.shift_angstrom, [[4.0, 0.0], [0.0, -8.0]])
    assert "pixel size 2 Å given" in caplog.text
