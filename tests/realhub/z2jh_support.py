"""deploy/z2jh/values.yaml run through the Zero to JupyterHub chart's own hub configuration, vendored at
tests/z2jh-chart/<CHART_VERSION>/ (Helm and a cluster cannot run here; CI cannot fetch the chart).

What Helm renders and the hub pod then reads, written here for a given list of values files:

- the values: the chart's ``values.yaml`` defaults with each file merged over them in order, as Helm does
  (``-f config.yaml -f deploy/z2jh/values.yaml``: maps merge deeply, lists and scalars replace, ``null``
  deletes a key), plus ``Chart`` and ``Release``: the hub Secret's ``values.yaml``;
- the hub ConfigMap's resource names (``jupyterhub.name-templates`` in ``templates/_helpers-names.tpl``:
  ``hub`` -> "hub", or "lab-hub" with ``fullnameOverride: lab``), one file per name: what ``z2jh.get_name``
  reads;
- the generated secrets (each service's ``apiToken``, the proxy token, cookie secret, CryptKeeper keys),
  one file per key in the Secret: what ``z2jh.get_secret_value`` reads;
- the environment the chart's hub Deployment and Kubernetes give the hub container: ``POD_NAMESPACE``,
  ``CONFIGPROXY_AUTH_TOKEN`` and the ``<SERVICE NAME>_SERVICE_PORT`` variables ``z2jh.get_name_env`` reads.

The pod mounts all that under ``/usr/local/etc/jupyterhub/``, next to the chart's ``jupyterhub_config.py``
and ``z2jh.py``. Here it goes under a temporary directory: ``jupyterhub_config.py`` is copied unchanged,
``z2jh.py`` with that one root path replaced (the only change; ``render_pod`` checks it is where z2jh
reads). The chart's config then runs as the hub pod runs it: as a config file of its own, into a fresh
traitlets ``Config``. ``render_configs`` does that in a subprocess and reports what it made (services,
roles, URLs); ``start_values_hub`` loads it into a real JupyterHub (``LocalHub``, with
``load_subconfig``) and afterwards rewrites only what loopback needs (``chart_hub_config``).
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from realhub_support import CullerHub, run_hub

from devtools.devhub import LocalHub, free_port

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "deploy" / "z2jh" / "values.yaml"
DOCKERFILE = REPO / "deploy" / "z2jh" / "Dockerfile"
SERVICE = "activity-culler"
SWITCH = "# set to false to act"

CHART_VERSION = "4.4.0"  # tests/z2jh-chart/refresh.sh <tag> vendors another one
CHART_DIR = REPO / "tests" / "z2jh-chart" / CHART_VERSION
CHART = CHART_DIR / "jupyterhub"
POD_ROOT = "/usr/local/etc/jupyterhub/"  # where the hub pod mounts the chart's files, ConfigMap and Secret
POD_ROOT_READS = 3  # the paths z2jh.py builds from POD_ROOT: values.yaml sources, ConfigMap keys, Secret keys
# Ports of the chart's k8s Services, as Kubernetes passes them to the hub container (<NAME>_SERVICE_PORT)
SERVICE_PORTS = {"hub": 8081, "proxy-api": 8001, "proxy-public": 80}

# The chart's config selects tornado's curl HTTP client, which needs pycurl (the hub image has it). Where
# pycurl is missing, a stand-in of that module (the simple client under the curl client's name) lets the
# chart's config run unchanged; it changes how the hub makes HTTP requests, not what it is configured with.
CURL_STANDIN = """
import importlib.util as _lb_util
import sys as _lb_sys
import types as _lb_types
if _lb_util.find_spec("pycurl") is None and "tornado.curl_httpclient" not in _lb_sys.modules:
    from tornado.simple_httpclient import SimpleAsyncHTTPClient as _LbSimple
    _lb_curl = _lb_types.ModuleType("tornado.curl_httpclient")
    _lb_curl.CurlAsyncHTTPClient = type("CurlAsyncHTTPClient", (_LbSimple,), {"__module__": _lb_curl.__name__})
    _lb_sys.modules[_lb_curl.__name__] = _lb_curl
    print("z2jh_support: pycurl is missing; tornado.curl_httpclient is a stand-in (the simple client)")
