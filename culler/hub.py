"""A thin JupyterHub REST API client on one aiohttp session: list users, stop servers, delete users.

Only this module knows HTTP. It retries transient failures (connection errors, timeouts, 5xx, 429)
with bounded backoff and raises the service's own errors, never aiohttp's.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"
MAX_PAGES = 100_000
# Without --api-page-size, ask for big pages: the hub caps this at its api_page_max_limit (200 unless
# raised), four times its default page (50), so a cycle makes a quarter of the listing requests.
DEFAULT_PAGE_LIMIT = 500
MAX_RETRY_AFTER = 30.0

RequestObserver = Callable[[str, str, str, float], None]  # method, endpoint template, status, seconds


class HubError(Exception):
    """Any failure talking to the hub; the message is safe to log (no token, body cut short)."""


class HubUnreachable(HubError):
    pass


class HubProtocolError(HubError):
    """The hub answered something this client cannot trust (not JSON, wrong shape)."""


class HubInterrupted(HubError):
    """The request was not sent: shutdown began while it waited for a slot or a retry."""


class HubAPIError(HubError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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
        ssl_context: ssl.SSLContext | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/") + "/"
        self._token = token
        self.concurrency = concurrency
        self._limit = asyncio.Semaphore(concurrency) if concurrency > 0 else None
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.page_size = page_size
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._ssl = ssl_context
        self._observer = observer
        self._session: aiohttp.ClientSession | None = None

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
    ) -> tuple[int, bytes]:
        """One API call with retries; returns status and body of the final answer.

        With ``abort``, no attempt is sent once the event is set (``HubInterrupted``): a stop queued
        behind the concurrency limit, or waiting to retry, must not go out after shutdown began.
        """
        url = URL(self.api_url + path, encoded=True)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                status, payload, retry_after = await self._once(method, url, template, params, body, accept, abort)
            except HubUnreachable:
                if last:
                    raise
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if _retryable(status) and not last:
                await asyncio.sleep(self._delay(attempt, retry_after))
                continue
            return status, payload
        raise AssertionError("unreachable")

    async def _once(
        self,
        method: str,
        url: URL,
        template: str,
        params: dict[str, Any] | None,
        body: Any,
        accept: str,
        abort: asyncio.Event | None,
    ) -> tuple[int, bytes, str | None]:
        started = time.monotonic()
        status = "error"
        try:
            async with self._slot():
                if abort is not None and abort.is_set():
                    status = "interrupted"
                    raise HubInterrupted(f"{method} {template}: not sent, shutting down")
                async with self._get_session().request(
                    method, url, params=params, json=body, headers={"Accept": accept}
                ) as response:
                    payload = await response.read()
                    status = str(response.status)
                    return response.status, payload, response.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            detail = self._redact(str(error))[:200]
            raise HubUnreachable(
                f"cannot reach the hub API at {self.api_url} ({method} {template}: {type(error).__name__}"
                f"{': ' + detail if detail else ''}); is the hub running and reachable from here?"
            ) from error
        finally:
            if self._observer is not None:
                self._observer(method, template, status, time.monotonic() - started)

    def _redact(self, text: str) -> str:
        """Defence in depth: a proxy or a broken hub may echo the Authorization header back."""
        return text.replace(self._token, "[secret]") if self._token else text

    def _error(self, method: str, template: str, status: int, payload: bytes) -> HubAPIError:
        return _api_error(method, template, status, _snippet(payload, self._token))

    def _not_json(self, template: str, status: int, payload: bytes) -> HubProtocolError:
        snippet = _snippet(payload, self._token)
        return HubProtocolError(f"GET {template}: the hub answered {status} with a body that is not JSON: {snippet}")

    def _slot(self) -> asyncio.Semaphore | _NoLimit:
        return self._limit if self._limit is not None else _NoLimit()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(MAX_RETRY_AFTER, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)

    async def get_json(
        self, path: str, template: str, params: dict[str, Any] | None = None, accept: str = "application/json"
    ) -> Any:
        status, payload = await self.request("GET", path, template, params=params, accept=accept)
        return self._json(template, status, payload)

    def _json(self, template: str, status: int, payload: bytes) -> Any:
        """A GET's decoded 200 answer; any other status or a body that is not JSON raises."""
        if status != 200:
            raise self._error("GET", template, status, payload)
        try:
            return json.loads(payload)
        except ValueError as error:
            raise self._not_json(template, status, payload) from error

    # -- operations -----------------------------------------------------------------------------

    async def list_users(self, state: str = "ready") -> list[dict[str, Any]]:
        """All users in ``state``, following pagination; any failure raises (no partial lists)."""
        return [user async for page in self.user_pages(state) for user in page]

    async def user_pages(self, state: str = "ready") -> AsyncIterator[list[dict[str, Any]]]:
        """The users in ``state`` a page at a time, so a big hub's models need not all be held at once.

        A failure raises part way: whoever consumes the pages must then drop what it took from them.
        """
        offset = 0
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"state": state, "offset": offset, "limit": self.page_size or DEFAULT_PAGE_LIMIT}
            data = await self.get_json("users", "users", params, accept=PAGINATION_MEDIA_TYPE)
            if isinstance(data, list) and offset == 0:
                yield data  # a hub without pagination answers every user at once
                return
            items, next_offset = _page(data, offset)
            yield items
            if next_offset is None:
                return
            offset = next_offset
        raise HubProtocolError(f"GET users: more than {MAX_PAGES} pages; giving up on this listing")

    async def get_user(self, user: str) -> dict[str, Any] | None:
        status, payload = await self.request("GET", user_path(user), "users/{name}")
        if status == 404:
            return None
        data = self._json("users/{name}", status, payload)
        if not isinstance(data, dict):
            raise HubProtocolError("GET users/{name}: not a user model")
        return data

    async def stop_server(
        self, user: str, server: str, *, remove: bool = False, abort: asyncio.Event | None = None
    ) -> StopOutcome:
        """Ask the hub to stop one server; ``HubInterrupted`` if ``abort`` was set before it was sent."""
        template = "users/{name}/servers/{server}" if server else "users/{name}/server"
        body = {"remove": True} if remove and server else None
        path = server_path(user, server)
        status, payload = await self.request("DELETE", path, template, body=body, abort=abort)
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
        the hub does not accept the token. One attempt: a caller is waiting."""
        url = URL(self.api_url + "user", encoded=True)
        try:
            async with self._get_session().get(url, headers={"Authorization": f"token {token}"}) as response:
                payload, status = await response.read(), response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise HubUnreachable(f"cannot reach the hub API at {self.api_url} to check a token") from error
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

    async def token_scopes(self, token: str) -> frozenset[str] | None:
        """The scopes of a caller's hub token (``None`` when the hub does not accept it)."""
        model = await self.token_owner(token)
        if model is None:
            return None
        scopes = model.get("scopes")
        if not isinstance(scopes, list):
            raise HubProtocolError("GET user (token check): no 'scopes' list")
        return frozenset(str(scope) for scope in scopes)

    async def delete_user(self, user: str, *, abort: asyncio.Event | None = None) -> bool:
        """True when deleted (or already gone)."""
        status, payload = await self.request("DELETE", user_path(user), "users/{name}", abort=abort)
        if status in (204, 404):
            return True
        raise self._error("DELETE", "users/{name}", status, payload)


class _NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _page(data: Any, offset: int) -> tuple[list[dict[str, Any]], int | None]:
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise HubProtocolError("GET users: the answer is neither a paginated object nor a list of users")
    pagination = data.get("_pagination")
    nxt = pagination.get("next") if isinstance(pagination, dict) else None
    if not nxt:
        return data["items"], None
    next_offset = nxt.get("offset") if isinstance(nxt, dict) else None
    if not isinstance(next_offset, int) or next_offset <= offset:
        raise HubProtocolError(f"GET users: pagination 'next' does not move forward: {str(nxt)[:100]}")
    return data["items"], next_offset


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
