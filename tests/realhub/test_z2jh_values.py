"""deploy/z2jh/values.yaml: the Zero to JupyterHub 4.x values that run the service hub-managed in the hub pod,
run through the chart's own hub configuration (vendored at tests/z2jh-chart/<version>/, z2jh_support.py).

The plain tests read the file (ports, network policy, roles, policy, the one-line switch, the image and its
Dockerfile), validate it against the chart's schema merged with the chart's defaults, and run the chart's
jupyterhub_config.py over it in a subprocess: a lab's own ``hub.config.JupyterHub.load_roles``, a
``fullnameOverride`` or release-derived names, ``hub.baseUrl``, the proxy activity source. The ``realhub``
tests run the chart's config in a real hub, rewriting only what loopback needs, and watch the result: the
service behind the proxy, shadow mode, the roles, users' access to the service, the switch to acting, and
a lab whose own roles and resource names would have broken the service.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jsonschema
import pytest
import yaml
from jupyterhub.scopes import expand_scopes
from kubespawner_support import ENVIRONMENTS, installed_versions, matches
from packaging.requirements import Requirement
from packaging.version import Version
from realhub_support import wait_for
from z2jh_support import (
    CHART,
    CHART_DIR,
    CHART_VERSION,
    DOCKERFILE,
    REPO,
    SERVICE,
    SWITCH,
    ChartPod,
    Lab,
    Release,
    ValuesHub,
    chart_defaults,
    chart_name_templates,
    chart_values,
    helm_merge,
    load_values,
    render_configs,
    render_pod,
    resource_names,
    set_to_act,
    start_values_hub,
    values_schema,
    values_text,
)

import culler
from culler.policy.model import parse_policy, policy_hash

SCOPES = ["list:users", "read:users:activity", "read:users:groups", "read:servers", "delete:servers"]
ACCESS = f"access:services!service={SERVICE}"
ROLE = "activity-culler-service"
PROBE = "activity-culler-probe"  # the in-server probe's service and role
PROBE_SCOPE = "custom:activity-culler:probe"
MINIMUM_CHART = "4.3.3"  # the first chart whose hub image has prometheus-client >= 0.24

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

# A lab's own config.yaml (helm -f config.yaml -f deploy/z2jh/values.yaml): its own roles through
# hub.config (which the chart applies with update(), replacing the list hub.loadRoles built), and its own
# resource names.
LAB_ROLES = [
    {"name": "user", "scopes": ["self", "read:metrics"]},
    {"name": "lab-staff", "description": "staff see everyone's servers", "scopes": ["read:servers"], "groups": []},
]
LAB_SCOPES = {"custom:lab:gpu-quota": {"description": "the lab's own scope"}}
LAB = {
    "fullnameOverride": "lab",
    "hub": {"config": {"JupyterHub": {"load_roles": LAB_ROLES, "custom_scopes": LAB_SCOPES}}},
}


def service_of(values: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = values["hub"]["services"][SERVICE]
    return service


def port_of(values: dict[str, Any]) -> int:
    port = urlsplit(service_of(values)["url"]).port
    assert port is not None
    return port


def roles_by_name(roles: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_name = {role["name"]: role for role in roles}
    assert len(by_name) == len(roles), f"a role twice: {[r['name'] for r in roles]}"
    return by_name


# -- the vendored chart -------------------------------------------------------------------------------------


def test_the_vendored_chart_files_are_the_tag_s_own() -> None:
    """What the tests run is the chart at CHART_VERSION, unmodified (refresh.sh wrote the checksums)."""
    sums = (CHART_DIR / "SHA256SUMS").read_text().splitlines()
    files = {}
    for line in sums:
        digest, path = line.split("  ", 1)
        files[path] = digest
    for path, digest in files.items():
        assert hashlib.sha256((CHART_DIR / path).read_bytes()).hexdigest() == digest, f"{path} was edited"
    for path in ("files/hub/jupyterhub_config.py", "files/hub/z2jh.py", "values.yaml", "values.schema.yaml"):
        assert f"jupyterhub/{path}" in files
    readme = (CHART_DIR / "README.md").read_text()
    assert re.search(rf"at tag `{re.escape(CHART_VERSION)}`\n\(commit `[0-9a-f]{{40}}`", readme), readme[:400]
    assert "BSD 3-Clause" in (CHART_DIR / "LICENSE").read_text()
    # the second test environment (./dev) has this chart's hub image's pins
    image = pins((CHART_DIR / "images" / "hub" / "requirements.txt").read_text())
    assert image == pins((REPO / "tests" / "z2jh-4.4-constraints.txt").read_text())
    assert image["jupyterhub"] == yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by normalized name."""
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", text, re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


