"""The users' activity API and page under the service prefix.

``api/servers`` answers hub API tokens (``Authorization: token ...``); the page logs browsers in through the
hub (OAuth, as a JupyterHub service). The session's identity outlives a restart (culler.web.sessions); the
hub's access token stays in this process's memory only and is what a Keep on the page is checked with. A
Keep from a session whose token is gone (a restart) goes through the hub's login again and is then made."""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from culler.adapters.database import Database
from culler.adapters.errors import HubError, HubProtocolError, OAuthExchangeError
from culler.adapters.hub_auth import HubAuth, OAuthCodes
from culler.core.text import utc_minutes, utcnow
from culler.core.ttlmap import TTLMap
from culler.engine.keeper import KeepAnswer
from culler.web.app import READ_ALL_SERVERS, bearer_token, normalized_prefix
from culler.web.csrf import CSRF_FIELD, cross_site, csrf_matches, csrf_token
from culler.web.page_html import AdminQuery, PageContext, parse_time, render_page
from culler.web.rows import History, admin_view, for_user, server_label
from culler.web.sessions import Sessions

log = logging.getLogger("culler.activity_web")

Identity = dict[str, Any]  # {"name": str, "admin": bool, "scopes": frozenset[str]}
IdentifyFn = Callable[[str], Awaitable[Identity | None]]
RowsFn = Callable[[str | None], list[dict[str, Any]]]  # one user's rows, or (None) every server's
KeepFn = Callable[[str, str, str], Awaitable[KeepAnswer]]  # token, user, server (culler.engine.keeper)

SESSION_COOKIE = "culler-activity-session"
STATE_COOKIE = "culler-activity-state"
STATE_TTL = 600.0
MAX_SESSIONS = 10000
NOTICE_TTL = 300.0


@dataclass(frozen=True)
class PendingLogin:
    """An OAuth state in flight; ``keep``: the (user, server) a Keep asked for before the login; ``back``:
    the page's query string to return to (``?view=all&sort=...``)."""

    keep: tuple[str, str] | None = None
    back: str = ""


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


@dataclass(frozen=True)
class PageLinks:
    """Where the page sends people: the hub (its stylesheet, navbar and servers) and the keep action."""

    hub_base_url: str = "/"  # JUPYTERHUB_BASE_URL
    keep: KeepFn | None = None  # None: the page offers no Keep (no keeper wired)


