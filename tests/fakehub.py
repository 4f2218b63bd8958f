"""A small fake JupyterHub REST API (aiohttp) with fault injection, for the client, cycle and service tests.

Users and servers live in memory, shaped like JupyterHub 6's user models. Every request is logged
(``fake.requests``); ``fake.fail(...)`` queues faults per method and path: a status (with headers such
as Retry-After), a body that is not JSON or JSON of the wrong shape, a delay, or a dropped connection.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

TOKEN = "fake-hub-token-1234567890"
PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"
API = "/hub/api"
_UNSET: Any = object()
BODY_KEY = web.RequestKey("body", object)


def iso(value: datetime | None) -> str | None:
    """A hub-style timestamp: UTC with a ``Z``."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_http_date(value: datetime) -> str:
    """An HTTP Date header value (second resolution, as servers send it)."""
    return email.utils.format_datetime(value.astimezone(timezone.utc), usegmt=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # decoded: /hub/api/users/a b
    raw_path: str  # as sent: /hub/api/users/a%20b
    query: dict[str, str]
    accept: str
    body: Any
    at: float  # time.monotonic() when it arrived


@dataclass
class Fault:
    """One queued misbehaviour: ``status`` None with a ``delay`` means "answer normally, late"."""

    status: int | None = 500
    body: str | bytes | None = None
    json: Any = _UNSET
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    times: int = 1  # -1: forever
    when: Callable[[Request], bool] | None = None


def _ready(user: dict[str, Any]) -> bool:
    """Whether ``state=ready`` lists a user; a model a test broke on purpose is served as it is."""
    servers = user.get("servers")
    if not isinstance(servers, dict):
        return True
    return any(not isinstance(s, dict) or s.get("ready") for s in servers.values())


class FakeHub:
    def __init__(
        self,
        token: str = TOKEN,
        *,
        paginate: bool = True,
        default_limit: int = 50,
        max_limit: int = 200,
        stop_delay: float = 0.0,
        touch_on_stop: datetime | Callable[[], datetime] | None = None,
        date: Callable[[], datetime | None] | None = None,
    ) -> None:
        self.token = token
        self.paginate = paginate  # False: an old hub that answers every user as a plain list
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.stop_delay = stop_delay  # seconds a DELETE takes before it answers
        # a completed (204) stop sets the user's last_activity to this time (a callable: its answer at the
        # stop), as JupyterHub's ``User.stop`` sets it to now; None leaves the user alone
        self.touch_on_stop = touch_on_stop
        # the hub's clock for the Date header of every answer (None: aiohttp's, i.e. ours; a None answer:
        # an empty Date, which clients treat as none); fakes a skewed or a test-frozen hub clock
        self.date = date
        self.runaway_next = False  # True: every page has a 'next', past the real total (a buggy hub or proxy)
        self.on_list: Callable[[int], None] | None = None  # called with each listing's offset before answering
        self.auth_status = 401  # the answer to a wrong token
        # what GET /user says the service's token holds (the hub's expanded scopes)
        self.scopes = [
            "list:users",
            "read:users:activity",
            "read:users:groups",
            "read:servers",
            "delete:servers",
            "admin:users",
        ]
        self.slow_stops: dict[tuple[str, str], float] = {}  # server -> seconds until a 202'd stop completes
        self.users: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.faults: dict[tuple[str, str], list[Fault]] = {}
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self.removed: list[tuple[str, str]] = []  # named servers stopped with {"remove": true}
        self._stops: dict[tuple[str, str], float] = {}  # 202'd stop -> monotonic time it completes
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- data -----------------------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        *,
        admin: bool = False,
        groups: list[str] | None = None,
        last_activity: datetime | None = None,
        created: datetime | None = None,
    ) -> dict[str, Any]:
        created = created or datetime(2024, 1, 1, tzinfo=timezone.utc)
        model: dict[str, Any] = {
            "kind": "user",
            "name": name,
            "admin": admin,
            "groups": list(groups or []),
            "last_activity": iso(last_activity),
            "created": iso(created),
            "servers": {},
        }
        self.users[name] = model
        return model

    def add_server(
        self,
        user: str,
        name: str = "",
        *,
        last_activity: datetime | None = None,
        started: datetime | None = None,
        ready: bool = True,
        pending: str | None = None,
        user_options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if user not in self.users:
            self.add_user(user, last_activity=last_activity)
        started = started or last_activity or datetime(2024, 1, 1, tzinfo=timezone.utc)
        server = {
            "name": name,
            "last_activity": iso(last_activity),
            "started": iso(started),
            "pending": pending,
            "ready": ready,
            "stopped": False,
            "user_options": dict(user_options or {}),
            "url": f"/user/{user}/{name + '/' if name else ''}",
            "progress_url": "",
            "state": {},
        }
        self.users[user]["servers"][name] = server
        return server

    def running(self, user: str, server: str = "") -> bool:
        self._settle()
        return server in self.users.get(user, {}).get("servers", {})

    # -- faults and observations ------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path: str,
        *,
        times: int = 1,
        status: int | None = 500,
        body: str | bytes | None = None,
        json: Any = _UNSET,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        drop: bool = False,
        when: Callable[[Request], bool] | None = None,
    ) -> None:
        """Queue a fault for ``method path`` (decoded path, e.g. ``/hub/api/users``)."""
        fault = Fault(status, body, json, dict(headers or {}), delay, drop, times, when)
        self.faults.setdefault((method.upper(), path), []).append(fault)

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path is None or r.path == path)
        ]

    @property
    def deletes(self) -> list[Request]:
        return self.calls("DELETE")

    def deleted_servers(self) -> list[tuple[str, str]]:
        """(user, server) for every server DELETE received, in order."""
        out = []
        for r in self.deletes:
            rest = r.path.removeprefix(API + "/users/")
            if rest.endswith("/server"):
                out.append((rest.removesuffix("/server"), ""))
            elif "/servers/" in rest:
                user, _, name = rest.partition("/servers/")
                out.append((user, name))
        return out

    # -- serving ----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(API + "/users", self._list_users)
        app.router.add_get(API + "/user", self._whoami)
        app.router.add_get(API + "/users/{name}", self._get_user)
        app.router.add_delete(API + "/users/{name}", self._delete_user)
        app.router.add_delete(API + "/users/{name}/server", self._stop_default)
        app.router.add_delete(API + "/users/{name}/servers/{server}", self._stop_named)
        return app

    async def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1 (for tests that need a real socket, e.g. for a subprocess)."""
        self._runner = web.AppRunner(self.make_app(), handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}{API}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
        record = Request(
            request.method,
            request.path,
            request.raw_path.split("?")[0],
            dict(request.query),
            request.headers.get("Accept", ""),
            body,
            time.monotonic(),
        )
        self.requests.append(record)
        request[BODY_KEY] = body
        self.in_flight[request.method] += 1
        self.max_in_flight[request.method] = max(self.max_in_flight[request.method], self.in_flight[request.method])
        when = self.date() if self.date is not None else None  # as Tornado: the time the request started
        try:
            response = await self._answer(request, handler, record)
        finally:
            self.in_flight[request.method] -= 1
        if self.date is not None:
            response.headers["Date"] = "" if when is None else format_http_date(when)
        return response

    async def _answer(self, request: web.Request, handler: Callable[..., Any], record: Request) -> web.StreamResponse:
        fault = self._take_fault(record)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=500)
            if fault.status is not None:
                return self._fault_response(fault)
        if not self._authorized(request):
            status = self.auth_status
            return web.json_response({"status": status, "message": "Missing or invalid credentials"}, status=status)
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() in ("token", "bearer") and value == self.token

    def _take_fault(self, record: Request) -> Fault | None:
        queue = self.faults.get((record.method, record.path), [])
        for fault in queue:
            if fault.when is not None and not fault.when(record):
                continue
            if fault.times > 0:
                fault.times -= 1
                if fault.times == 0:
                    queue.remove(fault)
            return fault
        return None

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        assert fault.status is not None
        if fault.json is not _UNSET:
            return web.json_response(fault.json, status=fault.status, headers=fault.headers)
        body = fault.body if fault.body is not None else json.dumps({"status": fault.status, "message": "fault"})
        data = body.encode() if isinstance(body, str) else body
        return web.Response(body=data, status=fault.status, headers=fault.headers, content_type="application/json")

    # -- handlers ---------------------------------------------------------------------------------

    def _settle(self) -> None:
        """Finish the 202'd stops whose time has come."""
        now = time.monotonic()
        for (user, server), done_at in list(self._stops.items()):
            if now >= done_at:
                del self._stops[(user, server)]
                self.users.get(user, {}).get("servers", {}).pop(server, None)

    async def _list_users(self, request: web.Request) -> web.Response:
        self._settle()
        state = request.query.get("state")
        users = list(self.users.values())
        if state == "ready":
            users = [u for u in users if _ready(u)]
        elif state == "active":
            users = [u for u in users if u.get("servers")]
        elif state == "inactive":
            users = [u for u in users if not u.get("servers")]
        if not self.paginate:
            return web.json_response(users)
        offset = int(request.query.get("offset", 0))
        limit = min(int(request.query.get("limit", self.default_limit)) or self.default_limit, self.max_limit)
        if self.on_list is not None:
            self.on_list(offset)  # it may touch the models listed (the same dicts)
        page = users[offset : offset + limit]
        if PAGINATION_MEDIA_TYPE not in request.headers.get("Accept", ""):
            return web.json_response(page)
        nxt = None
        if offset + limit < len(users) or self.runaway_next:
            url = f"{API}/users?state={state or ''}&offset={offset + limit}&limit={limit}"
            nxt = {"offset": offset + limit, "limit": limit, "url": url}
        pagination = {"offset": offset, "limit": limit, "total": len(users), "next": nxt}
        return web.json_response({"items": page, "_pagination": pagination})

    async def _whoami(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "service", "name": "activity-culler", "scopes": list(self.scopes)})

    async def _get_user(self, request: web.Request) -> web.Response:
        self._settle()
        user = self.users.get(request.match_info["name"])
        if user is None:
            return web.json_response({"status": 404, "message": "Not Found"}, status=404)
        return web.json_response(user)

    async def _delete_user(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.users:
            return web.json_response({"status": 404, "message": "Not Found"}, status=404)
        if self.users[name]["servers"]:
            return web.json_response({"status": 400, "message": f"{name}'s server is active"}, status=400)
        del self.users[name]
        return web.Response(status=204)

    async def _stop_default(self, request: web.Request) -> web.Response:
        return await self._stop(request, request.match_info["name"], "")

    async def _stop_named(self, request: web.Request) -> web.Response:
        return await self._stop(request, request.match_info["name"], request.match_info["server"])

    async def _stop(self, request: web.Request, user: str, server: str) -> web.Response:
        self._settle()
        if user not in self.users:
            return web.json_response({"status": 404, "message": "No such user"}, status=404)
        servers = self.users[user]["servers"]
        if server not in servers:
            if server:
                return web.json_response({"status": 404, "message": f"{user} has no server {server!r}"}, status=404)
            return web.json_response({"status": 400, "message": f"{user}'s server is not running"}, status=400)
        body = request.get(BODY_KEY)
        if bool(server) and isinstance(body, dict) and body.get("remove"):
            self.removed.append((user, server))
        if (user, server) in self._stops:
            return web.Response(status=202)
        if self.stop_delay:
            await asyncio.sleep(self.stop_delay)
        after = self.slow_stops.get((user, server))
        if after is not None:
            servers[server].update(pending="stop", ready=False)
            self._stops[(user, server)] = time.monotonic() + after
            return web.Response(status=202)
        del servers[server]
        if self.touch_on_stop is not None and user in self.users:
            when = self.touch_on_stop() if callable(self.touch_on_stop) else self.touch_on_stop
            self.users[user]["last_activity"] = iso(when)
        return web.Response(status=204)