def test_the_chart_s_resource_names_as_its_helpers_render_them() -> None:
    """The hub ConfigMap's names (what z2jh.get_name reads), for each row of the chart's fullnameOverride /
    nameOverride table: our rendering covers every name the chart renders."""
    default = resource_names(chart_values(), Release("jhub"))
    assert sorted(default) == sorted(chart_name_templates())
    assert (default["hub"], default["proxy-api"], default["fullname"]) == ("hub", "proxy-api", "")

    def hub(layer: dict[str, Any], release: str = "jhub") -> str:
        return resource_names(chart_values(layer), Release(release))["hub"]

    assert hub({"fullnameOverride": "lab"}) == "lab-hub"
    assert hub({"fullnameOverride": None}) == "jhub-jupyterhub-hub"
    assert hub({"fullnameOverride": None}, release="jupyterhub-prod") == "jupyterhub-prod-hub"
    assert hub({"fullnameOverride": None, "nameOverride": "lab"}) == "jhub-lab-hub"


# -- the file itself (no hub) ---------------------------------------------------------------------------


def test_the_chart_culler_is_off_and_the_service_is_hub_managed_in_shadow_mode() -> None:
    values = load_values()
    assert values["cull"]["enabled"] is False
    service = service_of(values)
    assert urlsplit(service["url"]).hostname == "hub", "hub.extraConfig puts the hub Service's name in for `hub`"
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


def test_the_policy_file_is_the_default_policy_where_the_service_reads_it() -> None:
    values = load_values()
    (spec,) = values["hub"]["extraFiles"].values()
    assert service_of(values)["environment"]["CULLER_POLICY"] == spec["mountPath"]
    text = spec["stringData"]
    assert text == (REPO / "policies" / "default.yaml").read_text()
    policy = parse_policy(text, "hub.extraFiles")
    assert policy.defaults.idle == 7 * 86400


def test_the_values_merge_over_the_chart_defaults_as_helm_merges_them() -> None:
    merged = chart_values(LAB, load_values())
    assert merged["cull"]["enabled"] is False and merged["cull"]["timeout"] == 3600, "maps merge key by key"
    assert merged["hub"]["networkPolicy"]["ingress"] == load_values()["hub"]["networkPolicy"]["ingress"]
    assert merged["hub"]["config"]["JupyterHub"]["authenticator_class"] == "dummy", "the chart's default stays"
    assert merged["hub"]["config"]["JupyterHub"]["load_roles"] == LAB_ROLES
    assert merged["fullnameOverride"] == "lab" and chart_defaults()["fullnameOverride"] == ""
    assert "fullnameOverride" not in chart_values({"fullnameOverride": None}), "null deletes, as in Helm"
    assert helm_merge({"a": [1, 2], "b": {"c": 1}}, {"a": [3], "b": {"d": 2}}) == {"a": [3], "b": {"c": 1, "d": 2}}


def test_the_values_validate_against_the_chart_schema_with_the_chart_defaults() -> None:
    """Helm validates the merged values (defaults, then each -f file) against values.schema.json."""
    validator = jsonschema.Draft7Validator(values_schema())
    for merged in (chart_values(load_values()), chart_values(LAB, load_values()), chart_values(set_to_act_values())):
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(merged)]
        assert not errors, errors
    # the schema is strict enough to catch a misplaced key, and the file alone lacks the chart's defaults
    misplaced = chart_values(load_values(), {"hub": {"loadroles": {}}})
    assert any("'loadroles' was unexpected" in e.message for e in validator.iter_errors(misplaced))
    assert any(e.validator == "required" for e in validator.iter_errors(load_values()))


def set_to_act_values() -> dict[str, Any]:
    return load_values(set_to_act(values_text()))


# -- the chart's jupyterhub_config.py over the values, in a subprocess -------------------------------------


def with_service_env(**environment: str) -> dict[str, Any]:
    return {"hub": {"services": {SERVICE: {"environment": environment}}}}


