"""The ``proxy`` activity source: configurable-http-proxy's routes API, i.e. browser traffic only.

CHP stamps a route's ``last_activity`` on every request and websocket frame through it (and when the
route is added). It is the purest "reached through the browser" signal: the single-user server's own
activity reports, which the hub folds into its ``last_activity``, play no part.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime

import aiohttp

from culler.adapters.errors import ProxyActivityError
from culler.core.clock import ClockUntrusted, ClockWatch, Reading, parse_http_date
from culler.core.snapshot import Routes
from culler.core.text import parse_time, utcnow
from culler.logs import event

log = logging.getLogger("culler.proxy")

RouteActivity = dict[tuple[str, str], datetime]  # (user, server name) -> last traffic


class ProxyActivity:
    def __init__(
        self,
        api_url: str,
        token: str,
        timeout: float = 30.0,
        clock: ClockWatch | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.url = api_url.rstrip("/") + "/api/routes"
        self.clock = clock or ClockWatch("proxy")
        self._now = now  # our clock (tests move it)
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ProxyActivity({self.url!r})"

    async def routes(self) -> Routes:
        """Every user-server route's last browser traffic, on our clock (by the proxy's ``Date``)."""
        if not self._token:
            raise ProxyActivityError("no proxy API token: set CONFIGPROXY_AUTH_TOKEN (or CULLER_PROXY_API_TOKEN)")
        try:
            if self._session is None or self._session.closed:
                self._session = aiohttp.ClientSession(
                    timeout=self._timeout, headers={"Authorization": f"token {self._token}"}
                )
            sent = self._now()
            async with self._session.get(self.url) as response:
                payload = await response.read()
                status = response.status
                reading = Reading(sent, parse_http_date(response.headers.get("Date")))
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise ProxyActivityError(
                f"cannot read the proxy's routes at {self.url} ({type(error).__name__}); is the proxy API "
                "reachable from here?"
            ) from error
        if status != 200:
            hint = " (check the proxy API token, CONFIGPROXY_AUTH_TOKEN)" if status in (401, 403) else ""
            raise ProxyActivityError(f"GET {self.url}: the proxy answered {status}{hint}")
        try:
            reading, lines = self.clock.admit(reading)
        except ClockUntrusted as error:
            raise ProxyActivityError(str(error)) from None
        for line in lines:
            event(log, logging.WARNING, line, skew=f"{self.clock.skew_seconds:+.1f}s")
        stamps = parse_routes(payload)
        return Routes({key: stamp - reading.offset for key, stamp in stamps.items()}, reading.sent)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def parse_routes(payload: bytes) -> RouteActivity:
    """(user, server) -> last activity of every user-server route; garbage raises ProxyActivityError."""
    try:
        routes = json.loads(payload)
        if not isinstance(routes, dict):
            raise ValueError("not an object")
        activity: RouteActivity = {}
        for data in routes.values():
            if isinstance(data, dict) and isinstance(data.get("user"), str):
                stamp = parse_time(data.get("last_activity"))
                key = (data["user"], str(data.get("server_name") or ""))
                if stamp is not None and (key not in activity or stamp > activity[key]):
                    activity[key] = stamp  # several routes for one server: the newest traffic counts
        return activity
    except ValueError as error:
        raise ProxyActivityError(f"the proxy's routes are not readable: {error}") from error
