"""Atomic writes (cryosip.provenance): the file appears whole, with an ordinary file's mode."""

from __future__ import annotations

import os
import stat

from cryosip.provenance import atomic_write_text


def test_atomic_write_gives_the_mode_open_would(tmp_path):
    path = tmp_path / "summary.json"
    old = os.umask(0o022)
    try:
        atomic_write_text(path, "{}\n")
        (tmp_path / "plain.txt").write_text("x")  # what an ordinary open() makes
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(
        (tmp_path / "plain.txt").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
