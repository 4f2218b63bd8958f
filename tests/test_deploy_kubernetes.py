"""deploy/kubernetes, the separate-Deployment mode, checked offline: Kubernetes' own schemas, the CLI that
reads the container's args, the endpoints its probes and the ServiceMonitor hit, promtool for the rules."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from culler import __version__
from culler.cli.flags import settings_from
from culler.cli.serve import _serve_parser
from culler.policy.model import load_policy, parse_policy
from culler.settings import Settings
from culler.web.app import make_app, make_metrics_app

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.30"  # kubernetes-validate>=1.30 ships this version's schemas
BUILT_IN = ["deployment.yaml", "service.yaml", "configmap.yaml", "secret.yaml", "networkpolicy.yaml", "pvc.yaml"]
Doc = dict[str, Any]
CONTAINER: list[str | int] = ["spec", "template", "spec", "containers", 0]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(("CULLER_", "JUPYTERHUB_"))]:
        monkeypatch.delenv(name)


def load(name: str) -> Doc:
    return yaml.safe_load((K8S / name).read_text())


def container(deployment: Doc) -> Doc:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def mount_secret(secret: Doc, path: Path) -> Path:
    """Lay the Secret out as the kubelet does: each key a symlink into an atomically swapped ``..data``."""
    data = path / "..2026_01_01_00_00_00.000000001"
    data.mkdir(parents=True)
    for key, value in secret["stringData"].items():
        (data / key).write_text(value)
        (path / key).symlink_to(Path("..data") / key)
    (path / "..data").symlink_to(data.name)
    return path


def settings_of(deployment: Doc, secret_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What the container's args and env give, with the Secret's mount path replaced by ``secret_dir``."""
    for var in container(deployment).get("env", []):
        monkeypatch.setenv(var["name"], var["value"])
    monkeypatch.setenv("CULLER_SECRETS_DIR", str(secret_dir))
    return settings_from(vars(_serve_parser().parse_args(container(deployment)["args"])))


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    return mount_secret(load("secret.yaml"), tmp_path / "secret")


def json_patch(document: Doc, operations: list[Doc]) -> Doc:
    """The JSON Patch (RFC 6902) that home-mount-patch.yaml uses: ``add`` to an object or a list."""
    result = copy.deepcopy(document)
    for operation in operations:
        assert operation["op"] == "add", operation
        *parents, last = operation["path"].removeprefix("/").split("/")
        target: Any = result
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if last == "-":
            target.append(operation["value"])
        elif isinstance(target, list):
            target.insert(int(last), operation["value"])
        else:
            target[last] = operation["value"]
    return result


