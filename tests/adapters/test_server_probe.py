"""The ``server`` settle probe against a fake proxy and a fake server: the route's target, the probe token
only, and every failure read as "cannot tell"."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from culler.adapters.probes.server import ServerProbe
from culler.core.settle import Seen
from culler.core.snapshot import ServerSnapshot

PROXY_TOKEN, PROBE_TOKEN, MAIN_TOKEN = "proxy-token-0001", "probe-token-0002", "main-token-0003"
NOW = datetime(2026, 12, 2, tzinfo=UTC)


def server(user: str = "alice", name: str = "") -> ServerSnapshot:
    return ServerSnapshot(user, name, False, (), NOW, NOW, None, True)


class World:
    """configurable-http-proxy's routes API and the users' servers, in one aiohttp app."""

    def __init__(self) -> None:
        self.answer: tuple[int, Any] = (200, {"state": "quiet", "quiet_for": 42.5, "interval": 2, "samples": 9})
        self.seen_tokens: list[str] = []
        self.target = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/routes", self.routes)
        app.router.add_get("/user/{user}/api/activity-culler/probe", self.probe)
        app.router.add_get("/user/{user}/{server}/api/activity-culler/probe", self.probe)
        return app

    async def routes(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"token {PROXY_TOKEN}":
            return web.json_response({}, status=403)
        return web.json_response(
            {
                "/": {"hub": True, "target": "http://127.0.0.1:1"},
                "/user/alice": {"user": "alice", "server_name": "", "target": self.target},
                "/user/alice/gpu": {"user": "alice", "server_name": "gpu", "target": self.target},
            }
        )

    async def probe(self, request: web.Request) -> web.Response:
        self.seen_tokens.append(request.headers.get("Authorization", ""))
        status, body = self.answer
        if body is None:
            return web.Response(status=status, text="<html>not json</html>")
        return web.json_response(body, status=status)


@pytest.fixture
async def world(aiohttp_server: Any) -> tuple[World, ServerProbe]:
    state = World()
    running = await aiohttp_server(state.app())
    state.target = str(running.make_url("/")).rstrip("/")
    probe = ServerProbe(str(running.make_url("/")), PROXY_TOKEN, PROBE_TOKEN, timeout=2)
    yield state, probe
    await probe.close()


async def test_the_servers_answer_at_its_route_target_with_the_probe_token_only(
    world: tuple[World, ServerProbe],
) -> None:
    state, probe = world
    observation = await probe.observe(server())
    assert (observation.seen, observation.quiet_for) == (Seen.QUIET, 42.5)
    named = await probe.observe(server(name="gpu"))  # a named server's base URL is its own route
    assert named.seen is Seen.QUIET
    assert state.seen_tokens == [f"token {PROBE_TOKEN}"] * 2  # never the service's main token


@pytest.mark.parametrize(
    ("answer", "seen", "error"),
    [
        ((200, {"state": "active"}), Seen.ACTIVE, False),
        ((200, {"state": "unknown", "detail": "sampling started"}), Seen.UNKNOWN, False),
        ((404, {"message": "Not Found"}), Seen.UNKNOWN, True),  # no extension on this server
        ((403, {"error": "no scope"}), Seen.UNKNOWN, True),
        ((500, None), Seen.UNKNOWN, True),
        ((200, None), Seen.UNKNOWN, True),  # not JSON
        ((200, {"state": "quiet"}), Seen.UNKNOWN, True),  # quiet, but for how long?
        ((200, {"state": "quiet", "quiet_for": -5}), Seen.UNKNOWN, True),
        ((200, {"state": "quiet", "quiet_for": True}), Seen.UNKNOWN, True),
        ((200, {"state": "asleep"}), Seen.UNKNOWN, True),
    ],
)
async def test_every_other_answer_is_active_or_cannot_tell(
    world: tuple[World, ServerProbe], answer: tuple[int, Any], seen: Seen, error: bool
) -> None:
    state, probe = world
    state.answer = answer
    observation = await probe.observe(server())
    assert (observation.seen, observation.error) == (seen, error)
    assert not observation.vouches(0)  # none of these may ever let a stop through


async def test_a_server_without_a_route_or_an_unreachable_proxy_cannot_tell(world: tuple[World, ServerProbe]) -> None:
    _, probe = world
    missing = await probe.observe(server("bob"))
    assert missing.seen is Seen.UNKNOWN and "no route" in missing.detail
    refused = ServerProbe("http://127.0.0.1:9", PROXY_TOKEN, PROBE_TOKEN, timeout=1)
    try:
        down = await refused.observe(server())
    finally:
        await refused.close()
    assert down.seen is Seen.UNKNOWN and down.error
    assert PROBE_TOKEN not in repr(refused) and PROXY_TOKEN not in repr(refused)
