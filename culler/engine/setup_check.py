"""The service checks its own setup before a cycle: its token's scopes, and the tree scan's mount.

What it finds goes on ``health``: a scope every cycle needs makes the service not ready (nothing is
stopped); a scope only some rules need degrades those rules; a missing tree-scan root is said. Each
change is logged once. Scopes are read at start and again after any 403 or policy change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from culler.adapters.errors import HubError
from culler.adapters.hub import HubClient
from culler.adapters.probes.base import Probe
from culler.adapters.probes.treescan import TreeScanProbe
from culler.core.scopes import Need, describe, missing, needs
from culler.engine.health import Health
from culler.logs import event
from culler.policy.model import Policy

log = logging.getLogger("culler.setup_check")
ROOT_CHECK_TIMEOUT = 5.0  # a hung NFS mount must not hang the cycle


class SetupCheck:
    def __init__(self, hub: HubClient, health: Health, probes: Mapping[str, Probe], dry_run: bool) -> None:
        self.hub = hub
        self.health = health
        self.probes = probes
        self.dry_run = dry_run
        self._checked_for: tuple[int, str | None] | None = None  # (403s seen, policy hash) at the last read
        self._lacking: list[Need] = []
        self._logged: dict[str, str | None] = {}

    async def before_cycle(self, policy: Policy, policy_hash: str | None) -> Policy:
        """The policy to cull under (without what the token cannot do); health says what is wrong."""
        await self._scopes(policy, policy_hash)
        await self._tree_scan_root()
        if any(need.scope in ("admin:users", "read:users:activity") for need in self._lacking):
            policy = policy.model_copy(update={"users": None})
        return policy

    async def _scopes(self, policy: Policy, policy_hash: str | None) -> None:
        key = (self.hub.forbidden, policy_hash)
        if key == self._checked_for:
            return
        try:
            scopes = await self.hub.own_scopes()
        except HubError as error:  # cannot tell: keep what we knew; the cycle's own requests will say more
            self._say("scopes-unchecked", f"cannot read the token's scopes: {error}", blocking=False)
            return
        self._say("scopes-unchecked", None)
        if scopes is None:
            self._say("token", "the hub refuses the service's token (401/403 on GET user)", blocking=True)
            return
        self._say("token", None)
        self._lacking = missing(scopes, needs(policy, self.dry_run))
        required = [need for need in self._lacking if need.every_cycle]
        optional = [need for need in self._lacking if not need.every_cycle]
        self._say("scopes", f"the token lacks {describe(required)}" if required else None, blocking=True)
        self._say("scopes-degraded", f"the token lacks {describe(optional)}" if optional else None)
        # while blocked no other request is made (so no 403 could prompt a re-check): ask every cycle
        self._checked_for = None if required else key

    async def _tree_scan_root(self) -> None:
        probe = self.probes.get("tree-scan")
        if not isinstance(probe, TreeScanProbe):
            return
        root = probe.path_template.root()
        try:
            found = await asyncio.wait_for(asyncio.to_thread(os.path.isdir, root), ROOT_CHECK_TIMEOUT)
        except TimeoutError:
            self._say("tree-scan", f"the tree-scan root {root} did not answer in {ROOT_CHECK_TIMEOUT:g}s")
            return
        why = None if found else f"the tree-scan root {root} does not exist: settling servers wait for their cap"
        self._say("tree-scan", why)

    def _say(self, name: str, message: str | None, blocking: bool = False) -> None:
        self.health.condition(name, message, blocking)
        if self._logged.get(name) != message:
            self._logged[name] = message
            if message is not None:
                event(log, logging.ERROR if blocking else logging.WARNING, message, check=name)
            else:
                event(log, logging.INFO, "setup check passes again", check=name)