# name -> (the lab's values, our values' extra layer, the release)
SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any], Release]] = {
    "shipped": ({}, {}, Release()),
    "base-url": ({"hub": {"baseUrl": "/jhub/"}}, {}, Release()),
    "explicit-bind": ({}, with_service_env(CULLER_BIND_URL="http://0.0.0.0:9999"), Release()),
    "proxy-source": ({}, with_service_env(CULLER_ACTIVITY_SOURCE="proxy"), Release()),
    "operator-user-role": ({"hub": {"loadRoles": {"user": {"scopes": ["self", "read:metrics"]}}}}, {}, Release()),
    "lab": (LAB, with_service_env(CULLER_ACTIVITY_SOURCE="proxy"), Release()),
    "release-named": ({"fullnameOverride": None}, {}, Release("jhub")),
    "lab-roles-without-our-snippet": (LAB, {"hub": {"extraConfig": {"activity-culler.py": None}}}, Release()),
    "lab-defines-our-role": (
        {"hub": {"config": {"JupyterHub": {"load_roles": [{"name": ROLE, "scopes": [*SCOPES, "admin:users"]}]}}}},
        {},
        Release(),
    ),
}


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ChartPod, dict[str, Any]]]:
    """Each scenario's pod files and what the chart's config made of them (one subprocess for all)."""
    root = tmp_path_factory.mktemp("z2jh-chart")
    pods = {
        name: render_pod(root / name, chart_values(lab, load_values(), ours), release)
        for name, (lab, ours, release) in SCENARIOS.items()
    }
    results = render_configs(list(pods.values()))
    for name, result in zip(pods, results, strict=True):
        assert "error" not in result, f"{name}: the chart's config failed: {result['error']}\n{result['printed']}"
    return {name: (pod, result) for (name, pod), result in zip(pods.items(), results, strict=True)}


def culler_of(result: dict[str, Any]) -> dict[str, Any]:
    (service,) = [s for s in result["services"] if s["name"] == SERVICE]
    return service


def test_the_chart_registers_the_service_with_its_generated_token_and_our_roles(chart: Any) -> None:
    pod, result = chart["shipped"]
    names = [s["name"] for s in result["services"]]
    assert names == [SERVICE, PROBE], "cull.enabled: false drops the chart's culler"
    service = culler_of(result)
    assert service["api_token"] == pod.token(), "the token the chart generated into its Secret"
    assert service["url"] == "http://hub:10101"
    assert result["spawner_class"] == "kubespawner.KubeSpawner" and result["hub_connect_url"] == "http://hub:8081"
    roles = roles_by_name(result["load_roles"])
    assert roles[ROLE]["scopes"] == SCOPES and roles[ROLE]["services"] == [SERVICE]
    assert roles[PROBE]["scopes"] == [PROBE_SCOPE] and roles[PROBE]["services"] == [PROBE]
    assert roles["user"]["scopes"] == ["self", ACCESS]
    assert "Loading extra config: activity-culler.py" in result["printed"]
    assert "added role" not in result["printed"], "nothing dropped our role here"


def test_the_database_lives_on_the_hub_s_pvc() -> None:
    environment = load_values()["hub"]["services"][SERVICE]["environment"]
    chart = chart_defaults()
    assert chart["hub"]["db"]["type"] == "sqlite-pvc" and chart["hub"]["db"]["pvc"]
    assert environment["CULLER_DATABASE"].startswith("/srv/jupyterhub/")  # where the chart mounts the hub's PVC


def test_extra_config_binds_all_interfaces_and_reaches_the_hub_on_localhost(chart: Any) -> None:
    environment = culler_of(chart["shipped"][1])["environment"]
    assert environment["CULLER_BIND_URL"] == "http://0.0.0.0:10101"
    assert environment["CULLER_URL"] == "http://127.0.0.1:8081/hub/api"
    assert culler_of(chart["base-url"][1])["environment"]["CULLER_URL"] == "http://127.0.0.1:8081/jhub/hub/api"
    assert culler_of(chart["explicit-bind"][1])["environment"]["CULLER_BIND_URL"] == "http://0.0.0.0:9999"


def test_extra_config_gives_the_proxy_activity_source_the_proxy_api(chart: Any) -> None:
    for name, proxy_api in (("proxy-source", "proxy-api"), ("lab", "lab-proxy-api")):
        pod, result = chart[name]
        environment = culler_of(result)["environment"]
        assert environment["CULLER_PROXY_API_URL"] == f"http://{proxy_api}:8001", name
        assert environment["CULLER_PROXY_API_TOKEN"] == pod.secret["hub.config.ConfigurableHTTPProxy.auth_token"]


