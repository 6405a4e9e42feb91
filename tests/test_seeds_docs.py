"""The documented random streams are the registered ones, and src/ uses only those."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cryosip.seeds import STREAMS, code, jax_key, numpy_rng

ROOT = Path(__file__).resolve().parents[1]
USE = re.compile(r"\b(?:numpy_rng|jax_key)\(\s*[^,()]+(?:\([^()]*\))?\s*,\s*[\"'](\w+)[\"']")


def _documented() -> dict[str, str]:
    text = (ROOT / "docs" / "sip-core.md").read_text()
    section = text.split("## 8. Randomness", 1)[1]
    return dict(re.findall(r"^\| `(\w+)` \| (.+?) \|$", section, flags=re.M))


def test_the_docs_table_is_streams():
    assert _documented() == STREAMS


def test_every_stream_used_in_src_is_registered():
    used = {}
    for path in (ROOT / "src" / "cryosip").rglob("*.py"):
        for name in USE.findall(path.read_text()):
            used.setdefault(name, path.relative_to(ROOT).as_posix())
    assert {"split", "scale", "registration", "flow"} <= set(used)  # the regex does match
    unknown = {n: p for n, p in used.items() if n not in STREAMS}
    assert unknown == {}


def test_streams_are_distinct_and_refuse_unknown_names():
    codes = [code(n) for n in STREAMS]
    assert len(set(codes)) == len(codes)
    assert all(0 <= c < 2**31 for c in codes)
    a = numpy_rng(7, "split").integers(2**62, size=4)
    np.testing.assert_array_equal(a, numpy_rng(7, "split").integers(2**62, size=4))
    assert not np.array_equal(a, numpy_rng(7, "scale").integers(2**62, size=4))
    assert not np.array_equal(a, numpy_rng(8, "split").integers(2**62, size=4))
    with pytest.raises(KeyError, match="register"):
        jax_key(0, "no-such-stream")
