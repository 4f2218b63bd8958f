"""Settle probe ``server``: ask the due server's own probe extension (extension/) whether its home is written.

The service reaches the server at its proxy route's target, never through the proxy (that would be
browser activity), with a separate probe token that holds only ``custom:activity-culler:probe``: the main
token, which can stop servers, never goes to a server a user controls. Whatever goes wrong (no extension,
a refused token, a timeout, a malformed answer) is "cannot tell", which defers the stop as every probe
does; a lying extension can delay a stop only up to the policy's max_deferral (at_cap: stop).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from culler.core.settle import Observation, active, quiet, unknown
from culler.core.snapshot import ServerSnapshot

PATH = "/api/activity-culler/probe"


class ServerProbe:
    name = "server"

    def __init__(self, proxy_api_url: str, proxy_token: str, probe_token: str, timeout: float = 10.0) -> None:
        self.routes_url = proxy_api_url.rstrip("/") + "/api/routes"
        self._proxy_token = proxy_token
        self._probe_token = probe_token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ServerProbe({self.routes_url!r})"

    async def observe(self, server: ServerSnapshot, window: float = 0.0) -> Observation:
        try:
            url = await self._probe_url(server)
            if url is None:
                return unknown("the proxy has no route for this server", error=True)
            status, body = await self._get(url, self._probe_token)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return unknown(f"the server's probe did not answer ({type(error).__name__})", error=True)
        return _observation(status, body)

    async def _probe_url(self, server: ServerSnapshot) -> str | None:
        """The server's probe endpoint at its route's target (the route's path is the server's base URL)."""
        status, body = await self._get(self.routes_url, self._proxy_token)
        if status != 200 or not isinstance(body, dict):
            raise aiohttp.ClientError(f"the proxy's routes answered {status}")
        for path, route in body.items():
            if not isinstance(route, dict) or route.get("user") != server.user:
                continue
            if str(route.get("server_name") or "") == server.name and isinstance(route.get("target"), str):
                return str(route["target"]).rstrip("/") + str(path).rstrip("/") + PATH
        return None

    async def _get(self, url: str, token: str) -> tuple[int, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"token {token}"}
        async with self._session.get(url, headers=headers, allow_redirects=False) as response:
            payload = await response.read()
            try:
                return response.status, json.loads(payload)
            except ValueError:
                return response.status, None

    def forget(self, key: str) -> None:
        return None  # the extension keeps its samples; nothing is remembered here

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _observation(status: int, body: Any) -> Observation:
    if status == 404:
        return unknown("no probe extension on this server (jupyterhub-activity-culler-probe)", error=True)
    if status in (401, 403):
        return unknown(f"the server's probe refused the probe token ({status}): check CULLER_PROBE_TOKEN", error=True)
    if status != 200 or not isinstance(body, dict):
        return unknown(f"the server's probe answered {status} without a reading", error=True)
    state = body.get("state")
    if state == "active":
        return active("the server's probe saw writes under the home")
    if state == "quiet":
        seconds = body.get("quiet_for")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
            return quiet(float(seconds), "the server's probe")
        return unknown("the server's probe said quiet without a duration", error=True)
    if state == "unknown":
        return unknown(f"the server's probe cannot tell yet: {str(body.get('detail'))[:120]}")
    return unknown("the server's probe gave no state", error=True)
