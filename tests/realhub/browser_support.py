"""Headless Chromium for the real-hub tests, driven over the DevTools protocol with aiohttp's websocket client.

Debian's ``chromium`` package; ``CHROMIUM`` is None where it is missing (the tests that need it skip).
Screenshots are kept in ``ARTIFACTS`` (test-artifacts/ at the repository's root).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


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


async def start_chromium(profile: Path) -> tuple[subprocess.Popen[str], str]:
    """Chromium with a fresh profile in ``profile``; returns the process and its DevTools HTTP endpoint."""
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


@asynccontextmanager
async def chromium_page(profile: Path) -> AsyncIterator[Browser]:
    """A Chromium of its own (profile directory ``profile``) and its first page, killed on the way out."""
    process, devtools = await start_chromium(profile)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(devtools + "/json/list") as answer:
                targets = json.loads(await answer.text())
            page = next(target for target in targets if target["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                browser = Browser(ws)
                await browser.call("Page.enable")
                yield browser
    finally:
        process.kill()
        process.wait(10)


async def log_in(browser: Browser, hub_url: str, user: str, password: str = "any") -> None:
    """Log in through the hub's login page (the dummy authenticator takes any password), as a new visitor."""
    await browser.call("Network.clearBrowserCookies")
    await browser.call("Page.navigate", url=hub_url + "/hub/login")
    await browser.until("document.querySelector('#username_input') !== null", "the login form")
    await browser.evaluate(
        f"document.querySelector('#username_input').value = {json.dumps(user)};"
        f"document.querySelector('#password_input').value = {json.dumps(password)};"
        "document.querySelector('form').submit(); true"
    )
    await browser.until("!document.location.pathname.endsWith('/hub/login')", f"the login of {user} to finish")


AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"  # npm, from package.json
SERIOUS = ("serious", "critical")


async def axe_violations(browser: Browser) -> list[dict[str, Any]]:
    """axe-core's violations on the current page (injected over the DevTools protocol, not by the page)."""
    assert AXE.is_file(), f"{AXE} is missing: npm ci installs axe-core"
    await browser.evaluate(AXE.read_text())
    result = await browser.call(
        "Runtime.evaluate",
        expression="axe.run(document, {resultTypes: ['violations']}).then(r => r.violations)",
        awaitPromise=True,
        returnByValue=True,
    )
    violations = result.get("result", {}).get("value")
    assert isinstance(violations, list), result
    return violations


def serious(violations: list[dict[str, Any]]) -> list[str]:
    return [f"{v['id']} ({v['impact']}): {v['help']}" for v in violations if v.get("impact") in SERIOUS]


async def screenshot(browser: Browser, name: str) -> Path:
    """A full-page PNG in test-artifacts/ (kept after the run)."""
    metrics = await browser.call("Page.getLayoutMetrics")
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = await browser.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(png)
    return path


async def navigate(browser: Browser, url: str) -> None:
    await browser.call("Page.navigate", url=url)
    await browser.until("document.readyState === 'complete'", f"{url} to load")


def contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two computed CSS colours (``rgb(r, g, b)``)."""

    def luminance(colour: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", colour)[:3]]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)
