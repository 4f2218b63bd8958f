"""The activity page and API as the shipped snippet registers them: login through the hub's OAuth."""

from __future__ import annotations

import re
from collections.abc import Iterator

import aiohttp
import pytest
from realhub_support import CullerHub, start_culler_hub, wait_for

pytestmark = pytest.mark.realhub

POLICY = "version: 1\ndefaults:\n  idle: 2h\n"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    yield from start_culler_hub(tmp_path_factory.mktemp("page"), POLICY, dry_run=False, cull_every=1)


async def test_users_see_their_own_countdown_through_the_hub_login(hub: CullerHub) -> None:
    await hub.start_servers(("page-alice", "", None), ("page-bob", "", None))
    token = (await hub.api("POST", "users/page-alice/tokens", {"note": "test"}))["token"]

    async def listed() -> list[dict[str, object]] | None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(hub.service_url() + "api/servers", headers={"Authorization": f"token {token}"}) as answer,
        ):
            assert answer.status == 200, await answer.text()
            servers = (await answer.json())["servers"]
            return servers or None

    servers = await wait_for(listed, 20, "alice's server in the activity API")
    assert {server["user"] for server in servers} == {"page-alice"}  # nothing of bob's

    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.get(hub.url + "/hub/login") as answer:
            xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', await answer.text())
        assert xsrf is not None
        login = {"username": "page-alice", "password": "any", "_xsrf": xsrf.group(1)}
        async with browser.post(hub.url + "/hub/login", data=login) as answer:
            assert answer.status == 200
        async with browser.get(hub.service_url()) as answer:  # -> hub authorize -> callback -> page
            page = await answer.text()
            assert answer.status == 200 and str(answer.url).rstrip("/").endswith("/services/activity-culler")
    text = re.sub(r"<[^>]+>", " ", page)
    assert "page-alice" in text and "will be stopped in 1 hour" in text
    assert "page-bob" not in text
    assert token not in page
