"""deploy/z2jh/values.yaml: the Zero to JupyterHub 4.x values that run the service hub-managed in the hub pod.

The plain tests read the file (ports, network policy, roles, policy, the one-line switch, the image) and
run its hub.extraConfig against a traitlets Config shaped like the chart's. The ``realhub`` tests load
the values into a real hub the way the chart's jupyterhub_config.py does (z2jh_support.py), rewriting
only what loopback needs, and watch the result: the service behind the proxy, shadow mode, the roles,
users' access to the service, and the switch to acting.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from jupyterhub.scopes import expand_scopes
from realhub_support import wait_for
from traitlets.config import Config
from z2jh_support import (
    REPO,
    SERVICE,
    SWITCH,
    ValuesHub,
    load_values,
    set_to_act,
    start_values_hub,
    values_text,
)

import culler
from culler.policy import parse_policy, policy_hash

SCOPES = ["list:users", "read:users:activity", "read:users:groups", "read:servers", "delete:servers"]
ACCESS = f"access:services!service={SERVICE}"
ROLE = "activity-culler-service"

# The values' policy is the 7-day default; the real-hub tests swap in one a test can see act.
POLICY = """\
version: 1
defaults:
  idle: 1h
rules:
  - id: quick
    match: {users: ["z2jh-idle-*"]}
    idle: 3s
"""
PACE = {"CULLER_CULL_EVERY": "2", "CULLER_POLICY_POLL": "1"}


def service_of(values: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = values["hub"]["services"][SERVICE]
    return service


def port_of(values: dict[str, Any]) -> int:
    port = urlsplit(service_of(values)["url"]).port
    assert port is not None
    return port


# -- the file itself (no hub) ---------------------------------------------------------------------------


def test_the_chart_culler_is_off_and_the_service_is_hub_managed_in_shadow_mode() -> None:
    values = load_values()
    assert values["cull"]["enabled"] is False
    service = service_of(values)
    assert urlsplit(service["url"]).hostname == "hub", "the proxy pod must reach it through the hub Service"
    assert service["command"] == ["python3", "-m", "culler"]
    assert service["environment"]["CULLER_DRY_RUN"] == "true"
    assert all(isinstance(v, str) for v in service["environment"].values()), "JupyterHub needs str env values"
    assert "api_token" not in service and "apiToken" not in service, "the chart generates the token"


def test_one_line_switches_to_acting() -> None:
    text = values_text()
    acting = set_to_act(text)
    changed = [(a, b) for a, b in zip(text.splitlines(), acting.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and SWITCH in changed[0][1]
    assert service_of(load_values(acting))["environment"]["CULLER_DRY_RUN"] == "false"
    readme = (REPO / "deploy" / "z2jh" / "README.md").read_text()
    assert 'CULLER_DRY_RUN: "false"' in readme, "the README documents the switch"


def test_the_hub_service_and_network_policies_open_the_service_port() -> None:
    values = load_values()
    port = port_of(values)
    extra = values["hub"]["service"]["extraPorts"]
    assert [(p["port"], p["targetPort"]) for p in extra] == [(port, port)]

    def allowed(rules: list[dict[str, Any]], peer: str, component: str) -> bool:
        for rule in rules:
            ports = {p["port"] for p in rule.get("ports", [])}
            peers = [p.get("podSelector", {}).get("matchLabels", {}) for p in rule.get(peer, [])]
            if port in ports and any(labels.get("component") == component for labels in peers):
                return True
        return False

    ingress = values["hub"]["networkPolicy"]["ingress"]
    assert allowed(ingress, "from", "proxy"), "the proxy pod cannot reach the service"
    assert allowed(ingress, "from", "hub"), "the hub cannot check the service at its url (it exits at start)"
    assert allowed(values["proxy"]["chp"]["networkPolicy"]["egress"], "to", "hub"), "the proxy's egress"
    assert "egress" not in values["hub"]["networkPolicy"], "the service talks to the hub on localhost"


def test_the_additions_are_valid_kubernetes_where_the_chart_puts_them() -> None:
    """The chart pastes hub.service.extraPorts into the hub Service's ports and the networkPolicy lists
    into the hub and proxy NetworkPolicies' rules: render those objects and validate them strictly."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    values = load_values()
    selector = {"component": "hub", "app": "jupyterhub", "release": "jhub"}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "hub"},
        "spec": {
            "selector": selector,
            "ports": [{"name": "hub", "port": 8081, "targetPort": "http"}, *values["hub"]["service"]["extraPorts"]],
        },
    }
    hub_policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "hub"},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": values["hub"]["networkPolicy"]["ingress"],
        },
    }
    proxy_policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "proxy"},
        "spec": {
            "podSelector": {"matchLabels": {**selector, "component": "proxy"}},
            "policyTypes": ["Ingress", "Egress"],
            "egress": values["proxy"]["chp"]["networkPolicy"]["egress"],
        },
    }
    for document in (service, hub_policy, proxy_policy):
        kubernetes_validate.validate(document, "1.30", strict=True)


