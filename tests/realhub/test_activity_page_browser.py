"""A user logs in to the real hub in headless Chromium and finds their countdown on the activity page.

Chromium (Debian's package) is driven over the DevTools protocol with aiohttp's websocket client; the
screenshot is kept in test-artifacts/ (and the test's temp dir)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from realhub_support import CullerHub, start_culler_hub, wait_for

pytestmark = pytest.mark.realhub

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
USER = "browser-alice"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    yield from start_culler_hub(tmp_path_factory.mktemp("browser"), "version: 1\ndefaults:\n  idle: 3d\n")


class Browser:
    """Just enough of the DevTools protocol: navigate, evaluate, screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), 30)
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def until(self, expression: str, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        page = await self.evaluate("document.location.href + ' ' + document.body.innerText")
        raise AssertionError(f"timed out waiting for {what}; page: {str(page)[:500]}")


async def listed(hub: CullerHub) -> bool:
    headers = {"Authorization": f"token {hub.admin_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(hub.service_url() + "api/servers?all=1", headers=headers) as answer,
    ):
        body = await answer.json()
    return any(server["user"] == USER for server in body.get("servers", []))


async def start_chromium(profile: Path) -> tuple[subprocess.Popen[str], str]:
    args = [
        str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        "--window-size=1100,700", "about:blank",
    ]  # fmt: skip
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(process.stderr.readline)
        found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if found:
            return process, f"http://127.0.0.1:{found.group(1)}"
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("Chromium did not start its DevTools endpoint")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (./dev test installs it)")
async def test_a_user_finds_their_countdown_in_the_browser(hub: CullerHub, tmp_path: Path) -> None:
    await hub.start_servers((USER, "", None))
    await wait_for(lambda: listed(hub), 30, "a cycle to have seen the server (the page shows the last cycle's)")
    process, devtools = await start_chromium(tmp_path / "profile")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(devtools + "/json/list") as answer:
                targets = json.loads(await answer.text())
            page = next(target for target in targets if target["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                browser = Browser(ws)
                await browser.call("Page.enable")
                await browser.call("Page.navigate", url=hub.url + "/hub/login")
                await browser.until("document.querySelector('#username_input') !== null", "the login form")
                await browser.evaluate(
                    f"document.querySelector('#username_input').value = '{USER}';"
                    "document.querySelector('#password_input').value = 'any';"
                    "document.querySelector('form').submit(); true"
                )
                await browser.until("!document.location.pathname.endsWith('/hub/login')", "the login to finish")
                await browser.call("Page.navigate", url=hub.service_url())
                text = await browser.until(
                    "document.body && document.body.innerText.includes('will be stopped in')"
                    " ? document.body.innerText : ''",
                    "the countdown on the activity page",
                )
                shot = await browser.call("Page.captureScreenshot", format="png")
    finally:
        process.kill()
        process.wait(10)
    assert USER in text and re.search(r"will be stopped in 2 days 23 hours", text), text
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    (tmp_path / "activity-page.png").write_bytes(png)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "activity-page.png").write_bytes(png)
