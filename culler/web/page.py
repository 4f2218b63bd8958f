"""The users' activity API and page under the service prefix.

``api/servers`` answers hub API tokens (``Authorization: token ...``); the page logs browsers in through the
hub (OAuth, as a JupyterHub service) and keeps the access token server-side, behind a random session id."""

from __future__ import annotations

import html
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from culler.adapters.database import Database
from culler.adapters.errors import HubError, HubProtocolError, OAuthExchangeError
from culler.adapters.hub_auth import HubAuth, OAuthCodes
from culler.core.text import humanize
from culler.core.ttlmap import TTLMap
from culler.web.app import READ_ALL_SERVERS, bearer_token, normalized_prefix
from culler.web.rows import History, admin_view, for_user, server_name
from culler.web.sessions import Sessions

log = logging.getLogger("culler.activity_web")

Identity = dict[str, Any]  # {"name": str, "admin": bool, "scopes": frozenset[str]}
IdentifyFn = Callable[[str], Awaitable[Identity | None]]
RowsFn = Callable[[], list[dict[str, Any]]]

SESSION_COOKIE = "culler-activity-session"
STATE_COOKIE = "culler-activity-state"
STATE_TTL = 600.0
MAX_SESSIONS = 10000


@dataclass(frozen=True)
class OAuthConfig:
    client_id: str  # JUPYTERHUB_CLIENT_ID (service-<name>)
    client_secret: str  # the service's JUPYTERHUB_API_TOKEN
    redirect_uri: str  # JUPYTERHUB_OAUTH_CALLBACK_URL (<prefix>oauth_callback)
    token_url: str  # the hub API's oauth2/token, e.g. http://127.0.0.1:8081/hub/api/oauth2/token
    authorize_url: str = "/hub/api/oauth2/authorize"  # what the browser is sent to: path-only works behind the proxy
    session_ttl: float = 8 * 3600.0
    secure_cookies: bool = False
    ssl_context: ssl.SSLContext | None = None


def sees_all(identity: Mapping[str, Any]) -> bool:
    return bool(identity.get("admin")) or bool(frozenset(identity.get("scopes") or ()) & READ_ALL_SERVERS)


def hub_identify(auth: HubAuth) -> IdentifyFn:
    """``identify`` through the hub's ``GET /user`` with the caller's token (``None``: token refused)."""

    async def identify(token: str) -> Identity | None:
        model = await auth.owner(token)
        return None if model is None else identity_from(model)

    return identify


def identity_from(model: object) -> Identity:
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise HubProtocolError("GET user (identify): no 'name'")
    scopes = model.get("scopes")
    return {
        "name": model["name"],
        "admin": model.get("admin") is True,
        "scopes": frozenset(str(s) for s in scopes) if isinstance(scopes, list) else frozenset(),
    }


class ActivityWeb:
    def __init__(
        self,
        prefix: str,
        rows_fn: RowsFn,
        history: History,
        identify: IdentifyFn,
        oauth: OAuthConfig | None,
        database: Database | None = None,
    ) -> None:
        self.prefix = prefix
        self.rows_fn = rows_fn
        self.history = history
        self.identify = identify  # cached where it asks the hub (culler.adapters.hub_auth)
        self.oauth = oauth
        ttl = oauth.session_ttl if oauth is not None else OAuthConfig.session_ttl
        self.sessions = Sessions(database, ttl, MAX_SESSIONS)
        self.states: TTLMap[str, bool] = TTLMap(STATE_TTL, MAX_SESSIONS)
        self._codes = (
            OAuthCodes(oauth.token_url, oauth.client_id, oauth.client_secret, oauth.redirect_uri, oauth.ssl_context)
            if oauth is not None
            else None
        )

    # --- the API -----------------------------------------------------------------------------------
    async def api_servers(self, request: web.Request) -> web.Response:
        token = bearer_token(request)
        identity = self._session(request) if token is None else None
        if token is None and identity is None:
            return web.json_response({"error": "send a hub API token: Authorization: token ..."}, status=401)
        if token is not None:
            try:
                identity = await self.identify(token)
            except HubError as error:
                return web.json_response({"error": str(error)}, status=502)
            if identity is None:
                return web.json_response({"error": "the hub does not accept this token"}, status=403)
        assert identity is not None
        rows = self.rows_fn()
        if request.query.get("all") in ("1", "true", "yes"):
            if not sees_all(identity):
                return web.json_response({"error": "needs hub admin, read:servers or admin:servers"}, status=403)
            return web.json_response({"servers": admin_view(rows), "history": self.history.all()})
        name = identity["name"]
        return web.json_response(
            {"user": name, "servers": for_user(rows, name), "history": self.history.for_user(name)}
        )

    # --- the browser login -------------------------------------------------------------------------
    def _session(self, request: web.Request) -> Identity | None:
        sid = request.cookies.get(SESSION_COOKIE)
        return self.sessions.get(sid) if sid else None

    def _cookie(self, response: web.StreamResponse, name: str, value: str, max_age: float) -> None:
        assert self.oauth is not None
        response.set_cookie(
            name,
            value,
            path=self.prefix,
            max_age=int(max_age),
            httponly=True,
            samesite="Lax",
            secure=self.oauth.secure_cookies,
        )

    async def page(self, request: web.Request) -> web.StreamResponse:
        identity = self._session(request)
        if identity is None:
            return self._login_redirect()
        return web.Response(text=render_page(identity, self.rows_fn(), self.history), content_type="text/html")

    def _login_redirect(self) -> web.StreamResponse:
        assert self.oauth is not None
        state = secrets.token_urlsafe(24)
        self.states.put(state, True)
        query = urlencode(
            {
                "client_id": self.oauth.client_id,
                "redirect_uri": self.oauth.redirect_uri,
                "response_type": "code",
                "state": state,
            }
        )
        response = web.Response(status=302, headers={"Location": f"{self.oauth.authorize_url}?{query}"})
        self._cookie(response, STATE_COOKIE, state, STATE_TTL)
        return response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        assert self.oauth is not None
        state = request.query.get("state", "")
        expected = request.cookies.get(STATE_COOKIE, "")
        pending = self.states.pop(state) if state else None
        if not state or not secrets.compare_digest(state, expected) or not pending:
            return web.Response(status=400, text="OAuth state mismatch: start again from the service page\n")
        code = request.query.get("code")
        if not code:
            return web.Response(status=400, text="no OAuth code\n")
        assert self._codes is not None
        try:
            token = await self._codes.exchange(code)
        except OAuthExchangeError as error:
            log.warning("OAuth token exchange failed: %s", error)
            return web.Response(status=502, text="the hub did not complete the login\n")
        if token is None:
            return web.Response(status=403, text="the hub refused the login code\n")
        try:
            identity = await self.identify(token)
        except HubError as error:
            return web.Response(status=502, text=f"{error}\n")
        if identity is None:
            return web.Response(status=403, text="the hub does not accept the login token\n")
        sid = secrets.token_urlsafe(32)
        self.sessions.put(sid, identity)
        response = web.Response(status=302, headers={"Location": self.prefix})
        self._cookie(response, SESSION_COOKIE, sid, self.oauth.session_ttl)
        response.del_cookie(STATE_COOKIE, path=self.prefix)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            self.sessions.pop(sid)
        response = web.Response(text="logged out of the activity page\n")
        response.del_cookie(SESSION_COOKIE, path=self.prefix)
        return response

    async def close(self, app: web.Application | None = None) -> None:
        if self._codes is not None:
            await self._codes.close()


