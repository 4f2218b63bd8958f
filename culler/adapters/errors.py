"""The one error tree of the adapters: every failure to read or act on a source the service trusts.

Messages are safe to log (no token, bodies cut short). The engine catches ``SourceError`` where any source
may fail (a listing reads the hub and, with the proxy as the activity source, the proxy).
"""

from __future__ import annotations


class SourceError(Exception):
    """A source (the hub, the proxy) gave no answer the service can act on."""


class HubError(SourceError):
    """Any failure talking to the hub; the message is safe to log (no token, body cut short)."""


class HubUnreachable(HubError):
    pass


class HubProtocolError(HubError):
    """The hub answered something this client cannot trust (not JSON, wrong shape)."""


class HubInterrupted(HubError):
    """The request was not sent: shutdown began while it waited for a slot or a retry."""


class HubBackingOff(HubError):
    """Not sent: the hub asked (Retry-After) not to be asked again before a time that is still ahead."""


class HubListingError(HubProtocolError):
    """A listing broke one of its bounds (see ``culler.listing``); ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class HubAPIError(HubError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ProxyActivityError(SourceError):
    """The proxy's API could not be read: the cycle stops nothing."""


class OAuthExchangeError(HubError):
    """The hub's OAuth token endpoint could not be reached or answered something unusable."""
