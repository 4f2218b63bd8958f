"""Who holds a caller's hub token: one path (``GET /user`` through the hub client, so paced and counted in
the hub-request metrics) and one cache, for every endpoint that takes a hub token (the page, its API, the
settling API, the metrics endpoint)."""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import aiohttp

from culler.adapters.errors import OAuthExchangeError
from culler.adapters.hub import HubClient, scopes_of
from culler.core.ttlmap import TTLMap

T = TypeVar("T")


class TokenCache(Generic[T]):
    """The hub's answer about each caller token (its scopes, or who owns it), kept ``ttl`` seconds and keyed by
    the token's hash, so the cache never holds a token. ``None`` (the hub refused the token) is kept too."""

    def __init__(self, ask_hub: Callable[[str], Awaitable[T | None]], ttl: float = 60.0, cap: int = 1000) -> None:
        self.ask_hub = ask_hub
        # the answer is boxed so that a refused token (None) is cached too
        self._seen: TTLMap[str, tuple[T | None]] = TTLMap(ttl, cap, clock=lambda: time.monotonic())

    async def get(self, token: str) -> T | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._seen.get(key)
        if cached is not None:
            return cached[0]
        answer = await self.ask_hub(token)
        self._seen.put(key, (answer,))
        return answer


class HubAuth:
    """A caller token's owner as the hub says (name, admin, scopes), cached by the token's hash."""

    def __init__(self, hub: HubClient, ttl: float = 60.0, cap: int = 1000) -> None:
        self._owners: TokenCache[dict[str, Any]] = TokenCache(hub.token_owner, ttl, cap)

    async def owner(self, token: str) -> dict[str, Any] | None:
        """``None``: the hub does not accept the token. Raises ``HubError`` when the hub cannot say."""
        return await self._owners.get(token)

    async def scopes(self, token: str) -> frozenset[str] | None:
        model = await self.owner(token)
        return None if model is None else scopes_of(model)


class OAuthCodes:
    """Trades a page login's authorization code for that user's access token at the hub's token endpoint."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.token_url = token_url
        self._form = {"client_id": client_id, "client_secret": client_secret, "redirect_uri": redirect_uri}
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._http: aiohttp.ClientSession | None = None

    async def exchange(self, code: str) -> str | None:
        """The access token (``None``: the hub refused the code); ``OAuthExchangeError`` when it cannot say."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        data = {"grant_type": "authorization_code", "code": code, **self._form}
        try:
            async with self._http.post(self.token_url, data=data, ssl=self._ssl) as response:
                if response.status in (400, 401, 403):
                    return None
                if response.status != 200:
                    raise OAuthExchangeError(f"the hub's token endpoint answered {response.status}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
            raise OAuthExchangeError(f"{type(error).__name__}: {error}") from error
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise OAuthExchangeError("no access_token in the hub's answer")
        return token

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