ACTIVITY_KEY = web.AppKey("activity", ActivityWeb)


def add_activity_routes(
    app: web.Application,
    prefix: str,
    rows_fn: RowsFn,
    history: History,
    identify: IdentifyFn,
    oauth: OAuthConfig | None,
    database: Database | None = None,
) -> ActivityWeb:
    """``<prefix>api/servers`` always; with ``oauth``, also the page ``<prefix>`` (so the app must not route
    ``GET <prefix>`` itself), ``<prefix>oauth_callback`` and ``<prefix>logout``."""
    prefix = normalized_prefix(prefix)
    activity = ActivityWeb(prefix, rows_fn, history, identify, oauth, database)
    app[ACTIVITY_KEY] = activity
    app.router.add_get(prefix + "api/servers", activity.api_servers)
    if oauth is not None:
        app.router.add_get(prefix, activity.page)
        app.router.add_get(prefix + "oauth_callback", activity.callback)
        app.router.add_get(prefix + "logout", activity.logout)
    app.on_cleanup.append(activity.close)
    return activity


# --- the page ---------------------------------------------------------------------------------------
def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def stop_sentence(entry: Mapping[str, Any]) -> str:
    text = f"Your server {server_name(str(entry.get('server') or ''))} was stopped on {entry.get('time')}"
    text += f" because {entry.get('reason')}"
    if entry.get("settle"):
        text += f" ({entry.get('settle')})"
    return text + "."


def render_page(identity: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], history: History) -> str:
    name = str(identity["name"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Server activity</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .6em;text-align:left}"
        ".due,.settling{color:#a40}.exempt{color:#070}</style></head><body>",
        f"<h1>Your servers</h1><p>Signed in as <b>{_e(name)}</b>.</p>",
    ]
    own = for_user(rows, name)
    if not own:
        parts.append("<p>You have no running servers.</p>")
    else:
        parts.append("<ul>")
        for r in own:
            detail = f"rule {r['rule']}; last activity {r['last_activity'] or 'unknown'}"
            if r.get("settle"):
                detail += f"; {r['settle'].get('state')}"
            parts.append(f"<li class='{_e(r['decision'])}'>{_e(r['message'])} <small>({_e(detail)})</small></li>")
        parts.append("</ul>")
    stops = history.for_user(name)[:20]
    if stops:
        parts.append("<h2>Stopped servers</h2><ul>")
        parts += [f"<li>{_e(stop_sentence(entry))}</li>" for entry in stops]
        parts.append("</ul>")
    if sees_all(identity):
        parts.append("<h2>All servers</h2><table><tr>")
        columns = ("user", "server", "decision", "stops in", "rule", "idle", "last activity")
        parts.append("".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>")
        for r in admin_view(rows):
            until = r["seconds_until_stop"]
            cells = (
                r["user"],
                server_name(r["server"]),
                r["decision"],
                "-" if until is None else humanize(until) if until else "now",
                r["rule"],
                r["idle"] or "-",
                r["last_activity"] or "-",
            )
            parts.append(f"<tr class='{_e(r['decision'])}'>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("<p><a href='logout'>Log out</a></p></body></html>")
    return "\n".join(parts)
