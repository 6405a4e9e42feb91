"""Importing cryosip changes nothing in the process; the CLI entry point sets what it needs.

The import checks run in a fresh interpreter (this test process has already imported
everything, and conftest.py has called ``configure_process``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cryosip.cli.main import YNN_FLAG, configure_process, main

# JAX's own import sets TF_CPP_MIN_LOG_LEVEL and TPU_SKIP_MDS_QUERY, so the libraries are
# imported before the snapshot: what is compared is what cryosip's modules add.
_IMPORT_ALL = """
import importlib, json, os, pkgutil, sys
import jax, jax.numpy, equinox, matplotlib, numpy
before = dict(os.environ)
import cryosip, cryosip.plotting, cryosip.pipeline, cryosip.cli.main
for module in pkgutil.walk_packages(cryosip.__path__, "cryosip."):  # every module
    importlib.import_module(module.name)
print(json.dumps({
    "env_same": dict(os.environ) == before,
    "changed": sorted(k for k in set(before) | set(os.environ)
                      if before.get(k) != os.environ.get(k)),
    "backend_resolved": matplotlib.rcParams._get_backend_or_none(),
    "pyplot_imported": "matplotlib.pyplot" in sys.modules,
}))
"""


def _fresh_python(code: str, **env_changes: str | None) -> dict:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_cryosip_changes_no_environment_variable_and_no_matplotlib_backend():
    got = _fresh_python(_IMPORT_ALL, XLA_FLAGS=None, MPLBACKEND=None)
    assert got["changed"] == []
    assert got["env_same"] is True
    # matplotlib resolves its backend lazily; a module calling matplotlib.use("Agg") or
    # importing pyplot would have resolved or forced it.
    assert got["backend_resolved"] is None
    assert got["pyplot_imported"] is False


def test_importing_the_cli_entry_point_does_not_import_jax_or_matplotlib():
    code = ("import json, sys; import cryosip.cli.main; print(json.dumps(sorted("
            "m for m in ('jax', 'jaxlib', 'matplotlib') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    # so main() sets XLA_FLAGS before anything can start JAX's CPU backend
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_configure_process_sets_the_ynn_flag_and_agg_and_keeps_what_the_user_gave():
    env: dict[str, str] = {}
    configure_process(env)
    assert env == {"XLA_FLAGS": f"{YNN_FLAG}=", "MPLBACKEND": "Agg"}
    configure_process(env)  # idempotent: the flag is not appended twice
    assert env["XLA_FLAGS"] == f"{YNN_FLAG}="

    user = {"XLA_FLAGS": f"--xla_dump_to=/tmp/x {YNN_FLAG}=true", "MPLBACKEND": "svg"}
    configure_process(user)
    assert user == {"XLA_FLAGS": f"--xla_dump_to=/tmp/x {YNN_FLAG}=true", "MPLBACKEND": "svg"}

    other = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    configure_process(other)
    assert other["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {YNN_FLAG}="


def test_main_configures_its_process_before_parsing(monkeypatch, capsys):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])  # argparse exits after printing the version
    assert exc.value.code == 0
    assert "cryosip" in capsys.readouterr().out
    assert os.environ["XLA_FLAGS"] == f"{YNN_FLAG}="
    assert os.environ["MPLBACKEND"] == "Agg"


def test_the_flag_reaches_xla_in_a_fresh_cli_process():
    """The flag set by ``configure_process`` is in force when JAX starts its backend: XLA
    rejects an unknown flag in ``XLA_FLAGS`` at that moment, so a flag name that XLA does
    not know, set the same way, makes the first array operation fail."""
    code = ("import cryosip.cli.main as m; m.YNN_FLAG = '--xla_cryosip_no_such_flag'; "
            "m.configure_process(); import jax.numpy as jnp; float(jnp.ones(2).sum())")
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "XLA_FLAGS": ""})
    assert bad.returncode != 0
    assert "xla_cryosip_no_such_flag" in bad.stderr
    good = subprocess.run([sys.executable, "-c", code.replace("--xla_cryosip_no_such_flag",
                                                              YNN_FLAG)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XLA_FLAGS": ""})
    assert good.returncode == 0, good.stderr