class ActivityWeb:
    def __init__(
        self,
        prefix: str,
        rows_fn: RowsFn,
        history: History,
        identify: IdentifyFn,
        oauth: OAuthConfig | None,
        database: Database | None = None,
        links: PageLinks = PageLinks(),
    ) -> None:
        self.prefix = prefix
        self.rows_fn = rows_fn
        self.history = history
        self.identify = identify  # cached where it asks the hub (culler.adapters.hub_auth)
        self.oauth = oauth
        self.links = links
        ttl = oauth.session_ttl if oauth is not None else OAuthConfig.session_ttl
        self.sessions = Sessions(database, ttl, MAX_SESSIONS)
        self.tokens: TTLMap[str, str] = TTLMap(ttl, MAX_SESSIONS)  # session id -> hub access token: memory only
        self.notices: TTLMap[str, tuple[bool, str]] = TTLMap(NOTICE_TTL, MAX_SESSIONS)  # a keep's outcome, once
        self.states: TTLMap[str, PendingLogin] = TTLMap(STATE_TTL, MAX_SESSIONS)
        self._codes = (
            OAuthCodes(oauth.token_url, oauth.client_id, oauth.client_secret, oauth.redirect_uri, oauth.ssl_context)
            if oauth is not None
            else None
        )

    # --- the API -----------------------------------------------------------------------------------
    async def api_servers(self, request: web.Request) -> web.Response:
        token = bearer_token(request)
        identity = self._session(request)[1] if token is None else None
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
        if request.query.get("all") in ("1", "true", "yes"):
            if not sees_all(identity):
                return web.json_response({"error": "needs hub admin, read:servers or admin:servers"}, status=403)
            return web.json_response({"servers": admin_view(self.rows_fn(None)), "history": self.history.all()})
        name = identity["name"]
        return web.json_response(
            {"user": name, "servers": for_user(self.rows_fn(name), name), "history": self.history.for_user(name)}
        )

    # --- the page ----------------------------------------------------------------------------------
    def _session(self, request: web.Request) -> tuple[str, Identity | None]:
        """The request's session id ("" for none) and its identity (None: not logged in)."""
        sid = request.cookies.get(SESSION_COOKIE, "")
        return sid, self.sessions.get(sid) if sid else None

    def _cookie(self, response: web.StreamResponse, name: str, value: str, max_age: float) -> None:
        assert self.oauth is not None
        response.set_cookie(
            name,
            value,
            path=self.prefix,
            max_age=int(max_age),
            httponly=True,
            samesite="Lax",  # a cross-site post carries no session: the first of the keep form's guards
            secure=self.oauth.secure_cookies,
        )

    async def page(self, request: web.Request) -> web.StreamResponse:
        sid, identity = self._session(request)
        if identity is None:
            back = request.rel_url.raw_query_string[:2000]  # still percent-encoded: safe in a Location header
            return self._login_redirect(PendingLogin(back=back))
        wants_all = request.query.get("view") == "all" and sees_all(identity)
        nonce = secrets.token_urlsafe(16)
        context = PageContext(
            identity=identity,
            now=utcnow(),
            hub_base_url=self.links.hub_base_url,
            prefix=self.prefix,
            csrf=csrf_token(sid) if self.links.keep is not None else "",
            nonce=nonce,
            notice=self.notices.pop(sid),
            admin=AdminQuery.parse(request.query) if wants_all else None,
            sees_all=sees_all(identity),
            history=self.history.all() if wants_all else self.history.for_user(str(identity["name"])),
        )
        shown = self.rows_fn(None if wants_all else str(identity["name"]))
        response = web.Response(text=render_page(context, shown), content_type="text/html")
        response.headers.update(page_headers(nonce))
        return response

    async def keep_form(self, request: web.Request) -> web.StreamResponse:
        """The page's Keep button: same-origin, with this session's CSRF token, checked with the hub."""
        sid, identity = self._session(request)
        refused = cross_site(request)
        if refused is not None:
            return web.Response(status=403, text=f"refused: {refused} may not keep servers\n")
        if identity is None or self.links.keep is None:
            return web.Response(status=403, text="refused: log in on the activity page first\n")
        form = await request.post()
        if not csrf_matches(sid, form.get(CSRF_FIELD)):
            return web.Response(status=403, text="refused: the form's token is missing or not this session's\n")
        user, server = str(form.get("user") or ""), str(form.get("server") or "")
        if not user:
            return web.Response(status=400, text="no user given\n")
        token = self.tokens.get(sid)
        if token is None:  # logged in before a restart: ask the hub again, then keep
            return self._login_redirect(PendingLogin(keep=(user, server)), status=303)
        answer = await self.links.keep(token, user, server)
        if answer.token_refused:
            self.tokens.pop(sid)  # the hub revoked or expired it
            return self._login_redirect(PendingLogin(keep=(user, server)), status=303)
        self.notices.put(sid, keep_notice(answer))
        return web.Response(status=303, headers={"Location": self.prefix})

    def _login_redirect(self, pending: PendingLogin = PendingLogin(), status: int = 302) -> web.StreamResponse:
        assert self.oauth is not None
        state = secrets.token_urlsafe(24)
        self.states.put(state, pending)
        query = urlencode(
            {
                "client_id": self.oauth.client_id,
                "redirect_uri": self.oauth.redirect_uri,
                "response_type": "code",
                "state": state,
            }
        )
        response = web.Response(status=status, headers={"Location": f"{self.oauth.authorize_url}?{query}"})
        self._cookie(response, STATE_COOKIE, state, STATE_TTL)
        return response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        assert self.oauth is not None
        state = request.query.get("state", "")
        expected = request.cookies.get(STATE_COOKIE, "")
        pending = self.states.pop(state) if state else None
        if not state or not secrets.compare_digest(state, expected) or pending is None:
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
        self.tokens.put(sid, token)
        if pending.keep is not None and self.links.keep is not None:
            self.notices.put(sid, keep_notice(await self.links.keep(token, *pending.keep)))
        back = self.prefix + (f"?{pending.back}" if pending.back else "")  # our own page only
        response = web.Response(status=302, headers={"Location": back})
        self._cookie(response, SESSION_COOKIE, sid, self.oauth.session_ttl)
        response.del_cookie(STATE_COOKIE, path=self.prefix)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Ends the page's session, then the hub's (as the hub's own Logout button does)."""
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            self.sessions.pop(sid)
            self.tokens.pop(sid)
        hub_logout = self.links.hub_base_url.rstrip("/") + "/hub/logout"
        response = web.Response(status=302, headers={"Location": hub_logout})
        response.del_cookie(SESSION_COOKIE, path=self.prefix)
        return response

    async def close(self, app: web.Application | None = None) -> None:
        if self._codes is not None:
            await self._codes.close()


def keep_notice(answer: KeepAnswer) -> tuple[bool, str]:
    body = answer.body
    if answer.status != 200:
        return False, f"Not kept: {body.get('error')}"
    until = parse_time(body.get("until"))
    shown = utc_minutes(until) if until else body.get("until")
    label = server_label(str(body.get("server") or ""))
    return True, f"Kept: {label} of {body.get('user')} now stops no earlier than {shown}."


def page_headers(nonce: str) -> dict[str, str]:
    """Personal data and a form token: never cached, never framed; scripts and styles only ours (by nonce)
    and the hub's (same origin behind the hub's proxy)."""
    policy = (
        f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; "
        "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }


ACTIVITY_KEY = web.AppKey("activity", ActivityWeb)


def add_activity_routes(
    app: web.Application,
    prefix: str,
    rows_fn: RowsFn,
    history: History,
    identify: IdentifyFn,
    oauth: OAuthConfig | None,
    database: Database | None = None,
    links: PageLinks = PageLinks(),
) -> ActivityWeb:
    """``<prefix>api/servers`` always; with ``oauth``, also the page ``<prefix>`` (so the app must not route
    ``GET <prefix>`` itself), its Keep form ``POST <prefix>keep``, ``<prefix>oauth_callback`` and
    ``<prefix>logout``."""
    prefix = normalized_prefix(prefix)
    activity = ActivityWeb(prefix, rows_fn, history, identify, oauth, database, links)
    app[ACTIVITY_KEY] = activity
    app.router.add_get(prefix + "api/servers", activity.api_servers)
    if oauth is not None:
        app.router.add_get(prefix, activity.page)
        app.router.add_post(prefix + "keep", activity.keep_form)
        app.router.add_get(prefix + "oauth_callback", activity.callback)
        app.router.add_get(prefix + "logout", activity.logout)
    app.on_cleanup.append(activity.close)
    return activity
