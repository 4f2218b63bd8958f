"""Bad settings under a hub: the process keeps serving, unready, and stops nothing; outside a hub, exit 2."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from fakehub import FakeHub, free_port
from process_support import culler_env, wait_for

TOKEN = "managed-tok-5e1f0c2b9a7d"
PREFIX = "/services/activity-culler/"


def run(tmp_path: Path, args: list[str], **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "culler", *args],
            env=culler_env(PYTHONUNBUFFERED="1", **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    return proc, log


async def get(url: str) -> tuple[int, str] | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(url) as response,
        ):
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--concurrency=-1"], {}, "--concurrency"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--policy=p.yaml", "--timeout=60"], {}, "--timeout"),
        ([], {"JUPYTERHUB_API_TOKEN": ""}, "no hub API token"),
        ([], {"CULLER_MAX_CLOCK_SKEW": "soon"}, "--max-clock-skew"),
    ],
    ids=["bad-value", "unknown-flag", "policy-flag", "no-token", "bad-env"],
)
async def test_a_managed_service_with_bad_settings_serves_unready(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    fake = FakeHub(token=TOKEN)
    hub_url = await fake.start()
    port = free_port()
    hub_env = {
        "JUPYTERHUB_SERVICE_NAME": "activity-culler",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
        "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
        "JUPYTERHUB_API_URL": hub_url,
        "JUPYTERHUB_API_TOKEN": TOKEN,
        **env,
    }
    proc, log = run(tmp_path, args, **hub_env)
    base = f"http://127.0.0.1:{port}{PREFIX}"
    try:
        answer = await wait_for(lambda: get(base + "health"), 20, "health to answer")
        assert proc.poll() is None, log.read_text()
        status, body = answer
        assert status == 503 and "invalid settings" in body and named in body, body
        assert (await get(base + "live") or (0, ""))[0] == 200
        root = await get(base)
        assert root is not None and root[0] == 200  # never a 5xx on the prefix root
        assert (await get(f"http://127.0.0.1:{port}/") or (500, ""))[0] < 500  # what the hub's start-up check asks
        assert fake.requests == []  # nothing listed, nothing stopped
        assert TOKEN not in log.read_text() and TOKEN not in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert log.read_text().count("invalid settings; serving health 503") == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await fake.close()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--concurrency=-1"], {}),  # outside a hub
        (["--concurrency=-1", "--once"], {"JUPYTERHUB_SERVICE_NAME": "activity-culler"}),
        (["--concurrency=-1"], {"JUPYTERHUB_SERVICE_NAME": "activity-culler", "CULLER_ONCE": "true"}),
    ],
    ids=["no-hub", "once-flag", "once-env"],
)
def test_outside_a_hub_or_once_bad_settings_exit_2(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    proc, log = run(tmp_path, args, JUPYTERHUB_API_TOKEN=TOKEN, **env)
    assert proc.wait(timeout=30) == 2, log.read_text()
    assert "--concurrency" in log.read_text()
