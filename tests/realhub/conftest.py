"""Fixtures shared by the real-hub tests (helpers live in realhub_support.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from realhub_support import install_plugin_package, stop_process
from settle_support import Writer, writer_process


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for PYTHONPATH holding tests/plugin_pkg, installed like a real plugin package."""
    target = tmp_path_factory.mktemp("plugins") / "site"
    how = install_plugin_package(target)
    print(f"plugin package installed by {how}")
    return target


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    """Start writer processes (append to a file every 0.2 s for N seconds); all are stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(path: Path, seconds: float) -> subprocess.Popen[bytes]:
        process = writer_process(path, seconds, tmp_path / "writer.log")
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process)