def test_the_in_server_probe_gets_a_token_holding_only_its_scope_and_the_routes(chart: Any) -> None:
    """The probe's own service (no url, no command: a token), its one-scope role, the scope declared, and
    the service given that token and the proxy API, whose routes hold each server's pod address."""
    pod, result = chart["shipped"]
    (probe,) = [s for s in result["services"] if s["name"] == PROBE]
    assert set(probe) == {"name", "api_token"} and probe["api_token"] == pod.token(PROBE)
    assert PROBE_SCOPE in result["custom_scopes"]
    environment = culler_of(result)["environment"]
    assert environment["CULLER_PROBE_TOKEN"] == pod.token(PROBE) != pod.token()
    assert environment["CULLER_PROXY_API_URL"] == "http://proxy-api:8001"
    assert environment["CULLER_PROXY_API_TOKEN"] == pod.secret["hub.config.ConfigurableHTTPProxy.auth_token"]
    # a lab's own custom scopes merge with ours (Helm merges hub.config dicts)
    _, lab = chart["lab"]
    assert sorted(lab["custom_scopes"]) == sorted([PROBE_SCOPE, *LAB_SCOPES])


def test_extra_config_adds_the_page_grant_to_the_operators_own_user_role(chart: Any) -> None:
    roles = roles_by_name(chart["operator-user-role"][1]["load_roles"])
    assert roles["user"]["scopes"] == ["self", "read:metrics", ACCESS]


def test_the_service_url_names_the_chart_s_real_hub_service(chart: Any) -> None:
    """The hub (at start) and the proxy reach the service at its url: the hub k8s Service's real name."""
    for name, host in (("shipped", "hub"), ("lab", "lab-hub"), ("release-named", "jhub-jupyterhub-hub")):
        _, result = chart[name]
        assert culler_of(result)["url"] == f"http://{host}:10101", name
        assert result["hub_connect_url"] == f"http://{host}:8081", f"{name}: the chart's own use of the name"


def test_a_lab_s_own_load_roles_keep_their_roles_and_ours(chart: Any) -> None:
    _, result = chart["lab"]
    roles = roles_by_name(result["load_roles"])
    assert sorted(roles) == sorted([ROLE, PROBE, "user", "lab-staff"])
    assert roles[ROLE]["scopes"] == SCOPES and roles[ROLE]["services"] == [SERVICE]
    assert roles["lab-staff"] == LAB_ROLES[1], "the lab's role as the lab wrote it"
    assert roles["user"]["scopes"] == ["self", "read:metrics", ACCESS]
    for role in (ROLE, PROBE):
        assert f"activity-culler: added role {role}, dropped by hub.config.JupyterHub.load_roles" in result["printed"]

    # without our hub.extraConfig the chart drops the role: what the snippet is there for
    _, bare = chart["lab-roles-without-our-snippet"]
    assert sorted(roles_by_name(bare["load_roles"])) == ["lab-staff", "user"]
    # a lab that defines a role of that name itself keeps its own, once
    _, own = chart["lab-defines-our-role"]
    assert roles_by_name(own["load_roles"])[ROLE]["scopes"] == [*SCOPES, "admin:users"]


# -- the hub image ---------------------------------------------------------------------------------------


def docker_run_commands(text: str) -> list[str]:
    """The Dockerfile's RUN commands, continuation lines joined as Docker joins them."""
    joined = re.sub(r"\\\n", "", text)
    return [line[len("RUN ") :] for line in joined.splitlines() if line.startswith("RUN ")]


def install_steps(text: str) -> list[str]:
    """The steps (``&&``) of the RUN command that installs the wheel."""
    (command,) = [c for c in docker_run_commands(text) if "/tmp/wheels/" in c and "pip install" in c]
    return [step.strip() for step in command.split(" && ")]


def our_floor(package: str) -> Version:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (requirement,) = [Requirement(d) for d in dependencies if Requirement(d).name == package]
    (floor,) = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return floor


