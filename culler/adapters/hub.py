"""A thin JupyterHub REST API client on one aiohttp session: list users, stop servers, delete users.

Only this module knows HTTP. It retries transient failures (connection errors, timeouts, 5xx, 429)
with bounded backoff and raises the service's own errors, never aiohttp's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from culler.adapters.errors import (
    HubAPIError,
    HubBackingOff,
    HubInterrupted,
    HubListingError,
    HubProtocolError,
    HubUnreachable,
)
from culler.core.clock import ClockUntrusted, ClockWatch, Reading, parse_http_date
from culler.core.listing import ListingBounds, ListingError, page_info
from culler.core.text import utcnow
from culler.logs import event

log = logging.getLogger("culler.hub")

PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"
# Without --api-page-size, ask for big pages: the hub caps this at its api_page_max_limit (200 unless
# raised), four times its default page (50), so a cycle makes a quarter of the listing requests.
DEFAULT_PAGE_LIMIT = 500
# A Retry-After is honoured up to this long, by every request until then (in this cycle or later ones).
MAX_RETRY_AFTER = 600.0
DEFAULT_MAX_RATE = 100.0  # requests per second, at most, whatever the concurrency
DEFAULT_LISTING_CAP = 3600.0  # seconds a listing may take when the caller does not say (the cycle does)

RequestObserver = Callable[[str, str, str, float], None]  # method, endpoint template, status, seconds


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    reading: Reading  # our clock at sending, and the hub's Date
    retry_after: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of a listing, with the clock reading its timestamps are on."""

    users: list[Any]
    reading: Reading


class StopOutcome(StrEnum):
    STOPPED = "stopped"
    STOPPING = "stopping"  # the hub still reports the stop in progress after the follow-up deadline
    GONE = "gone"  # 400/404: not running any more, or unknown


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def user_path(user: str) -> str:
    return f"users/{quote(user, safe='')}"


def server_path(user: str, server: str) -> str:
    if not server:
        return f"{user_path(user)}/server"
    return f"{user_path(user)}/servers/{quote(server, safe='')}"


def internal_ssl_context(certs: Path) -> ssl.SSLContext:
    """The client context for a hub with ``internal_ssl`` (same layout as jupyterhub-idle-culler)."""
    context = ssl.create_default_context(cafile=str(certs / "hub-ca" / "hub-ca.crt"))
    internal = certs / "hub-internal"
    context.load_cert_chain(str(internal / "hub-internal.crt"), str(internal / "hub-internal.key"))
    return context


