"""A catalogue of broken inputs fed to every CLI command: exit code 2, ONE line on stderr.

Each case writes a broken file (or passes a bad flag) beside an otherwise valid data set:
a 6-image 16-pixel stack and its RELION 3.1 STAR, both written here with ``mrcfile`` and
plain text (not cryosip's writers). Commands run in-process (``cli_main``); ``capfd``
captures file descriptors 1 and 2, so output from C libraries counts, and warnings and
log records at WARNING or above count as stderr lines too (a real run prints them).

Nothing here may start a flow: an autouse fixture replaces the first heavy step of every
command (``prepare_data``, ``run_toy``, ``run_demo``, simulate's ``simulation_operator``) by
one that raises :class:`InputsAccepted`, so a broken input that slips past the checks fails its
test at once instead of running. ``test_control_reaches_the_work`` shows that the valid
data set does get that far.

argparse's own usage errors (an unknown choice, a missing required option, a value that
is not a number) exit 2 with TWO lines (usage, then the error): that is argparse's format
and accepted for argparse-level errors only (:func:`test_argparse_usage_errors`).
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pytest

N_IMAGES, BOX, PIXEL = 6, 16, 2.5


class InputsAccepted(Exception):  # noqa: N818 - a signal, not an error of the code
    """Raised where the real command would start its work: the inputs passed every check."""


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    def accepted(*args, **kwargs):
        raise InputsAccepted

    monkeypatch.setattr("cryosip.pipeline.reconstruct.prepare_data", accepted)
    monkeypatch.setattr("cryosip.pipeline.baseline.prepare_data", accepted)
    monkeypatch.setattr("cryosip.pipeline.demo.run_demo", accepted)
    monkeypatch.setattr("cryosip.problems.runner.run_toy", accepted)
    monkeypatch.setattr("cryosip.datasets.simulate.simulation_operator", accepted)


# --------------------------------------------------------------------------- data set

OPTICS = """
data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
1 opticsGroup1 300.0 2.7 0.1 {pixel} {box} 2
"""

COLUMNS = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnAngleRot",
           "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
           "rlnOpticsGroup")


def star_text(rows: list[list[str]], columns=COLUMNS, optics: bool = True) -> str:
    head = OPTICS.format(pixel=PIXEL, box=BOX) if optics else ""
    loop = "\n".join(f"_{c} #{i}" for i, c in enumerate(columns, start=1))
    body = "\n".join(" ".join(r) for r in rows)
    return f"# version 30001\n{head}\n# version 30001\n\ndata_particles\n\nloop_\n{loop}\n{body}\n"


def good_rows(n: int = N_IMAGES, stack: str = "particles.mrcs") -> list[list[str]]:
    return [[f"{i:06d}@{stack}", "15000.0", "14500.0", "30.0", f"{10.0 * i}", "45.0", "20.0",
             "1.0", "-2.0", "1"] for i in range(1, n + 1)]


def write_mrcs(path: Path, images: np.ndarray) -> Path:
    with warnings.catch_warnings():  # mrcfile warns when asked to write NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(images.astype(np.float32))
            mrc.set_image_stack()
            mrc.voxel_size = PIXEL
    return path


def dataset(folder: Path) -> Path:
    """The valid data set: ``particles.star`` + ``particles.mrcs``; returns the STAR."""
    rng = np.random.default_rng(0)
    write_mrcs(folder / "particles.mrcs", rng.normal(size=(N_IMAGES, BOX, BOX)))
    (folder / "particles.star").write_text(star_text(good_rows()))
    return folder / "particles.star"


# --------------------------------------------------------------------------- catalogue
# Each builder breaks something in ``folder`` (which holds the valid data set) and returns
# the particle file to pass.

def _missing(folder):
    return folder / "nothing.star"


def _directory(folder):
    (folder / "dir.star").mkdir()
    return folder / "dir.star"


def _empty(folder):
    (folder / "empty.star").write_bytes(b"")
    return folder / "empty.star"


def _binary_garbage(folder):
    (folder / "garbage.star").write_bytes(np.random.default_rng(1).bytes(4000))
    return folder / "garbage.star"


def _no_particles_table(folder):
    (folder / "optics_only.star").write_text("# version 30001\n" + OPTICS.format(pixel=PIXEL,
                                                                                box=BOX))
    return folder / "optics_only.star"


def _drop_column(name: str) -> Callable[[Path], Path]:
    def build(folder):
        k = COLUMNS.index(name)
        rows = [r[:k] + r[k + 1:] for r in good_rows()]
        columns = COLUMNS[:k] + COLUMNS[k + 1:]
        (folder / f"no_{name}.star").write_text(star_text(rows, columns))
        return folder / f"no_{name}.star"
    return build


def _non_numeric(folder):
    rows = good_rows()
    rows[2][1] = "fifteen_thousand"
    (folder / "text.star").write_text(star_text(rows))
    return folder / "text.star"


def _truncated_stack(folder):
    data = (folder / "particles.mrcs").read_bytes()
    (folder / "particles.mrcs").write_bytes(data[:-300])
    return folder / "particles.star"


def _gzipped_stack_same_name(folder):
    data = (folder / "particles.mrcs").read_bytes()
    (folder / "particles.mrcs").write_bytes(gzip.compress(data))
    return folder / "particles.star"


def _gzipped_stack_gz_name(folder):
    data = (folder / "particles.mrcs").read_bytes()
    (folder / "particles.mrcs.gz").write_bytes(gzip.compress(data))
    (folder / "gz.star").write_text(star_text(good_rows(stack="particles.mrcs.gz")))
    return folder / "gz.star"


def _nan_pixels(folder):
    images = np.random.default_rng(2).normal(size=(N_IMAGES, BOX, BOX))
    images[3, 4, 5] = np.nan
    write_mrcs(folder / "particles.mrcs", images)
    return folder / "particles.star"


def _index_past_end(folder):
    rows = good_rows()
    rows[-1][0] = f"{N_IMAGES + 3:06d}@particles.mrcs"
    (folder / "past_end.star").write_text(star_text(rows))
    return folder / "past_end.star"


def _missing_stack(folder):
    (folder / "particles.mrcs").unlink()
    return folder / "particles.star"


def _volume_not_stack(folder):
    with mrcfile.new(folder / "particles.mrcs", overwrite=True) as mrc:
        mrc.set_data(np.zeros((N_IMAGES, BOX, BOX + 2), np.float32))
    return folder / "particles.star"


def _garbage_cs(folder):
    (folder / "garbage.cs").write_bytes(np.random.default_rng(3).bytes(3000))
    return folder / "garbage.cs"


def _cs_plain_array(folder):
    with open(folder / "plain.cs", "wb") as fh:
        np.save(fh, np.zeros((4, 3)))
    return folder / "plain.cs"


def _cs_without_blob(folder):
    rows = np.zeros(3, dtype=[("uid", "<u8"), ("ctf/df1_A", "<f4")])
    with open(folder / "noblob.cs", "wb") as fh:
        np.save(fh, rows)
    return folder / "noblob.cs"


def _cs_pickled(folder):
    with open(folder / "pickled.cs", "wb") as fh:
        np.save(fh, np.array([{"blob/path": "a.mrc"}], dtype=object), allow_pickle=True)
    return folder / "pickled.cs"


STAR_CASES = {
    "missing file": _missing,
    "directory": _directory,
    "empty file": _empty,
    "binary garbage as STAR": _binary_garbage,
    "no particles table": _no_particles_table,
    "no rlnImageName": _drop_column("rlnImageName"),
    "no rlnDefocusU": _drop_column("rlnDefocusU"),
    "non-numeric defocus": _non_numeric,
}
STACK_CASES = {  # the STAR is fine, its stack is not (or not for these rows)
    "index past the stack end": _index_past_end,
    "truncated .mrcs": _truncated_stack,
    "gzipped bytes named .mrcs": _gzipped_stack_same_name,
    "stack named .mrcs.gz": _gzipped_stack_gz_name,
    "NaN pixels": _nan_pixels,
    "missing stack": _missing_stack,
    "not square": _volume_not_stack,
}
CS_CASES = {
    "garbage .cs": _garbage_cs,
    ".cs of a plain array": _cs_plain_array,
    ".cs without blob fields": _cs_without_blob,
    ".cs needing pickle": _cs_pickled,
    "missing .cs": lambda folder: folder / "nothing.cs",
    "directory .cs": lambda folder: (folder / "d.cs").mkdir() or folder / "d.cs",
}


def particle_argv(command: str, particles: Path, folder: Path) -> list[str]:
    out = str(folder / "run")
    return {"reconstruct": ["reconstruct", "--particles", str(particles), "--out", out,
                            "--no-progress"],
            "baseline": ["baseline", "--method", "reweight", "--particles", str(particles),
                         "--out", out],
            "inspect": ["inspect", str(particles), "--json"],
            "convert": ["convert", str(particles), str(folder / "out.star")]}[command]


# --------------------------------------------------------------------------- checks

_SILENT_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                      ResourceWarning)
"""Warning categories Python's default filters do not print (outside ``__main__``)."""


