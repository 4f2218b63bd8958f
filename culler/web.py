"""The service's HTTP endpoints under its prefix: readiness (``health``) and liveness (``live``)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

HealthFn = Callable[[], tuple[bool, dict[str, object]]]
HEALTH_KEY = web.AppKey("health", HealthFn)


async def health(request: web.Request) -> web.Response:
    ok, body = request.app[HEALTH_KEY]()
    return web.json_response(body, status=200 if ok else 503)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def index(request: web.Request) -> web.Response:
    return web.Response(text="jupyterhub-activity-culler\n")


def make_app(prefix: str, health_fn: HealthFn) -> web.Application:
    prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    app = web.Application()
    app[HEALTH_KEY] = health_fn
    app.router.add_get(prefix + "health", health)
    app.router.add_get(prefix + "live", live)
    app.router.add_get(prefix, index)
    return app
