"""The "proxy" activity source: CHP's routes API, parsed, merged into snapshots, and used by a cycle."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from factories import CullerFactory
from fakehub import FakeHub, format_http_date, free_port, iso

from culler.adapters.errors import ProxyActivityError
from culler.adapters.proxy import ProxyActivity, parse_routes
from culler.core.decide import Action, evaluate
from culler.core.lifecycle import Phase
from culler.core.snapshot import Routes, ServerSnapshot, with_route_activity
from culler.engine.cycle import Culler
from culler.policy.model import Policy

NOW = datetime(2026, 11, 26, 4, 0, tzinfo=timezone.utc)
POLICY = Policy.model_validate({"version": 1, "defaults": {"idle": "1h"}})
PROXY_TOKEN = "proxy-token-abcdef123456"


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


CHP_ROUTES = {
    "/": {"hub": True, "target": "http://hub:8081", "jupyterhub": True, "last_activity": "2026-11-26T03:59:00.000Z"},
    "/user/alice": {
        "user": "alice",
        "server_name": "",
        "target": "http://10.0.0.5:8888",
        "jupyterhub": True,
        "last_activity": "2026-11-26T03:18:27.111Z",
    },
    "/user/alice/lab": {
        "user": "alice",
        "server_name": "lab",
        "target": "http://10.0.0.6:8888",
        "jupyterhub": True,
        "last_activity": "2026-11-25T21:00:00.000Z",
    },
    "/user/bob": {"user": "bob", "server_name": None, "target": "http://10.0.0.7:8888", "jupyterhub": True},
    "/services/culler": {"service": "culler", "target": "http://culler:10101", "jupyterhub": True},
}


# -- parse_routes ---------------------------------------------------------------------------------


def test_parse_routes_reads_user_server_routes() -> None:
    routes = parse_routes(json.dumps(CHP_ROUTES).encode())
    assert routes == {
        ("alice", ""): datetime(2026, 11, 26, 3, 18, 27, 111000, tzinfo=timezone.utc),
        ("alice", "lab"): datetime(2026, 11, 25, 21, 0, tzinfo=timezone.utc),
    }  # the hub's and the service's routes are not servers; bob's route has no activity yet


def test_parse_routes_takes_the_newest_of_several_routes_for_one_server() -> None:
    payload = {
        "/user/carol": {"user": "carol", "server_name": "", "last_activity": "2026-11-26T01:00:00Z"},
        "/user/carol/extra": {"user": "carol", "server_name": "", "last_activity": "2026-11-26T03:00:00Z"},
        "/user/carol/old": {"user": "carol", "server_name": "", "last_activity": "2026-11-25T01:00:00Z"},
    }
    assert parse_routes(json.dumps(payload).encode()) == {("carol", ""): datetime(2026, 11, 26, 3, tzinfo=timezone.utc)}


def test_parse_routes_of_an_empty_proxy() -> None:
    assert parse_routes(b"{}") == {}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"<html>502 Bad Gateway</html>",
        b"[]",
        b'"routes"',
        b"\xff\xfe",
        json.dumps({"/user/a": {"user": "a", "last_activity": "yesterday"}}).encode(),
        json.dumps({"/user/a": {"user": "a", "last_activity": 1764126000}}).encode(),
    ],
    ids=["empty", "html", "list", "string", "not-utf8", "bad-time", "number-time"],
)
def test_parse_routes_garbage_is_an_error(payload: bytes) -> None:
    with pytest.raises(ProxyActivityError, match="not readable"):
        parse_routes(payload)


# -- with_route_activity and the decision ----------------------------------------------------------


def snapshot(user: str, name: str = "", **overrides: Any) -> ServerSnapshot:
    fields: dict[str, Any] = {
        "user": user,
        "name": name,
        "admin": False,
        "groups": (),
        "last_activity": ago(minutes=1),
        "started": ago(days=1),
        "pending": None,
        "ready": True,
    }
    return ServerSnapshot(**{**fields, **overrides})


def test_route_times_replace_the_hubs_last_activity() -> None:
    servers = [snapshot("alice"), snapshot("alice", "lab", last_activity=ago(days=3))]
    routes = {("alice", ""): ago(hours=5), ("alice", "lab"): ago(minutes=2)}
    merged = with_route_activity(servers, Routes(routes))
    assert [s.last_activity for s in merged] == [ago(hours=5), ago(minutes=2)]
    assert all(s.activity_error is None for s in merged)
    assert evaluate(POLICY, merged[0], NOW).action is Action.STOP  # idle by the proxy, though active by the hub
    assert evaluate(POLICY, merged[1], NOW).action is Action.KEEP


def test_a_ready_server_without_a_route_is_never_stopped() -> None:
    [merged] = with_route_activity([snapshot("dave", last_activity=ago(days=30))], Routes({}))
    assert merged.activity_error is not None and "no route" in merged.activity_error
    decision = evaluate(POLICY, merged, NOW)
    assert decision.action is Action.KEEP and decision.error == merged.activity_error


def test_a_pending_server_without_a_route_is_left_to_the_pending_rule() -> None:
    pending = snapshot("erin", pending="spawn", ready=False)
    [merged] = with_route_activity([pending], Routes({}))
    assert merged == pending
    assert evaluate(POLICY, merged, NOW).action is Action.SKIP


# -- a cycle with a (fake) configurable-http-proxy --------------------------------------------------


class FakeProxy:
    def __init__(self) -> None:
        self.routes: dict[str, Any] = {
            "/": {"hub": True, "target": "http://hub:8081", "jupyterhub": True, "last_activity": iso(NOW)}
        }
        self.status = 200
        self.body: bytes | None = None
        self.requests: list[str] = []
        self.date: datetime | None = NOW  # the proxy's clock for its Date header

    def route(self, user: str, name: str = "", last_activity: datetime | None = None) -> None:
        path = f"/user/{user}" + (f"/{name}" if name else "")
        data: dict[str, Any] = {"user": user, "server_name": name, "target": "http://x:8888", "jupyterhub": True}
        if last_activity is not None:
            data["last_activity"] = iso(last_activity)
        self.routes[path] = data

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._answer(request)
        if self.date is not None:
            response.headers["Date"] = format_http_date(self.date)
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"token {PROXY_TOKEN}":
            return web.Response(status=403)
        if self.status != 200:
            return web.json_response({"error": "proxy trouble"}, status=self.status)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response(self.routes)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/routes", self.handle)
        return app


pytestmark = pytest.mark.fake_hub(date=lambda: NOW)


@pytest.fixture
async def proxy_url(aiohttp_server: Any) -> AsyncIterator[tuple[FakeProxy, str]]:
    proxy = FakeProxy()
    server = await aiohttp_server(proxy.make_app())
    yield proxy, str(server.make_url("/"))


@pytest.fixture
def make_culler(culler_factory: CullerFactory) -> CullerFactory:
    def factory(proxy_api: str, token: str = PROXY_TOKEN) -> Culler:
        activity = ProxyActivity(proxy_api, token, timeout=2.0, now=lambda: NOW)
        return culler_factory(
            client={"retries": 0, "request_timeout": 2.0, "now": lambda: NOW},
            culler={"clock": lambda: NOW, "activity": activity},
            follow_up_timeout=2.0,
        )

    return factory


async def test_a_cycle_uses_the_proxys_route_times(
    fake: FakeHub, proxy_url: tuple[FakeProxy, str], make_culler: CullerFactory
) -> None:
    proxy, url = proxy_url
    fake.add_server("hub-idle-browser-active", last_activity=ago(hours=5))
    proxy.route("hub-idle-browser-active", last_activity=ago(minutes=5))
    fake.add_server("hub-active-browser-idle", last_activity=ago(minutes=1))  # e.g. a kernel reporting activity
    proxy.route("hub-active-browser-idle", last_activity=ago(hours=3))
    fake.add_server("both-idle", "lab", last_activity=ago(hours=4))
    proxy.route("both-idle", "lab", last_activity=ago(hours=4))
    fake.add_server("no-route", last_activity=ago(days=9))
    fake.add_server("route-without-time", last_activity=ago(days=9))
    proxy.route("route-without-time")
    report = await make_culler(url).run(POLICY)
    assert report.ok, report.error
    assert report.results == {"hub-active-browser-idle/": Phase.STOPPED, "both-idle/lab": Phase.STOPPED}
    assert sorted(fake.deleted_servers()) == [("both-idle", "lab"), ("hub-active-browser-idle", "")]
    kept = {d.server.user: d for d in report.decisions if d.action is Action.KEEP}
    assert kept["no-route"].error and kept["route-without-time"].error
    assert kept["hub-idle-browser-active"].error is None
    assert proxy.requests == [f"token {PROXY_TOKEN}"]


@pytest.mark.parametrize("proxy_ahead", [timedelta(hours=1), timedelta(hours=-1)], ids=["ahead", "behind"])
async def test_route_idle_time_is_the_proxys_own_whatever_our_clock_says(
    fake: FakeHub, proxy_url: tuple[FakeProxy, str], make_culler: CullerFactory, proxy_ahead: timedelta
) -> None:
    """The proxy stamps routes with its clock: idle is its Date minus its stamp, not our now minus it."""
    proxy, url = proxy_url
    proxy_now = NOW + proxy_ahead
    proxy.date = proxy_now
    for name, idle in (("recent", timedelta(minutes=30)), ("stale", timedelta(minutes=90))):
        fake.add_server(name, last_activity=ago(days=3))  # the hub's activity plays no part here
        proxy.route(name, last_activity=proxy_now - idle)
    report = await make_culler(url).run(POLICY)
    assert report.ok and fake.deleted_servers() == [("stale", "")]
    recent = next(d for d in report.decisions if d.server.user == "recent")
    assert recent.idle_seconds == 1800 and recent.stop_at == NOW + timedelta(minutes=30)


async def test_a_proxy_clock_beyond_trust_stops_nothing(
    fake: FakeHub, proxy_url: tuple[FakeProxy, str], make_culler: CullerFactory
) -> None:
    proxy, url = proxy_url
    proxy.date = NOW + timedelta(days=3)
    fake.add_server("alice", last_activity=ago(days=5))
    proxy.route("alice", last_activity=ago(days=5))
    report = await make_culler(url).run(POLICY)
    assert not report.ok and "proxy's clock" in (report.error or "") and fake.deletes == []


@pytest.mark.parametrize("failure", ["500", "403", "garbage", "refused"])
async def test_a_proxy_api_failure_stops_nothing(
    fake: FakeHub, proxy_url: tuple[FakeProxy, str], make_culler: CullerFactory, failure: str
) -> None:
    proxy, url = proxy_url
    fake.add_server("alice", last_activity=ago(days=3))
    proxy.route("alice", last_activity=ago(days=3))
    token = PROXY_TOKEN
    if failure == "500":
        proxy.status = 500
    elif failure == "403":
        token = "wrong-token-0000000"
    elif failure == "garbage":
        proxy.body = b"<html>oops</html>"
    else:
        url = f"http://127.0.0.1:{free_port()}/"
    culler = make_culler(url, token)
    report = await culler.run(POLICY)
    assert not report.ok and report.error is not None
    assert report.results == {}
    assert fake.deletes == []
    if failure == "403":
        assert "CONFIGPROXY_AUTH_TOKEN" in report.error
    assert token not in report.error
    # ...and once the proxy answers again, the cycle acts
    proxy.status, proxy.body = 200, None
    assert culler.activity is not None
    await culler.activity.close()
    culler.look.activity = ProxyActivity(proxy_url[1], PROXY_TOKEN, timeout=2.0, now=lambda: NOW)
    report = await culler.run(POLICY)
    assert report.ok and report.results == {"alice/": Phase.STOPPED}


def test_proxy_activity_repr_hides_the_token() -> None:
    activity = ProxyActivity("http://proxy:8001/", PROXY_TOKEN)
    assert activity.url == "http://proxy:8001/api/routes"
    assert PROXY_TOKEN not in repr(activity)


def test_a_proxy_failure_is_a_source_error_not_a_hub_error() -> None:
    """One error tree: the cycle catches every source's failure, and a proxy failure never reads as the hub's."""
    from culler.adapters.errors import HubError, SourceError

    assert issubclass(ProxyActivityError, SourceError) and issubclass(HubError, SourceError)
    assert not issubclass(ProxyActivityError, HubError)
