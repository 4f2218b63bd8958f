"""The Prometheus settle probe against a real Prometheus (Debian's 2.42 binary) scraping an exporter
the test controls: first the probe class on its own, then the service on a real hub.

The exporter serves ``home_write_bytes_rate{username="..."}``; Prometheus scrapes it every second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_support import MetricsExporter, PrometheusServer, prometheus_binary
from realhub_support import CullerHub, start_culler_hub_with, wait_for

from culler.adapters.probes.prometheus import PrometheusProbe
from culler.core.settle import Observation, Seen, SettleVerdict, judge
from culler.core.snapshot import ServerSnapshot
from culler.policy.model import Settle
from devtools.devhub import free_port

pytestmark = pytest.mark.realhub

QUERY = 'max(home_write_bytes_rate{username="{unescaped_username}"})'
IDLE = 3
WINDOW = 3
SETTLE_POLL = 1
CULL_EVERY = 2

POLICY = f"""\
version: 1
defaults:
  idle: 1h
rules:
  - id: prom
    match: {{users: ["prom-*"]}}
    idle: {IDLE}s
    settle: {{probes: [prometheus], window: {WINDOW}s, max_deferral: 60s}}
"""


@pytest.fixture(scope="module")
def exporter() -> Iterator[MetricsExporter]:
    with MetricsExporter() as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, exporter: MetricsExporter) -> Iterator[PrometheusServer]:
    prometheus_binary()  # skips when it is not installed
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), [exporter.address]) as running:
        yield running


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, prometheus: PrometheusServer) -> Iterator[CullerHub]:
    env = {
        "CULLER_PROMETHEUS_URL": prometheus.url,
        "CULLER_PROMETHEUS_QUERY": QUERY,
        "CULLER_SETTLE_POLL": f"{SETTLE_POLL}",
    }
    yield from start_culler_hub_with(
        tmp_path_factory.mktemp("promhub"),
        POLICY,
        lambda hub: env,
        dry_run=False,
        cull_every=CULL_EVERY,
        last_activity_interval=1,  # the first last_activity is recorded before the server is due
    )


def snapshot(user: str) -> ServerSnapshot:
    return ServerSnapshot(
        user=user, name="", admin=False, groups=(), last_activity=None, started=None, pending=None, ready=True
    )


def query_for(user: str) -> str:
    return QUERY.replace("{unescaped_username}", user)


async def test_probe_class_against_real_prometheus(
    prometheus: PrometheusServer, exporter: MetricsExporter, tmp_path: Path
) -> None:
    """Active while the value is above the threshold; quiet counted from the first quiet answer, so
    the window must pass before it settles; no data and failures mean "cannot tell"."""
    user = "probe-alice"
    settle = Settle(probes=["prometheus"], window=WINDOW, max_deferral=60)
    probe = PrometheusProbe(prometheus.url, QUERY)
    server = snapshot(user)
    try:
        exporter.set(user, 5)
        await prometheus.wait_value(query_for(user), 5)
        busy = await probe.observe(server)
        assert busy.seen is Seen.ACTIVE and "5" in busy.detail, busy

        exporter.set(user, 0)
        await prometheus.wait_value(query_for(user), 0)
        first = await probe.observe(server)
        first_quiet = time.monotonic()
        assert first.seen is Seen.QUIET and first.quiet_for < 1, first
        assert judge({"prometheus": first}, settle, waited=0)[0] is SettleVerdict.WAIT, (
            "settled at the first quiet answer"
        )

        async def settled() -> Observation | None:
            observation = await probe.observe(server)
            return observation if judge({"prometheus": observation}, settle, 0)[0] is SettleVerdict.STOP else None

        done = await wait_for(settled, WINDOW + 5, "the probe to vouch for the window", interval=0.5)
        assert done.quiet_for >= WINDOW
        assert time.monotonic() - first_quiet >= WINDOW - 0.1

        # writes again: quiet starts over
        exporter.set(user, 7)
        await prometheus.wait_value(query_for(user), 7)
        assert (await probe.observe(server)).seen is Seen.ACTIVE
        exporter.set(user, 0)
        await prometheus.wait_value(query_for(user), 0)
        again = await probe.observe(server)
        assert again.seen is Seen.QUIET and again.quiet_for < 1, again

        # a threshold above the value reads as quiet
        tolerant = PrometheusProbe(prometheus.url, QUERY, threshold=10)
        exporter.set(user, 5)
        await prometheus.wait_value(query_for(user), 5)
        try:
            assert (await tolerant.observe(server)).seen is Seen.QUIET
        finally:
            await tolerant.close()

        # no series for this user: cannot tell (and it is an error worth logging)
        missing = await probe.observe(snapshot("probe-nobody"))
        assert missing.seen is Seen.UNKNOWN and missing.error and "no data" in missing.detail, missing

        # a query Prometheus rejects: cannot tell, with Prometheus' own message
        broken = PrometheusProbe(prometheus.url, "max(home_write_bytes_rate{")
        try:
            rejected = await broken.observe(server)
        finally:
            await broken.close()
        assert rejected.seen is Seen.UNKNOWN and rejected.error and "400" in rejected.detail, rejected
    finally:
        await probe.close()

    # nobody listening: cannot tell, never quiet
    gone = PrometheusProbe(f"http://127.0.0.1:{free_port()}", QUERY, timeout=5)
    try:
        unreachable = await gone.observe(server)
    finally:
        await gone.close()
    assert unreachable.seen is Seen.UNKNOWN and unreachable.error, unreachable


async def test_service_waits_for_prometheus_quiet(
    hub: CullerHub, prometheus: PrometheusServer, exporter: MetricsExporter
) -> None:
    """On a real hub: a due server whose write rate is above 0 is deferred; once the rate is 0 it is
    stopped, but only after the window (not at the first quiet answer)."""
    await hub.wait_policy(POLICY)
    user = "prom-writer"
    exporter.set(user, 5)
    await prometheus.wait_value(query_for(user), 5)
    since = hub.log_offset()
    await hub.start_servers((user, "", None))

    admitted = await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
    assert admitted["probes"] == "prometheus"

    async def probe_state(prefix: str) -> bool:
        status, body = await hub.get(hub.service_url() + "api/settling", token=hub.admin_token)
        assert status == 200, body
        entry = next((e for e in body["settling"] if e["server"] == user), None)
        return entry is not None and str(entry["probes"].get("prometheus", "")).startswith(prefix)

    await wait_for(lambda: probe_state("active"), 10, "the service's probe to see the write rate")
    await hub.wait_cycles(2, since=hub.log_offset())  # several settle polls with the rate above 0
    assert await hub.is_running(user), "stopped while Prometheus reported writes"
    assert not hub.events("server stopped", since, user=user)

    exporter.set(user, 0)
    zero_set = time.monotonic()
    await wait_for(lambda: probe_state("quiet"), 10, "the service's probe to see the rate at 0", interval=0.1)
    first_quiet_seen = time.monotonic()
    assert await hub.is_running(user), "stopped at the first quiet answer, before the window"
    assert not hub.events("server stopped", since, user=user)

    await hub.wait_event("home settled; stopping", timeout=WINDOW + 15, since=since, user=user)
    settled_seen = time.monotonic()
    print(
        f"\nrate set to 0 -> first quiet answer seen {first_quiet_seen - zero_set:.1f}s -> "
        f"'home settled' seen {settled_seen - zero_set:.1f}s (window {WINDOW}s)"
    )
    assert settled_seen - first_quiet_seen >= WINDOW - 0.5, "quiet did not have to last the window"
    # scrape (1 s) + settle poll + window + one more poll + slack; the hub's own stop comes after
    assert settled_seen - zero_set <= 1 + SETTLE_POLL + WINDOW + SETTLE_POLL + 3
    event = await hub.wait_event("server stopped", timeout=20, since=since, user=user)
    assert event["settle"] == "verified" and event["rule"] == "prom"
    await hub.wait_server(user, ready=False, timeout=10)
    await asyncio.sleep(0)  # nothing left running in this loop
