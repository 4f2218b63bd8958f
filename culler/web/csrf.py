"""The page's defences against cross-site posts: a token bound to the login session, and the browser's
own word on where a request came from (``Sec-Fetch-Site``, else ``Origin``)."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from aiohttp import web

CSRF_FIELD = "_csrf"
_PURPOSE = b"jupyterhub-activity-culler keep form"


def csrf_token(sid: str) -> str:
    """Derived from the session id (an HttpOnly cookie): only a page of this session can know it, it
    outlives a restart with the session, and showing it in the page reveals nothing of the id."""
    return hmac.new(sid.encode(), _PURPOSE, hashlib.sha256).hexdigest()


def csrf_matches(sid: str, sent: object) -> bool:
    return isinstance(sent, str) and hmac.compare_digest(csrf_token(sid), sent)


def cross_site(request: web.Request) -> str | None:
    """Why a state-changing request is not from one of our own pages, or None.

    ``same-site`` is refused too: with the hub's subdomain_host, users' own servers are same-site."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return None if fetch_site == "same-origin" else f"a {fetch_site} request"
    origin = request.headers.get("Origin")
    if origin is None:  # neither header: not a browser that could be tricked into it
        return None
    hosts = {request.host, *request.headers.getall("X-Forwarded-Host", [])}
    return None if urlsplit(origin).netloc in hosts else f"a request from {origin}"
