"""Policy plugins for the real-hub tests: ``(server, args, now) -> Verdict | None``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from culler.decide import Action, ServerSnapshot, Verdict


def by_option(server: ServerSnapshot, args: Mapping[str, Any], now: datetime) -> Verdict | None:
    """Stop servers spawned with the spawn option ``args["key"]``; no opinion about the others."""
    key = args["key"]
    if key in server.user_options:
        return Verdict(Action.STOP, f"spawned with user option {key!r}")
    return None


def always_raises(server: ServerSnapshot, args: Mapping[str, Any], now: datetime) -> Verdict | None:
    """A broken plugin: the service must keep the server and say so once."""
    raise RuntimeError("this plugin is broken on purpose")
