"""``POST <prefix>api/keep``: a user keeps a server longer, within the policy's bounds (culler.engine.keeper);
``GET <prefix>api/keeps``: the keeps in force, for holders of a token that may read every server (explain)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from culler.engine.keeper import KeepAnswer
from culler.web.app import bearer_token, refused_unless_reading_all

KeepFn = Callable[[str, str, str], Awaitable[KeepAnswer]]  # token, user, server
KeepsFn = Callable[[], dict[str, Any]]  # {"keeps": [...], "problem": ...}

KEEP_KEY: web.AppKey[KeepFn] = web.AppKey("keep")
KEEPS_KEY: web.AppKey[KeepsFn] = web.AppKey("keeps")


async def keep(request: web.Request) -> web.Response:
    token = bearer_token(request)
    if token is None:
        return web.json_response({"error": "send a hub API token: Authorization: token ..."}, status=401)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("user"), str) or not body["user"]:
        return web.json_response({"error": 'send JSON: {"user": "<name>", "server": "<name or empty>"}'}, status=400)
    server = body.get("server") or ""
    if not isinstance(server, str):
        return web.json_response({"error": "server must be a string"}, status=400)
    answer = await request.app[KEEP_KEY](token, body["user"], server)
    return web.json_response(answer.body, status=answer.status)


async def keeps(request: web.Request) -> web.Response:
    return await refused_unless_reading_all(request) or web.json_response(request.app[KEEPS_KEY]())


def add_keep_routes(app: web.Application, prefix: str, keep_fn: KeepFn, keeps_fn: KeepsFn) -> None:
    app[KEEP_KEY] = keep_fn
    app[KEEPS_KEY] = keeps_fn
    app.router.add_post(prefix + "api/keep", keep)
    app.router.add_get(prefix + "api/keeps", keeps)
