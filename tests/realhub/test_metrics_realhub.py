"""The service's /metrics on a real hub: who may read it, what promtool and a real Prometheus make of it, and
whether the shipped alerting rules and Grafana dashboard only use metrics the service exports.

One hub for the module (its culler stops an idle server, so stop counters move), one Prometheus scraping
the service through the hub's proxy with a user's token, exactly as the README tells sites to.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_support import ServicePrometheus, promtool
from realhub_support import REPO, SERVICE, CullerHub, start_culler_hub, wait_for

pytestmark = [
    pytest.mark.realhub,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="the prometheus binary is not on PATH"),
]

RULES = REPO / "deploy" / "prometheus" / "activity-culler-rules.yaml"
PROMETHEUS_RULE = REPO / "deploy" / "prometheus" / "prometheusrule.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "activity-culler.json"
METRICS_PATH = f"/services/{SERVICE}/metrics"
NAMESPACE = "metrics-test-hub"  # what Kubernetes discovery would add; the dashboard filters on it
READER = "m-reader"

POLICY = """\
version: 1
defaults:
  idle: 1h
rules:
  - id: short
    match: {users: ["m-idle*"]}
    idle: 2s
"""

METRIC_NAME = re.compile(r"activity_culler_[a-z_]+")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    yield from start_culler_hub(
        tmp_path_factory.mktemp("metrics"), POLICY, dry_run=False, cull_every=2, last_activity_interval=2
    )


@pytest.fixture(scope="module")
def reader_token(hub: CullerHub) -> str:
    """A hub user's token: the user role the snippet extends holds access:services!service=activity-culler."""

    async def make() -> str:
        await hub.create_users([READER])
        return await hub.user_token(READER, note="prometheus scrape")

    return asyncio.run(make())


@pytest.fixture(scope="module")
def culled(hub: CullerHub) -> None:
    """An idle server the culler has stopped, so that stop counters are not all zero."""

    async def cull() -> None:
        await hub.start_servers(("m-idle-1", "", None))
        await hub.wait_event("server stopped", timeout=30, user="m-idle-1")

    asyncio.run(cull())


@pytest.fixture(scope="module")
def prometheus(
    hub: CullerHub, reader_token: str, culled: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServicePrometheus]:
    target = hub.url.removeprefix("http://")
    server = ServicePrometheus(
        tmp_path_factory.mktemp("prometheus"), target, METRICS_PATH, reader_token, {"namespace": NAMESPACE}
    )
    with server:
        yield server


async def fetch(url: str, authorization: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": authorization} if authorization else {}
    async with aiohttp.ClientSession(headers=headers) as session, session.get(url) as response:
        return response.status, await response.text()


async def metrics_body(hub: CullerHub, token: str) -> str:
    status, body = await fetch(hub.service_url() + "metrics", f"Bearer {token}")
    assert status == 200, f"GET metrics with a user token: {status} {body[:300]}"
    return body


def service_api_token(hub: CullerHub) -> str:
    """The token the hub gave its managed service, read from the service process's environment."""
    api_url = f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub.hub_port}/hub/api".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        if f"JUPYTERHUB_SERVICE_NAME={SERVICE}".encode() in variables and api_url in variables:
            for variable in variables:
                if variable.startswith(b"JUPYTERHUB_API_TOKEN="):
                    return variable.split(b"=", 1)[1].decode()
    raise AssertionError("the service process (and its JUPYTERHUB_API_TOKEN) was not found")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [var["definition"] for var in dashboard["templating"]["list"] if var["type"] == "query"]
    return exprs


def rule_exprs(groups: list[dict[str, Any]]) -> list[str]:
    return [rule["expr"] for group in groups for rule in group["rules"]]


def exported_names(body: str) -> set[str]:
    """Metric family names as the exposition declares them (``# TYPE name type``)."""
    return {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}


def used_names(exprs: list[str]) -> set[str]:
    names = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends for one hub selected: its template variables filled in."""
    return expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$hub", NAMESPACE)


async def wait_query(prometheus: ServicePrometheus, promql: str, timeout: float = 30.0) -> float:
    """Wait until ``promql`` (a filter such as ``x > 0``) returns data through Prometheus's HTTP API."""

    async def answered() -> list[float] | None:  # in a list: a value of 0 is data too
        value = await asyncio.to_thread(prometheus.query, promql)
        return None if value is None else [value]

    [value] = await wait_for(
        answered,
        timeout,
        f"{promql} to return data",
        interval=0.5,
        detail=lambda: f"prometheus log: {prometheus.log_tail()}",
    )
    return value


# -- the endpoint -----------------------------------------------------------------------------------