def test_the_image_is_the_dockerfile_s_and_the_dockerfile_is_hadolint_clean() -> None:
    text = DOCKERFILE.read_text()
    (hub_tag,) = re.findall(r"^FROM quay\.io/jupyterhub/k8s-hub:(4\.\d+\.\d+)$", text, re.M)
    assert hub_tag == CHART_VERSION, "the hub image of the chart the tests run"
    image = load_values()["hub"]["image"]
    assert image["tag"] == f"{hub_tag}-{culler.__version__}", "tag: <chart version>-<package version>"
    assert f"{image['name']}:{image['tag']}" in text, "the build command in the Dockerfile names the image"
    assert f"--version {CHART_VERSION}" in values_text() and f"--version {CHART_VERSION}" in text
    assert re.search(r"^USER 1000$", text.strip().splitlines()[-1]), "the hub runs as jovyan again"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    linted = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_install_is_constrained_by_the_image_s_frozen_packages() -> None:
    """``pip freeze`` of the image, then the install with it as constraints; and every package the image
    pins already meets our requirements, so the constrained install changes none of them."""
    steps = install_steps(DOCKERFILE.read_text())
    freeze = "pip freeze > /tmp/constraints.txt"
    (install,) = [step for step in steps if step.startswith("pip install ")]
    assert freeze in steps and steps.index(freeze) < steps.index(install), steps
    assert "-c /tmp/constraints.txt" in install.split(" /tmp/wheels/")[0], install
    assert install.endswith(" /tmp/wheels/*.whl") and "--upgrade" not in install, install

    image = pins((CHART_DIR / "images" / "hub" / "requirements.txt").read_text())
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    checked = []
    for requirement in map(Requirement, dependencies):
        pinned = image.get(re.sub(r"[-_.]+", "-", requirement.name).lower())
        if pinned is not None:
            assert requirement.specifier.contains(pinned), f"the image pins {requirement.name}=={pinned}"
            checked.append(requirement.name)
    assert {"prometheus-client", "aiohttp", "pydantic", "pyyaml"} <= set(checked), checked


def fake_distribution(root: Path, name: str, version: str) -> Path:
    """A directory for PYTHONPATH in which importlib.metadata finds ``name`` at ``version`` first."""
    dist = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def test_an_image_older_than_the_minimum_chart_fails_the_build_saying_so(tmp_path: Path) -> None:
    """The Dockerfile's first step checks the image's prometheus-client against our floor: 4.3.2's image
    (0.23.1) stops the build with a message naming chart 4.3.3; 4.3.3's (0.24.1) and 4.4.0's pass."""
    floor = our_floor("prometheus-client")
    assert floor == Version("0.24"), "the Dockerfile's check and its message name this floor"
    first = shlex.split(install_steps(DOCKERFILE.read_text())[0])
    assert first[:2] == ["python3", "-c"] and len(first) == 3, "the check runs first"
    check = first[2]
    assert f">= ({floor.major}, {floor.minor})" in check and f"chart {MINIMUM_CHART} or later" in check

    def build_step(version: str) -> subprocess.CompletedProcess[str]:
        site = fake_distribution(tmp_path / version, "prometheus-client", version)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}
        return subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=60)

    old = build_step("0.23.1")  # chart 4.3.2's hub image
    assert old.returncode == 1, old
    assert f"needs Zero to JupyterHub chart {MINIMUM_CHART} or later" in old.stderr, old.stderr
    assert "this image has 0.23.1" in old.stderr, old.stderr
    for version in ("0.24.1", "0.25.0"):  # charts 4.3.3 and 4.4.0
        passed = build_step(version)
        assert passed.returncode == 0 and not passed.stderr, passed


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


@pytest.fixture(scope="module", params=sorted(ENVIRONMENTS))
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValuesHub]:
    """A lab's config.yaml (its own load_roles, fullnameOverride: lab) before our values, in shadow mode,
    in each hub environment: this machine's newest JupyterHub and the chart 4.4.0 hub image's versions."""
    env = ENVIRONMENTS[request.param]
    if not env.python.exists():
        pytest.skip(f"{env.python} is missing: `./dev setup` creates the {env.name} environment")
    versions = installed_versions(env.python)
    assert matches(versions["jupyterhub"], env.jupyterhub), f"{env.name}: {versions}"
    print(f"\n[{env.name}] JupyterHub {versions['jupyterhub']}, KubeSpawner {versions['kubespawner']}")
    workdir = tmp_path_factory.mktemp(f"z2jh-lab-{env.name}")
    yield from start_values_hub(workdir, values_text(), lab=Lab(LAB), python=str(env.python), policy=POLICY, pace=PACE)


