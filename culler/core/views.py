"""What state a listed server is in: the one answer the page, metrics and ``explain`` all give (pure).

Exclusive: every listed server is in exactly one state, so a per-state gauge sums to the servers listed.
"""

from __future__ import annotations

from enum import StrEnum

from culler.core.decide import Action, Decision


class ServerState(StrEnum):
    PENDING = "pending"  # starting or stopping: not judged this cycle
    EXEMPT = "exempt"
    KEEP = "keep"  # running, not due
    DUE = "due"  # due to stop (and not settling: to be stopped, or held by the mass-stop guard)
    SETTLING = "settling"  # due, waiting for a quiet home


def state_of(decision: Decision, settling: bool = False) -> ServerState:
    if decision.action is Action.SKIP:
        return ServerState.PENDING
    if decision.action is Action.EXEMPT:
        return ServerState.EXEMPT
    if settling:
        return ServerState.SETTLING
    return ServerState.DUE if decision.action is Action.STOP else ServerState.KEEP
