"""Shared fixtures."""

from __future__ import annotations

import pytest

from cryosip.cli.main import configure_process

# The settings the cryosip command runs under (XLA's CPU YNN fusions off, Agg), set before
# any test or doctest starts JAX's backend: importing cryosip sets nothing.
configure_process()


@pytest.fixture
def cli_main():
    """``cryosip.cli.main.main``, the in-process command line (returns the exit code)."""
    from cryosip.cli.main import main

    return main
