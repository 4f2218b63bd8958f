"""Who holds a caller's hub token: one path (``GET /user`` through the hub client, so paced and counted in
the hub-request metrics) and one cache, for every endpoint that takes a hub token (the page, its API, the
settling API, the metrics endpoint)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

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
