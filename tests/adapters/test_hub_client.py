"""The hub client against a fake hub: pagination, quoting, retries, error mapping, secrecy."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from factories import ClientFactory
from fakehub import API, PAGINATION_MEDIA_TYPE, TOKEN, FakeHub
from process_support import wait_for

from culler.adapters.errors import HubAPIError, HubInterrupted, HubProtocolError, HubUnreachable
from culler.adapters.hub import DEFAULT_PAGE_LIMIT, HubClient, StopOutcome

USERS = API + "/users"


def add_users(fake: FakeHub, count: int) -> list[str]:
    names = [f"user{i}" for i in range(count)]
    for name in names:
        fake.add_server(name)
    return names


# -- listing -----------------------------------------------------------------------------------------


async def test_pagination_follows_every_page_with_the_media_type(fake: FakeHub, make_client: ClientFactory) -> None:
    names = add_users(fake, 5)
    users = await make_client(page_size=2).list_users("ready")
    assert [u["name"] for u in users] == names
    listing = fake.calls("GET", USERS)
    assert [(r.query["offset"], r.query["limit"], r.query["state"]) for r in listing] == [
        ("0", "2", "ready"),
        ("2", "2", "ready"),
        ("4", "2", "ready"),
    ]
    assert all(PAGINATION_MEDIA_TYPE in r.accept for r in listing)


async def test_default_page_size_asks_for_big_pages_and_follows_the_hubs_cap(
    fake: FakeHub, make_client: ClientFactory
) -> None:
    fake.max_limit = 2  # the hub's api_page_max_limit: it answers fewer than asked
    names = add_users(fake, 5)
    users = await make_client().list_users()
    assert [u["name"] for u in users] == names
    listing = fake.calls("GET", USERS)
    assert [r.query.get("limit") for r in listing] == [str(DEFAULT_PAGE_LIMIT)] * 3
    assert [r.query["offset"] for r in listing] == ["0", "2", "4"]


async def test_plain_list_from_an_old_hub(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.paginate = False
    names = add_users(fake, 5)
    users = await make_client(page_size=2).list_users()
    assert [u["name"] for u in users] == names
    assert len(fake.calls("GET", USERS)) == 1


async def test_state_filter_is_passed(fake: FakeHub, make_client: ClientFactory) -> None:
    add_users(fake, 2)
    fake.add_user("idle-user")
    inactive = await make_client().list_users("inactive")
    assert [u["name"] for u in inactive] == ["idle-user"]
    assert fake.calls("GET", USERS)[0].query["state"] == "inactive"


@pytest.mark.parametrize(
    "body",
    [
        {"users": []},
        {"items": "nope", "_pagination": {"next": None}},
        "just a string",
    ],
)
async def test_wrong_shape_is_a_protocol_error(fake: FakeHub, make_client: ClientFactory, body: Any) -> None:
    add_users(fake, 1)
    fake.fail("GET", USERS, status=200, json=body)
    with pytest.raises(HubProtocolError):
        await make_client().list_users()


async def test_pagination_that_does_not_advance_is_a_protocol_error(fake: FakeHub, make_client: ClientFactory) -> None:
    add_users(fake, 3)
    stuck = {"items": [], "_pagination": {"offset": 0, "limit": 2, "total": 3, "next": {"offset": 0, "limit": 2}}}
    fake.fail("GET", USERS, status=200, json=stuck, times=-1)
    with pytest.raises(HubProtocolError, match="does not move forward"):
        await make_client().list_users()
    assert len(fake.calls("GET", USERS)) == 1


async def test_a_plain_list_after_the_first_page_is_a_protocol_error(fake: FakeHub, make_client: ClientFactory) -> None:
    add_users(fake, 5)
    fake.fail("GET", USERS, status=200, json=[], when=lambda r: r.query.get("offset") != "0")
    with pytest.raises(HubProtocolError):
        await make_client(page_size=2).list_users()


async def test_garbage_body_is_a_protocol_error(fake: FakeHub, make_client: ClientFactory) -> None:
    add_users(fake, 1)
    fake.fail("GET", USERS, status=200, body="<html>proxy error page</html>")
    with pytest.raises(HubProtocolError, match="not JSON") as caught:
        await make_client().list_users()
    assert "proxy error page" in str(caught.value)
    assert len(fake.calls("GET", USERS)) == 1  # a 200 with garbage is not retried


async def test_long_error_bodies_are_cut_short(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.fail("GET", USERS, status=200, body="x" * 10_000)
    with pytest.raises(HubProtocolError) as caught:
        await make_client().list_users()
    assert len(str(caught.value)) < 500


# -- quoting -----------------------------------------------------------------------------------------


async def test_names_are_quoted_in_paths(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.add_server("user@example.org", "x/y")
    fake.add_server("a b")
    fake.add_user("gone/user")
    client = make_client()
    assert await client.stop_server("user@example.org", "x/y") is StopOutcome.STOPPED
    assert await client.stop_server("a b", "") is StopOutcome.STOPPED
    assert (await client.get_user("a b") or {})["name"] == "a b"
    assert await client.delete_user("gone/user") is True
    assert [r.raw_path for r in fake.requests] == [
        API + "/users/user%40example.org/servers/x%2Fy",
        API + "/users/a%20b/server",
        API + "/users/a%20b",
        API + "/users/gone%2Fuser",
    ]
    assert not fake.running("user@example.org", "x/y")
    assert not fake.running("a b")
    assert "gone/user" not in fake.users


# -- retries -----------------------------------------------------------------------------------------


async def test_retries_503_then_succeeds(fake: FakeHub, make_client: ClientFactory) -> None:
    names = add_users(fake, 3)
    fake.fail("GET", USERS, status=503, times=2)
    users = await make_client(retries=2).list_users()
    assert [u["name"] for u in users] == names
    assert len(fake.calls("GET", USERS)) == 3


async def test_retries_dropped_connections_then_succeeds(fake: FakeHub, make_client: ClientFactory) -> None:
    names = add_users(fake, 3)
    fake.fail("GET", USERS, drop=True, times=2)
    users = await make_client(retries=2).list_users()
    assert [u["name"] for u in users] == names
    assert len(fake.calls("GET", USERS)) == 3


async def test_retries_a_failing_middle_page_only(fake: FakeHub, make_client: ClientFactory) -> None:
    names = add_users(fake, 5)
    fake.fail("GET", USERS, status=500, times=1, when=lambda r: r.query.get("offset") == "2")
    users = await make_client(page_size=2).list_users()
    assert [u["name"] for u in users] == names
    assert [r.query["offset"] for r in fake.calls("GET", USERS)] == ["0", "2", "2", "4"]


async def test_429_honours_retry_after(fake: FakeHub, make_client: ClientFactory) -> None:
    add_users(fake, 1)
    fake.fail("GET", USERS, status=429, headers={"Retry-After": "0.4"})
    await make_client(backoff=0.001, max_backoff=0.001).list_users()
    first, second = fake.calls("GET", USERS)
    assert second.at - first.at >= 0.35


async def test_gives_up_after_bounded_retries_on_5xx(fake: FakeHub, make_client: ClientFactory) -> None:
    add_users(fake, 1)
    fake.fail("GET", USERS, status=503, times=-1)
    with pytest.raises(HubAPIError) as caught:
        await make_client(retries=3).list_users()
    assert caught.value.status == 503
    assert len(fake.calls("GET", USERS)) == 4


async def test_gives_up_after_bounded_retries_on_dropped_connections(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.fail("GET", USERS, drop=True, times=-1)
    with pytest.raises(HubUnreachable, match="is the hub running"):
        await make_client(retries=2).list_users()
    # aiohttp itself resends an idempotent request once when a kept-alive connection drops: still bounded.
    assert 3 <= len(fake.calls("GET", USERS)) <= 6


async def test_timeouts_are_retried_then_unreachable(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.fail("GET", USERS, status=None, delay=1.0, times=-1)
    with pytest.raises(HubUnreachable, match="TimeoutError"):
        await make_client(retries=1, request_timeout=0.2).list_users()
    assert len(fake.calls("GET", USERS)) == 2


async def test_nothing_listening_is_unreachable() -> None:
    from fakehub import free_port

    client = HubClient(f"http://127.0.0.1:{free_port()}/hub/api", TOKEN, retries=1, backoff=0.01)
    try:
        with pytest.raises(HubUnreachable) as caught:
            await client.list_users()
    finally:
        await client.close()
    assert TOKEN not in str(caught.value)


async def test_client_errors_are_not_retried(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.fail("GET", USERS, status=403, times=-1)
    with pytest.raises(HubAPIError):
        await make_client(retries=3).list_users()
    assert len(fake.calls("GET", USERS)) == 1


async def test_concurrency_limit_is_respected(fake: FakeHub, make_client: ClientFactory) -> None:
    names = add_users(fake, 8)
    for name in names:
        fake.fail("GET", f"{USERS}/{name}", status=None, delay=0.1)
    client = make_client(concurrency=3)
    models = await asyncio.gather(*(client.get_user(name) for name in names))
    assert [m["name"] for m in models if m] == names
    assert 1 < fake.max_in_flight["GET"] <= 3


# -- auth and secrecy ---------------------------------------------------------------------------------


async def test_wrong_token_gives_a_helpful_401(fake: FakeHub, make_client: ClientFactory) -> None:
    wrong = "wrong-token-abcdef123456"
    client = make_client(token=wrong)
    with pytest.raises(HubAPIError) as caught:
        await client.list_users()
    assert caught.value.status == 401
    assert "token is not valid" in str(caught.value)
    assert wrong not in str(caught.value)
    assert len(fake.calls("GET", USERS)) == 1


async def test_403_names_the_missing_scope(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.fail("DELETE", USERS + "/alice/server", status=403)
    fake.add_server("alice")
    with pytest.raises(HubAPIError, match="lacks a scope") as caught:
        await make_client().stop_server("alice", "")
    assert caught.value.status == 403


@pytest.mark.parametrize("status", [401, 403, 500])
@pytest.mark.parametrize("padding", [0, 170], ids=["whole", "straddling-the-cut"])
async def test_the_token_never_appears_in_errors(
    fake: FakeHub, make_client: ClientFactory, status: int, padding: int
) -> None:
    # A misbehaving proxy that echoes the request headers back in its error page; with padding the
    # token straddles the point where the body is cut short.
    echo = "y" * padding + f" Authorization: token {TOKEN} " + "z" * 50
    fake.fail("GET", USERS, status=status, body=echo, times=-1)
    with pytest.raises(HubAPIError) as caught:
        await make_client(retries=0).list_users()
    assert TOKEN[:8] not in str(caught.value)


async def test_the_token_never_appears_in_protocol_errors(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.fail("GET", USERS, status=200, body=f"not json {TOKEN}")
    with pytest.raises(HubProtocolError) as caught:
        await make_client().list_users()
    assert TOKEN not in str(caught.value)


async def test_repr_has_no_token(make_client: ClientFactory) -> None:
    client = make_client()
    assert TOKEN not in repr(client)
    assert TOKEN not in str(client)


# -- stops and users ----------------------------------------------------------------------------------


async def test_stop_outcomes(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.add_server("stops")
    fake.add_server("slow", "lab")
    fake.slow_stops[("slow", "lab")] = 30.0
    fake.add_user("stopped-already")
    client = make_client()
    assert await client.stop_server("stops", "") is StopOutcome.STOPPED
    assert await client.stop_server("slow", "lab") is StopOutcome.STOPPING
    assert await client.stop_server("stopped-already", "") is StopOutcome.GONE  # 400
    assert await client.stop_server("nobody", "") is StopOutcome.GONE  # 404
    assert await client.stop_server("stops", "no-such-server") is StopOutcome.GONE  # 404
    fake.add_server("broken")
    fake.fail("DELETE", USERS + "/broken/server", status=500, times=-1)
    with pytest.raises(HubAPIError) as caught:
        await client.stop_server("broken", "")
    assert caught.value.status == 500
    assert len(fake.calls("DELETE", USERS + "/broken/server")) == client.retries + 1


async def test_202_then_followed_until_stopped(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.add_server("slow")
    fake.slow_stops[("slow", "")] = 0.3
    client = make_client()
    assert await client.stop_server("slow", "") is StopOutcome.STOPPING
    assert await client.is_stopped("slow", "") is False
    await wait_for(lambda: client.is_stopped("slow", ""), 5, "the fake to finish the stop", interval=0.05)


async def test_remove_is_sent_for_named_servers_only(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.add_server("alice", "lab")
    fake.add_server("alice")
    client = make_client()
    await client.stop_server("alice", "lab", remove=True)
    await client.stop_server("alice", "", remove=True)
    named, default = fake.deletes
    assert named.body == {"remove": True}
    assert default.body is None
    assert fake.removed == [("alice", "lab")]


async def test_abort_means_no_request(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.add_server("alice")
    abort = asyncio.Event()
    abort.set()
    with pytest.raises(HubInterrupted):
        await make_client().stop_server("alice", "", abort=abort)
    assert fake.deletes == []


async def test_abort_during_retry_wait_sends_no_retry(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.add_server("alice")
    fake.fail("DELETE", USERS + "/alice/server", status=503, headers={"Retry-After": "0.5"})
    abort = asyncio.Event()
    task = asyncio.create_task(make_client().stop_server("alice", "", abort=abort))
    await wait_for(lambda: fake.deletes, 5, "the first DELETE", interval=0.01)
    abort.set()
    with pytest.raises(HubInterrupted):
        await asyncio.wait_for(task, 5)
    assert len(fake.deletes) == 1
    assert fake.running("alice")


async def test_get_user_unknown_is_none(make_client: ClientFactory) -> None:
    assert await make_client().get_user("nobody") is None


async def test_delete_user(fake: FakeHub, make_client: ClientFactory) -> None:
    fake.add_user("old")
    fake.add_server("busy")
    client = make_client()
    assert await client.delete_user("old") is True
    assert await client.delete_user("never-existed") is True  # 404: already gone
    with pytest.raises(HubAPIError) as caught:
        await client.delete_user("busy")  # 400: has a running server
    assert caught.value.status == 400
    assert "old" not in fake.users
    assert "busy" in fake.users
