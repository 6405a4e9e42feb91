"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def cli_main():
    """``cryosip.cli.main.main``, the in-process command line (returns the exit code)."""
    from cryosip.cli.main import main

    return main
