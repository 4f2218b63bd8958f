"""The keeper's answers that the API and the page both rely on: a hub that cannot say, a refused token."""

from __future__ import annotations

from typing import Any

from culler.adapters.errors import HubUnreachable
from culler.engine.keeper import Keeper


class Hub:
    def __init__(self, owner: dict[str, Any] | None = None, down: bool = False) -> None:
        self.owner, self.down = owner, down

    async def token_owner(self, token: str) -> dict[str, Any] | None:
        if self.down:
            raise HubUnreachable("GET user: connection refused")
        return self.owner


def keeper(hub: Hub) -> Keeper:
    return Keeper(hub, None, None, lambda: None, lambda event: None)  # type: ignore[arg-type]


async def test_a_hub_that_cannot_say_is_a_502_not_an_exception() -> None:
    answer = await keeper(Hub(down=True)).keep("token", "alice", "")
    assert answer.status == 502 and "connection refused" in answer.body["error"]
    assert not answer.token_refused


async def test_a_token_the_hub_refuses_is_marked_so_the_page_can_log_in_again() -> None:
    answer = await keeper(Hub(owner=None)).keep("token", "alice", "")
    assert (answer.status, answer.token_refused) == (403, True)
    other = await keeper(Hub(owner={"kind": "user", "name": "mallory", "scopes": []})).keep("token", "alice", "")
    assert (other.status, other.token_refused) == (403, False)  # a refusal of rights, not of the token