@pytest.mark.realhub
async def test_the_service_answers_behind_the_proxy_in_shadow_mode(shadow: ValuesHub) -> None:
    body = await shadow.wait_policy(POLICY, timeout=60)  # health 200 at /services/activity-culler/health
    assert body["dry_run"] is True and body["policy_hash"] == policy_hash(POLICY)

    port = shadow.loopback.port
    assert shadow.rendered_service()["url"] == f"http://hub:{port}", "the chart's config, before loopback"
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


async def user_reaches_the_page(hub: ValuesHub, user: str) -> None:
    """``user`` opens the service's page through the hub's OAuth (403 there without access:services) and
    calls its API with a token of their own."""
    await hub.create_users([user])
    token = await hub.user_token(user)  # the user's own permissions: what the user role grants
    status, me = await hub.get(f"{hub.api_url}/user", token)
    assert status == 200 and ACCESS in me["scopes"], me

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        await log_in(hub, browser, user)
        async with browser.get(hub.service_url(SERVICE)) as answer:
            page = await answer.text()
            hops = [str(hop.url) for hop in answer.history]
            assert answer.status == 200, (answer.status, page[:300])
    assert any("/hub/api/oauth2/authorize" in hop for hop in hops), hops
    assert str(answer.url).rstrip("/").endswith(f"/services/{SERVICE}") and user in page

    async def answered() -> dict[str, Any] | None:
        status, body = await hub.get(hub.service_url(SERVICE) + "api/servers", token)
        return body if status == 200 else None

    body = await wait_for(answered, 30, "the service's API to answer the user")
    assert body["user"] == user


@pytest.mark.realhub
async def test_a_normal_user_reaches_the_service_through_the_user_role(shadow: ValuesHub) -> None:
    await user_reaches_the_page(shadow, "z2jh-user")


@pytest.mark.realhub
async def test_with_the_switch_set_to_act_an_idle_server_is_stopped(acting: ValuesHub) -> None:
    body = await acting.wait_policy(POLICY, timeout=60)
    assert body["dry_run"] is False
    await acting.start_servers(("z2jh-idle-2", "", None))

    event = await acting.wait_event("server stopped", timeout=60, user="z2jh-idle-2")
    assert event["rule"] == "quick", event
    await acting.wait_server("z2jh-idle-2", ready=False, timeout=30)
    assert not acting.events("would stop (dry run)")


@pytest.mark.realhub
async def test_a_lab_with_its_own_roles_and_names_keeps_the_service_working(lab: ValuesHub) -> None:
    """The lab's load_roles replaced our role and fullnameOverride renamed the hub Service: the service's
    url names "lab-hub", its role is back beside the lab's, and its calls get 200s, not 403s."""
    port = lab.loopback.port
    assert lab.rendered_service()["url"] == f"http://lab-hub:{port}", "the chart's config, before loopback"
    assert lab.rendered()["hub_connect_url"] == "http://lab-hub:8081"

    # the service's token works where the service needs it, and carries exactly its role's scopes
    status, users = await lab.get(f"{lab.api_url}/users", lab.service_token)
    assert status == 200 and isinstance(users, list), (status, users)
    status, me = await lab.get(f"{lab.api_url}/user", lab.service_token)
    assert status == 200 and set(me["scopes"]) == expand_scopes(set(SCOPES)), (status, me)
    await lab.wait_policy(POLICY, timeout=60)  # health 200: no scope missing
    await lab.start_servers(("z2jh-idle-lab", "", None))
    since = lab.log_offset()
    event = await lab.wait_event("would stop (dry run)", timeout=60, user="z2jh-idle-lab")
    assert event["rule"] == "quick", event
    await lab.wait_cycles(2, since=since, timeout=60)
    denied = [line for line in lab.log_text().splitlines() if re.search(r"\b403 (GET|POST|DELETE) /hub/api", line)]
    assert not denied, denied

    roles = lab.roles()  # what the hub stored from load_roles
    assert sorted(roles[ROLE]) == sorted(SCOPES)
    assert roles["lab-staff"] == ["read:servers"], "the lab's own role"
    assert set(roles["user"]) == {"self", "read:metrics", ACCESS}
    assert "activity-culler: added role activity-culler-service" in lab.log_text()


@pytest.mark.realhub
async def test_a_lab_s_users_reach_the_page_through_the_lab_s_user_role(lab: ValuesHub) -> None:
    await user_reaches_the_page(lab, "z2jh-lab-user")
