"""The api/settling endpoint: who may read it (hub token scopes), and the token cache."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from culler.adapters.errors import HubUnreachable
from culler.adapters.hub_auth import TokenCache
from culler.web.app import make_app

SETTLING = [{"server": "alice", "rule": "gpu", "since": "2025-06-01T12:00:00Z", "probes": {"tree-scan": "unknown"}}]
TOKENS = {
    "admin-token-000001": frozenset({"admin:servers", "read:servers", "read:users"}),
    "reader-token-00002": frozenset({"read:servers"}),
    "alice-token-000003": frozenset({"read:servers!user=alice", "access:servers!user=alice"}),
    "users-token-000004": frozenset({"read:users", "list:users"}),
    "group-token-000005": frozenset({"read:servers!group=staff"}),
}


class Scopes:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, token: str) -> frozenset[str] | None:
        self.calls.append(token)
        return TOKENS.get(token)


def health() -> tuple[bool, dict[str, object]]:
    return True, {"status": "ok"}


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    scopes = Scopes()
    cache = TokenCache(scopes)  # as the service wires it: the endpoint asks through the one token cache
    test_client = await aiohttp_client(make_app("/services/culler/", health, lambda: SETTLING, cache.get))
    test_client.scopes, test_client.cache = scopes, cache
    return test_client


URL = "/services/culler/api/settling"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": ""}, 401),
        ({"Authorization": "token "}, 401),
        ({"Authorization": "Basic YWxpY2U6cHc="}, 401),
        ({"Authorization": "token not-a-hub-token"}, 403),
        ({"Authorization": "token alice-token-000003"}, 403),
        ({"Authorization": "token group-token-000005"}, 403),
        ({"Authorization": "token users-token-000004"}, 403),
        ({"Authorization": "token reader-token-00002"}, 200),
        ({"Authorization": "Bearer reader-token-00002"}, 200),
        ({"Authorization": "token admin-token-000001"}, 200),
    ],
    ids=[
        "none",
        "empty",
        "empty-token",
        "basic",
        "rejected",
        "user-filtered",
        "group-filtered",
        "no-server-scope",
        "read-servers",
        "bearer",
        "admin-servers",
    ],
)
async def test_who_may_read_the_settling_servers(client: Any, headers: dict[str, str], status: int) -> None:
    response = await client.get(URL, headers=headers)
    assert response.status == status
    body = await response.json()
    if status == 200:
        assert body == {"settling": SETTLING}
    else:
        assert "settling" not in body and "error" in body
    if status == 401:
        assert client.scopes.calls == []  # no token, no hub call


async def test_other_endpoints_need_no_token(client: Any) -> None:
    assert (await client.get("/services/culler/health")).status == 200
    assert (await client.get("/services/culler/live")).status == 200


async def test_without_a_settling_function_there_is_no_endpoint(aiohttp_client: Any) -> None:
    test_client = await aiohttp_client(make_app("/", health))
    assert (await test_client.get("/api/settling", headers={"Authorization": "token x"})).status == 404


async def test_repeated_requests_ask_the_hub_once_and_the_cache_holds_no_token(client: Any) -> None:
    for _ in range(5):
        assert (await client.get(URL, headers={"Authorization": "token reader-token-00002"})).status == 200
        assert (await client.get(URL, headers={"Authorization": "token not-a-hub-token"})).status == 403
    assert client.scopes.calls == ["reader-token-00002", "not-a-hub-token"]
    cache: TokenCache[frozenset[str]] = client.cache
    keys = set(cache._seen.keys())
    assert keys == {hashlib.sha256(t.encode()).hexdigest() for t in ("reader-token-00002", "not-a-hub-token")}
    stored = repr(cache._seen._entries)
    assert "reader-token-00002" not in stored and "not-a-hub-token" not in stored


async def test_the_cache_asks_again_after_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 1000.0}
    monkeypatch.setattr(
        "culler.adapters.hub_auth.time", SimpleNamespace(monotonic=lambda: clock["now"])
    )  # not the real module
    scopes = Scopes()
    cache = TokenCache(scopes, ttl=60)
    assert await cache.get("reader-token-00002") == frozenset({"read:servers"})
    clock["now"] += 59
    await cache.get("reader-token-00002")
    assert len(scopes.calls) == 1
    clock["now"] += 2
    await cache.get("reader-token-00002")
    assert len(scopes.calls) == 2


async def test_the_cache_stays_bounded() -> None:
    scopes = Scopes()
    cache = TokenCache(scopes, ttl=60)
    for index in range(2500):
        await cache.get(f"token-{index}")
    assert len(cache._seen) == 1000
    await cache.get("token-2499")  # the newest are still cached: the oldest went one at a time, no cliff
    await cache.get("token-1500")
    assert len(scopes.calls) == 2500
    await cache.get("token-0")  # the oldest is gone: asked again
    assert len(scopes.calls) == 2501


async def test_a_hub_that_cannot_answer_gets_502_and_is_asked_again(aiohttp_client: Any) -> None:
    """A hub outage is not a refused token: no 403, and nothing is cached, so the next request asks again."""
    calls: list[str] = []

    async def scopes(token: str) -> frozenset[str] | None:
        calls.append(token)
        if len(calls) == 1:
            raise HubUnreachable("GET user (token check): connection refused")
        return TOKENS.get(token)

    client = await aiohttp_client(make_app("/services/culler/", health, lambda: SETTLING, TokenCache(scopes).get))
    headers = {"Authorization": "token reader-token-00002"}
    down = await client.get(URL, headers=headers)
    assert down.status == 502 and "could not check the token" in (await down.json())["error"]
    up = await client.get(URL, headers=headers)
    assert up.status == 200 and len(calls) == 2
