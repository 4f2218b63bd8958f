"""The activity page in headless Chromium against a real hub: reached from the hub's Services menu, in the
hub's look, with Keep (kept across a restart of the service), the admin table sorted and filtered, axe-core
with no serious or critical violations in either view, and cross-site posts to the Keep form refused.

Chromium (Debian's package) is driven over the DevTools protocol with aiohttp's websocket client; axe-core
(npm) is injected the same way. Screenshots and axe results are kept in test-artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from browser_support import (
    ARTIFACTS,
    CHROMIUM,
    Browser,
    axe_violations,
    chromium_page,
    contrast,
    log_in,
    navigate,
    screenshot,
    serious,
)
from realhub_support import CullerHub, start_culler_hub_with, wait_for

from culler.core.text import parse_time
from culler.web.page import SESSION_COOKIE

pytestmark = [
    pytest.mark.realhub,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (./dev test installs it)"),
]

ALICE, BOB, CAROL, ROOT = "browser-alice", "browser-bob", "browser-carol", "browser-root"
DAVE, MALLORY = "browser-dave", "browser-mallory"  # the cross-site test's
POLICY = """\
version: 1
defaults: {idle: 3d, keep: {step: 1d, max: 2d}}
rules:
  - id: gpu
    match: {profile: gpu}
    idle: 1d
    keep: null
"""
DAY = 86400


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    yield from start_culler_hub_with(
        tmp_path_factory.mktemp("browser"),
        POLICY,
        lambda hub: {"CULLER_DATABASE": str(hub.workdir / "culler.sqlite")},  # keeps and sessions outlive a restart
        cull_every=1,
        extra_config=f"c.Authenticator.admin_users = {{{ROOT!r}}}\n",
    )


async def service_get(hub: CullerHub, path: str) -> Any:
    headers = {"Authorization": f"token {hub.admin_token}"}
    async with aiohttp.ClientSession() as session, session.get(hub.service_url() + path, headers=headers) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def listed(hub: CullerHub, *users: str) -> None:
    async def seen() -> bool:
        servers = (await service_get(hub, "api/servers?all=1"))["servers"]
        return set(users) <= {s["user"] for s in servers}

    await wait_for(seen, 30, f"a cycle to have judged the servers of {', '.join(users)}")


async def kept_until(hub: CullerHub, user: str) -> str | None:
    keeps = (await service_get(hub, "api/keeps"))["keeps"]
    return next((k["until"] for k in keeps if k["user"] == user), None)


CARD = "document.querySelector(\"section.culler-server[data-server='']\")"


async def card(browser: Browser) -> dict[str, Any]:
    """The default server's card: its state badge and the times in it."""
    await browser.until(f"{CARD} !== null", "the default server's card")
    return dict(
        await browser.evaluate(
            f"(() => {{ const c = {CARD}; const badge = c.querySelector('[data-state]');"
            " const stop = [...c.querySelectorAll('dt')].find(d => d.textContent === 'Planned stop');"
            " return {state: badge.dataset.state, badge: badge.textContent, text: c.innerText,"
            " stop: stop ? stop.nextElementSibling.querySelector('time').dateTime : null,"
            " keep: !!c.querySelector(\"form[action$='/keep'] button\")}; })()"
        )
    )


async def in_the_hubs_look(browser: Browser) -> None:
    css = await browser.evaluate(
        "[...document.styleSheets].filter(s => s.href && s.href.endsWith('/hub/static/css/style.min.css'))"
        ".map(s => s.cssRules.length)[0] || 0"
    )
    assert css > 100, "the hub's stylesheet did not load"
    navbar = await browser.evaluate("getComputedStyle(document.querySelector('nav.navbar')).backgroundColor")
    assert navbar not in ("rgba(0, 0, 0, 0)", "transparent"), navbar  # bg-body-tertiary comes from the hub's css
    assert await browser.evaluate("document.querySelector('img.jpy-logo').naturalWidth > 0"), "no hub logo"
    home = await browser.evaluate("document.querySelector(\"a.nav-link[href$='/hub/home']\").href")
    assert home.endswith("/hub/home")