"""

# What the chart's config made of the values, as JSON (the same for a subprocess and for the hub).
SUMMARY = """
def _lb_summary(c):
    jupyterhub = c.JupyterHub
    return {
        "services": [dict(s) for s in jupyterhub.get("services", [])],
        "load_roles": [dict(r) for r in jupyterhub.get("load_roles", [])],
        "custom_scopes": dict(jupyterhub.get("custom_scopes", {})),
        "spawner_class": str(jupyterhub.get("spawner_class")),
        "hub_bind_url": jupyterhub.get("hub_bind_url"),
        "hub_connect_url": jupyterhub.get("hub_connect_url"),
        "base_url": jupyterhub.get("base_url"),
        "proxy_api_url": c.ConfigurableHTTPProxy.get("api_url"),
        "proxy_should_start": c.ConfigurableHTTPProxy.get("should_start"),
    }
"""

# Loads each (config file, environment) pair of the JSON on stdin with traitlets' PyFileConfigLoader, as
# JupyterHub loads its --config file, and writes the summaries (and what each printed) to argv[1].
RUNNER = (
    CURL_STANDIN
    + SUMMARY
    + """
import contextlib, io, json, os, sys
from traitlets.config.loader import PyFileConfigLoader

results = []
for config, env in json.load(sys.stdin):
    saved_env, saved_path = dict(os.environ), list(sys.path)
    os.environ.update(env)
    sys.modules.pop("z2jh", None)  # a fresh module (it caches what it read) for each pod
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            loaded = PyFileConfigLoader(os.path.basename(config), os.path.dirname(config)).load_config()
        results.append({**_lb_summary(loaded), "printed": printed.getvalue()})
    except Exception as error:
        results.append({"error": f"{type(error).__name__}: {error}", "printed": printed.getvalue()})
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
with open(sys.argv[1], "w") as out:
    json.dump(results, out, default=repr)
"""
)


# -- values, as Helm merges them ----------------------------------------------------------------------------


def values_text() -> str:
    return VALUES.read_text()


def load_values(text: str | None = None) -> dict[str, Any]:
    values = yaml.safe_load(values_text() if text is None else text)
    assert isinstance(values, dict)
    return values


def set_to_act(text: str) -> str:
    """The README's one-line switch: the line commented ``set to false to act``, "true" -> "false"."""
    lines = text.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if SWITCH in line]
    assert len(found) == 1, f"expected one line with {SWITCH!r}, found {len(found)}"
    line = lines[found[0]]
    assert re.search(r'^\s+CULLER_DRY_RUN: "true"\s+#', line), line
    lines[found[0]] = line.replace('"true"', '"false"', 1)
    return "".join(lines)


def chart_defaults() -> dict[str, Any]:
    """The vendored chart's values.yaml."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(defaults, dict)
    return defaults


def values_schema() -> dict[str, Any]:
    """The vendored chart's values.schema.yaml (Helm validates the merged values with its JSON form)."""
    schema = yaml.safe_load((CHART / "values.schema.yaml").read_text())
    assert isinstance(schema, dict)
    return schema


