"""Policy plugins on a real hub: tests/plugin_pkg installed into a directory on the hub's PYTHONPATH.

The hub hands its PYTHONPATH to managed services (LocalProcessSpawner.env_keep, which the service
spawner inherits), so a plugin importable by the hub is importable by the service: this checks that too.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from realhub_support import CullerHub, culler_env, start_culler_hub

pytestmark = pytest.mark.realhub

POLICY = """\
version: 1
defaults:
  idle: 1h
rules:
  - id: by-option
    match: {users: ["plug-*"]}
    plugin: by-option
    args: {key: kill_me}
  - id: broken
    match: {users: ["boom-*"]}
    plugin: always-raises
  - id: boom-short      # what boom-* servers would get if a failing plugin meant "no opinion"
    match: {users: ["boom-*"]}
    idle: 2s
"""

UNKNOWN = POLICY.replace("plugin: by-option", "plugin: no-such-plugin")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, plugin_site: Path) -> Iterator[CullerHub]:
    yield from start_culler_hub(
        tmp_path_factory.mktemp("plugins"), POLICY, dry_run=False, cull_every=2, env={"PYTHONPATH": str(plugin_site)}
    )


async def test_plugin_decisions_apply(hub: CullerHub) -> None:
    await hub.wait_policy(POLICY)
    assert not hub.events("policy plugin failed to load")
    await hub.start_servers(("plug-kill", "", {"kill_me": "yes"}), ("plug-keep", "", None), ("boom-1", "", None))

    event = await hub.wait_event("server stopped", timeout=30, user="plug-kill")
    assert event["rule"] == "by-option"
    assert event["reason"] == "spawned with user option 'kill_me'"

    failure = await hub.wait_event("keeping server", timeout=30, server="boom-1/")
    assert "plugin 'always-raises' failed: RuntimeError: this plugin is broken on purpose" in failure["error"]
    await hub.wait_cycles(3, since=hub.log_offset())

    # no opinion: the default (1h) keeps plug-keep; the failing plugin keeps boom-1 past boom-short's 2 s
    assert await hub.is_running("plug-keep")
    assert await hub.is_running("boom-1"), "a failing plugin must mean keep"
    assert not hub.events("server stopped", user="plug-keep")
    assert not hub.events("server stopped", user="boom-1")
    assert len(hub.events("keeping server", server="boom-1/")) == 1, "the failure must be logged once"


def policy_check(path: Path, plugin_site: Path | None) -> subprocess.CompletedProcess[str]:
    env = culler_env(**({"PYTHONPATH": str(plugin_site)} if plugin_site else {}))
    command = [sys.executable, "-m", "culler", "policy", "check", str(path)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_policy_check_knows_installed_plugins(tmp_path: Path, plugin_site: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(POLICY)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(UNKNOWN)

    result = policy_check(good, plugin_site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {good}: 3 rule(s)")

    result = policy_check(unknown, plugin_site)
    assert result.returncode == 1
    assert "plugin: 'no-such-plugin' is not installed" in result.stderr
    assert "always-raises" in result.stderr and "by-option" in result.stderr  # the known ones are listed

    result = policy_check(good, None)  # without the package the same file names unknown plugins
    assert result.returncode == 1 and "'by-option' is not installed" in result.stderr
