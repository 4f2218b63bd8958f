"""Bounds on one paginated listing of the hub's users, whatever the hub answers (pure, no I/O).

The first page's ``total`` and ``limit`` fix how many pages the listing may take (with slack for users
who start servers meanwhile) and, unless a deadline is set, how long: a page per request timeout, capped
by the cycle interval. Every later page is checked against them; any breach ends the listing, and with
it the cycle's stops: a listing the service cannot trust to be complete and current decides nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

PAGE_SLACK = 0.25  # extra pages allowed beyond total/limit, as a share (plus two)
TOTAL_DRIFT = 0.25  # how far total may move from the first page's during one listing (or one page)


class ListingError(ValueError):
    """The listing broke a bound; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REASONS = ("garbage", "no-total", "empty-page", "no-progress", "too-many-pages", "total-changed", "deadline")


@dataclass(frozen=True)
class PageInfo:
    items: list[Any]
    offset: int
    limit: int | None
    total: int | None
    next_offset: int | None  # None: the last page


def page_info(data: Any, offset: int) -> PageInfo:
    """The parts of a paginated answer the bounds look at; garbage raises ``ListingError``."""
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ListingError("garbage", "GET users: the answer is neither a paginated object nor a list of users")
    pagination = data.get("_pagination")
    pagination = pagination if isinstance(pagination, dict) else {}
    nxt = pagination.get("next")
    next_offset: int | None = None
    if nxt:
        value = nxt.get("offset") if isinstance(nxt, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value <= offset:
            raise ListingError("no-progress", f"GET users: pagination 'next' does not move forward: {str(nxt)[:100]}")
        next_offset = value
    limit, total = _count(pagination.get("limit")), _count(pagination.get("total"))
    return PageInfo(data["items"], offset, limit, total, next_offset)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class ListingBounds:
    total: int
    limit: int
    max_pages: int
    deadline: float  # seconds from the first request

    @classmethod
    def from_first(cls, first: PageInfo, requested: int, request_timeout: float, cap: float) -> ListingBounds:
        """Bounds from the first page. ``cap``: the longest the listing may take (the cycle interval, or
        the admin's fixed deadline)."""
        if first.total is None:
            raise ListingError("no-total", "GET users: the paginated answer has no total; cannot bound the listing")
        limit = first.limit or len(first.items) or requested
        pages = max(1, math.ceil(first.total / limit))
        max_pages = math.ceil(pages * (1 + PAGE_SLACK)) + 2
        deadline = min(cap, (max_pages + 1) * request_timeout)
        return cls(first.total, limit, max_pages, deadline)

    def check(self, page: PageInfo, pages_read: int, elapsed: float) -> None:
        """Raise ``ListingError`` when this page (the ``pages_read``-th) breaks a bound."""
        if elapsed > self.deadline:
            raise ListingError("deadline", f"GET users: listing took over {self.deadline:g}s (its deadline)")
        if pages_read > self.max_pages:
            raise ListingError(
                "too-many-pages",
                f"GET users: over {self.max_pages} pages for a total of {self.total} at {self.limit} a page",
            )
        if page.next_offset is not None and not page.items:
            raise ListingError("empty-page", f"GET users: an empty page at offset {page.offset} still has a 'next'")
        if page.total is not None and abs(page.total - self.total) > max(self.limit, self.total * TOTAL_DRIFT):
            raise ListingError(
                "total-changed", f"GET users: total went from {self.total} to {page.total} during one listing"
            )
