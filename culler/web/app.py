"""The service's HTTP endpoints under its prefix: readiness (``health``), liveness (``live``), and the
settling servers (``api/settling``, for holders of a hub token that may read every server)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from culler.adapters.errors import HubError

HealthFn = Callable[[], tuple[bool, dict[str, object]]]
SettlingFn = Callable[[], list[dict[str, object]]]
ScopesFn = Callable[[str], Awaitable[frozenset[str] | None]]  # a caller's token -> its hub scopes (cached: HubAuth)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

HEALTH_KEY: web.AppKey[HealthFn] = web.AppKey("health")
METRICS_KEY: web.AppKey[Handler] = web.AppKey("metrics")
SERVICE_KEY = web.AppKey("service", str)
SETTLING_KEY: web.AppKey[SettlingFn] = web.AppKey("settling")
SCOPES_KEY: web.AppKey[ScopesFn] = web.AppKey("scopes")

# Whoever may read every server on the hub may see which are settling: nothing new is revealed.
READ_ALL_SERVERS = frozenset({"read:servers", "admin:servers"})


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() in ("token", "bearer") and value.strip() else None


async def health(request: web.Request) -> web.Response:
    ok, body = request.app[HEALTH_KEY]()
    return web.json_response(body, status=200 if ok else 503)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def index(request: web.Request) -> web.Response:
    return web.Response(text="jupyterhub-activity-culler\n")


async def caller_scopes(request: web.Request, scheme: str) -> frozenset[str] | web.Response:
    """The caller's hub scopes, or the answer to give: no token 401, refused 403, the hub cannot say 502."""
    token = bearer_token(request)
    if token is None:
        return web.json_response({"error": f"send a hub API token: Authorization: {scheme} ..."}, status=401)
    try:
        scopes = await request.app[SCOPES_KEY](token)
    except HubError as error:  # not cached: the next request asks the hub again
        return web.json_response({"error": f"the hub could not check the token: {error}"}, status=502)
    if scopes is None:
        return web.json_response({"error": "the hub does not accept this token"}, status=403)
    return scopes


async def refused_unless_reading_all(request: web.Request) -> web.Response | None:
    """None for a caller whose token may read every server; else the answer to give."""
    scopes = await caller_scopes(request, "token")
    if isinstance(scopes, web.Response):
        return scopes
    if not scopes & READ_ALL_SERVERS:
        return web.json_response({"error": "needs a token with read:servers or admin:servers"}, status=403)
    return None


async def settling(request: web.Request) -> web.Response:
    return await refused_unless_reading_all(request) or web.json_response({"settling": request.app[SETTLING_KEY]()})


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus scrapes with a hub token that may access this service (``access:services!service=…``)."""
    scopes = await caller_scopes(request, "Bearer")
    if isinstance(scopes, web.Response):
        return scopes
    name = request.app[SERVICE_KEY]
    if not scopes & {f"access:services!service={name}", "access:services"}:
        return web.json_response({"error": f"needs a token with access:services!service={name}"}, status=403)
    return await request.app[METRICS_KEY](request)


def normalized_prefix(prefix: str) -> str:
    """``/services/x/`` from ``services/x``, ``/services/x`` or ``/services/x/``; ``/`` for none."""
    return "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"


def make_unready_app(prefix: str, reason: str) -> web.Application:
    """What a hub-managed service serves when its settings are wrong: ``health`` 503 with the reason,
    ``live`` 200 and a 200 page at the prefix, so that the hub's start-up check of its url passes and
    the hub is not taken down with it. Nothing is culled until the settings are fixed and it restarts."""
    body = {"status": "unavailable", "reason": f"invalid settings: {reason}", "cycles": 0}
    prefix = normalized_prefix(prefix)

    async def unready(request: web.Request) -> web.Response:
        return web.json_response(body, status=503)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"jupyterhub-activity-culler is not running: invalid settings: {reason}\n")

    app = web.Application()
    app.router.add_get(prefix + "health", unready)
    app.router.add_get(prefix + "live", live)
    app.router.add_get(prefix, page)
    return app


def make_metrics_app(handler: Handler) -> web.Application:
    """The unauthenticated listener for in-cluster scraping: ``/metrics`` only."""
    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


def make_app(
    prefix: str,
    health_fn: HealthFn,
    settling_fn: SettlingFn | None = None,
    scopes_fn: ScopesFn | None = None,
    metrics_handler: Handler | None = None,
    service_name: str = "activity-culler",
    index_page: bool = True,
) -> web.Application:
    prefix = normalized_prefix(prefix)
    app = web.Application()
    app[HEALTH_KEY] = health_fn
    app.router.add_get(prefix + "health", health)
    app.router.add_get(prefix + "live", live)
    if index_page:  # else the activity page takes the prefix itself
        app.router.add_get(prefix, index)
    if settling_fn is not None and scopes_fn is not None:
        app[SETTLING_KEY] = settling_fn
        app[SCOPES_KEY] = scopes_fn
        app.router.add_get(prefix + "api/settling", settling)
        if metrics_handler is not None:
            app[METRICS_KEY] = metrics_handler
            app[SERVICE_KEY] = service_name
            app.router.add_get(prefix + "metrics", metrics)
    return app
