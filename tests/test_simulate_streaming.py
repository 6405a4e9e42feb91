"""Streaming simulate (issue 14 item 2): results independent of the block size, memory
independent of the number of images, and the block writers checked against other code
(``fractions`` for the exact sum, ``mrcfile`` and ``starfile`` for the files)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from fractions import Fraction

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryosip.datasets import parse_simulate_config, simulate_dataset
from cryosip.datasets.simulate import ExactSum
from cryosip.forward import ImageNuisance, Optics
from cryosip.io.mrc import StackWriter, create_stack
from cryosip.io.star import read_star, write_star

CONFIG = {
    "model": {"name": "hinge", "n_beads": 6},
    "truth": [{"kind": "gaussian", "weight": 0.5, "mean": [0.3], "std": [0.1]},
              {"kind": "uniform", "weight": 0.5, "low": [0.0], "high": [1.0]}],
    "n_images": 37, "box_size": 16, "pixel_size_angstrom": 3.0, "snr": 0.3,
    "defocus_angstrom": [10000, 20000], "astigmatism_angstrom": 300.0,
    "shift_std_angstrom": 2.0, "seed": 11,
}


def _data(path) -> np.ndarray:
    with mrcfile.open(path) as mrc:
        return np.array(mrc.data)


def _star_body(path) -> list[str]:
    return path.read_text().splitlines()[1:]  # line 1 is a comment with the writer's name


def test_block_size_does_not_change_the_data_set(tmp_path):
    out = {}
    for size in (5, 64):  # several blocks with a short last one; one padded block
        config = parse_simulate_config({**CONFIG, "render_batch_size": size})
        out[size] = simulate_dataset(config, tmp_path / f"b{size}", progress=False)
    stacks = {s: _data(tmp_path / f"b{s}" / "particles.mrcs") for s in out}
    assert stacks[5].shape == (37, 16, 16) and np.std(stacks[5]) > 0
    for size in (64,):
        np.testing.assert_array_equal(stacks[size], stacks[5])
        assert out[size].noise_std == out[5].noise_std
        assert _star_body(tmp_path / f"b{size}" / "particles.star") == _star_body(
            tmp_path / "b5" / "particles.star")
        a, b = (np.load(tmp_path / f"b{s}" / "truth.npz") for s in (5, size))
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    truth = np.load(tmp_path / "b5" / "truth.npz")
    table = read_star(tmp_path / "b5" / "particles.star")  # STAR rows = truth's nuisances
    np.testing.assert_array_equal(table.euler_deg.astype(np.float32), truth["euler_deg"])
    np.testing.assert_array_equal(table.defocus_v_angstrom.astype(np.float32),
                                  truth["defocus_v_angstrom"])
    assert truth["euler_deg"].shape == (37, 3) and truth["optics_group"].dtype == np.int32
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial folders
    assert sorted(p.name for p in (tmp_path / "b5").iterdir()) == [
        "config.yaml", "particles.mrcs", "particles.star", "provenance.json", "truth.npz"]


def test_exact_sum_is_the_exact_mean_in_any_blocks():
    rng = np.random.default_rng(0)
    values = (rng.lognormal(0, 8, 3001) * rng.choice([-1, 1], 3001)).astype(np.float32)
    values[:3] = [np.float32(1e-45), np.float32(3e38), np.float32(-3e38)]  # subnormal, huge
    exact = sum((Fraction(float(v)) for v in values), Fraction(0)) / len(values)
    for blocks in ([values], np.array_split(values, 7), np.array_split(values[::-1], 300)):
        s = ExactSum()
        for b in blocks:
            s.add(b)
        assert s.mean == float(exact)
    with pytest.raises(TypeError, match="float32"):
        ExactSum().add(np.ones(3))


def test_stack_writer_matches_mrcfile(tmp_path):
    images = np.random.default_rng(1).normal(size=(10, 8, 8)).astype(np.float32)
    with StackWriter(tmp_path / "w.mrcs", 10, 8, 2.5) as w:
        w.write(6, images[6:])
        w.write(0, images[:6] * 0)
        w.write(0, w.read(0, 6) + images[:6])  # read back, add, write again
        with pytest.raises(IndexError):
            w.write(8, images[:3])
    with mrcfile.open(tmp_path / "w.mrcs") as mrc:
        np.testing.assert_array_equal(mrc.data, images)
        assert mrc.is_image_stack() and float(mrc.voxel_size.x) == 2.5
        header = bytes(mrc.header.tobytes())
    mrc = create_stack(tmp_path / "c.mrcs", 10, 8, 2.5)  # the memory-mapped writer's header
    mrc.close()
    with mrcfile.open(tmp_path / "c.mrcs") as ref:
        expected = bytes(ref.header.tobytes())
    label = slice(224, 1024)  # labels hold the creation time
    assert header[label.start:] != b"" and header[:label.start] == expected[:label.start]


def test_write_star_in_blocks_is_starfiles_table(tmp_path):
    rng = np.random.default_rng(2)
    n = 25
    w = ImageNuisance.create(rng.uniform(-180, 180, (n, 3)).astype(np.float32),
                             shift_angstrom=rng.normal(size=(n, 2)).astype(np.float32),
                             defocus_u_angstrom=rng.uniform(1e4, 2e4, n).astype(np.float32))
    optics = Optics(b_factor_angstrom2=20.0)
    write_star(tmp_path / "one.star", w, optics, pixel_size_angstrom=1.5, box_size=16)
    blocks = [w.take(np.arange(a, min(a + 10, n))) for a in range(0, n, 10)]
    write_star(tmp_path / "blocks.star", iter(blocks), optics, pixel_size_angstrom=1.5,
               box_size=16)
    assert _star_body(tmp_path / "one.star") == _star_body(tmp_path / "blocks.star")
    parsed = starfile.read(tmp_path / "blocks.star", always_dict=True)
    particles: pd.DataFrame = parsed["particles"]
    assert particles["rlnImageName"].tolist() == [f"{i:06d}@particles.mrcs"
                                                  for i in range(1, n + 1)]
    np.testing.assert_array_equal(particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]]
                                  .to_numpy(np.float32), np.asarray(w.euler_deg))
    np.testing.assert_array_equal(particles["rlnCtfBfactor"], 20.0)
    assert parsed["optics"]["rlnImagePixelSize"].tolist() == [1.5]


_MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from cryosip.io.mrc import StackWriter, open_stack
    n, box = int(sys.argv[1]), 64
    block = np.ones((256, box, box), np.float32)
    with StackWriter(sys.argv[2], n, box, 1.0) as w:
        for start in range(0, n, 256):
            w.write(start, block[: min(256, n - start)])
            w.write(start, w.read(start, min(256, n - start)) * 2)
    open_stack(sys.argv[2]).close()  # the NaN scan reads every image
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _peak_kb(n: int, path) -> int:
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(n), str(path)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_writing_and_checking_a_stack_takes_memory_independent_of_its_length(tmp_path):
    small = _peak_kb(256, tmp_path / "s.mrcs")
    large = _peak_kb(12_800, tmp_path / "l.mrcs")  # 200 MB of images
    assert (tmp_path / "l.mrcs").stat().st_size > 200e6
    assert large - small < 40_000, (small, large)  # kB: far below the 200 MB written


STAR_TEXT = """# a RELION 3.1 file with the quirks starfile reads
data_optics

