"""``cryosip inspect``: what was understood from a particle file, checked against the numbers
written into a RELION-style fixture (computed here from those numbers, not by cryosip)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_readers import GROUP_300, mrc_stack, particles_cols, write_star31

GROUP_200 = (3, 200.0, 1.4, 0.07, 1.77, 8)
UNUSED = (2, 120.0, 0.0, 0.2, 9.99, 512)


def project(tmp_path):
    """A RELION project: Refine3D/job012/run_data.star naming two Extract stacks, one gone."""
    mrc_stack(tmp_path / "Extract" / "job007" / "Micrographs" / "a.mrcs", n=6)
    names = ["000006@Extract/job007/Micrographs/a.mrcs", "000002@Extract/job007/Micrographs/a.mrcs",
             "000001@Extract/job007/Micrographs/gone.mrcs"]
    shifts = {"rlnOriginXAngst": [3.0, -1.0, 0.5], "rlnOriginYAngst": [4.0, 0.0, -0.5]}
    cols = particles_cols(names, rlnOpticsGroup=[3, 1, 3], **shifts)
    star = write_star31(tmp_path / "Refine3D" / "job012" / "run_data.star",
                        [GROUP_300, UNUSED, GROUP_200], cols)
    return star, cols


def test_inspect_json_reports_what_was_read(tmp_path, cli_main, capsys):
    star, cols = project(tmp_path)
    assert cli_main(["inspect", str(star), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    mean = 0.5 * (np.array(cols["rlnDefocusU"]) + np.array(cols["rlnDefocusV"]))
    shift = np.hypot(cols["rlnOriginXAngst"], cols["rlnOriginYAngst"])
    assert (out["n_particles"], out["box_size"], out["poses"]) == (3, 8, True)
    np.testing.assert_allclose(out["pixel_size_angstrom"], 1.77, rtol=1e-12)
    np.testing.assert_allclose(out["shift_angstrom_max"], shift.max(), rtol=1e-12)
    np.testing.assert_allclose(out["defocus_angstrom"], [mean.min(), mean.max()], rtol=1e-12)
    assert out["optics_groups"] == [
        {"group": 1, "voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1,
         "pixel_size_angstrom": 1.77, "n_particles": 1},
        {"group": 3, "voltage_kv": 200.0, "cs_mm": 1.4, "amplitude_contrast": 0.07,
         "pixel_size_angstrom": 1.77, "n_particles": 2}]
    a, gone = out["stacks"]
    assert (a["n_images"], a["readable"], a["n_referenced"], a["max_index"]) == (6, True, 2, 6)
    assert a["path"] == str(tmp_path / "Extract" / "job007" / "Micrographs" / "a.mrcs")
    assert (gone["n_images"], gone["readable"]) == (None, False)
    assert "missing" in gone["error"]


def test_inspect_table_and_flags(tmp_path, cli_main, capsys):
    star, _ = project(tmp_path)
    assert cli_main(["inspect", str(star), "--pixel-size", "2.0"]) == 0
    text = capsys.readouterr().out
    assert "3 particles" in text and "2 Å/px" in text and "optics group" in text
    assert "gone.mrcs" in text and "missing" in text
    (tmp_path / "dd").mkdir()
    mrc_stack(tmp_path / "dd" / "gone.mrcs", n=1)
    assert cli_main(["inspect", str(star), "--json", "--datadir", str(tmp_path / "dd")]) == 0
    stacks = json.loads(capsys.readouterr().out)["stacks"]
    assert [s["readable"] for s in stacks] == [True, True]


def test_inspect_a_file_it_cannot_understand_exits_2_with_one_line(tmp_path, cli_main, capsys):
    bad = (3, 200.0, 1.4, 0.07, 1.5, 8)  # used groups that differ in pixel size
    star = write_star31(tmp_path / "p.star", [GROUP_300, bad],
                        particles_cols(["000001@s.mrcs", "000002@s.mrcs"],
                                       rlnOpticsGroup=[1, 3]))
    (tmp_path / "junk.star").write_bytes(b"\x00\x01 not a star file")
    for path in (star, tmp_path / "junk.star", tmp_path / "absent.star"):
        assert cli_main(["inspect", str(path), "--json"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
        assert captured.err.startswith("cryosip inspect: error: ")


@pytest.mark.parametrize("command", [["reconstruct"], ["baseline", "--method", "reweight"]])
def test_datadir_and_pixel_size_reach_the_reader(tmp_path, cli_main, capsys, command):
    """The flags are passed through: the reader's error names the --datadir place tried."""
    star, _ = project(tmp_path)
    (tmp_path / "dd").mkdir()
    argv = [*command, "--particles", str(star), "--out", str(tmp_path / "run"),
            "--datadir", str(tmp_path / "dd"), "--pixel-size", "1.77"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert str(tmp_path / "dd" / "gone.mrcs") in err
    assert cli_main([*command, "--particles", str(star), "--out", str(tmp_path / "r2"),
                     "--pixel-size", "-1"]) == 2
    assert "--pixel-size" in capsys.readouterr().err
