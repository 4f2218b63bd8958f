"""The probe's one endpoint: its own token check, and never a touch of the server's activity."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from tornado import web

from activity_culler_probe.sampler import Sampler


class ProbeHandler(APIHandler):
    """Asked every settle poll, so it is silent: the server's own log lines are writes by the process a
    stop would kill, and would make every foreign change under the roots look like the server's own."""

    _track_activity = False  # a probe is not a user: the hub's last_activity must not move

    def initialize(self, sampler: Sampler, scope: str) -> None:
        self.sampler = sampler
        self.scope = scope

    async def prepare(self) -> None:  # type: ignore[override]
        # The token is checked below; the server's identity provider is not asked, as it would log a
        # "Not allowing user" warning for every probe token (which holds no access to the server).
        if not self.check_host():
            raise web.HTTPError(403)
        self.current_user = self._jupyter_current_user = None

    def _log(self) -> None:
        # tornado's per-handler hook for the request log: a probe request is debug-level at any status
        self.log.debug("%d %s %.1fms", self.get_status(), self.request.path, 1000 * self.request.request_time())

    def check_xsrf_cookie(self) -> None:
        return None  # token-only, GET-only: no browser session is accepted here

    @allow_unauthenticated
    async def get(self) -> None:
        status, body = await self._authorize()
        if status != 200:
            self.set_status(status)
            self.finish(body)
            return
        self.finish(self.sampler.ask())

    async def _authorize(self) -> tuple[int, dict[str, Any]]:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            return 401, {"error": "send a hub token holding the probe scope: Authorization: token ..."}
        hub_auth = getattr(self.identity_provider, "hub_auth", None)
        if hub_auth is None:
            return 503, {"error": "not running under JupyterHub"}
        try:
            model = await hub_auth.user_for_token(token.strip(), sync=False)
        except Exception:  # the hub could not say: the caller treats this as "cannot tell"
            return 502, {"error": "the hub could not check the token"}
        if not model or self.scope not in (model.get("scopes") or []):
            return 403, {"error": "this token does not hold the probe scope"}
        return 200, {}
