"""The activity API and page against a real hub: real user tokens, and a real OAuth login in a browser-like
session. The service's routes are started by the test itself (an external service with a url), with decisions
made up for real users, so this checks the hub side: tokens, identity, the OAuth dance through the proxy."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from culler.adapters.hub import HubClient
from culler.adapters.hub_auth import HubAuth
from culler.core.decide import Action, Decision
from culler.core.snapshot import ServerSnapshot
from culler.core.text import utcnow
from culler.observers.history import StopHistory
from culler.web.page import OAuthConfig, add_activity_routes, hub_identify
from culler.web.rows import rows
from devtools.devhub import LocalHub, free_port

pytestmark = pytest.mark.realhub

NAME = "activity-test"
PREFIX = f"/services/{NAME}/"


def keep(user: str, days: int, hours: int) -> Decision:
    now = utcnow()
    snapshot = ServerSnapshot(user, "", False, (), now, now, None, True)
    return Decision(snapshot, Action.KEEP, "default", "idle", 0, now + timedelta(days=days, hours=hours, minutes=5))


async def test_activity_api_and_oauth_login(tmp_path: Any) -> None:
    port = free_port()
    secret = secrets.token_hex(16)
    extra = f"""
c.JupyterHub.services.append({{"name": {NAME!r}, "url": "http://127.0.0.1:{port}", "api_token": {secret!r},
                               "oauth_no_confirm": True}})
c.JupyterHub.load_roles.append({{"name": "activity-users", "users": ["alice", "bob"],
                                 "scopes": ["self", "access:services!service={NAME}"]}})
c.Authenticator.admin_users = {{"root"}}
"""
    async with LocalHub(extra_config=extra) as hub:
        await hub.create_users(["alice", "bob", "root"])
        tokens = {name: await hub.user_token(name) for name in ("alice", "bob", "root")}

        client = HubClient(hub.api_url, secret)
        decisions = [keep("alice", 3, 4), keep("bob", 1, 2)]
        history = StopHistory(None)
        app = web.Application()
        oauth = OAuthConfig(
            client_id=f"service-{NAME}",
            client_secret=secret,
            redirect_uri=PREFIX + "oauth_callback",
            token_url=hub.api_url + "/oauth2/token",
        )
        add_activity_routes(app, PREFIX, lambda user: rows(decisions), history, hub_identify(HubAuth(client)), oauth)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            api = hub.url + PREFIX + "api/servers"
            status, body = await hub.get(api, tokens["alice"])
            assert status == 200
            assert [r["user"] for r in body["servers"]] == ["alice"]
            status, body = await hub.get(api, tokens["bob"])
            assert [r["user"] for r in body["servers"]] == ["bob"]
            assert (await hub.get(api + "?all=1", tokens["bob"]))[0] == 403
            status, body = await hub.get(api + "?all=1", tokens["root"])
            assert status == 200
            assert [r["user"] for r in body["servers"]] == ["bob", "alice"]  # soonest stop first
            assert (await hub.get(api, "not-a-token"))[0] == 403
            assert (await hub.get(api))[0] == 401

            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as browser:
                async with browser.get(hub.url + "/hub/login") as response:
                    form = await response.text()
                xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', form)
                assert xsrf, form[:500]
                login = {"username": "alice", "password": "anything", "_xsrf": xsrf.group(1)}
                async with browser.post(hub.url + "/hub/login", data=login) as response:
                    assert response.status == 200
                async with browser.get(hub.url + PREFIX) as response:
                    assert response.status == 200, str(response.url)
                    page = await response.text()
            assert "<span class='me-1'>alice</span>" in page  # signed in, in the hub's navbar
            assert "Your default server will be stopped in 3 days 4 hours unless you use it." in page
            assert "bob" not in page
        finally:
            await runner.cleanup()
            await client.close()
