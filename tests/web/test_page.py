"""The activity page: the rule in words, the keep offer, states, the admin table's sort and filter, the
rendered page (the hub's look, times, Open and Keep), and the Keep form's guards (CSRF, cross-site)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from culler.core.decide import evaluate
from culler.core.keeps import Kept
from culler.core.snapshot import ServerSnapshot
from culler.engine.keeper import KeepAnswer
from culler.policy.model import Policy
from culler.web.csrf import csrf_token
from culler.web.page import (
    ACTIVITY_KEY,
    SESSION_COOKIE,
    OAuthConfig,
    PageLinks,
    add_activity_routes,
)
from culler.web.page_html import AdminQuery, PageContext, admin_rows, page_state, render_page
from culler.web.rows import PolicyFacts, rows
from culler.web.words import keep_words, rule_words

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
PREFIX = "/services/activity-culler/"
POLICY = Policy.model_validate(
    {
        "version": 1,
        "defaults": {"idle": "7d", "keep": {"step": "1d", "max": "3d"}},
        "rules": [
            {"id": "gpu", "match": {"profile": "gpu-*"}, "idle": "1d", "keep": None},
            {"id": "staff", "match": {"groups": ["staff"]}, "exempt": True},
            {
                "id": "course",
                "match": {"groups": "course-*"},
                "description": "Course servers stop at the end of each lab session.",
                "idle": "3h",
            },
        ],
    }
)
ALICE = {"name": "alice", "admin": False, "scopes": frozenset()}
ROOT = {"name": "root", "admin": True, "scopes": frozenset()}


class Keeps:
    problem = None

    def __init__(self, *kept: Kept) -> None:
        self.by_key = {(k.user, k.server): k for k in kept}

    def kept(self, user: str, server: str) -> Kept | None:
        return self.by_key.get((user, server))


def snapshot(user: str, name: str = "", idle: timedelta = timedelta(days=2), **extra: Any) -> ServerSnapshot:
    return ServerSnapshot(
        user=user,
        name=name,
        admin=False,
        groups=tuple(extra.pop("groups", ())),
        last_activity=NOW - idle,
        started=NOW - timedelta(days=9),
        pending=None,
        ready=True,
        **extra,
    )


def judged(*servers: ServerSnapshot, keeps: Keeps | None = None) -> list[dict[str, Any]]:
    view = keeps or Keeps()
    decisions = [evaluate(POLICY, s, NOW, keeps=view) for s in servers]
    return rows(decisions, NOW, facts=PolicyFacts(POLICY, view))


# --- words and offers --------------------------------------------------------------------------------
def test_rules_read_as_sentences_and_an_admins_description_wins() -> None:
    assert rule_words(POLICY, "default") == "Servers stop after 1 week without a visit."
    assert rule_words(POLICY, "gpu") == "Servers with the “gpu-*” profile stop after 1 day without a visit."
    assert rule_words(POLICY, "staff") == "Servers of the group “staff” are never stopped."
    assert rule_words(POLICY, "course") == "Course servers stop at the end of each lab session."
    assert rule_words(None, "default").startswith("No valid policy is in force")
    assert keep_words(POLICY, "default") == "Each keep adds 1 day, up to 3 days past the usual stop."
    assert keep_words(POLICY, "gpu") is None and keep_words(POLICY, "staff") is None


def test_the_keep_offer_says_until_when_or_why_not() -> None:
    plain, gpu = judged(snapshot("alice"), snapshot("alice", "big", user_options={"profile": "gpu-a100"}))
    assert plain["keep"] == {"until": "2026-12-07T12:00:00Z", "refused": None}  # due in 5 days, plus one day
    assert gpu["rule"] == "gpu" and gpu["keep"] is None and gpu["keep_text"] is None
    at_limit = Kept("alice", "", NOW + timedelta(days=8), "alice", NOW, NOW - timedelta(days=9))
    (kept,) = judged(snapshot("alice"), keeps=Keeps(at_limit))
    assert kept["kept_until"] == "2026-12-09T12:00:00Z" and page_state(kept) == "kept"
    assert kept["keep"]["until"] is None and "3d" in kept["keep"]["refused"]


def test_page_states() -> None:
    soon, later, exempt = judged(
        snapshot("a", idle=timedelta(days=6, hours=1)), snapshot("b"), snapshot("c", groups=["staff"])
    )
    assert [page_state(r) for r in (soon, later, exempt)] == ["due-soon", "running", "exempt"]
    assert page_state({"decision": "settling"}) == "settling" and page_state({"decision": "due"}) == "due"


# --- the admin table --------------------------------------------------------------------------------
def admin_fixture() -> list[dict[str, Any]]:
    return judged(
        snapshot("carol", idle=timedelta(hours=1)),
        snapshot("alice", "big", idle=timedelta(hours=20), user_options={"profile": "gpu-a100"}),
        snapshot("bob", idle=timedelta(days=3)),
        snapshot("dave", groups=["staff"]),
    )


def test_the_admin_table_sorts_and_filters() -> None:
    table = admin_fixture()
    users = lambda query: [r["user"] for r in admin_rows(table, query)]  # noqa: E731
    assert users(AdminQuery()) == ["alice", "bob", "carol", "dave"]  # soonest stop first; never last
    assert users(AdminQuery(descending=True)) == ["carol", "bob", "alice", "dave"]  # never stays last
    assert users(AdminQuery(sort="user", descending=True)) == ["dave", "carol", "bob", "alice"]
    assert users(AdminQuery(sort="visit")) == ["bob", "dave", "alice", "carol"]
    assert users(AdminQuery(rule="gpu")) == ["alice"]
    assert users(AdminQuery(state="due-soon")) == ["alice"]
    assert users(AdminQuery(state="exempt")) == ["dave"]
    parsed = AdminQuery.parse({"sort": "password", "state": "<b>", "order": "desc", "rule": "gpu"})
    assert parsed == AdminQuery(sort="stop", descending=True, rule="gpu", state="")


def test_the_admin_view_links_keep_the_filters_and_flip_the_order() -> None:
    query = AdminQuery(sort="user", rule="gpu")
    page = render_page(PageContext(ROOT, NOW, admin=query, sees_all=True), admin_fixture())
    assert "1 of 4 servers." in page
    assert "aria-sort='ascending'" in page
    header = re.search(r"<a href='([^']+)' data-sort='user'>", page)
    assert header is not None
    target = parse_qs(urlsplit(header.group(1).replace("&amp;", "&")).query)
    assert target == {"view": ["all"], "sort": ["user"], "order": ["desc"], "rule": ["gpu"]}
    assert "<option value='gpu' selected>" in page


# --- the rendered user view -------------------------------------------------------------------------
def user_page(csrf: str = "form-token", **extra: Any) -> str:
    servers = judged(
        snapshot("alice", display_name="Thesis <draft>"),
        snapshot("alice", "big one", user_options={"profile": "gpu-a100"}),
        snapshot("bob"),
    )
    ctx = PageContext(ALICE, NOW, hub_base_url="/jhub/", prefix=PREFIX, csrf=csrf, nonce="n0nce", **extra)
    return render_page(ctx, servers)


def test_the_user_view_in_the_hubs_look() -> None:
    page = user_page()
    assert "<link rel='stylesheet' href='/jhub/hub/static/css/style.min.css'>" in page
    assert "class='navbar navbar-expand-sm bg-body-tertiary mb-4'" in page
    assert "href='/jhub/hub/home'>Home</a>" in page and "<img src='/jhub/hub/logo'" in page
    assert "Admin</a>" not in page and "All servers" not in page  # alice is no admin
    assert "<style nonce='n0nce'>" in page and "<script nonce='n0nce'>" in page
    assert "bob" not in page


def test_each_server_shows_its_name_times_rule_open_and_keep() -> None:
    page = user_page()
    assert "Thesis &lt;draft&gt;" in page and "<draft>" not in page
    assert "<time class='culler-time' datetime='2026-11-29T12:00:00Z'>2026-11-29 12:00 UTC</time> (2 days ago)" in page
    assert "2026-12-06 12:00 UTC</time> (in 5 days)" in page  # the planned stop, readable without script
    assert "Servers stop after 1 week without a visit. Each keep adds 1 day" in page
    assert "href='/jhub/user/alice/'>Open</a>" in page and "href='/jhub/user/alice/big%20one/'>Open</a>" in page
    assert "Opening it counts as a visit" in page
    forms = re.findall(r"<form method='post' action='([^']+)'.*?</form>", page, re.S)
    assert forms == [PREFIX + "keep"]  # the gpu rule allows no keeps: one form, for the default server
    assert "name='_csrf' value='form-token'" in page
    assert "Keep until <time class='culler-time' datetime='2026-12-07T12:00:00Z'>" in page


def test_no_form_without_a_keeper_and_a_notice_once() -> None:
    page = user_page(csrf="", notice=(True, "Kept: default server of alice now stops no earlier than …"))
    assert "<div class='alert alert-success' role='status'>Kept:" in page
    assert "<form method='post'" not in page and "Keep until" not in page


# --- the Keep form ----------------------------------------------------------------------------------
Calls = list[tuple[str, str, str]]


def keep_recorder(calls: Calls, answer: Callable[[str], KeepAnswer] | None = None) -> Any:
    async def keep(token: str, user: str, server: str) -> KeepAnswer:
        calls.append((token, user, server))
        if answer is not None:
            return answer(token)
        return KeepAnswer(200, {"user": user, "server": server, "until": "2026-12-07T12:00:00Z"})

    return keep


async def identify(token: str) -> dict[str, Any] | None:
    return {"name": "alice", "admin": False, "scopes": frozenset()} if token == "alice-oauth-token" else None


def oauth_config(fake_hub: Any) -> OAuthConfig:
    return OAuthConfig(
        "service-culler",
        "service-api-token",
        PREFIX + "oauth_callback",
        str(fake_hub.make_url("/hub/api/oauth2/token")),
    )


class History:
    def last_stop(self, user: str, server: str) -> None:
        return None

    def for_user(self, name: str) -> list[dict[str, str | None]]:
        return []

    def all(self) -> list[dict[str, str | None]]:
        return []


async def page_client(aiohttp_client: Any, fake_hub: Any, calls: Calls, **keep: Any) -> Any:
    app = web.Application()
    table = lambda user: judged(snapshot("alice"))  # noqa: E731
    links = PageLinks("/", keep_recorder(calls, **keep))
    add_activity_routes(app, PREFIX, table, History(), identify, oauth_config(fake_hub), links=links)
    return await aiohttp_client(app)


def logged_in(client: Any, sid: str, token: str | None = "alice-oauth-token") -> None:
    activity = client.server.app[ACTIVITY_KEY]
    activity.sessions.put(sid, dict(ALICE))
    if token is not None:
        activity.tokens.put(sid, token)
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: sid})


def form(csrf: str | None, user: str = "alice") -> dict[str, str]:
    body = {"user": user, "server": ""}
    return body if csrf is None else {**body, "_csrf": csrf}


async def test_a_keep_from_the_page_is_checked_with_the_sessions_hub_token(aiohttp_client: Any, fake_hub: Any) -> None:
    calls: Calls = []
    client = await page_client(aiohttp_client, fake_hub, calls)
    logged_in(client, "alice-session")
    page = await client.get(PREFIX)
    text = await page.text()
    assert "alice-oauth-token" not in text  # no token reaches the browser
    nonce = re.search(r"<script nonce='([^']+)'>", text)
    assert nonce is not None and f"'nonce-{nonce.group(1)}'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    sent = re.search(r"name='_csrf' value='([0-9a-f]+)'", text)
    assert sent is not None and sent.group(1) == csrf_token("alice-session")

    answer = await client.post(PREFIX + "keep", data=form(sent.group(1)), allow_redirects=False)
    assert answer.status == 303 and answer.headers["Location"] == PREFIX
    assert calls == [("alice-oauth-token", "alice", "")]
    shown = await (await client.get(PREFIX)).text()
    assert "Kept: default server of alice now stops no earlier than 2026-12-07 12:00 UTC." in shown
    assert "Kept:" not in await (await client.get(PREFIX)).text()  # told once


@pytest.mark.parametrize(
    ("csrf", "headers", "why"),
    [
        (None, {}, "missing or not this session's"),
        ("mallory", {}, "missing or not this session's"),
        ("other-session", {}, "missing or not this session's"),
        ("own", {"Sec-Fetch-Site": "cross-site"}, "a cross-site request"),
        ("own", {"Sec-Fetch-Site": "same-site"}, "a same-site request"),  # a user's server on a subdomain
        ("own", {"Origin": "http://evil.example"}, "a request from http://evil.example"),
    ],
)
async def test_the_keep_form_refuses_posts_not_from_this_sessions_page(
    aiohttp_client: Any, fake_hub: Any, csrf: str | None, headers: dict[str, str], why: str
) -> None:
    calls: Calls = []
    client = await page_client(aiohttp_client, fake_hub, calls)
    logged_in(client, "alice-session")
    tokens = {"own": csrf_token("alice-session"), "other-session": csrf_token("mallory-session")}
    sent = tokens.get(csrf or "", csrf)
    answer = await client.post(PREFIX + "keep", data=form(sent), headers=headers, allow_redirects=False)
    assert answer.status == 403 and why in await answer.text()
    assert calls == []


async def test_the_keep_form_accepts_same_origin_fetch_metadata_and_needs_a_session(
    aiohttp_client: Any, fake_hub: Any
) -> None:
    calls: Calls = []
    client = await page_client(aiohttp_client, fake_hub, calls)
    anonymous = await client.post(PREFIX + "keep", data=form(csrf_token("x")), allow_redirects=False)
    assert anonymous.status == 403 and calls == []
    logged_in(client, "alice-session")
    origin = f"http://{client.server.host}:{client.server.port}"
    headers = {"Sec-Fetch-Site": "same-origin", "Origin": origin}
    answer = await client.post(PREFIX + "keep", data=form(csrf_token("alice-session")), headers=headers)
    assert answer.status == 200 and calls == [("alice-oauth-token", "alice", "")]


async def test_a_keep_after_a_restart_logs_in_again_then_keeps(aiohttp_client: Any, fake_hub: Any) -> None:
    calls: Calls = []
    client = await page_client(aiohttp_client, fake_hub, calls)
    logged_in(client, "old-session", token=None)  # the identity came back from the database, the token did not
    answer = await client.post(PREFIX + "keep", data=form(csrf_token("old-session")), allow_redirects=False)
    assert answer.status == 303 and calls == []
    location = urlsplit(answer.headers["Location"])
    assert location.path == "/hub/api/oauth2/authorize"
    state = parse_qs(location.query)["state"][0]
    back = await client.get(
        PREFIX + "oauth_callback", params={"code": "good-code", "state": state}, allow_redirects=False
    )
    assert back.status == 302 and calls == [("alice-oauth-token", "alice", "")]
    assert "Kept: default server of alice" in await (await client.get(PREFIX)).text()


async def test_a_refused_keep_is_told_and_a_revoked_token_logs_in_again(aiohttp_client: Any, fake_hub: Any) -> None:
    calls: Calls = []

    def answer(token: str) -> KeepAnswer:
        if token == "revoked":
            return KeepAnswer(403, {"error": "the hub does not accept this token"}, token_refused=True)
        return KeepAnswer(409, {"error": "kept to the limit: 3d past the normal deadline"})

    client = await page_client(aiohttp_client, fake_hub, calls, answer=answer)
    logged_in(client, "alice-session")
    page = await (await client.post(PREFIX + "keep", data=form(csrf_token("alice-session")))).text()  # 303 -> page
    assert "<div class='alert alert-danger' role='status'>Not kept: kept to the limit" in page
    logged_in(client, "alice-session", token="revoked")
    relogin = await client.post(PREFIX + "keep", data=form(csrf_token("alice-session")), allow_redirects=False)
    assert relogin.status == 303 and "/hub/api/oauth2/authorize" in relogin.headers["Location"]
    assert client.server.app[ACTIVITY_KEY].tokens.get("alice-session") is None


def test_a_keep_made_since_the_cycle_shows_at_once() -> None:
    server = snapshot("alice")
    cycle = evaluate(POLICY, server, NOW)  # judged before the keep
    kept = Keeps(Kept("alice", "", NOW + timedelta(days=6), "alice", NOW, server.started))
    (shown,) = rows([cycle], NOW, facts=PolicyFacts(POLICY, kept))
    assert shown["kept_until"] == "2026-12-07T12:00:00Z" and shown["stop_at"] == "2026-12-07T12:00:00Z"
    assert page_state(shown) == "kept"
    assert shown["message"] == "Your default server was kept: it will be stopped in 6 days unless you use it."
    (plain,) = rows([cycle], NOW, facts=PolicyFacts(POLICY, Keeps()))
    assert plain["kept_until"] is None and plain["stop_at"] == "2026-12-06T12:00:00Z"


async def test_a_login_returns_to_the_view_asked_for(aiohttp_client: Any, fake_hub: Any) -> None:
    client = await page_client(aiohttp_client, fake_hub, [])
    answer = await client.get(PREFIX + "?view=all&sort=user&x=%0d%0aSet-Cookie:%20a", allow_redirects=False)
    state = parse_qs(urlsplit(answer.headers["Location"]).query)["state"][0]
    back = await client.get(
        PREFIX + "oauth_callback", params={"code": "good-code", "state": state}, allow_redirects=False
    )
    assert back.status == 302  # the query comes back still encoded: no header can be injected through it
    location = back.headers["Location"]
    assert "\n" not in location and location.lower() == PREFIX + "?view=all&sort=user&x=%0d%0aset-cookie:%20a"


def test_past_stops_with_their_reasons_own_for_users_every_users_for_admins() -> None:
    stops = [
        {"user": "alice", "server": "", "time": "2026-11-30T12:00:00Z", "reason": "no visit for 7d", "settle": None},
        {
            "user": "bob",
            "server": "big",
            "time": "2026-11-29T12:00:00Z",
            "reason": "no visit for 1d",
            "settle": "quiet",
        },
    ]
    own = render_page(PageContext(ALICE, NOW, history=stops[:1]), [])
    assert (
        "<h2 class='h4 mt-4'>Past stops</h2>" in own and "no visit for 7d" in own and "<th scope='col'>User" not in own
    )
    every = render_page(PageContext(ROOT, NOW, admin=AdminQuery(), sees_all=True, history=stops), [])
    assert "<td>bob</td><td>big</td><td>no visit for 1d (quiet)</td>" in every
