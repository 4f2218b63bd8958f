"""The README's demo command starts a real hub and the service makes decisions on its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_support import culler_env

pytestmark = pytest.mark.realhub
ROOT = Path(__file__).resolve().parent.parent  # the demo runs from the checkout, as ./dev demo does


def _kill_leftover_hub(workdir: Path) -> None:
    pid_file = workdir / "jupyterhub.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)


def test_demo_makes_decisions(tmp_path: Path) -> None:
    env = culler_env()
    command = [sys.executable, "-m", "devtools.demo", "--duration", "120", "--workdir", str(tmp_path)]
    demo = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert demo.stdout is not None
        for line in demo.stdout:
            seen.append(line)
            if "server stopped user=bob" in line or time.monotonic() > deadline:
                break
        output = "".join(seen)
        assert "policy loaded" in output, output[-3000:]
        assert "RULE" in output and "gpu" in output, "explain table missing"
        assert "exempt" in output
        assert 'server stopped user=bob server="" idle=' in output and "rule=gpu" in output, output[-3000:]
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=45) == 130  # interrupted, after stopping its hub
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        _kill_leftover_hub(tmp_path)