class HubClient:
    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        concurrency: int = 10,
        request_timeout: float = 60.0,
        page_size: int = 0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        max_rate: float = DEFAULT_MAX_RATE,
        ssl_context: ssl.SSLContext | None = None,
        observer: RequestObserver | None = None,
        clock: ClockWatch | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.api_url = api_url.rstrip("/") + "/"
        self._token = token
        self.concurrency = concurrency
        self._limit = asyncio.Semaphore(concurrency) if concurrency > 0 else None
        self.request_timeout = request_timeout
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.page_size = page_size
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._spacing = 1.0 / max_rate if max_rate > 0 else 0.0
        self._next_slot = 0.0  # monotonic: when the next request may go out (the rate bound)
        self._pace_lock = asyncio.Lock()
        self.not_before = 0.0  # monotonic: the hub's Retry-After, kept across cycles
        self._ssl = ssl_context
        self._observer = observer
        self.clock = clock or ClockWatch("hub")
        self._now = now  # our clock (tests move it)
        self._session: aiohttp.ClientSession | None = None
        self.forbidden = 0  # 403 answers so far: the service re-checks its scopes after one

    def __repr__(self) -> str:
        return f"HubClient({self.api_url!r})"

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"Authorization": f"token {self._token}", "User-Agent": "jupyterhub-activity-culler"},
                connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl if self._ssl else True),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- requests -------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        template: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        accept: str = "application/json",
        abort: asyncio.Event | None = None,
        token: str | None = None,
        once: bool = False,
    ) -> Answer:
        """One API call with retries (none when ``once``: a caller is waiting); returns the final answer.

        With ``abort``, no attempt is sent once the event is set (``HubInterrupted``): a stop queued
        behind the concurrency limit, or waiting to retry, must not go out after shutdown began.
        ``token`` sends a caller's token instead of the service's (to ask the hub whose it is).
        """
        url = URL(self.api_url + path, encoded=True)
        retries = 0 if once else self.retries
        headers = {"Accept": accept} | ({"Authorization": f"token {token}"} if token is not None else {})
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                answer = await self._once(method, url, template, params, body, headers, abort)
            except HubUnreachable:
                if last:
                    raise
                await asyncio.sleep(self._delay(attempt))
                continue
            if _retryable(answer.status):
                retry_after = self._retry_after(answer)
                if retry_after is not None:
                    self.not_before = max(self.not_before, time.monotonic() + retry_after)
                if not last:
                    if retry_after is None:
                        await asyncio.sleep(self._delay(attempt))
                    continue  # with a Retry-After, the next attempt waits for it in _once
            return answer
        raise AssertionError("unreachable")

    async def _once(
        self,
        method: str,
        url: URL,
        template: str,
        params: dict[str, Any] | None,
        body: Any,
        headers: dict[str, str],
        abort: asyncio.Event | None,
    ) -> Answer:
        started = time.monotonic()
        status = "error"
        try:
            async with self._slot():
                await self._wait_turn(method, template)
                if abort is not None and abort.is_set():
                    status = "interrupted"
                    raise HubInterrupted(f"{method} {template}: not sent, shutting down")
                sent = self._now()
                async with self._get_session().request(
                    method, url, params=params, json=body, headers=headers
                ) as response:
                    payload = await response.read()
                    status = str(response.status)
                    reading = Reading(sent, parse_http_date(response.headers.get("Date")))
                    return Answer(response.status, payload, reading, response.headers.get("Retry-After"))
        except HubBackingOff:
            status = "backing-off"
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            detail = self._redact(str(error))[:200]
            raise HubUnreachable(
                f"cannot reach the hub API at {self.api_url} ({method} {template}: {type(error).__name__}"
                f"{': ' + detail if detail else ''}); is the hub running and reachable from here?"
            ) from error
        finally:
            if self._observer is not None:
                self._observer(method, template, status, time.monotonic() - started)

    async def _wait_turn(self, method: str, template: str) -> None:
        """Honour the hub's Retry-After (waiting at most one request timeout for it) and the rate bound."""
        wait = self.not_before - time.monotonic()
        if wait > self.request_timeout:
            raise HubBackingOff(
                f"{method} {template}: not sent; the hub asked (Retry-After) not to be asked for {wait:.0f}s more"
            )
        if wait > 0:
            await asyncio.sleep(wait)
        if not self._spacing:
            return
        async with self._pace_lock:
            now = time.monotonic()
            if self._next_slot > now:
                await asyncio.sleep(self._next_slot - now)
            self._next_slot = max(now, self._next_slot) + self._spacing

    def _redact(self, text: str) -> str:
        """Defence in depth: a proxy or a broken hub may echo the Authorization header back."""
        return text.replace(self._token, "[secret]") if self._token else text

    def _error(self, method: str, template: str, status: int, payload: bytes) -> HubAPIError:
        if status == 403:
            self.forbidden += 1
        return _api_error(method, template, status, _snippet(payload, self._token))

    def _not_json(self, template: str, status: int, payload: bytes) -> HubProtocolError:
        snippet = _snippet(payload, self._token)
        return HubProtocolError(f"GET {template}: the hub answered {status} with a body that is not JSON: {snippet}")

    def _slot(self) -> asyncio.Semaphore | _NoLimit:
        return self._limit if self._limit is not None else _NoLimit()

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)

    @staticmethod
    def _retry_after(answer: Answer) -> float | None:
        """Seconds the hub asked us to wait (``Retry-After``: seconds or an HTTP-date), capped."""
        value = (answer.retry_after or "").strip()
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            when = parse_http_date(value)
            if when is None:
                return None
            seconds = (when - (answer.reading.source or answer.reading.sent)).total_seconds()
        if seconds != seconds:  # NaN
            return None
        return min(MAX_RETRY_AFTER, max(0.0, seconds))

    async def get_json(
        self, path: str, template: str, params: dict[str, Any] | None = None, accept: str = "application/json"
    ) -> tuple[Any, Reading]:
        answer = await self.request("GET", path, template, params=params, accept=accept)
        return self._json(template, answer.status, answer.body), self._dated(answer.reading)

    def _dated(self, reading: Reading) -> Reading:
        """The reading of an answer whose timestamps will be judged (see ``ClockWatch.admit``)."""
        try:
            reading, lines = self.clock.admit(reading)
        except ClockUntrusted as error:
            raise HubProtocolError(str(error)) from None
        for line in lines:
            event(log, logging.WARNING, line, skew=f"{self.clock.skew_seconds:+.1f}s")
        return reading

    def _json(self, template: str, status: int, payload: bytes) -> Any:
        """A GET's decoded 200 answer; any other status or a body that is not JSON raises."""
        if status != 200:
            raise self._error("GET", template, status, payload)
        try:
            return json.loads(payload)
        except ValueError as error:
            raise self._not_json(template, status, payload) from error

    # -- operations -----------------------------------------------------------------------------

    async def list_users(self, state: str = "ready", max_seconds: float = DEFAULT_LISTING_CAP) -> list[dict[str, Any]]:
        """All users in ``state``, following pagination; any failure raises (no partial lists)."""
        return [user async for page in self.user_pages(state, max_seconds) for user in page.users]

    async def user_pages(self, state: str = "ready", max_seconds: float = DEFAULT_LISTING_CAP) -> AsyncIterator[Page]:
        """The users in ``state`` a page at a time, so a big hub's models need not all be held at once.

        The listing is bounded (``culler.listing``): pages and wall time from the first page's ``total``
        and ``limit``, with ``max_seconds`` the longest it may take. A failure or a breach raises part
        way: whoever consumes the pages must then drop what it took from them.
        """
        began = time.monotonic()
        limit = self.page_size or DEFAULT_PAGE_LIMIT
        offset, pages, bounds = 0, 0, None
        while True:
            # The first page is bounded by its retries; later ones by the deadline it fixed.
            remaining = bounds.deadline - (time.monotonic() - began) if bounds else None
            data, reading = await self._page(state, offset, limit, remaining)
            if isinstance(data, list) and offset == 0:
                yield Page(data, reading)  # a hub without pagination answers every user at once
                return
            pages += 1
            try:
                info = page_info(data, offset)
                bounds = bounds or ListingBounds.from_first(info, limit, self.request_timeout, max_seconds)
                bounds.check(info, pages, time.monotonic() - began)
            except ListingError as error:
                raise HubListingError(error.reason, str(error)) from None
            yield Page(info.items, reading)
            if info.next_offset is None:
                return
            offset = info.next_offset

    async def _page(self, state: str, offset: int, limit: int, remaining: float | None) -> tuple[Any, Reading]:
        params: dict[str, Any] = {"state": state, "offset": offset, "limit": limit}
        if remaining is not None and remaining <= 0:
            raise HubListingError("deadline", "GET users: the listing ran past its deadline")
        try:
            async with asyncio.timeout(remaining):
                return await self.get_json("users", "users", params, accept=PAGINATION_MEDIA_TYPE)
        except TimeoutError:
            raise HubListingError(
                "deadline", f"GET users: the listing ran past its deadline at offset {offset}"
            ) from None

    async def get_user(self, user: str) -> dict[str, Any] | None:
        return (await self.read_user(user))[0]

    async def read_user(self, user: str) -> tuple[dict[str, Any] | None, Reading]:
        """One user's model (``None``: no such user) and the clock reading it was taken at."""
        answer = await self.request("GET", user_path(user), "users/{name}")
        if answer.status == 404:
            return None, answer.reading
        data = self._json("users/{name}", answer.status, answer.body)
        if not isinstance(data, dict):
            raise HubProtocolError("GET users/{name}: not a user model")
        return data, self._dated(answer.reading)

    async def stop_server(
        self, user: str, server: str, *, remove: bool = False, abort: asyncio.Event | None = None
    ) -> StopOutcome:
        """Ask the hub to stop one server; ``HubInterrupted`` if ``abort`` was set before it was sent."""
        template = "users/{name}/servers/{server}" if server else "users/{name}/server"
        body = {"remove": True} if remove and server else None
        path = server_path(user, server)
        answer = await self.request("DELETE", path, template, body=body, abort=abort)
        status, payload = answer.status, answer.body
        if status == 204:
            return StopOutcome.STOPPED
        if status == 202:
            return StopOutcome.STOPPING
        if status in (400, 404):
            return StopOutcome.GONE
        raise self._error("DELETE", template, status, payload)

    async def is_stopped(self, user: str, server: str) -> bool:
        """True once the hub no longer lists the server as running or stopping."""
        model = await self.get_user(user)
        if model is None:
            return True
        servers = model.get("servers")
        if not isinstance(servers, dict):
            raise HubProtocolError("GET users/{name}: no 'servers' map (does the token have read:servers?)")
        entry = servers.get(server)
        return not isinstance(entry, dict) or (not entry.get("ready") and not entry.get("pending"))

    async def token_owner(self, token: str) -> dict[str, Any] | None:
        """The hub's model of a caller's token owner (``GET /user``: name, admin, scopes...); ``None`` when
        the hub does not accept the token. Through the same request path as every call (paced, counted in
        the hub-request metrics), one attempt: a caller is waiting. Cached by culler.adapters.hub_auth."""
        answer = await self.request("GET", "user", "user", token=token, once=True)
        payload, status = answer.body, answer.status
        if status in (401, 403):
            return None
        if status != 200:
            raise HubAPIError(f"GET user (token check): the hub answered {status}", status)
        try:
            model = json.loads(payload)
        except ValueError as error:
            raise HubProtocolError("GET user (token check): not JSON") from error
        if not isinstance(model, dict):
            raise HubProtocolError("GET user (token check): not a JSON object")
        return model

    async def own_scopes(self) -> frozenset[str] | None:
        """The scopes of the service's own token (None: the hub does not accept it)."""
        model = await self.token_owner(self._token) if self._token else None
        return None if model is None else scopes_of(model)

    async def delete_user(self, user: str, *, abort: asyncio.Event | None = None) -> bool:
        """True when deleted (or already gone)."""
        answer = await self.request("DELETE", user_path(user), "users/{name}", abort=abort)
        if answer.status in (204, 404):
            return True
        raise self._error("DELETE", "users/{name}", answer.status, answer.body)


class _NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _snippet(payload: bytes, secret: str = "", limit: int = 200) -> str:
    text = payload.decode("utf-8", "replace").strip()
    if secret:
        text = text.replace(secret, "[secret]")
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


def _api_error(method: str, template: str, status: int, snippet: str) -> HubAPIError:
    hint = ""
    if status == 403:
        hint = " (the service's token lacks a scope: see deploy/jupyterhub/ for the role it needs)"
    elif status == 401:
        hint = " (the token is not valid for this hub: check JUPYTERHUB_API_TOKEN and the service's api_token)"
    return HubAPIError(f"{method} {template}: the hub answered {status}{hint}: {snippet}", status)


def scopes_of(model: dict[str, Any]) -> frozenset[str]:
    """The scopes in a hub ``GET /user`` answer."""
    scopes = model.get("scopes")
    if not isinstance(scopes, list):
        raise HubProtocolError("GET user (token check): no 'scopes' list")
    return frozenset(str(scope) for scope in scopes)