async def test_metrics_need_a_hub_token_with_access_to_the_service(hub: CullerHub, reader_token: str) -> None:
    url = hub.service_url() + "metrics"
    assert (await fetch(url))[0] == 401
    assert (await fetch(url, "Bearer "))[0] == 401
    assert (await fetch(url, "Bearer not-a-hub-token"))[0] == 403
    # the admin service's token may do much, but not access this service
    assert (await fetch(url, f"Bearer {hub.admin_token}"))[0] == 403
    # a token of the same user, limited to reading its own name: no access:services
    model = await hub.api(
        "POST", f"users/{READER}/tokens", {"note": "no scope", "scopes": [f"read:users:name!user={READER}"]}
    )
    status, body = await fetch(url, f"Bearer {model['token']}")
    assert status == 403, body
    assert f"access:services!service={SERVICE}" in body
    for scheme in ("Bearer", "token"):
        status, body = await fetch(url, f"{scheme} {reader_token}")
        assert status == 200, f"{scheme}: {status} {body[:300]}"
        assert "# TYPE activity_culler_cycles_total counter" in body


async def test_live_body_passes_promtool_and_holds_no_secret(hub: CullerHub, reader_token: str, culled: None) -> None:
    body = await metrics_body(hub, reader_token)

    checked = promtool("check", "metrics", stdin=body)
    assert checked.returncode == 0, f"promtool check metrics: {checked.stdout}{checked.stderr}"
    for secret in (service_api_token(hub), reader_token, hub.admin_token, hub.proxy_token):
        assert secret not in body
    assert 'user="' not in body and "username" not in body, "a per-user label without --per-server-metrics"
    assert re.search(r'^activity_culler_stops_total\{outcome="stopped",rule="short"\} [1-9]', body, re.M), body
    assert re.search(r'^activity_culler_cycles_total\{result="ok"\} [1-9]', body, re.M)
    assert "activity_culler_policy_valid 1.0" in body


# -- a real Prometheus through the hub's proxy --------------------------------------------------------


async def test_prometheus_scrapes_the_service_through_the_proxy(prometheus: ServicePrometheus) -> None:
    job = f'job="activity-culler",namespace="{NAMESPACE}"'
    assert await wait_query(prometheus, f"up{{{job}}} == 1") == 1
    assert await wait_query(prometheus, f'activity_culler_cycles_total{{{job},result="ok"}} > 0') > 0
    stopped = await wait_query(prometheus, f'sum(activity_culler_stops_total{{{job},outcome="stopped"}}) >= 1')
    assert stopped >= 1
    assert await wait_query(prometheus, f"activity_culler_policy_valid{{{job}}}") == 1
    # the scrape config keeps the token secret from anyone who can read Prometheus's own API
    config = prometheus.api_get("status/config")["data"]["yaml"]
    assert prometheus.token not in config


async def test_dashboard_queries_run_and_find_data(prometheus: ServicePrometheus) -> None:
    await wait_query(prometheus, f'activity_culler_cycles_total{{namespace="{NAMESPACE}",result="ok"}} > 0')
    hubs = prometheus.api_get("label/namespace/values", **{"match[]": "activity_culler_cycles_total"})
    assert NAMESPACE in hubs["data"], "the $hub variable's label_values() would not list this hub"
    empty = []
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            continue
        answer = await asyncio.to_thread(prometheus.api_get, "query", query=grafana_to_promql(expr))
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        if not answer["data"]["result"]:
            empty.append(expr)
    # Filters like "> 0" or rare events (guard, deferrals, errors) may rightly be empty; the core panels are not.
    for core in ("activity_culler_servers{", "last_successful_cycle_timestamp_seconds", "policy_valid"):
        assert not [expr for expr in empty if core in expr], f"no data for {core}: {empty}"


# -- the alerting rules -------------------------------------------------------------------------------


HUB_A = 'namespace="hub-a",job="c"'


def series(labels: str, values: str) -> dict[str, str]:
    return {"series": "activity_culler_" + labels.replace("@", HUB_A), "values": values}


def firing(at: str, alert: str, severity: str | None, **extra: str) -> dict[str, Any]:
    exp = {"severity": severity, "namespace": "hub-a", "job": "c", **extra}
    labels = [{"exp_labels": exp}] if severity else []
    return {"eval_time": at, "alertname": alert, "exp_alerts": labels}


