"""A GPU lab's KubeSpawner profile form, submitted in a real browser, decides which rule stops each server.

Real: JupyterHub (with configurable-http-proxy and its dummy authenticator) in two Python environments, this
venv's and Zero to JupyterHub 4.4.0's versions; KubeSpawner's own form, ``options_from_form`` and
``load_user_options`` with the lab's profileList (deploy/z2jh/gpu-lab-profiles.yaml); headless Chromium
logging in and pressing Start on /hub/spawn; the activity-culler service (the shipped snippet, not dry run)
under policies/examples/gpu-lab.yaml; ``python -m culler explain``. Not real: Kubernetes. The servers are
the hub's shared stand-in (see kubespawner_support.py), so nothing here needs a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from browser_support import ARTIFACTS, CHROMIUM, Browser, chromium_page, log_in
from kubespawner_support import (
    ENVIRONMENTS,
    NOWHERE,
    POLICY,
    SPAWNER,
    FormChoice,
    HubEnvironment,
    applied_overrides,
    fill,
    installed_versions,
    kubernetes_env,
    matches,
    open_spawn_form,
    submit,
)
from realhub_support import CullerHub, culler_env, start_culler_hub_with

pytestmark = [
    pytest.mark.realhub,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (./dev test installs it)"),
]

STAFF_GROUP = "lab-staff"
SPAWN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Case:
    """One user's visit to the spawn form, what KubeSpawner must store, and the rule that must decide."""

    user: str
    form: FormChoice
    user_options: dict[str, str]
    rule: str
    groups: tuple[str, ...] = ()
    culled: bool = False  # stopped once the gpu rule's idle limit is a few seconds


CASES = [
    Case("ks-cpu", FormChoice(), {"profile": "pytorch-env", "resources": "small", "gpu": "none"}, "default"),
    Case(
        "ks-h100",
        FormChoice("pytorch-env", {"resources": "large", "gpu": "2xh100"}),
        {"profile": "pytorch-env", "resources": "large", "gpu": "2xh100"},
        "gpu",
        culled=True,
    ),
    Case(
        "ks-l40s",
        FormChoice("pytorch-env", typed={"gpu": "NVIDIA-L40S"}),
        {"profile": "pytorch-env", "resources": "small", "gpu--unlisted-choice": "NVIDIA-L40S"},
        "gpu",
        culled=True,
    ),
    Case(
        "ks-tf",
        FormChoice("tf", {"resources": "large", "gpu": "1xa100"}),
        {"profile": "tf", "resources": "large", "gpu": "1xa100"},
        "gpu",
        culled=True,
    ),
    Case(
        "ks-staff",
        FormChoice("pytorch-env", {"gpu": "1xa100"}),
        {"profile": "pytorch-env", "resources": "small", "gpu": "1xa100"},
        "staff",
        groups=(STAFF_GROUP,),
    ),
]
SCREENSHOT_CASE = "ks-l40s"


@dataclass
class Spawned:
    """What a case's visit produced: the submitted form data and the stored options, or what went wrong."""

    form_data: dict[str, str] = field(default_factory=dict)
    user_options: dict[str, Any] | None = None
    error: str | None = None


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(ENVIRONMENTS))
def environment(request: pytest.FixtureRequest) -> HubEnvironment:
    """A hub environment that really has the versions it is named for (a mis-built one fails loudly)."""
    env = ENVIRONMENTS[request.param]
    if not env.python.exists():
        pytest.skip(f"{env.python} is missing: `./dev setup` creates the {env.name} environment")
    versions = installed_versions(env.python)
    assert matches(versions["jupyterhub"], env.jupyterhub), f"{env.name}: {versions}"
    assert matches(versions["kubespawner"], env.kubespawner), f"{env.name}: {versions}"
    print(f"\n[{env.name}] JupyterHub {versions['jupyterhub']}, KubeSpawner {versions['kubespawner']}")
    return env


@pytest.fixture(scope="module")
def hub(environment: HubEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    """One hub per environment, KubeSpawner's form, the service acting (not dry run) under the GPU lab's policy."""
    workdir = tmp_path_factory.mktemp(f"kubespawner-{environment.name}")
    started = time.monotonic()
    settings = {"dry_run": False, "cull_every": 2, "python": str(environment.python), "extra_config": SPAWNER}
    for hub in start_culler_hub_with(workdir, POLICY.read_text(), kubernetes_env, **settings):
        print(f"[{environment.name}] hub and service up in {time.monotonic() - started:.1f}s")
        yield hub
    print(f"[{environment.name}] the module took {time.monotonic() - started:.1f}s on this hub")


@pytest.fixture(scope="module")
def spawned(
    hub: CullerHub, environment: HubEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Spawned]:
    """Every case's user logs in to Chromium and submits the spawn form (once per hub)."""
    started = time.monotonic()
    profile = tmp_path_factory.mktemp(f"chromium-{environment.name}")
    results = asyncio.run(spawn_all(hub, environment.name, profile))
    print(f"[{environment.name}] {len(CASES)} spawns through the browser in {time.monotonic() - started:.1f}s")
    return results


# -- the browser's visits -------------------------------------------------------------------------------


async def spawn_all(hub: CullerHub, env_name: str, profile: Path) -> dict[str, Spawned]:
    await hub.create_users([case.user for case in CASES])
    for group in sorted({group for case in CASES for group in case.groups}):
        await hub.add_to_group(group, [case.user for case in CASES if group in case.groups])
    results: dict[str, Spawned] = {}
    async with chromium_page(profile) as browser:
        for case in CASES:
            results[case.user] = result = Spawned()
            try:
                await spawn_through_form(hub, browser, case, result, env_name)
            except (AssertionError, TimeoutError, RuntimeError) as error:
                result.error = f"{type(error).__name__}: {error}"
    return results


async def spawn_through_form(hub: CullerHub, browser: Browser, case: Case, result: Spawned, env_name: str) -> None:
    await log_in(browser, hub.url, case.user)
    await open_spawn_form(browser, hub.url)
    result.form_data = await fill(browser, case.form)
    if case.user == SCREENSHOT_CASE:
        await screenshot(browser, f"kubespawner-form-{env_name}.png")
    await submit(browser)
    await hub.wait_server(case.user, ready=True, timeout=SPAWN_TIMEOUT)
    server = await hub.server_model(case.user)
    result.user_options = (server or {}).get("user_options")


async def screenshot(browser: Browser, name: str) -> None:
    shot = await browser.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / name).write_bytes(png)


