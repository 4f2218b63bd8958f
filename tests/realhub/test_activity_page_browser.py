"""A user logs in to the real hub in headless Chromium and finds their countdown on the activity page.

Chromium (Debian's package) is driven over the DevTools protocol with aiohttp's websocket client; the
screenshot is kept in test-artifacts/ (and the test's temp dir)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from browser_support import ARTIFACTS, CHROMIUM, chromium_page, log_in
from realhub_support import CullerHub, start_culler_hub, wait_for

pytestmark = pytest.mark.realhub

USER = "browser-alice"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    yield from start_culler_hub(tmp_path_factory.mktemp("browser"), "version: 1\ndefaults:\n  idle: 3d\n")


async def listed(hub: CullerHub) -> bool:
    headers = {"Authorization": f"token {hub.admin_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(hub.service_url() + "api/servers?all=1", headers=headers) as answer,
    ):
        body = await answer.json()
    return any(server["user"] == USER for server in body.get("servers", []))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (./dev test installs it)")
async def test_a_user_finds_their_countdown_in_the_browser(hub: CullerHub, tmp_path: Path) -> None:
    await hub.start_servers((USER, "", None))
    await wait_for(lambda: listed(hub), 30, "a cycle to have seen the server (the page shows the last cycle's)")
    async with chromium_page(tmp_path / "profile") as browser:
        await log_in(browser, hub.url, USER)
        await browser.call("Page.navigate", url=hub.service_url())
        text = await browser.until(
            "document.body && document.body.innerText.includes('will be stopped in') ? document.body.innerText : ''",
            "the countdown on the activity page",
        )
        shot = await browser.call("Page.captureScreenshot", format="png")
    assert USER in text and re.search(r"will be stopped in 2 days 23 hours", text), text
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    (tmp_path / "activity-page.png").write_bytes(png)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "activity-page.png").write_bytes(png)