# Minute by minute: cycles succeed until 10m, then stop; the policy file goes bad at 6m; from 11m on, 2 of
# every 17 hub requests answer 503 (the 404s are answers, not errors; requests held back by a Retry-After
# were never sent); one listing breaks a bound at 11m; the hub's clock is an hour behind from 6m.
ALERT_TESTS = {
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                series("last_successful_cycle_timestamp_seconds{@}", "0+60x10 600x40"),
                series("policy_valid{@}", "1x5 0x20"),
                series('hub_requests_total{@,method="GET",endpoint="users",status="200"}', "0+10x40"),
                series('hub_requests_total{@,method="GET",endpoint="users",status="503"}', "0x10 0+2x30"),
                series('hub_requests_total{@,method="DELETE",endpoint="users/{name}/server",status="404"}', "0+5x40"),
                series('hub_requests_total{@,method="GET",endpoint="users",status="backing-off"}', "0+50x40"),
                series('listing_failures_total{@,reason="empty-page"}', "0x10 1x30"),
                series('listing_failures_total{@,reason="error"}', "0+1x40"),
                series('clock_skew_seconds{@,source="hub"}', "0x5 -3600x30"),
            ],
            "alert_rule_test": [
                firing("9m", "ActivityCullerNotCycling", None),
                firing("30m", "ActivityCullerNotCycling", None),  # 25m: 15 minutes without; 5m pending
                firing("35m", "ActivityCullerNotCycling", "critical"),
                firing("14m", "ActivityCullerPolicyInvalid", None),
                firing("17m", "ActivityCullerPolicyInvalid", "warning"),
                firing("10m", "ActivityCullerHubApiErrors", None),
                firing("35m", "ActivityCullerHubApiErrors", "warning"),
                firing("10m", "ActivityCullerListingUntrusted", None),
                firing("12m", "ActivityCullerListingUntrusted", "warning", reason="empty-page"),
                firing("45m", "ActivityCullerListingUntrusted", None),  # 30 minutes on, no new failure
                firing("15m", "ActivityCullerClockSkew", None),  # skewed since 6m: 15 minutes pending
                firing("22m", "ActivityCullerClockSkew", "warning", source="hub"),
            ],
        }
    ],
}


def test_rules_pass_promtool_and_the_prometheusrule_holds_the_same_groups(tmp_path: Path) -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, f"promtool check rules: {checked.stdout}{checked.stderr}"

    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1" and resource["kind"] == "PrometheusRule"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(resource["spec"]))
    checked = promtool("check", "rules", str(spec))
    assert checked.returncode == 0, f"promtool check rules (PrometheusRule spec): {checked.stdout}{checked.stderr}"
    assert resource["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]

    alerts = {rule["alert"]: rule for group in resource["spec"]["groups"] for rule in group["rules"]}
    assert set(alerts) == {
        "ActivityCullerNotCycling",
        "ActivityCullerCyclesFailing",
        "ActivityCullerMassStopGuardTripped",
        "ActivityCullerStopsFailing",
        "ActivityCullerSettleCapReached",
        "ActivityCullerHubApiErrors",
        "ActivityCullerPolicyInvalid",
        "ActivityCullerListingUntrusted",
        "ActivityCullerClockSkew",
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    # promtool compares annotations too: test the expressions, labels and "for" without them
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    tests = tmp_path / "rules_test.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [str(rules)], **ALERT_TESTS}))
    checked = promtool("test", "rules", str(tests))
    assert checked.returncode == 0, f"promtool test rules: {checked.stdout}{checked.stderr}"


def test_dashboard_is_importable_beside_the_jupyterhub_dashboards() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "JupyterHub activity culler" and dashboard["uid"]
    assert dashboard["tags"] == ["jupyterhub"] and dashboard["schemaVersion"] >= 39
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["PROMETHEUS_DS"]["type"] == "datasource" and variables["PROMETHEUS_DS"]["query"] == "prometheus"
    assert variables["hub"]["definition"] == "label_values(activity_culler_cycles_total, namespace)"
    assert variables["hub"]["datasource"]["uid"] == "${PROMETHEUS_DS}"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["type"] in ("timeseries", "stat") and panel["targets"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${PROMETHEUS_DS}"}, panel["title"]


# -- rules and dashboard against the running service --------------------------------------------------


async def test_every_metric_the_rules_and_dashboard_use_is_exported(
    hub: CullerHub, reader_token: str, culled: None
) -> None:
    exported = exported_names(await metrics_body(hub, reader_token))
    rules = used_names(rule_exprs(yaml.safe_load(RULES.read_text())["groups"]))
    dashboard = used_names(dashboard_exprs())

    assert len(rules) >= 7 and len(dashboard) >= 15, (rules, dashboard)
    assert not rules - exported, f"used by the rules, not exported: {sorted(rules - exported)}"
    assert not dashboard - exported, f"used by the dashboard, not exported: {sorted(dashboard - exported)}"
    for expr in dashboard_exprs():
        if not expr.startswith("label_values("):
            assert '{namespace=~"$hub"' in expr, f"not filtered by hub: {expr}"
