"""Fixtures shared by the real-hub tests (helpers live in realhub_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from realhub_support import install_plugin_package


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for PYTHONPATH holding tests/plugin_pkg, installed like a real plugin package."""
    target = tmp_path_factory.mktemp("plugins") / "site"
    how = install_plugin_package(target)
    print(f"plugin package installed by {how}")
    return target
