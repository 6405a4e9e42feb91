"""Bad input gives one line naming the file and the field, and writes nothing.

The particle-file checks run at the reader boundary (:func:`cryosip.io.read_particles`,
:func:`cryosip.io.open_stack`): every command that reads particles goes through them.
The config checks run through ``cryosip simulate`` in-process (exit code 2).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import jax.numpy as jnp
import mrcfile
import numpy as np
import pytest
import starfile
import yaml

from cryosip.errors import InputError
from cryosip.forward import ImageNuisance, Optics
from cryosip.io import open_stack, read_particles, write_stack, write_star

BASE = {"model": "hinge", "truth": [{"kind": "uniform", "low": [0.0], "high": [1.0]}],
        "n_images": 4, "box_size": 16, "pixel_size_angstrom": 2.0, "snr": 1.0}


def make_dataset(folder: Path, n: int = 6, n_rows: int | None = None) -> Path:
    write_stack(folder / "particles.mrcs", np.ones((n, 8, 8), np.float32), 2.0)
    rows = n if n_rows is None else n_rows
    nuisance = ImageNuisance.create(jnp.zeros((rows, 3)), defocus_u_angstrom=15000.0)
    write_star(folder / "particles.star", nuisance, Optics(), pixel_size_angstrom=2.0,
               box_size=8)
    return folder / "particles.star"


def one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(err.value)
    assert "\n" not in text
    for part in parts:
        assert part in text, (part, text)
    return text


def test_truncated_stack(tmp_path):
    star = make_dataset(tmp_path)
    data = (tmp_path / "particles.mrcs").read_bytes()
    (tmp_path / "particles.mrcs").write_bytes(data[:-100])
    with pytest.raises(InputError) as err:
        read_particles(star)
    one_line(err, "particles.mrcs", "field data", "truncated")


def test_star_missing_column(tmp_path):
    star = make_dataset(tmp_path)
    blocks = starfile.read(star)
    blocks["particles"] = blocks["particles"].drop(columns=["rlnDefocusU"])
    starfile.write(blocks, star)
    with pytest.raises(InputError) as err:
        read_particles(star)
    one_line(err, "particles.star", "field rlnDefocusU", "a column")


def test_star_missing_optics_column(tmp_path):
    star = make_dataset(tmp_path)
    blocks = starfile.read(star)
    blocks["optics"] = blocks["optics"].drop(columns=["rlnVoltage"])
    starfile.write(blocks, star)
    with pytest.raises(InputError) as err:
        read_particles(star)
    one_line(err, "particles.star", "field rlnVoltage")


def test_star_subset_of_stack_is_accepted(tmp_path):
    star = make_dataset(tmp_path, n=6, n_rows=5)
    assert len(read_particles(star)) == 5


def test_star_index_beyond_stack(tmp_path):
    star = make_dataset(tmp_path, n=6, n_rows=7)
    with pytest.raises(InputError) as err:
        read_particles(star)
    one_line(err, "particles.star", "rlnImageName", "index 7 in row 7", "6 images")


def test_nan_pixels(tmp_path):
    star = make_dataset(tmp_path)
    images = np.ones((6, 8, 8), np.float32)
    images[4, 2, 3] = np.nan
    with warnings.catch_warnings():  # mrcfile warns about the NaN it is asked to write
        warnings.simplefilter("ignore", RuntimeWarning)
        write_stack(tmp_path / "particles.mrcs", images, 2.0)
    with pytest.raises(InputError) as err:
        read_particles(star)
    one_line(err, "particles.mrcs", "field pixels", "image 4")


def test_nan_in_star(tmp_path):
    star = make_dataset(tmp_path)
    blocks = starfile.read(star)
    blocks["particles"].loc[2, "rlnAngleTilt"] = np.nan
    starfile.write(blocks, star)
    with pytest.raises(InputError) as err:
        read_particles(star)
    one_line(err, "particles.star", "field rlnAngleTilt", "row 3")


def test_wrong_dimension_and_missing_stack(tmp_path):
    with mrcfile.new(tmp_path / "vol.mrcs") as mrc:
        mrc.set_data(np.zeros((4, 8, 6), np.float32))
    with pytest.raises(InputError) as err:
        open_stack(tmp_path / "vol.mrcs")
    one_line(err, "vol.mrcs", "field shape", "square")
    star = make_dataset(tmp_path)
    (tmp_path / "particles.mrcs").unlink()
    with pytest.raises(InputError) as err:
        read_particles(star)
    one_line(err, "particles.star", "rlnImageName", "missing")


@pytest.mark.parametrize(("change", "field"), [
    ({"frobnicate": 1}, "field frobnicate"),
    ({"truth": [{"kind": "uniform", "low": [0.0], "high": [1.0], "mode": 2}]}, "truth.0.mode"),
    ({"optics": {"voltage": 300}}, "optics.voltage"),
    ({"model": "nothing"}, "field model"),
    ({"n_images": 0}, "field n_images"),
    ({"truth": [{"kind": "beta", "a": [2.0, 2.0], "b": [2.0, 2.0]}]}, "field truth"),
])
def test_cli_bad_config(tmp_path, capsys, cli_main, change, field):
    main = cli_main

    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**BASE, **change}))
    out = tmp_path / "out"
    assert main(["simulate", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml" in err and field in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_bad_config_library_boundary(tmp_path):
    """The same check without the CLI: an unknown key names the file and the key."""
    from cryosip.datasets import load_simulate_config

    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**BASE, "frobnicate": 1}))
    with pytest.raises(InputError) as err:
        load_simulate_config(config)
    one_line(err, "bad.yaml", "field frobnicate", "expected a known key", "'frobnicate'")
