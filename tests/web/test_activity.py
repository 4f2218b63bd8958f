"""The users' activity rows, the stop history, the api/servers endpoint and the browser login (OAuth)."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from factories import stop_lines

from culler.adapters.database import Database
from culler.core.decide import Action, Decision
from culler.core.events import CycleDecided, StopEnded
from culler.core.lifecycle import Phase
from culler.core.report import CycleReport
from culler.core.snapshot import ServerSnapshot
from culler.core.text import humanize
from culler.observers.history import StopHistory, export_json_lines, import_json_lines
from culler.observers.latest import LatestDecisions
from culler.policy.model import Settle
from culler.web.page import OAuthConfig, add_activity_routes, identity_from
from culler.web.page_html import AdminQuery, PageContext, render_page
from culler.web.rows import admin_view, for_user, rows

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
PREFIX = "/services/culler/"


def server(user: str, name: str = "", idle_hours: float = 2) -> ServerSnapshot:
    return ServerSnapshot(
        user=user,
        name=name,
        admin=False,
        groups=(),
        last_activity=NOW - timedelta(hours=idle_hours),
        started=NOW - timedelta(days=30),
        pending=None,
        ready=True,
    )


def decisions() -> list[Decision]:
    return [
        Decision(server("alice"), Action.KEEP, "default", "idle", 7200, NOW + timedelta(days=3, hours=4, minutes=5)),
        Decision(server("alice", "gpu"), Action.STOP, "gpu", "no activity", 90000, NOW - timedelta(hours=1)),
        Decision(server("bob"), Action.EXEMPT, "staff", "exempt: staff", 60),
        Decision(
            server("bob", "big"), Action.STOP, "gpu", "no activity", 90000, NOW, settle=Settle(probes=["tree-scan"])
        ),
        Decision(server("carol"), Action.KEEP, "default", "idle", 60, NOW + timedelta(minutes=30)),
    ]


SETTLING = {"bob/big": {"server": "bob/big", "rule": "gpu", "since": "2024-06-01T11:50:00Z", "state": "files changing"}}


def stop_history(tmp_path: Path) -> StopHistory:
    history = StopHistory(Database(tmp_path / "culler.sqlite"), clock=lambda: NOW - timedelta(days=1))
    old = Decision(server("alice", "old"), Action.STOP, "default", "no activity for 2d (limit 1d, rule default)")
    history.server_stopped(old, Phase.STOPPED, "home quiet")
    history.server_stopped(Decision(server("bob"), Action.STOP, "default", "no activity"), Phase.GONE, None)
    return history


def test_humanize() -> None:
    assert humanize(3 * 86400 + 4 * 3600 + 5 * 60) == "3 days 4 hours"
    assert humanize(3600) == "1 hour"
    assert humanize(0) == "less than a second"


def test_rows_states_and_messages(tmp_path: Path) -> None:
    history = stop_history(tmp_path)
    by_label = {(r["user"], r["server"]): r for r in rows(decisions(), NOW, SETTLING, history)}
    keep = by_label[("alice", "")]
    assert keep["decision"] == "keep"
    assert keep["message"] == "Your default server will be stopped in 3 days 4 hours unless you use it."
    assert keep["label"] == "default server"
    assert by_label[("alice", "gpu")]["label"] == "gpu"
    assert by_label[("alice", "gpu")]["message"].startswith("Your server “gpu” is due")
    assert keep["seconds_until_stop"] == 3 * 86400 + 4 * 3600 + 300
    assert keep["stop_at"] == "2024-06-04T16:05:00Z"
    assert keep["idle"] == "2h"
    assert keep["last_activity"] == "2024-06-01T10:00:00Z"
    assert by_label[("alice", "gpu")]["decision"] == "due"
    assert by_label[("alice", "gpu")]["seconds_until_stop"] == 0
    exempt = by_label[("bob", "")]
    assert (exempt["decision"], exempt["message"], exempt["stop_at"]) == ("exempt", "exempt: never stopped", None)
    assert exempt["seconds_until_stop"] is None
    assert exempt["last_stop"]["result"] == "gone"
    settling = by_label[("bob", "big")]
    assert settling["decision"] == "settling"
    assert "waiting for your home directory to be quiet" in settling["message"]
    assert settling["settle"]["state"] == "files changing"
    assert by_label[("alice", "")]["last_stop"] is None


def test_user_and_admin_views() -> None:
    all_rows = rows(decisions(), NOW, SETTLING)
    assert {r["user"] for r in for_user(all_rows, "alice")} == {"alice"}
    order = [(r["user"], r["server"]) for r in admin_view(all_rows)]
    assert order[-1] == ("bob", "")  # never stops: last
    assert order[2] == ("carol", "")  # 30 minutes, after the two due now
    assert order[3] == ("alice", "")


def test_latest_decisions_listener() -> None:
    latest = LatestDecisions()
    latest.observe(CycleDecided(CycleReport(started=NOW, decisions=decisions())))
    assert len(latest.decisions) == 5
    latest.observe(CycleDecided(CycleReport(started=NOW, error="hub unreachable")))
    assert len(latest.decisions) == 5  # a failed listing keeps what was known
    latest.observe(StopEnded(decisions()[1], Phase.STOPPED, None))
    assert [d.server.key for d in latest.decisions if d.server.user == "alice"] == ["alice/"]


def test_the_history_outlives_a_restart_in_the_database(tmp_path: Path) -> None:
    history = stop_history(tmp_path)
    history.server_stopped(decisions()[0], Phase.FAILED, None)  # not a stop: not recorded
    history.server_stopped(decisions()[0], Phase.WOULD_STOP, None)
    history.server_stopped(decisions()[1], Phase.SLOW, None)
    history.database.close()
    again = StopHistory(Database(tmp_path / "culler.sqlite"), clock=lambda: NOW)  # a restart
    assert [(e["user"], e["server"], e["result"]) for e in again.all()] == [
        ("alice", "gpu", "slow-stopping"),
        ("bob", "", "gone"),
        ("alice", "old", "stopped"),
    ]
    assert again.last_stop("alice", "old") == {
        "user": "alice",
        "server": "old",
        "time": "2024-05-31T12:00:00Z",
        "rule": "default",
        "reason": "no activity for 2d (limit 1d, rule default)",
        "result": "stopped",
        "settle": "home quiet",
    }
    assert [e["server"] for e in again.for_user("alice")] == ["gpu", "old"]
    trimmed = StopHistory(Database(tmp_path / "culler.sqlite"), limit=1, clock=lambda: NOW)
    assert trimmed.all()[0]["server"] == "gpu"
    assert trimmed.last_stop("alice", "old") is None and trimmed.last_stop("alice", "gpu") is not None


def test_retention_drops_old_stops_from_the_database(tmp_path: Path) -> None:
    history = stop_history(tmp_path)  # two stops, a day before NOW
    later = StopHistory(history.database, clock=lambda: NOW + timedelta(days=30), retention=10 * 86400)
    assert later.all() == [] and list(history.database.iter_stops()) == []
    (tmp_path / "b").mkdir()
    kept = StopHistory(stop_history(tmp_path / "b").database, clock=lambda: NOW, retention=10 * 86400)
    assert len(kept.all()) == 2


def test_an_old_json_lines_history_is_imported_once_and_exports_back(tmp_path: Path) -> None:
    lines = stop_lines()
    old = tmp_path / "stops.jsonl"
    old.write_text(
        json.dumps(lines[0]) + "\nnot json\n\n" + json.dumps({"user": 3}) + "\n" + json.dumps(lines[1]) + "\n"
    )
    database = Database(tmp_path / "culler.sqlite")
    assert import_json_lines(database, old) == 2
    assert import_json_lines(database, old) is None  # once per file
    assert import_json_lines(database, tmp_path / "missing.jsonl") is None
    history = StopHistory(database, clock=lambda: NOW)
    assert [e["user"] for e in history.all()] == ["bob", "alice"]
    out = io.StringIO()
    assert export_json_lines(database, out) == 2
    assert [json.loads(line) for line in out.getvalue().splitlines()] == lines


def test_identity_from_hub_model() -> None:
    model = {"kind": "user", "name": "alice", "admin": False, "scopes": ["read:servers!user=alice"]}
    assert identity_from(model) == {
        "name": "alice",
        "admin": False,
        "scopes": frozenset({"read:servers!user=alice"}),
    }


IDENTITIES: dict[str, dict[str, Any]] = {
    "alice-token": {"name": "alice", "admin": False, "scopes": frozenset({"read:servers!user=alice"})},
    "bob-token": {"name": "bob", "admin": False, "scopes": frozenset({"read:servers!user=bob"})},
    "admin-token": {"name": "root", "admin": True, "scopes": frozenset()},
    "reader-token": {"name": "prom", "admin": False, "scopes": frozenset({"read:servers"})},
    "alice-oauth-token": {"name": "alice", "admin": False, "scopes": frozenset({"access:services!service=culler"})},
}


async def identify(token: str) -> dict[str, Any] | None:
    return IDENTITIES.get(token)


def service_app(tmp_path: Path, oauth: OAuthConfig | None = None) -> web.Application:
    history = stop_history(tmp_path)
    app = web.Application()
    add_activity_routes(app, PREFIX, lambda user: rows(decisions(), NOW, SETTLING, history), history, identify, oauth)
    return app


async def test_api_servers_access(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(service_app(tmp_path))
    url = PREFIX + "api/servers"
    assert (await client.get(url)).status == 401
    assert (await client.get(url, headers={"Authorization": "token nope"})).status == 403
    response = await client.get(url, headers={"Authorization": "token alice-token"})
    body = await response.json()
    assert body["user"] == "alice"
    assert {r["user"] for r in body["servers"]} == {"alice"}
    assert {e["user"] for e in body["history"]} == {"alice"}
    assert (await client.get(url + "?all=1", headers={"Authorization": "Bearer alice-token"})).status == 403
    response = await client.get(url, headers={"Authorization": "Bearer bob-token"})
    assert {r["user"] for r in (await response.json())["servers"]} == {"bob"}
    for token in ("admin-token", "reader-token"):
        response = await client.get(url + "?all=1", headers={"Authorization": f"token {token}"})
        assert response.status == 200
        servers = (await response.json())["servers"]
        assert {r["user"] for r in servers} == {"alice", "bob", "carol"}
        assert servers[-1]["seconds_until_stop"] is None


async def test_page_needs_oauth_routes(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(service_app(tmp_path))  # no OAuth: the API only
    assert (await client.get(PREFIX)).status == 404


async def test_oauth_login(aiohttp_client: Any, fake_hub: Any, tmp_path: Path) -> None:
    oauth = OAuthConfig(
        client_id="service-culler",
        client_secret="service-api-token",
        redirect_uri=PREFIX + "oauth_callback",
        token_url=str(fake_hub.make_url("/hub/api/oauth2/token")),
    )
    client = await aiohttp_client(service_app(tmp_path, oauth))
    response = await client.get(PREFIX, allow_redirects=False)
    assert response.status == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/hub/api/oauth2/authorize"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["client_id"] == "service-culler"
    assert query["redirect_uri"] == PREFIX + "oauth_callback"
    assert query["response_type"] == "code"
    state = query["state"]

    callback = PREFIX + "oauth_callback"
    response = await client.get(callback, params={"code": "good-code", "state": "forged"}, allow_redirects=False)
    assert response.status == 400
    assert fake_hub.posted == []

    response = await client.get(callback, params={"code": "good-code", "state": state}, allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == PREFIX
    assert fake_hub.posted == [
        {
            "grant_type": "authorization_code",
            "code": "good-code",
            "redirect_uri": PREFIX + "oauth_callback",
            "client_id": "service-culler",
            "client_secret": "service-api-token",
        }
    ]
    cookies = response.headers.getall("Set-Cookie")
    session = next(c for c in cookies if c.startswith("culler-activity-session="))
    assert "HttpOnly" in session
    assert "SameSite=Lax" in session
    assert f"Path={PREFIX}" in session
    assert not any("alice-oauth-token" in c for c in cookies)  # the access token stays server-side

    # the state is spent: replaying the callback fails
    replay = await client.get(callback, params={"code": "good-code", "state": state}, allow_redirects=False)
    assert replay.status == 400

    page = await client.get(PREFIX)
    assert page.status == 200
    text = await page.text()
    assert "Your default server will be stopped in 3 days 4 hours unless you use it." in text
    assert (
        "2024-05-31 12:00 UTC</time> (" in text and "no activity for 2d (limit 1d, rule default) (home quiet)" in text
    )
    assert "bob" not in text  # alice is no admin: nobody else's servers
    assert "All servers" not in text

    # the session also answers the API, for alice only
    api = await client.get(PREFIX + "api/servers")
    assert {r["user"] for r in (await api.json())["servers"]} == {"alice"}
    assert (await client.get(PREFIX + "api/servers?all=1")).status == 403

    logout = await client.get(PREFIX + "logout", allow_redirects=False)
    assert logout.headers["Location"] == "/hub/logout"  # then the hub's own session ends too
    assert (await client.get(PREFIX, allow_redirects=False)).status == 302


async def test_oauth_refused_code(aiohttp_client: Any, fake_hub: Any, tmp_path: Path) -> None:
    oauth = OAuthConfig(
        "service-culler",
        "service-api-token",
        PREFIX + "oauth_callback",
        str(fake_hub.make_url("/hub/api/oauth2/token")),
    )
    client = await aiohttp_client(service_app(tmp_path, oauth))
    location = urlsplit((await client.get(PREFIX, allow_redirects=False)).headers["Location"])
    state = parse_qs(location.query)["state"][0]
    response = await client.get(PREFIX + "oauth_callback", params={"code": "bad", "state": state})
    assert response.status == 403


def test_admin_page_escapes() -> None:
    evil = Decision(server("<script>x</script>"), Action.KEEP, "r<1>", "idle", 1, NOW + timedelta(hours=1))
    identity = {"name": "root", "admin": True, "scopes": frozenset()}
    page = render_page(PageContext(identity, NOW, admin=AdminQuery(rule="r<1>"), sees_all=True), rows([evil], NOW))
    assert "<script>x" not in page and "r<1>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "&lt;1&gt;" in page
    assert "All servers" in page


def test_settling_is_joined_by_server_key_so_a_default_server_and_a_named_one_never_mix() -> None:
    due = Decision(server("dave"), Action.STOP, "gpu", "no activity", 90000, NOW, settle=Settle(probes=["tree-scan"]))
    named = Decision(
        server("dave", "x"), Action.STOP, "gpu", "no activity", 90000, NOW, settle=Settle(probes=["prometheus"])
    )
    settling = {"dave/": {"server": "dave", "state": "waiting for quiet"}}
    by_server = {r["server"]: r for r in rows([due, named], NOW, settling)}
    assert by_server[""]["decision"] == "settling" and by_server[""]["settle"] == settling["dave/"]
    assert by_server["x"]["decision"] == "due" and by_server["x"]["settle"] is None