def _would_print(record: logging.LogRecord) -> bool:
    """Whether a real run prints ``record``: no handler of its own on the way to the root
    (pytest's aside), so Python's last-resort handler writes it to stderr."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(not type(h).__module__.startswith("_pytest") for h in logger.handlers):
            return False  # its own handler: on stderr (so in capfd already) or silenced
        logger = logger.parent if logger.propagate else None
    return True


def run_cli(main, argv: list[str], capfd, caplog) -> tuple[int, list[str], str]:
    """``(exit code, stderr lines + printed warnings and log records, stdout)``."""
    capfd.readouterr()
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    lines += [f"warning: {w.message}" for w in caught
              if not issubclass(w.category, _SILENT_BY_DEFAULT)]
    lines += [f"log: {r.getMessage()}" for r in caplog.records
              if r.levelno >= logging.WARNING and _would_print(r)]
    return code, lines, out


def assert_one_line_error(main, argv, capfd, caplog, *expected: str) -> str:
    code, lines, _ = run_cli(main, argv, capfd, caplog)
    assert not any("Traceback" in ln for ln in lines), lines
    assert code == 2, (code, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cryosip {argv[0]}: error: "), lines[0]
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.mark.parametrize("command", ["reconstruct", "baseline", "inspect"])
@pytest.mark.parametrize("case", list(STAR_CASES))
def test_broken_star(tmp_path, capfd, caplog, cli_main, command, case):
    dataset(tmp_path)
    particles = STAR_CASES[case](tmp_path)
    line = assert_one_line_error(cli_main, particle_argv(command, particles, tmp_path),
                                 capfd, caplog)
    assert particles.name in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["reconstruct", "baseline"])
@pytest.mark.parametrize("case", list(STACK_CASES))
def test_broken_stack(tmp_path, capfd, caplog, cli_main, command, case):
    dataset(tmp_path)
    particles = STACK_CASES[case](tmp_path)
    line = assert_one_line_error(cli_main, particle_argv(command, particles, tmp_path),
                                 capfd, caplog)
    assert ".mrcs" in line or "particles.star" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", list(STACK_CASES))
def test_inspect_reports_broken_stacks(tmp_path, capfd, caplog, cli_main, case):
    """``inspect`` reads no pixels it need not: a bad stack is reported, or one line, exit 2."""
    import json

    dataset(tmp_path)
    particles = STACK_CASES[case](tmp_path)
    code, lines, out = run_cli(cli_main, particle_argv("inspect", particles, tmp_path),
                               capfd, caplog)
    assert not any("Traceback" in ln for ln in lines), lines
    if code == 0:
        stacks = json.loads(out)["stacks"]
        if case != "NaN pixels":  # the NaN scan is left to the commands that read pixels
            assert any(not s["readable"] or s.get("error") for s in stacks), stacks
    else:
        assert code == 2 and len(lines) == 1, (code, lines)


@pytest.mark.parametrize("command", ["reconstruct", "baseline", "inspect", "convert"])
@pytest.mark.parametrize("case", list(CS_CASES))
def test_broken_cs(tmp_path, capfd, caplog, cli_main, command, case):
    particles = CS_CASES[case](tmp_path)
    line = assert_one_line_error(cli_main, particle_argv(command, particles, tmp_path),
                                 capfd, caplog)
    assert particles.name in line
    assert not (tmp_path / "out.star").exists() and not (tmp_path / "run").exists()


class _WritesAFile:
    """Unpickling this would create ``pwned`` in the current folder."""

    def __reduce__(self):
        return (open, ("pwned", "w"))


def _pickles(folder: Path) -> dict[str, Path]:
    (folder / "garbage.pkl").write_bytes(np.random.default_rng(4).bytes(500))
    with open(folder / "dict.pkl", "wb") as fh:
        pickle.dump({"rot": [1, 2, 3]}, fh)
    with open(folder / "evil.pkl", "wb") as fh:
        pickle.dump((np.eye(3)[None], _WritesAFile()), fh)
    (folder / "empty.pkl").write_bytes(b"")
    with open(folder / "ragged.pkl", "wb") as fh:  # a pose pickle where a CTF array belongs
        pickle.dump((np.zeros((N_IMAGES, 3, 3)), np.zeros((N_IMAGES, 2))), fh)
    return {"garbage": folder / "garbage.pkl", "not numpy": folder / "dict.pkl",
            "code": folder / "evil.pkl", "empty": folder / "empty.pkl",
            "missing": folder / "nothing.pkl", "wrong kind": folder / "ragged.pkl"}


@pytest.mark.parametrize(("which", "case"), [
    (which, case) for which in ("poses", "ctf")
    for case in ("garbage", "not numpy", "code", "empty", "missing", "wrong kind")
    if (which, case) != ("poses", "wrong kind")])  # a pose pickle is right for --poses
def test_broken_cryodrgn_pickles(tmp_path, capfd, caplog, cli_main, monkeypatch, which, case):
    dataset(tmp_path)
    bad = _pickles(tmp_path)[case]
    poses, ctf = tmp_path / "poses.pkl", tmp_path / "ctf.pkl"
    with open(poses, "wb") as fh:
        pickle.dump((np.tile(np.eye(3), (N_IMAGES, 1, 1)), np.zeros((N_IMAGES, 2))), fh)
    with open(ctf, "wb") as fh:  # cryoDRGN's (n, 9): D, Apix, dfU, dfV, angle, kV, Cs, w, phase
        pickle.dump(np.tile([BOX, PIXEL, 1.5e4, 1.4e4, 30.0, 300.0, 2.7, 0.1, 0.0],
                            (N_IMAGES, 1)).astype(np.float32), fh)
    argv = ["convert", str(tmp_path / "out.star"), "--stack", str(tmp_path / "particles.mrcs"),
            "--poses", str(bad if which == "poses" else poses),
            "--ctf", str(bad if which == "ctf" else ctf)]
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli_main, argv, capfd, caplog, bad.name)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.star").exists()


# --------------------------------------------------------------------------- models

def _pdb_one_model(folder: Path) -> Path:
    lines = [f"ATOM  {i:5d}  CA  ALA A{i:4d}    {3.8 * i:8.3f}{0.0:8.3f}{0.0:8.3f}"
             f"  1.00 20.00           C" for i in range(1, 6)]
    (folder / "one.pdb").write_text("\n".join(lines) + "\nEND\n")
    return folder / "one.pdb"


def _pdb_garbage(folder: Path) -> Path:
    (folder / "garbage.pdb").write_bytes(np.random.default_rng(5).bytes(2000))
    return folder / "garbage.pdb"


def _pdb_unequal_models(folder: Path) -> Path:
    atom = "ATOM  {0:5d}  CA  ALA A{0:4d}    {1:8.3f}   0.000   0.000  1.00 20.00           C"
    text = ("MODEL        1\n" + "\n".join(atom.format(i, 3.8 * i) for i in range(1, 5))
            + "\nENDMDL\nMODEL        2\n" + "\n".join(atom.format(i, 3.9 * i) for i in range(1, 4))
            + "\nENDMDL\nEND\n")
    (folder / "unequal.pdb").write_text(text)
    return folder / "unequal.pdb"


MODEL_CASES = {
    "PDB with one model": (_pdb_one_model, "one.pdb"),
    "PDB of garbage": (_pdb_garbage, "garbage.pdb"),
    "PDB models of unequal size": (_pdb_unequal_models, "unequal.pdb"),
    "missing PDB": (lambda folder: folder / "nothing.pdb", "nothing.pdb"),
    "unknown model name": (lambda folder: "adk-pathway", "adk-pathway"),
}


@pytest.mark.parametrize("command", ["reconstruct", "baseline"])
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_broken_model(tmp_path, capfd, caplog, cli_main, command, case):
    star = dataset(tmp_path)
    build, named = MODEL_CASES[case]
    argv = particle_argv(command, star, tmp_path) + ["--model", str(build(tmp_path))]
    assert_one_line_error(cli_main, argv, capfd, caplog, named)


# --------------------------------------------------------------------------- configs

@pytest.mark.parametrize(("case", "text", "named"), [
    ("broken YAML", "model: hinge\ntruth: [unclosed\n  - x: : :\n", "bad.yaml"),
    ("not a mapping", "- just\n- a list\n", "bad.yaml"),
    ("unknown key", "model: hinge\ntruth:\n  - {kind: uniform, low: [0.0], high: [1.0]}\n"
                    "n_images: 4\nbox_size: 16\npixel_size_angstrom: 2.0\nsnr: 1.0\n"
                    "frobnicate: 1\n", "frobnicate"),
    ("binary", None, "bad.yaml"),
])
def test_broken_simulate_config(tmp_path, capfd, caplog, cli_main, case, text, named):
    config = tmp_path / "bad.yaml"
    if text is None:
        config.write_bytes(np.random.default_rng(6).bytes(300))
    else:
        config.write_text(text)
    argv = ["simulate", "--config", str(config), "--out", str(tmp_path / "out")]
    assert_one_line_error(cli_main, argv, capfd, caplog, named)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing", "directory", "empty"])
def test_simulate_config_file_itself(tmp_path, capfd, caplog, cli_main, case):
    config = tmp_path / "c.yaml"
    if case == "directory":
        config.mkdir()
    elif case == "empty":
        config.write_text("")
    argv = ["simulate", "--config", str(config), "--out", str(tmp_path / "out")]
    assert_one_line_error(cli_main, argv, capfd, caplog, "c.yaml")


# --------------------------------------------------------------------------- evaluate

def _run_folder(folder: Path, ensemble: bytes | None) -> Path:
    run = folder / "run"
    run.mkdir()
    if ensemble is not None:
        (run / "ensemble.npz").write_bytes(ensemble)
    return run


@pytest.mark.parametrize("case", ["missing folder", "a file", "empty folder", "garbage npz",
                                  "npz without positions"])
def test_broken_run_folder(tmp_path, capfd, caplog, cli_main, case):
    if case == "missing folder":
        run = tmp_path / "nowhere"
    elif case == "a file":
        run = tmp_path / "file"
        run.write_text("x")
    elif case == "empty folder":
        run = _run_folder(tmp_path, None)
    elif case == "garbage npz":
        run = _run_folder(tmp_path, np.random.default_rng(7).bytes(500))
    else:
        run = _run_folder(tmp_path, b"")
        np.savez(run / "ensemble.npz", weights=np.ones(3))
    assert_one_line_error(cli_main, ["evaluate", "--run", str(run), "--no-heldout"], capfd,
                          caplog)


@pytest.mark.parametrize("case", ["missing", "pickle", "garbage"])
def test_broken_truth(tmp_path, capfd, caplog, cli_main, case):
    run = _run_folder(tmp_path, None)
    np.savez(run / "ensemble.npz", positions=np.full((4, 1), 0.5), weights=np.full(4, 0.25))
    truth = tmp_path / "truth.npz"
    if case == "pickle":
        with open(truth, "wb") as fh:
            pickle.dump({"x": np.zeros((3, 1))}, fh)
    elif case == "garbage":
        truth.write_bytes(np.random.default_rng(8).bytes(400))
    argv = ["evaluate", "--run", str(run), "--truth", str(truth), "--no-heldout"]
    assert_one_line_error(cli_main, argv, capfd, caplog, "truth.npz")


# --------------------------------------------------------------------------- flags

@pytest.mark.parametrize(("command", "flag", "value"), [
    ("reconstruct", "--n-particles", "0"), ("reconstruct", "--steps", "-3"),
    ("reconstruct", "--pixel-size", "0"), ("reconstruct", "--pixel-size", "-1.5"),
    ("reconstruct", "--noise-std", "-1"), ("reconstruct", "--n-draws", "0"),
    ("reconstruct", "--max-displacement", "0"), ("reconstruct", "--flow-box", "4"),
    ("reconstruct", "--batch-size", "0"), ("reconstruct", "--step-size", "-0.1"),
    ("reconstruct", "--temperature", "-1"), ("reconstruct", "--mmd-bandwidth", "0"),
    ("baseline", "--n-support", "0"), ("baseline", "--n-components", "0"),
    ("baseline", "--pixel-size", "-2"), ("baseline", "--noise-std", "0"),
    ("baseline", "--flow-box", "-8"), ("baseline", "--prior-concentration", "-1"),
    ("toy", "--n-obs", "0"), ("toy", "--n-particles", "-1"), ("toy", "--steps", "0"),
    ("inspect", "--pixel-size", "0"), ("inspect", "--pixel-size", "-1"),
    ("convert", "--pixel-size", "-1"),
])
def test_bad_numeric_flags(tmp_path, capfd, caplog, cli_main, command, flag, value):
    if command == "toy":
        argv = ["toy", "--out", str(tmp_path / "toy")]
    elif command == "convert":
        argv = ["convert", str(_cs_for_convert(tmp_path)), str(tmp_path / "out.star")]
    else:
        argv = particle_argv(command, dataset(tmp_path), tmp_path)
    assert_one_line_error(cli_main, argv + [flag, value], capfd, caplog, f"field {flag}:")


def _cs_for_convert(folder: Path) -> Path:
    """A valid two-particle .cs (stacks need not exist for convert)."""
    dtype = [("blob/path", "S20"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
             ("blob/shape", "<u4", (2,)), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
             ("ctf/df_angle_rad", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
             ("ctf/amp_contrast", "<f4"), ("ctf/phase_shift_rad", "<f4")]
    rows = np.array([(b"J1/a.mrc", i, PIXEL, (BOX, BOX), 1.5e4, 1.4e4, 0.5, 300, 2.7, 0.1, 0)
                     for i in range(2)], dtype=dtype)
    with open(folder / "ok.cs", "wb") as fh:
        np.save(fh, rows)
    return folder / "ok.cs"


@pytest.mark.parametrize("command", ["toy", "demo", "reconstruct", "baseline", "simulate"])
def test_out_is_a_file(tmp_path, capfd, caplog, cli_main, command):
    """``--out`` naming an existing file, not a folder."""
    out = tmp_path / "taken"
    out.write_text("mine")
    if command == "toy":
        argv = ["toy", "--out", str(out)]
    elif command == "demo":
        argv = ["demo", "--out", str(out), "--size", "tiny"]
    elif command == "simulate":
        config = tmp_path / "ok.yaml"
        config.write_text("model: hinge\ntruth:\n  - {kind: uniform, low: [0.0], high: [1.0]}\n"
                          "n_images: 4\nbox_size: 16\npixel_size_angstrom: 2.0\nsnr: 1.0\n")
        argv = ["simulate", "--config", str(config), "--out", str(out)]
    else:
        argv = particle_argv(command, dataset(tmp_path), tmp_path)
        argv[argv.index("--out") + 1] = str(out)
    assert_one_line_error(cli_main, argv, capfd, caplog, "taken")
    assert out.read_text() == "mine"


@pytest.mark.parametrize("argv", [
    ["reconstruct", "--particles", "p.star"],                   # --out missing
    ["reconstruct", "--particles", "p.star", "--out", "o", "--steps", "many"],
    ["baseline", "--method", "magic", "--particles", "p.star", "--out", "o"],
    ["demo", "--size", "huge"],
    ["toy", "--out", "o", "--problem", "z"],
    ["frobnicate"],
])
def test_argparse_usage_errors(capfd, caplog, cli_main, argv):
    """argparse's own errors: exit 2, ``usage:`` then ``error:`` (two lines, by design)."""
    code, lines, _ = run_cli(cli_main, argv, capfd, caplog)
    assert code == 2
    assert not any("Traceback" in ln for ln in lines), lines
    text = "\n".join(lines)
    assert "usage: cryosip" in text and "error:" in text
    assert len([ln for ln in lines if "error:" in ln]) == 1


def test_control_reaches_the_work(tmp_path, capfd, caplog, cli_main):
    """The valid data set passes every check and reaches the (replaced) first heavy step."""
    star = dataset(tmp_path)
    for command in ("reconstruct", "baseline"):
        with pytest.raises(InputsAccepted):
            cli_main(particle_argv(command, star, tmp_path) + ["--model", "hinge"])
    code, lines, out = run_cli(cli_main, ["inspect", str(star), "--json"], capfd, caplog)
    assert code == 0 and '"n_particles": 6' in out, (code, lines, out)
    assert os.path.isfile(star)


def test_real_process_prints_one_line(tmp_path):
    """The same in a fresh interpreter, where import-time warnings and log lines would show:
    two commands, one line each."""
    import subprocess
    import sys

    script = ("import sys; from cryosip.cli.main import main; sys.exit(max(\n"
              "main(['reconstruct', '--particles', 'nothing.star', '--out', 'run']),\n"
              "main(['baseline', '--method', 'gmm', '--particles', 'nothing.cs',\n"
              "      '--out', 'run'])))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("cryosip reconstruct: error: nothing.star")
    assert lines[1].startswith("cryosip baseline: error: nothing.cs")
