"""The policy in force: read from a file every poll, swapped only for a valid new version."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from culler.core.events import Event, PolicyRead
from culler.logs import event
from culler.policy.model import Policy, PolicyError, parse_policy, policy_hash

log = logging.getLogger("culler.policy")


@dataclass(frozen=True)
class PolicyState:
    policy: Policy | None
    hash: str | None
    source: str
    error: str | None  # the newest file's problem, even while an older good policy stays in force


class PolicyStore:
    """Holds the last good policy. Reads the whole (small) file each poll and compares content
    hashes, so in-place edits, atomic renames and Kubernetes ConfigMap symlink swaps all count."""

    def __init__(
        self,
        path: Path | None = None,
        fixed: Policy | None = None,
        plugins: list[str] | None = None,
        probes: list[str] | None = None,
        publish: Callable[[Event], None] | None = None,
    ):
        if (path is None) == (fixed is None):
            raise ValueError("give exactly one of a policy path or a fixed policy")
        self.path = path
        self.plugins = plugins
        self.probes = probes  # the settle probes the settings configure (None: not checked)
        self._seen: str | None = None
        source = str(path) if path else "command-line flags"
        fixed_hash = policy_hash(fixed.model_dump_json()) if fixed else None
        self.state = PolicyState(fixed, fixed_hash, source, None)
        self.publish = publish or (lambda event: None)  # each read's result (PolicyRead), for metrics

    def refresh(self) -> PolicyState:
        if self.path is None:
            return self.state
        try:
            data = self.path.read_bytes()
        except OSError as error:
            self._reject("unreadable", f"{self.path}: cannot read: {error.strerror or error}")
            return self.state
        digest = policy_hash(data)
        if digest == self._seen:
            return self.state
        self._seen = digest
        try:
            policy = parse_policy(_decode(data, self.path), str(self.path), self.plugins, self.probes)
        except PolicyError as error:
            self._reject(digest, "; ".join(error.errors))
            return self.state
        previous = self.state.hash
        self.state = PolicyState(policy, digest, str(self.path), None)
        self.publish(PolicyRead("loaded"))
        event(
            log,
            logging.INFO,
            "policy loaded" if previous is None else "policy reloaded",
            file=str(self.path),
            hash=digest,
            rules=len(policy.rules),
            previous=previous,
        )
        return self.state

    def _reject(self, digest: str, message: str) -> None:
        if self.state.error == message:
            return
        self._seen = digest
        kept = f"keeping policy {self.state.hash}" if self.state.policy else "no valid policy: stopping nothing"
        event(log, logging.ERROR, "policy rejected", error=message, action=kept)
        self.state = PolicyState(self.state.policy, self.state.hash, self.state.source, message)
        self.publish(PolicyRead("rejected"))


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PolicyError(str(path), [f"{path}: not UTF-8 text: {error.reason} at byte {error.start}"]) from error
