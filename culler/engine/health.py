"""Readiness from what the cycles report (pure): ready while cycles succeed and a policy is in force."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from culler.core.text import isoformat


@dataclass
class Health:
    interval: float
    last_success: datetime | None = None
    last_error: str | None = None
    cycles: int = 0
    # what the service found about its own setup: name -> (blocks every cycle, message)
    conditions: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def condition(self, name: str, message: str | None, blocking: bool = False) -> None:
        """Set (or, with ``message`` None, clear) a condition shown on health."""
        if message is None:
            self.conditions.pop(name, None)
        else:
            self.conditions[name] = (blocking, message)

    def blocker(self) -> str | None:
        return "; ".join(message for blocking, message in self.conditions.values() if blocking) or None

    def record(self, at: datetime, error: str | None) -> None:
        self.cycles += 1
        self.last_error = error
        if error is None:
            self.last_success = at

    def status(self, now: datetime, policy_error: str | None, has_policy: bool) -> tuple[bool, dict[str, object]]:
        body: dict[str, object] = {"cycles": self.cycles, "last_success": isoformat(self.last_success)}
        if self.cycles:  # a failed cycle (an untrusted listing, say) shows at once, before readiness drops
            body["last_cycle"] = "failed" if self.last_error else "ok"
        if policy_error:
            body["policy_error"] = policy_error
        degraded = {name: message for name, (blocking, message) in self.conditions.items() if not blocking}
        if degraded:
            body["degraded"] = degraded
        blocker = self.blocker()
        if blocker:
            return False, {**body, "status": "unavailable", "reason": blocker}
        if not has_policy:
            why = policy_error or "not read yet"
            return False, {**body, "status": "unavailable", "reason": f"no valid policy: {why}"}
        if self.cycles == 0:
            return True, {**body, "status": "starting"}
        fresh = self.last_success is not None and (now - self.last_success).total_seconds() <= 3 * self.interval
        if fresh:
            return True, {**body, "status": "ok", "last_error": self.last_error}
        reason = self.last_error or "no successful cycle within three intervals"
        return False, {**body, "status": "unavailable", "reason": reason}