def test_roles_grant_the_service_only_what_it_needs_and_users_the_page() -> None:
    roles = load_values()["hub"]["loadRoles"]
    assert roles[ROLE]["scopes"] == SCOPES
    assert roles[ROLE]["services"] == [SERVICE]
    assert "user" not in roles, "a user role here would replace the operator's own scopes (Helm lists)"
    (user,) = [r for r in run_extra_config(load_values()).JupyterHub.load_roles if r["name"] == "user"]
    assert user["scopes"] == ["self", ACCESS]


def test_the_policy_file_is_the_default_policy_where_the_service_reads_it() -> None:
    values = load_values()
    (spec,) = values["hub"]["extraFiles"].values()
    assert service_of(values)["environment"]["CULLER_POLICY"] == spec["mountPath"]
    text = spec["stringData"]
    assert text == (REPO / "policies" / "default.yaml").read_text()
    policy = parse_policy(text, "hub.extraFiles")
    assert policy.defaults.idle == 7 * 86400


def run_extra_config(values: dict[str, Any], *, base_url: str = "/", proxy_token: str | None = None) -> Config:
    """The chart's state when hub.extraConfig runs (chart 4.x defaults), then every snippet, sorted."""
    c = Config()
    c.JupyterHub.hub_bind_url = "http://:8081"
    c.JupyterHub.base_url = base_url
    c.ConfigurableHTTPProxy.api_url = "http://proxy-api:8001"
    if proxy_token:
        c.ConfigurableHTTPProxy.auth_token = proxy_token
    c.JupyterHub.services = [{**s, "name": k} for k, s in copy.deepcopy(values["hub"]["services"]).items()]
    c.JupyterHub.load_roles = [{**r, "name": k} for k, r in copy.deepcopy(values["hub"]["loadRoles"]).items()]
    namespace = {"c": c}
    for _key, snippet in sorted(values["hub"]["extraConfig"].items()):
        exec(snippet, namespace)
    return c


def culler_env(c: Config) -> dict[str, str]:
    (service,) = [s for s in c.JupyterHub.services if s["name"] == SERVICE]
    env: dict[str, str] = service["environment"]
    return env


def test_extra_config_binds_all_interfaces_and_reaches_the_hub_on_localhost() -> None:
    values = load_values()
    env = culler_env(run_extra_config(values, base_url="/jhub/"))
    assert env["CULLER_BIND_URL"] == f"http://0.0.0.0:{port_of(values)}"
    assert env["CULLER_URL"] == "http://127.0.0.1:8081/jhub/hub/api"
    assert "CULLER_PROXY_API_URL" not in env and "CULLER_PROXY_API_TOKEN" not in env

    service_of(values)["environment"]["CULLER_BIND_URL"] = "http://0.0.0.0:9999"  # explicit values win
    assert culler_env(run_extra_config(values))["CULLER_BIND_URL"] == "http://0.0.0.0:9999"


def test_extra_config_gives_the_proxy_activity_source_the_proxy_api() -> None:
    values = load_values()
    service_of(values)["environment"]["CULLER_ACTIVITY_SOURCE"] = "proxy"
    env = culler_env(run_extra_config(values, proxy_token="proxy-secret"))
    assert env["CULLER_PROXY_API_URL"] == "http://proxy-api:8001"
    assert env["CULLER_PROXY_API_TOKEN"] == "proxy-secret"


def test_extra_config_adds_the_page_grant_to_the_operators_own_user_role() -> None:
    values = load_values()
    values["hub"]["loadRoles"]["user"] = {"scopes": ["self", "read:metrics"]}  # from the operator's config.yaml
    (user,) = [r for r in run_extra_config(values).JupyterHub.load_roles if r["name"] == "user"]
    assert user["scopes"] == ["self", "read:metrics", ACCESS]


def test_the_image_is_the_dockerfile_s_and_the_dockerfile_is_hadolint_clean() -> None:
    dockerfile = REPO / "deploy" / "z2jh" / "Dockerfile"
    text = dockerfile.read_text()
    (hub_tag,) = re.findall(r"^FROM quay\.io/jupyterhub/k8s-hub:(4\.\d+\.\d+)$", text, re.M)
    image = load_values()["hub"]["image"]
    assert image["tag"] == f"{hub_tag}-{culler.__version__}", "tag: <chart version>-<package version>"
    assert f"{image['name']}:{image['tag']}" in text, "the build command in the Dockerfile names the image"
    assert re.search(r"^USER 1000$", text.strip().splitlines()[-1]), "the hub runs as jovyan again"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    linted = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert linted.returncode == 0, linted.stdout + linted.stderr


# -- in a real hub ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shadow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValuesHub]:
    """The values as shipped (shadow mode), with the seconds-long policy and a fast pace."""
    yield from start_values_hub(tmp_path_factory.mktemp("z2jh-shadow"), values_text(), policy=POLICY, pace=PACE)


@pytest.fixture(scope="module")
def acting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValuesHub]:
    """The same, with the one-line switch set to act."""
    text = set_to_act(values_text())
    yield from start_values_hub(tmp_path_factory.mktemp("z2jh-acting"), text, policy=POLICY, pace=PACE)