def helm_merge(base: Mapping[str, Any], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """``layers`` over ``base`` as Helm coalesces values files: a map merges into a map key by key, any
    other value (a list too) replaces, and ``null`` deletes the key. Returns new objects."""
    merged = copy.deepcopy(dict(base))
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                merged.pop(key, None)
            elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = helm_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def chart_values(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """The chart's defaults with ``layers`` (values files, in ``-f`` order) merged over them."""
    return helm_merge(chart_defaults(), *layers)


def dig(values: Mapping[str, Any], path: str, default: Any = None) -> Any:
    value: Any = values
    for level in path.split("."):
        if not isinstance(value, Mapping) or level not in value:
            return default
        value = value[level]
    return value


# -- the hub ConfigMap's resource names (templates/_helpers-names.tpl) -------------------------------------


@dataclass(frozen=True)
class Release:
    name: str = "jhub"
    namespace: str = "jhub"


def fullname(values: Mapping[str, Any], release: Release) -> str:
    """``jupyterhub.fullname`` for the chart's own templates (``.Chart.Name`` is "jupyterhub", also as a
    parent chart's dependency: its templates render with the values under the parent's ``jupyterhub:``)."""
    override = values.get("fullnameOverride")
    if isinstance(override, str):  # `eq (typeOf $fullname_override) "string"`: "" too
        return override
    name = values.get("nameOverride") or "jupyterhub"  # `$name_override | default .Chart.Name`
    return release.name if name in release.name else f"{release.name}-{name}"


def resource_names(values: Mapping[str, Any], release: Release) -> dict[str, str]:
    """Every entry of ``jupyterhub.name-templates``, the names the hub ConfigMap holds for ``get_name``."""
    full = fullname(values, release)
    dash = f"{full}-" if full else ""

    def account(path: str, fallback: str) -> str:
        name = dig(values, f"{path}.name") or ""
        return name or (fallback if dig(values, f"{path}.create") else "default")

    hub, proxy, scheduler = f"{dash}hub", f"{dash}proxy", f"{dash}user-scheduler"
    existing = dig(values, "hub.existingSecret") or ""
    placeholder = f"{dash}user-placeholder"
    awaiter, puller = f"{dash}hook-image-awaiter", f"{dash}hook-image-puller"
    continuous = f"{dash}continuous-image-puller"
    return {
        "fullname": full,
        "fullname-dash": dash,
        "hub": hub,
        "hub-serviceaccount": account("hub.serviceAccount", hub),
        "hub-existing-secret": existing,
        "hub-existing-secret-or-default": existing or hub,
        "hub-pvc": f"{hub}-db-dir",
        "proxy": proxy,
        "proxy-api": f"{proxy}-api",
        "proxy-http": f"{proxy}-http",
        "proxy-public": f"{proxy}-public",
        "proxy-public-tls": f"{proxy}-public-tls-acme",
        "proxy-public-manual-tls": f"{proxy}-public-manual-tls",
        "autohttps": f"{dash}autohttps",
        "autohttps-serviceaccount": account("proxy.traefik.serviceAccount", f"{dash}autohttps"),
        "user-scheduler-deploy": scheduler,
        "user-scheduler-serviceaccount": account("scheduling.userScheduler.serviceAccount", scheduler),
        "user-scheduler-lock": f"{scheduler}-lock",
        "user-placeholder": placeholder,
        "image-puller-priority": f"{dash}image-puller" if full else f"{release.name}-image-puller-priority",
        "hook-image-awaiter": awaiter,
        "hook-image-awaiter-serviceaccount": account("prePuller.hook.serviceAccount", awaiter),
        "hook-image-puller": puller,
        "hook-image-puller-serviceaccount": dig(values, "prePuller.hook.serviceAccountImagePuller.name") or puller,
        "continuous-image-puller": continuous,
        "continuous-image-puller-serviceaccount": dig(values, "prePuller.continuous.serviceAccount.name") or continuous,
        "singleuser": f"{dash}singleuser",
        "image-pull-secret": f"{dash}image-pull-secret",
        "ingress": full or "jupyterhub",
        "priority": full or f"{release.name}-default-priority",
        "user-placeholder-priority": placeholder if full else f"{release.name}-user-placeholder-priority",
        "user-scheduler": scheduler if full else f"{release.name}-user-scheduler",
    }


def chart_name_templates() -> list[str]:
    """The keys of ``jupyterhub.name-templates`` in the vendored ``_helpers-names.tpl``."""
    text = (CHART / "templates" / "_helpers-names.tpl").read_text()
    found = re.search(r'define "jupyterhub\.name-templates" -}}\n(.*?)\{\{- end }}', text, re.S)
    assert found, "no jupyterhub.name-templates in _helpers-names.tpl"
    return re.findall(r"^([a-z-]+): \{\{ include ", found[1], re.M)


# -- what Helm writes for the hub pod ------------------------------------------------------------------------


@dataclass
class ChartPod:
    """The chart's files, ConfigMap and Secret laid out under ``root`` as the hub pod mounts them under
    /usr/local/etc/jupyterhub/, and the hub container's environment."""

    root: Path
    values: dict[str, Any]  # the merged values (without Chart/Release)
    release: Release
    names: dict[str, str]
    secret: dict[str, str]
    env: dict[str, str]

    @property
    def config(self) -> Path:
        """The chart's jupyterhub_config.py (the hub's --config)."""
        return self.root / "jupyterhub_config.py"

    @property
    def rendered(self) -> Path:
        """Where ``chart_hub_config`` writes what the chart's config made, before the loopback rewrites."""
        return self.root.parent / "rendered.json"

    def token(self, service: str = SERVICE) -> str:
        return self.secret[f"hub.services.{service}.apiToken"]


def render_pod(root: Path, values: Mapping[str, Any], release: Release | None = None) -> ChartPod:
    """Write what Helm renders for the hub pod from ``values`` (already merged: ``chart_values``)."""
    release = release or Release()
    jupyterhub_config_d = Path(POD_ROOT) / "jupyterhub_config.d"  # the chart's config execs *.py there
    if jupyterhub_config_d.exists():
        raise RuntimeError(f"{jupyterhub_config_d} exists on this machine: the chart's config would run it")
    root = root.resolve()
    assert not re.search(r"[{}'\"\\]", str(root)), f"{root} cannot go into z2jh.py's f-strings"
    (root / "config").mkdir(parents=True)
    (root / "secret").mkdir()
    shutil.copyfile(CHART / "files" / "hub" / "jupyterhub_config.py", root / "jupyterhub_config.py")
    z2jh = (CHART / "files" / "hub" / "z2jh.py").read_text()
    reads = z2jh.count(f'f"{POD_ROOT}')
    assert reads == POD_ROOT_READS and z2jh.count(POD_ROOT) == reads, (
        f"z2jh.py builds {reads} paths from {POD_ROOT} (expected {POD_ROOT_READS}): see how it reads now"
    )
    (root / "z2jh.py").write_text(z2jh.replace(POD_ROOT, f"{root}/"))

    values = copy.deepcopy(dict(values))
    names = resource_names(values, release)
    for name, value in names.items():  # a ConfigMap key mounted as a file: the value, no newline
        (root / "config" / name).write_text(value)

    secret = {
        "hub.config.ConfigurableHTTPProxy.auth_token": secrets.token_hex(32),
        "hub.config.JupyterHub.cookie_secret": secrets.token_hex(32),
        "hub.config.CryptKeeper.keys": secrets.token_hex(32),
    }
    for key in dig(values, "hub.services", {}) or {}:
        secret[f"hub.services.{key}.apiToken"] = secrets.token_hex(32)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    with_meta = {
        **values,
        "Chart": {"Name": chart["name"], "Version": CHART_VERSION, "AppVersion": chart["appVersion"]},
        "Release": {"Name": release.name, "Namespace": release.namespace, "Service": "Helm"},
    }
    (root / "secret" / "values.yaml").write_text(yaml.safe_dump(with_meta, sort_keys=False))
    for key, value in secret.items():
        (root / "secret" / key).write_text(value)

    env = {
        "PYTHONUNBUFFERED": "1",
        "HELM_RELEASE_NAME": release.name,
        "POD_NAMESPACE": release.namespace,
        "CONFIGPROXY_AUTH_TOKEN": secret["hub.config.ConfigurableHTTPProxy.auth_token"],
    }
    for short, port in SERVICE_PORTS.items():
        env[names[short].upper().replace("-", "_") + "_SERVICE_PORT"] = str(port)
    return ChartPod(root, values, release, names, secret, env)


def render_configs(
    pods: Sequence[ChartPod], python: str = sys.executable, timeout: float = 120
) -> list[dict[str, Any]]:
    """Run the chart's jupyterhub_config.py for each pod (one subprocess for all) and return what each
    made of its values: ``services``, ``load_roles``, URLs, what it ``printed``; or its ``error``."""
    assert pods, "no pods to render"
    out = pods[0].root.parent / "rendered-all.json"
    batch = json.dumps([[str(pod.config), pod.env] for pod in pods])
    done = subprocess.run(
        [python, "-c", RUNNER, str(out)], input=batch, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"the chart's config runner failed:\n{done.stdout}\n{done.stderr}"
    results: list[dict[str, Any]] = json.loads(out.read_text())
    return results


# -- the chart's config in a real hub ---------------------------------------------------------------------------

# LocalHub's settings that the chart's config overwrites and loopback needs back.
_LOOPBACK_KEYS = [
    ("JupyterHub", "bind_url"),
    ("JupyterHub", "hub_bind_url"),
    ("JupyterHub", "db_url"),
    ("JupyterHub", "spawner_class"),
    ("JupyterHub", "cleanup_servers"),
    ("JupyterHub", "last_activity_interval"),
    ("ConfigurableHTTPProxy", "api_url"),
    ("ConfigurableHTTPProxy", "command"),
    ("ConfigurableHTTPProxy", "auth_token"),
    ("Spawner", "cmd"),
]

_HUB_CONFIG = """
# --- the Zero to JupyterHub chart's jupyterhub_config.py, as the hub pod runs it (tests/realhub/z2jh_support.py)
import json as _lb_json
from urllib.parse import urlsplit as _lb_split

_lb_keep = {{(s, k): c[s][k] for s, k in {keys!r} if k in c[s]}}
_lb_admin = (list(c.JupyterHub.services), list(c.JupyterHub.load_roles))  # LocalHub's admin service

load_subconfig({config!r})  # in a Config of its own, then merged over this one: as the pod's only config

with open({rendered!r}, "w") as _lb_out:
    _lb_json.dump(_lb_summary(c), _lb_out, default=repr)

# --- loopback: what the pod has and this machine has not; nothing else is changed
for (_lb_section, _lb_key), _lb_value in _lb_keep.items():  # LocalHub's ports, proxy, spawner, database
    c[_lb_section][_lb_key] = _lb_value
c.ConfigurableHTTPProxy.should_start = True  # the chart's proxy runs in a pod of its own
c.JupyterHub.hub_connect_url = c.JupyterHub.hub_bind_url  # the hub k8s Service -> this hub
_lb_services = {{s["name"]: s for s in c.JupyterHub.services}}
assert {service!r} in _lb_services, f"the chart's config registered no {service!r}: {{sorted(_lb_services)}}"
for _lb_name, _lb_service in _lb_services.items():
    assert _lb_name == {service!r} or not _lb_service.get("url"), f"unexpected service with a url: {{_lb_name}}"
_lb_culler = _lb_services[{service!r}]
_lb_url = _lb_split(_lb_culler["url"])
assert _lb_url.port == {port}, _lb_culler["url"]
_lb_culler["url"] = "http://127.0.0.1:{port}"  # the hub k8s Service's name -> loopback, same port
_lb_env = _lb_culler["environment"]
assert _lb_env["CULLER_URL"].startswith("http://127.0.0.1:8081/"), _lb_env["CULLER_URL"]
_lb_env["CULLER_URL"] = _lb_env["CULLER_URL"].replace(":8081/", ":{hub_port}/", 1)  # the hub's port here
assert _lb_env["CULLER_DATABASE"].startswith("/srv/jupyterhub/"), _lb_env["CULLER_DATABASE"]
_lb_env["CULLER_DATABASE"] = {workdir!r} + _lb_env["CULLER_DATABASE"][len("/srv/jupyterhub"):]  # the hub's PVC
c.JupyterHub.services.extend(_lb_admin[0])
c.JupyterHub.load_roles.extend(_lb_admin[1])
"""


def chart_hub_config(pod: ChartPod, hub: LocalHub) -> str:
    """Config text for ``LocalHub.extra_config``: the chart's config, then the loopback rewrites."""
    assert hub.service_port is not None
    return (
        CURL_STANDIN
        + SUMMARY
        + _HUB_CONFIG.format(
            keys=_LOOPBACK_KEYS,
            config=str(pod.config),
            rendered=str(pod.rendered),
            service=SERVICE,
            port=hub.service_port,
            hub_port=hub.hub_port,
            workdir=str(hub.workdir),
        )
    )


@dataclass
class Loopback:
    """The values after the loopback rewrites, and where things went."""

    values: dict[str, Any]
    port: int  # the service's port (its url's, rewritten)
    policy: Path  # the tmp copy of the extraFiles entry CULLER_POLICY names


def for_loopback(
    values: dict[str, Any],
    root: Path,
    port: int,
    *,
    python: str = sys.executable,
    policy: str | None = None,
    pace: dict[str, str] | None = None,
) -> Loopback:
    """Rewrite only what a hub on loopback needs; everything else stays as the values say:

    1. the port of the service's ``url`` -> a free port (the host stays: hub.extraConfig renames it, and
       ``chart_hub_config`` points it at 127.0.0.1 after the chart's config ran);
    2. the service's ``command``: the hub image's ``python3`` -> ``python`` (the hub's, with the package);
    3. ``hub.extraFiles``: each ``mountPath`` -> the same path under ``root``, written from its
       ``stringData``; service environment values naming a ``mountPath`` follow it;
    4. with ``policy``: the text of the file ``CULLER_POLICY`` names (a seconds-long policy a test can see act);
    5. with ``pace``: service environment added for test speed (cycle and policy-poll intervals).
    """
    values = copy.deepcopy(values)
    hub = values["hub"]
    service = hub["services"][SERVICE]
    environment = service.setdefault("environment", {})

    url = urlsplit(service["url"])
    service["url"] = url._replace(netloc=f"{url.hostname}:{port}").geturl()  # 1.

    assert service["command"][0] == "python3", service["command"]
    service["command"] = [python, *service["command"][1:]]  # 2.

    policy_mount = environment.get("CULLER_POLICY")
    policy_copy: Path | None = None
    for spec in hub.get("extraFiles", {}).values():  # 3.
        mount = spec["mountPath"]
        target = root / mount.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = spec["stringData"]
        if mount == policy_mount:
            policy_copy = target
            text = policy if policy is not None else text  # 4.
        target.write_text(text)
        spec["mountPath"] = str(target)
        for name, value in environment.items():
            if value == mount:
                environment[name] = str(target)
    assert policy_copy is not None, f"no hub.extraFiles entry is mounted at CULLER_POLICY={policy_mount!r}"

    environment.update(pace or {})  # 5.
    return Loopback(values, port, policy_copy)


class ValuesHub(CullerHub):
    """A ``LocalHub`` configured by the chart's config from the values, with the service's (chart-generated)
    token and what the chart's config made (``rendered``)."""

    def __init__(self, hub: LocalHub, loopback: Loopback, pod: ChartPod) -> None:
        super().__init__(hub, loopback.policy)
        self.loopback = loopback
        self.pod = pod
        self.service_token = pod.token()

    def rendered(self) -> dict[str, Any]:
        """The chart's config's result in this hub, before the loopback rewrites (``SUMMARY``)."""
        result: dict[str, Any] = json.loads(self.pod.rendered.read_text())
        return result

    def rendered_service(self) -> dict[str, Any]:
        (service,) = [s for s in self.rendered()["services"] if s["name"] == SERVICE]
        return service

    def roles(self) -> dict[str, list[str]]:
        """Role name -> scopes, as the hub stored them from ``load_roles`` (read from its sqlite database)."""
        database = sqlite3.connect(f"file:{self.hub.workdir / 'jupyterhub.sqlite'}?mode=ro", uri=True)
        try:
            rows = database.execute("SELECT name, scopes FROM roles").fetchall()
        finally:
            database.close()
        return {name: json.loads(scopes) for name, scopes in rows}

    def started_with(self) -> dict[str, str]:
        """The service's effective settings, from its start-up log line (secrets redacted)."""
        found = re.search(r"starting jupyterhub-activity-culler \S+ with (\{.*\})$", self.hub.log_text(), re.M)
        assert found, f"no start-up line from the service in {self.hub.log_path}"
        settings = ast.literal_eval(found[1])  # a dict of str -> str, as logged
        assert isinstance(settings, dict)
        return settings


@dataclass
class Lab:
    """A lab's own values file (``-f config.yaml`` before ours) and its Helm release."""

    values: dict[str, Any] = field(default_factory=dict)
    release: Release = field(default_factory=Release)


def start_values_hub(
    workdir: Path,
    text: str,
    *,
    lab: Lab | None = None,
    python: str = sys.executable,
    policy: str | None = None,
    pace: dict[str, str] | None = None,
) -> Iterator[ValuesHub]:
    """Generator body for module fixtures: a hub configured by the chart's config from the chart's defaults,
    ``lab``'s values and ours (``text``), merged in that order; always stopped."""
    lab = lab or Lab()

    def make(attempt: int) -> ValuesHub:
        root = workdir / f"attempt-{attempt}"
        merged = chart_values(lab.values, load_values(text))
        loopback = for_loopback(merged, root / "files", free_port(), python=python, policy=policy, pace=pace)
        pod = render_pod(root / "pod", loopback.values, lab.release)
        # the hub's own CULLER_* environment must not matter: services get only their `environment`
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CULLER_")}
        env.update(pod.env)
        hub = LocalHub(python=python, env=env, workdir=root / "hub", service_port=loopback.port)
        hub.extra_config = chart_hub_config(pod, hub)
        return ValuesHub(hub, loopback, pod)

    yield from run_hub(make)