# -- the tests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.user for case in CASES])
def test_the_form_stores_kubespawners_user_options(case: Case, spawned: dict[str, Spawned]) -> None:
    result = spawned[case.user]
    assert result.error is None, f"{case.user}'s spawn failed ({result.form_data=}): {result.error}"
    assert result.user_options == case.user_options, f"submitted form data: {result.form_data}"


def test_load_user_options_applied_the_typed_gpu(spawned: dict[str, Spawned], hub: CullerHub) -> None:
    """KubeSpawner validated NVIDIA-L40S against the regex and filled it into the unlisted choice's override."""
    assert spawned[SCREENSHOT_CASE].error is None, spawned[SCREENSHOT_CASE].error
    applied = applied_overrides(hub.log_text(), SCREENSHOT_CASE)
    assert applied["node_selector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S"}, applied
    assert applied["extra_resource_limits"] == {"nvidia.com/gpu": "1"}, applied
    assert applied["image"] == "quay.io/jupyter/pytorch-notebook:cuda12-latest", applied


async def test_explain_names_each_servers_rule(
    spawned: dict[str, Spawned], hub: CullerHub, environment: HubEnvironment
) -> None:
    assert_all_spawned(spawned)
    started = time.monotonic()
    rows = await explain(hub, environment)
    print(f"[{environment.name}] explain in {time.monotonic() - started:.1f}s")
    assert {user: row["rule"] for user, row in rows.items()} == {case.user: case.rule for case in CASES}, rows


async def test_short_limits_stop_only_the_gpu_servers(
    spawned: dict[str, Spawned], hub: CullerHub, environment: HubEnvironment
) -> None:
    assert_all_spawned(spawned)
    text = short_limits(POLICY.read_text())
    since = hub.log_offset()
    started = time.monotonic()
    hub.write_policy(text)
    await hub.wait_policy(text)
    culled = [case.user for case in CASES if case.culled]
    stops = await asyncio.gather(*(hub.wait_event("server stopped", since=since, user=user) for user in culled))
    print(f"[{environment.name}] gpu servers stopped {time.monotonic() - started:.1f}s after the policy change")
    assert {stop["user"]: stop["rule"] for stop in stops} == dict.fromkeys(culled, "gpu")
    await hub.wait_cycles(2, since=hub.log_offset())
    for case in CASES:
        assert await hub.is_running(case.user) is not case.culled, f"{case.user} running: {not case.culled} expected"
    kept = {case.user for case in CASES if not case.culled}
    assert not [event for event in hub.events("server stopped", since) if event["user"] in kept]


def test_the_spawner_never_raised_nor_called_kubernetes(spawned: dict[str, Spawned], hub: CullerHub) -> None:
    log = hub.log_text()
    assert "local-kubespawner start" in log, "LocalKubeSpawner never started a server"
    traceback = log.find("Traceback")
    assert traceback < 0, f"a traceback in the hub's log: {log[max(0, traceback - 2000) : traceback + 3000]}"
    contacted = re.search(re.escape(NOWHERE.removeprefix("https://")) + r"(?!\d)", log)
    where = contacted.start() if contacted else 0
    assert contacted is None, f"something tried to reach the dummy Kubernetes API: {log[max(0, where - 500) :]}"


# -- helpers --------------------------------------------------------------------------------------------


def assert_all_spawned(spawned: dict[str, Spawned]) -> None:
    failed = {user: result.error for user, result in spawned.items() if result.error}
    assert not failed, f"spawns through the form failed: {failed}"


def short_limits(policy: str) -> str:
    """The example with the gpu rule's idle limit a few seconds and the defaults' an hour."""
    assert policy.count("idle: 1d") == 1 and policy.count("idle: 7d") == 1, "the example's limits changed"
    return policy.replace("idle: 1d", "idle: 3s").replace("idle: 7d", "idle: 1h")


async def explain(hub: CullerHub, environment: HubEnvironment) -> dict[str, dict[str, str]]:
    """``explain --json`` against the live hub as an admin runs it, with the hub environment's python."""
    env = culler_env(JUPYTERHUB_API_TOKEN=hub.admin_token, CULLER_POLICY=str(hub.policy))
    command = [str(environment.python), "-m", "culler", "explain", "--url", hub.api_url, "--json"]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {row["server"]: row for row in rows}
