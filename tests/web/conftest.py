"""The hub's OAuth token endpoint, faked: the page tests log in through it."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web


@pytest.fixture
async def fake_hub(aiohttp_server: Any) -> Any:
    posted: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        posted.append({k: str(v) for k, v in form.items()})
        if form.get("code") != "good-code" or form.get("client_secret") != "service-api-token":
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response({"access_token": "alice-oauth-token", "token_type": "Bearer"})

    hub = web.Application()
    hub.router.add_post("/hub/api/oauth2/token", token)
    server = await aiohttp_server(hub)
    server.posted = posted
    return server