async def keep_button_contrast(browser: Browser) -> float:
    colours = await browser.evaluate(
        "(() => { const s = getComputedStyle(document.querySelector(\"form[action$='/keep'] button\"));"
        " return [s.color, s.backgroundColor]; })()"
    )
    return contrast(*colours)


def save_axe(name: str, violations: list[dict[str, Any]]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    summary = [{"id": v["id"], "impact": v["impact"], "nodes": len(v["nodes"])} for v in violations]
    (ARTIFACTS / name).write_text(json.dumps(summary, indent=2) + "\n")


async def test_a_user_opens_the_page_from_the_hub_keeps_their_server_and_the_keep_outlives_a_restart(
    hub: CullerHub, tmp_path: Path
) -> None:
    await hub.start_servers((ALICE, "", None))
    await listed(hub, ALICE)
    async with chromium_page(tmp_path / "profile") as browser:
        await log_in(browser, hub.url, ALICE)
        await navigate(browser, hub.url + "/hub/home")
        link = "document.querySelector(\"a.dropdown-item[href$='/services/activity-culler/']\")"
        await browser.until(f"{link} !== null", "the service in the hub's Services menu")
        await browser.evaluate(f"{link}.click(); true")
        before = await card(browser)
        assert "will be stopped in 2 days 23 hours" in before["text"], before
        assert before["state"] == "running" and before["keep"]
        assert "Servers stop after 3 days without a visit." in before["text"]
        await in_the_hubs_look(browser)
        ratio = await keep_button_contrast(browser)
        assert ratio >= 4.5, f"the Keep button's contrast is {ratio:.2f}:1"

        await browser.evaluate("document.querySelector(\"form[action$='/keep'] button\").click(); true")
        await browser.until("document.querySelector('.alert-success') !== null", "the keep's notice")
        after = await card(browser)
        assert after["state"] == "kept", after
        stored = await kept_until(hub, ALICE)
        assert stored is not None and after["stop"] == stored
        assert parse_time(stored).timestamp() - parse_time(before["stop"]).timestamp() == pytest.approx(DAY, abs=2)
        violations = await axe_violations(browser)
        save_axe("axe-user-view.json", violations)
        assert serious(violations) == [], serious(violations)
        await screenshot(browser, "activity-page-user.png")

        await hub.restart_service()
        await navigate(browser, hub.service_url())  # the session comes back from the database
        await browser.until(f"{CARD} !== null", "the card after the restart (the first cycle)", timeout=40)
        restarted = await card(browser)
        assert restarted["state"] == "kept" and restarted["stop"] == stored, restarted

        # the hub token behind the session did not survive: the second keep logs in again, then is made
        await browser.evaluate("document.querySelector(\"form[action$='/keep'] button\").click(); true")
        await browser.until("document.querySelector('.alert-success') !== null", "the second keep's notice")
        second = await kept_until(hub, ALICE)
        assert second is not None
        assert parse_time(second).timestamp() - parse_time(stored).timestamp() == pytest.approx(DAY, abs=2)
        assert (await card(browser))["stop"] == second

        # a server started from the hub's spawn URL with a display name is shown by that name
        await navigate(browser, hub.url + f"/hub/spawn/{ALICE}/thesis?display_name=Thesis%20draft")
        title = "document.querySelector(\"section[data-server='thesis'] h2\")?.textContent || ''"

        async def named() -> bool:
            await navigate(browser, hub.service_url())
            return str(await browser.evaluate(title)).startswith("Thesis draft")

        await wait_for(named, 60, "the named server's card under its display name")


async def test_the_admin_view_sorts_and_filters_every_server(hub: CullerHub, tmp_path: Path) -> None:
    await hub.start_servers((BOB, "", {"profile": "gpu"}), (CAROL, "", None))
    await listed(hub, BOB, CAROL)
    async with chromium_page(tmp_path / "profile") as browser:
        await log_in(browser, hub.url, ROOT)
        await navigate(browser, hub.service_url() + "?view=all")
        rows = "[...document.querySelectorAll('#all-servers tbody tr')].map(r => r.dataset.user)"
        await browser.until(f"{rows}.length >= 2", "the every-server table")

        async def sort_by(column: str, order: str) -> list[str]:
            await browser.evaluate(f"document.querySelector(\"th a[data-sort='{column}']\").click(); true")
            url = f"document.location.search.includes('sort={column}&order={order}')"
            await browser.until(f"{url} && document.readyState === 'complete'", f"sorted by {column} ({order})")
            return list(await browser.evaluate(rows))

        ascending = await sort_by("user", "asc")
        assert ascending == sorted(ascending) and {BOB, CAROL} <= set(ascending)
        descending = await sort_by("user", "desc")  # a second click flips the order
        assert descending == sorted(descending, reverse=True) and {BOB, CAROL} <= set(descending)
        assert await browser.evaluate(
            "document.querySelector(\"th[aria-sort='descending'] a[data-sort='user']\") !== null"
        )

        await browser.evaluate(
            "document.querySelector('#filter-rule').value = 'gpu';"
            "document.querySelector(\"form[aria-label='Filter servers']\").submit(); true"
        )
        await browser.until("document.location.search.includes('rule=gpu')", "the rule filter")
        await browser.until(f"JSON.stringify({rows}) === JSON.stringify([{BOB!r}])", "only the gpu server")
        violations = await axe_violations(browser)
        save_axe("axe-admin-view.json", violations)
        assert serious(violations) == [], serious(violations)
        await navigate(browser, hub.service_url() + "?view=all&sort=stop")
        await screenshot(browser, "activity-page-admin.png")


async def attacker(csrf: str | None, action: str) -> tuple[web.AppRunner, int]:
    """A page elsewhere that posts the Keep form at once when opened."""

    async def page(request: web.Request) -> web.Response:
        token = "" if csrf is None else f"<input name='_csrf' value='{csrf}'>"
        body = (
            f"<form id='f' method='post' action='{action}'><input name='user' value='{DAVE}'>"
            f"<input name='server' value=''>{token}</form><script>document.getElementById('f').submit()</script>"
        )
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def page_csrf(browser: Browser, hub: CullerHub, user: str) -> str:
    await log_in(browser, hub.url, user)
    await navigate(browser, hub.service_url())
    return str(await browser.until("document.querySelector(\"input[name='_csrf']\")?.value", f"{user}'s form token"))


async def test_cross_site_posts_to_the_keep_form_are_refused(hub: CullerHub, tmp_path: Path) -> None:
    await hub.start_servers((DAVE, "", None), (MALLORY, "", None))
    await listed(hub, DAVE, MALLORY)
    action = hub.service_url() + "keep"
    async with chromium_page(tmp_path / "profile") as browser:
        mallorys = await page_csrf(browser, hub, MALLORY)
        daves = await page_csrf(browser, hub, DAVE)
        assert mallorys != daves
        for csrf, host in ((None, "127.0.0.1"), (mallorys, "127.0.0.1"), (daves, "localhost")):
            runner, port = await attacker(csrf, action)  # 127.0.0.1: same site, other origin; localhost: other site
            try:
                await navigate(browser, f"http://{host}:{port}/")
                text = await browser.until(
                    f"document.location.href === {action!r} && document.body.innerText", "the refusal"
                )
            finally:
                await runner.cleanup()
            assert text.startswith("refused:"), text
        cookies = (await browser.call("Network.getCookies", urls=[hub.service_url()]))["cookies"]
    assert await kept_until(hub, DAVE) is None

    # without the browser's fetch headers, the form's token alone decides (Carol's own session cookie)
    session_cookie = next(c for c in cookies if c["name"] == SESSION_COOKIE)
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Lax"
    headers = {"Cookie": f"{SESSION_COOKIE}={session_cookie['value']}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for csrf in (None, mallorys):
            data = {"user": DAVE, "server": "", **({} if csrf is None else {"_csrf": csrf})}
            async with session.post(action, data=data, allow_redirects=False) as answer:
                assert answer.status == 403 and "not this session's" in await answer.text()
        assert await kept_until(hub, DAVE) is None
        own = {"user": DAVE, "server": "", "_csrf": daves}
        async with session.post(action, data=own, allow_redirects=False) as ok:
            assert ok.status == 303  # the same post with the session's own token is taken
    assert await kept_until(hub, DAVE) is not None
