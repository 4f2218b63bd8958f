"""Helpers of the tests that run processes (the service, the incumbent, a hub's helpers): their
environment, starting and stopping them, and polling for a condition.

(A module rather than conftest.py so that test modules can import it by name, like ``fakehub``; the
real-hub tests get these through ``realhub_support``.)
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


async def wait_for(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.25,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy; fail with ``what`` at the
    deadline, followed by ``detail()`` when given (a log's tail, say)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:.0f}s waiting for {what}"
            raise AssertionError(f"{message}:\n{detail()}" if detail is not None else message)
        await asyncio.sleep(interval)


def culler_env(**extra: str) -> dict[str, str]:
    """This process's environment without CULLER_* and hub variables, plus ``extra``: for CLI runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CULLER_", "JUPYTERHUB_"))}
    env.update(extra)
    return env


def start_process(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A helper process of a test (writer, Prometheus...) in its own session, output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate a process this test started (by its own handle), kill it if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
