"""The webhook receiver of stop notices: one POST of a JSON payload, said to be worth retrying or not.

Logs and errors show the URL only as scheme and host: its path and query, like the secret header, may
hold a token (Slack, Teams)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp

_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))


class WebhookRetryable(Exception):
    """An attempt that may succeed if tried again (unreachable, timed out, 5xx, 429)."""


class WebhookRejected(Exception):
    """An answer that trying again will not change."""


class Webhook:
    def __init__(self, url: str, secret_header: tuple[str, str] | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self._secret_header = secret_header  # sent, never logged
        self.timeout = timeout
        parts = urlsplit(url)
        self.target = f"{parts.scheme}://{parts.hostname or ''}"  # what logs show of the URL
        self._session: aiohttp.ClientSession | None = None

    async def post(self, payload: dict[str, Any]) -> None:
        """Deliver once; a 2xx returns, anything else raises ``WebhookRetryable`` or ``WebhookRejected``."""
        headers = {"Content-Type": "application/json"}
        if self._secret_header is not None:
            headers[self._secret_header[0]] = self._secret_header[1]
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self.url,
                data=json.dumps(payload),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
        except TimeoutError as error:
            raise WebhookRetryable(f"timed out after {self.timeout:g}s") from error
        except aiohttp.ClientError as error:
            raise WebhookRetryable(f"{type(error).__name__}: {self.scrub(str(error))}") from error
        if 200 <= status < 300:
            return
        if status in _RETRY_STATUSES:
            raise WebhookRetryable(f"HTTP {status}")
        raise WebhookRejected(f"HTTP {status}")

    def scrub(self, text: str) -> str:
        """Error texts may quote the URL, whose path or query can be a token (Slack, Teams webhooks)."""
        text = text.replace(self.url, self.target)
        if self._secret_header is not None and self._secret_header[1]:
            text = text.replace(self._secret_header[1], "[secret]")
        return text

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
