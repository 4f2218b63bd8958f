"""Callers' tokens: one path to the hub (the client's request path, counted in its metrics) and one cache."""

from __future__ import annotations

from typing import Any

from fakehub import API, FakeHub

from culler.adapters.hub import HubClient
from culler.adapters.hub_auth import HubAuth

WHOAMI = API + "/user"


async def test_scopes_and_owner_share_one_request_per_token_and_it_is_counted(aiohttp_server: Any) -> None:
    fake = FakeHub()
    server = await aiohttp_server(fake.make_app())
    seen: list[tuple[str, str, str]] = []
    hub = HubClient(str(server.make_url(API)), "service-token-0001", observer=lambda m, e, s, _: seen.append((m, e, s)))
    fake.token = "caller-token-00001"  # the hub accepts only this caller's token: a 200 proves it was the one sent
    auth = HubAuth(hub)
    try:
        assert await auth.scopes("caller-token-00001") == frozenset(fake.scopes)
        owner = await auth.owner("caller-token-00001")
        assert owner is not None and owner["name"] == "activity-culler"
        assert await auth.owner("someone-elses-0002") is None  # refused...
        assert await auth.scopes("someone-elses-0002") is None  # ...and that answer is cached too
    finally:
        await hub.close()
    assert len(fake.calls("GET", WHOAMI)) == 2  # one per token, whatever was asked of it
    assert seen == [("GET", "user", "200"), ("GET", "user", str(fake.auth_status))]