loop_
_rlnOpticsGroup #1
_rlnVoltage #2
_rlnSphericalAberration #3
_rlnAmplitudeContrast #4
_rlnImagePixelSize #5
_rlnImageSize #6
1 300.0 2.7 0.1 2.0 16
2 200.0 2.7 0.07 2.0 16


data_particles

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnAngleRot #3
_rlnAngleTilt #4
_rlnAnglePsi #5
_rlnOriginXAngst #6
_rlnOriginYAngst #7
_rlnDefocusU #8
_rlnDefocusV #9
_rlnOpticsGroup #10

{rows}
data_extra

_rlnSomething 3
"""


def _star(tmp_path, n: int, bad_row: int | None = None, name=None):
    rng = np.random.default_rng(4)
    rows = []
    for i in range(n):
        image = f"{i + 1:06d}@s{i % 3}.mrcs" if i % 4 else f"'{i + 1}@my stack.mrcs'"
        rot = "abc" if i == bad_row else f"{rng.uniform(-180, 180):.6f}"
        rows.append(f"{name or image} mic{i}.mrc {rot} {rng.uniform(0, 180):.5f} "
                    f"{rng.uniform(-180, 180):.4f} {rng.normal():.3f} {rng.normal():.3f} "
                    f"{rng.uniform(1e4, 2e4):.2f} {rng.uniform(1e4, 2e4):.2f} {1 + i % 2}")
        if i == n // 2:
            rows.append("# a comment inside the loop")
    path = tmp_path / f"p{n}.star"
    path.write_text(STAR_TEXT.format(rows="\n".join(rows)))
    return path


@pytest.mark.parametrize("block_bytes", [300, 8 << 20])
def test_particle_rows_read_in_blocks_equal_starfiles_table(tmp_path, monkeypatch, block_bytes):
    from cryosip.io import starloop

    monkeypatch.setattr(starloop, "CHUNK_BYTES", block_bytes)  # 300: ~3 rows a block
    path = _star(tmp_path, 41)
    table = read_star(path)
    ref = starfile.read(path, always_dict=True)["particles"]  # the whole table at once
    assert len(table) == len(ref) == 41
    assert list(table.image_names) == ref["rlnImageName"].tolist()
    assert table.image_names[5] == "000006@s2.mrcs"
    assert table.image_names[0] == "1@my stack.mrcs"  # a quoted name with a space
    np.testing.assert_array_equal(
        table.euler_deg, ref[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    np.testing.assert_array_equal(table.shift_angstrom,
                                  ref[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float))
    np.testing.assert_array_equal(table.defocus_v_angstrom, ref["rlnDefocusV"].to_numpy(float))
    assert table.optics_index.tolist() == (ref["rlnOpticsGroup"].to_numpy() - 1).tolist()


def test_bad_values_and_names_in_a_later_block_are_named(tmp_path, monkeypatch):
    from cryosip.errors import InputError
    from cryosip.io import starloop
    from cryosip.io.particles import split_image_names

    monkeypatch.setattr(starloop, "CHUNK_BYTES", 300)
    with pytest.raises(InputError, match=r"rlnAngleRot.*'abc' in row 30"):
        read_star(_star(tmp_path, 41, bad_row=29))
    path = _star(tmp_path, 12, name="7@s.mrcs")
    lines = path.read_text().splitlines()
    k = [i for i, s in enumerate(lines) if s.startswith("7@s.mrcs")][9]  # row 10
    lines[k] = lines[k].replace("7@s.mrcs", "0@s.mrcs", 1)
    path.write_text("\n".join(lines))
    table = read_star(path)
    with pytest.raises(InputError, match=r"'0@s.mrcs' in row 10"):
        split_image_names(path, table.image_names)


_READ_PROBE = textwrap.dedent("""
    import sys
    import starfile
    from cryosip.io import starloop
    from cryosip.io.star import read_star

    def peak_kb():
        with open("/proc/self/status") as fh:
            return next(int(s.split()[1]) for s in fh if s.startswith("VmHWM"))

    starloop.CHUNK_BYTES = 1 << 18
    read = {"cryosip": read_star,
            "starfile": lambda p: starfile.read(p, always_dict=True)["particles"]}[sys.argv[2]]
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak (VmHWM) restarts from the current resident memory
    before = peak_kb()
    print(len(read(sys.argv[1])), peak_kb() - before)
""")


def _read_peak_kb(path, reader: str) -> int:
    out = subprocess.run([sys.executable, "-c", _READ_PROBE, str(path), reader],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[1])


@pytest.mark.slow  # ~1 min: 2 x 10^5 rows written, then read in two fresh processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs")
def test_reading_a_large_star_file_takes_a_fraction_of_starfiles_memory(tmp_path):
    n = 200_000
    rng = np.random.default_rng(5)
    w = ImageNuisance.create(rng.uniform(-180, 180, (n, 3)).astype(np.float32),
                             defocus_u_angstrom=rng.uniform(1e4, 2e4, n).astype(np.float32))
    write_star(tmp_path / "big.star", w, Optics(), pixel_size_angstrom=2.0, box_size=16)
    ours, theirs = (_read_peak_kb(tmp_path / "big.star", r) for r in ("cryosip", "starfile"))
    table_kb = n * (9 * 8 + 8 + 9) / 1024  # float64 columns, group index, compact names
    assert theirs > 4 * table_kb  # starfile holds the lines and a table of strings
    assert ours < theirs / 2, (ours, theirs, table_kb)