@pytest.mark.realhub
async def test_the_service_answers_behind_the_proxy_in_shadow_mode(shadow: ValuesHub) -> None:
    body = await shadow.wait_policy(POLICY, timeout=60)  # health 200 at /services/activity-culler/health
    assert body["dry_run"] is True and body["policy_hash"] == policy_hash(POLICY)

    port = shadow.loopback.port
    model = await shadow.api("GET", f"services/{SERVICE}")
    assert model["url"] == f"http://127.0.0.1:{port}" and model["pid"] > 0, model  # hub-managed
    settings = shadow.started_with()
    # JupyterHub passed the url as JUPYTERHUB_SERVICE_URL; the extraConfig's CULLER_BIND_URL won
    assert settings["bind_url"] == f"http://0.0.0.0:{port}", settings
    assert settings["url"] == f"http://127.0.0.1:{shadow.hub_port}/hub/api", settings
    assert settings["policy"] == str(shadow.loopback.policy) and settings["dry_run"] == "True", settings


@pytest.mark.realhub
async def test_shadow_mode_reports_a_due_server_and_stops_nothing(shadow: ValuesHub) -> None:
    await shadow.wait_policy(POLICY, timeout=60)
    await shadow.start_servers(("z2jh-idle-1", "", None))

    event = await shadow.wait_event("would stop (dry run)", timeout=60, user="z2jh-idle-1")
    assert event["rule"] == "quick" and "limit 3s" in event["reason"], event
    await shadow.wait_cycles(2, since=shadow.log_offset(), timeout=60)

    assert await shadow.is_running("z2jh-idle-1"), "shadow mode stopped a server"
    assert not shadow.events("server stopped")


@pytest.mark.realhub
async def test_the_chart_registers_what_the_values_say(shadow: ValuesHub) -> None:
    services = await shadow.api("GET", "services")
    assert SERVICE in services
    assert "jupyterhub-idle-culler" not in services, "cull.enabled registered the chart's culler"
    assert services[SERVICE]["roles"] == [ROLE]
    assert services[SERVICE]["command"] == [sys.executable, "-m", "culler"]

    roles = shadow.roles()  # this hub has no roles API: what load_roles made of the values, from its database
    assert sorted(roles[ROLE]) == sorted(SCOPES)
    assert set(roles["user"]) == {"self", ACCESS}

    # the service's own token (the chart's generated api_token) carries exactly the role's scopes
    status, me = await shadow.get(f"{shadow.api_url}/user", shadow.service_token)
    assert status == 200 and me["kind"] == "service" and me["name"] == SERVICE, me
    assert set(me["scopes"]) == expand_scopes(set(SCOPES)), sorted(me["scopes"])


async def log_in(hub: ValuesHub, browser: aiohttp.ClientSession, user: str) -> None:
    """Log ``user`` in through the hub's login form (the dummy authenticator takes any password)."""
    async with browser.get(hub.url + "/hub/login") as answer:
        xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', await answer.text())
    assert xsrf is not None
    form = {"username": user, "password": "any", "_xsrf": xsrf.group(1)}
    async with browser.post(hub.url + "/hub/login", data=form) as answer:
        assert answer.status == 200, answer.status


@pytest.mark.realhub
async def test_a_normal_user_reaches_the_service_through_the_user_role(shadow: ValuesHub) -> None:
    await shadow.create_users(["z2jh-user"])
    token = await shadow.user_token("z2jh-user")  # the user's own permissions: what the user role grants
    status, me = await shadow.get(f"{shadow.api_url}/user", token)
    assert status == 200 and ACCESS in me["scopes"], me

    # the page's login: service -> the hub's OAuth authorize (which checks access:services for the
    # service, 403 without it) -> the service's callback -> the page
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        await log_in(shadow, browser, "z2jh-user")
        async with browser.get(shadow.service_url(SERVICE)) as answer:
            page = await answer.text()
            hops = [str(hop.url) for hop in answer.history]
            assert answer.status == 200, (answer.status, page[:300])
    assert any("/hub/api/oauth2/authorize" in hop for hop in hops), hops
    assert str(answer.url).rstrip("/").endswith(f"/services/{SERVICE}") and "z2jh-user" in page

    async def answered() -> dict[str, Any] | None:
        status, body = await shadow.get(shadow.service_url(SERVICE) + "api/servers", token)
        return body if status == 200 else None

    body = await wait_for(answered, 30, "the service's API to answer the user")
    assert body["user"] == "z2jh-user"


@pytest.mark.realhub
async def test_with_the_switch_set_to_act_an_idle_server_is_stopped(acting: ValuesHub) -> None:
    body = await acting.wait_policy(POLICY, timeout=60)
    assert body["dry_run"] is False
    await acting.start_servers(("z2jh-idle-2", "", None))

    event = await acting.wait_event("server stopped", timeout=60, user="z2jh-idle-2")
    assert event["rule"] == "quick", event
    await acting.wait_server("z2jh-idle-2", ready=False, timeout=30)
    assert not acting.events("would stop (dry run)")