def tool(name: str, install: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not on PATH ({install})")
    return found


# -- the manifests as Kubernetes sees them --------------------------------------------------------------


def test_the_kustomization_lists_every_manifest_and_each_stands_alone() -> None:
    kustomization = load("kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "home-mount-patch.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    assert set(BUILT_IN) | {"servicemonitor.yaml", "prometheusrule.yaml"} == manifests
    for name in manifests:
        (document,) = list(yaml.safe_load_all((K8S / name).read_text()))
        assert {"apiVersion", "kind", "metadata"} <= set(document) and document["metadata"]["name"], name


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_kinds_pass_kubernetes_schemas_strictly(name: str) -> None:
    kubernetes_validate.validate(load(name), KUBERNETES, strict=True)


@pytest.mark.parametrize(
    ("path", "field", "typo"),
    [
        ([*CONTAINER, "securityContext"], "readOnlyRootFilesystem", "readOnlyRootFileSystem"),
        (["spec"], "replicas", "replica"),
        ([*CONTAINER, "readinessProbe", "httpGet"], "path", "paht"),
    ],
)
def test_the_same_check_fails_a_typo(path: list[str | int], field: str, typo: str) -> None:
    broken = load("deployment.yaml")
    target: Any = broken
    for key in path:
        target = target[key]
    target[typo] = target.pop(field)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_kubectl_kustomize_builds_the_files_and_the_home_mount_patch(tmp_path: Path) -> None:
    kubectl = tool("kubectl", "it builds kustomizations offline: kubectl kustomize")

    def build(directory: Path) -> list[Doc]:
        done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return sorted((d for d in yaml.safe_load_all(done.stdout) if d), key=lambda d: d["kind"])

    files = sorted((load(n) for n in load("kustomization.yaml")["resources"]), key=lambda d: d["kind"])
    assert build(K8S) == files
    # Uncomment the documented `patches:` entry, as README.md says.
    shutil.copytree(K8S, tmp_path / "k8s")
    kustomization = tmp_path / "k8s" / "kustomization.yaml"
    patched = re.sub(r"^# (patches:|  )", r"\1", kustomization.read_text(), flags=re.MULTILINE)
    assert patched.count("home-mount-patch.yaml") == 2
    kustomization.write_text(patched)
    (deployment,) = [d for d in build(tmp_path / "k8s") if d["kind"] == "Deployment"]
    assert deployment == json_patch(load("deployment.yaml"), load("home-mount-patch.yaml"))


# -- the Deployment ----------------------------------------------------------------------------------


def test_one_instance_non_root_read_only_and_confined() -> None:
    deployment = load("deployment.yaml")
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    assert (spec["replicas"], spec["strategy"]["type"]) == (1, "Recreate")
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()

    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"^ARG UID=(\d+)$", dockerfile, re.MULTILINE)[1])  # type: ignore[index]
    assert re.search(r"^USER \$\{UID\}$", dockerfile, re.MULTILINE)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    culler = container(deployment)
    assert culler["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert culler["image"] == f"ghcr.io/example/jupyterhub-activity-culler:{__version__}"
    for kind in ("requests", "limits"):
        assert set(culler["resources"][kind]) == {"cpu", "memory"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [m for m in culler["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    # the database's volume is the one written besides /tmp: the claim in pvc.yaml, where CULLER_DATABASE is
    (data,) = [m for m in culler["volumeMounts"] if m["name"] == "data"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == load("pvc.yaml")["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in culler["env"]}
    assert env["CULLER_DATABASE"].startswith(data["mountPath"] + "/")
    assert all(m.get("readOnly") for m in culler["volumeMounts"] if m not in (tmp, data))
    # z2jh's hub NetworkPolicy admits only pods with this label.
    assert spec["template"]["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"


def test_the_args_run_in_shadow_mode_and_deleting_one_line_makes_it_act(
    secret_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (K8S / "deployment.yaml").read_text()
    settings = settings_of(yaml.safe_load(text), secret_dir, monkeypatch)
    assert settings.dry_run is True
    assert (settings.url, settings.bind_url, settings.log_format) == (
        "http://hub:8081/hub/api",
        "http://0.0.0.0:10101",
        "json",
    )
    assert settings.metrics_bind_url and settings.policy == Path("/etc/activity-culler/policy.yaml")

    (line,) = [line for line in text.splitlines(keepends=True) if line.strip().startswith("- --dry-run")]
    assert "delete this line to act" in line.lower()
    acting = yaml.safe_load(text.replace(line, ""))
    kubernetes_validate.validate(acting, KUBERNETES, strict=True)
    assert settings_of(acting, secret_dir, monkeypatch).dry_run is False


def test_the_token_comes_from_the_mounted_secret_and_never_from_args(
    secret_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment, secret = load("deployment.yaml"), load("secret.yaml")
    token = secret["stringData"]["JUPYTERHUB_API_TOKEN"]
    settings = settings_of(deployment, secret_dir, monkeypatch)
    assert settings.api_token is not None and settings.api_token.get_secret_value() == token

    culler = container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in culler["volumeMounts"] if "secret" in volumes[m["name"]]]
    for arg in culler["args"]:
        assert token not in arg and mount["mountPath"] not in arg, arg
        assert "token" not in arg.lower() and "$(" not in arg, arg  # $(VAR): the kubelet splices env into args
    assert token not in (K8S / "deployment.yaml").read_text()
    assert volumes[mount["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
    assert {"name": "CULLER_SECRETS_DIR", "value": mount["mountPath"]} in culler["env"]


def test_the_configmap_holds_the_default_policy_at_the_policy_path(
    secret_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configmap, deployment = load("configmap.yaml"), load("deployment.yaml")
    default = ROOT / "policies" / "default.yaml"
    ((key, text),) = configmap["data"].items()
    assert text == default.read_text()
    assert parse_policy(text, "configmap") == load_policy(default)

    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container(deployment)["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "subPath" not in mount  # a subPath mount would never see ConfigMap edits
    assert settings_of(deployment, secret_dir, monkeypatch).policy == Path(mount["mountPath"]) / key


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_probes_and_scrapes_hit_served_paths_on_declared_ports(
    aiohttp_client: Any, secret_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment, service = load("deployment.yaml"), load("service.yaml")
    monitor = load("servicemonitor.yaml")
    settings = settings_of(deployment, secret_dir, monkeypatch)
    culler = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in culler["ports"]}
    assert ports == {"http": port_of(settings.bind_url), "metrics": port_of(settings.metrics_bind_url or "")}
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {name: name for name in ports}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()

    app = await aiohttp_client(make_app(settings.service_prefix, lambda: (True, {"status": "ok"})))
    for probe in ("readinessProbe", "livenessProbe"):
        get = culler[probe]["httpGet"]
        assert get["port"] == "http", probe
        assert (await app.get(get["path"])).status == 200, probe
    assert culler["readinessProbe"]["httpGet"]["path"] == "/health"
    assert culler["livenessProbe"]["httpGet"]["path"] == "/live"

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="activity_culler_up 1\n")

    open_metrics = await aiohttp_client(make_metrics_app(metrics))
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert (await open_metrics.get(endpoint["path"])).status == 200


def test_the_home_mount_patch_mounts_homes_read_only_for_the_tree_scan(
    secret_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = json_patch(load("deployment.yaml"), load("home-mount-patch.yaml"))
    kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "homes"]
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == "homes"]
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    settings = settings_of(deployment, secret_dir, monkeypatch)
    assert settings.tree_scan_path == mount["mountPath"] + "/{username}"
    assert settings.dry_run is True


def test_the_network_policy_opens_the_declared_ports() -> None:
    policy, deployment = load("networkpolicy.yaml"), load("deployment.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    names = {p["name"] for p in container(deployment)["ports"]}
    assert {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]} == names
    egress = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert {8081, 53} == egress  # the hub API (--url) and DNS


# -- Prometheus operator resources ------------------------------------------------------------------

LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": LABELS,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {**LABELS, "minProperties": 1},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port", "path", "interval"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                        },
                    },
                },
            },
        },
    },
}


def test_the_service_monitor_selects_the_service_and_scrapes_a_named_port() -> None:
    monitor, service = load("servicemonitor.yaml"), load("service.yaml")
    jsonschema.validate(monitor, SERVICE_MONITOR)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert all(endpoint["port"] in service_ports for endpoint in monitor["spec"]["endpoints"])

    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["intervall"] = broken["spec"]["endpoints"][0].pop("interval")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SERVICE_MONITOR)


def test_the_prometheus_rule_is_the_shipped_one_and_passes_promtool(tmp_path: Path) -> None:
    copied = load("prometheusrule.yaml")
    original = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheusrule.yaml").read_text())
    assert (copied["apiVersion"], copied["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert copied["spec"] == original["spec"], "copy deploy/prometheus/prometheusrule.yaml to deploy/kubernetes/"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(copied["spec"]))
    checked = subprocess.run(
        [tool("promtool", "Debian: apt-get install prometheus"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, f"promtool check rules: {checked.stdout}{checked.stderr}"


def test_the_readme_registers_the_service_with_only_the_needed_scopes() -> None:
    readme = (K8S / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
    (values,) = [yaml.safe_load(block) for block in blocks if "loadRoles" in block]
    name = Settings.model_fields["service_name"].default
    assert set(values["hub"]["services"]) == {name} and "apiToken" in values["hub"]["services"][name]
    (role,) = values["hub"]["loadRoles"].values()
    assert role["services"] == [name]
    assert role["scopes"] == [
        "list:users",
        "read:users:activity",
        "read:users:groups",
        "read:servers",
        "delete:servers",
    ]
    assert values["cull"]["enabled"] is False
    (line,) = [line for line in (K8S / "deployment.yaml").read_text().splitlines() if "- --dry-run" in line]
    assert line in readme
