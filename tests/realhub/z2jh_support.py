"""deploy/z2jh/values.yaml in a real hub (``LocalHub``), loaded the way the Zero to JupyterHub chart 4.x
loads values, with only the rewrites loopback needs. Helm cannot run here; this is the chart's Python side.

What the chart's ``jupyterhub/files/hub/jupyterhub_config.py`` does with these values, in this order:

1. ``cull.enabled``: registers its jupyterhub-idle-culler service and role;
2. ``hub.services`` (a dict keyed by name): each entry gets ``name`` from its key, ``apiToken`` is
   dropped and ``api_token`` read from the chart's k8s Secret (generated), and the dict itself is
   appended to ``c.JupyterHub.services``;
3. ``hub.loadRoles`` (a dict keyed by name): ``name`` from the key, appended to ``c.JupyterHub.load_roles``;
4. last, every ``hub.extraConfig`` snippet in sorted key order, by ``exec`` at the config file's module
   level: ``c`` and z2jh's ``get_config`` are in scope.

``hub.extraFiles`` are mounted (from the chart's hub k8s Secret) at their ``mountPath``. ``get_config``
returns the loaded values themselves, not copies, so the dicts in ``c.JupyterHub.services`` are the ones
``get_config("hub.services...")`` sees.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import secrets
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from realhub_support import CullerHub, run_hub

from culler.devhub import LocalHub, free_port

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "deploy" / "z2jh" / "values.yaml"
SERVICE = "activity-culler"
SWITCH = "# set to false to act"

# Stand-in for the chart's z2jh module (jupyterhub/files/hub/z2jh.py), reading this test's values and
# "Secret" from JSON files next to it instead of the mounted k8s Secret.
_Z2JH_STUB = '''\
"""Stand-in for the Zero to JupyterHub chart's z2jh module, over a test's values."""
import json
import os
from functools import lru_cache

_HERE = os.path.dirname(os.path.abspath(__file__))


@lru_cache
def _load(name):
    with open(os.path.join(_HERE, name)) as f:
        return json.load(f)


def get_config(key, default=None):
    value = _load("values.json")
    for level in key.split("."):
        if not isinstance(value, dict) or level not in value:
            return default
        value = value[level]
    return value


def get_secret_value(key, default="never-explicitly-set"):
    secret = _load("secret.json")
    if key in secret:
        return secret[key]
    if default != "never-explicitly-set":
        return default
    raise Exception(f"{key} not found in the k8s Secret")


def set_config_if_not_none(cparent, name, key):
    data = get_config(key)
    if data is not None:
        setattr(cparent, name, data)
'''

# The chart's jupyterhub_config.py, the parts that read these values (see the module docstring).
_CHART_CONFIG = """
# --- as the Zero to JupyterHub chart's jupyterhub_config.py loads its values ---
import sys as _z2jh_sys
_z2jh_sys.path.insert(0, {stub_dir!r})
from z2jh import get_config, get_secret_value  # noqa: E402

if get_config("cull.enabled", False):
    c.JupyterHub.services.append({{
        "name": "jupyterhub-idle-culler",
        "command": [{python!r}, "-m", "jupyterhub_idle_culler", "--url=" + c.JupyterHub.hub_bind_url + "/hub/api"],
    }})
    c.JupyterHub.load_roles.append({{
        "name": "jupyterhub-idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["jupyterhub-idle-culler"],
    }})

for key, service in get_config("hub.services", {{}}).items():
    service.setdefault("name", key)
    service.pop("apiToken", None)
    service["api_token"] = get_secret_value(f"hub.services.{{key}}.apiToken")
    c.JupyterHub.services.append(service)

for key, role in get_config("hub.loadRoles", {{}}).items():
    role.setdefault("name", key)
    c.JupyterHub.load_roles.append(role)

for key, config_py in sorted(get_config("hub.extraConfig", {{}}).items()):
    print(f"Loading extra config: {{key}}")
    exec(config_py)
"""


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


@dataclass
class Loopback:
    """The values after the loopback rewrites, and where things went."""

    values: dict[str, Any]
    port: int  # the service's port (its url's, rewritten)
    policy: Path  # the tmp copy of the extraFiles entry CULLER_POLICY names


def for_loopback(
    values: dict[str, Any], root: Path, port: int, *, policy: str | None = None, pace: dict[str, str] | None = None
) -> Loopback:
    """Rewrite only what a hub on loopback needs; everything else stays as the values say:

    1. the service's ``url``: the hub k8s Service's name and port -> 127.0.0.1 and a free port;
    2. the service's ``command``: the hub image's ``python3`` -> this interpreter (it has the package);
    3. ``hub.extraFiles``: each ``mountPath`` -> the same path under ``root``, written from its
       ``stringData``; service environment values naming a ``mountPath`` follow it;
    4. with ``policy``: the text of the file ``CULLER_POLICY`` names (a seconds-long policy a test can see act);
    5. with ``pace``: service environment added for test speed (cycle and policy-poll intervals).
    """
    values = copy.deepcopy(values)
    hub = values["hub"]
    service = hub["services"][SERVICE]
    environment = service.setdefault("environment", {})

    service["url"] = f"http://127.0.0.1:{port}"  # 1.

    assert service["command"][0] == "python3", service["command"]
    service["command"] = [sys.executable, *service["command"][1:]]  # 2.

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


def chart_config(values: dict[str, Any], stub_dir: Path, secret: dict[str, str]) -> str:
    """Config text for ``LocalHub.extra_config`` that loads ``values`` as the chart does."""
    stub_dir.mkdir(parents=True, exist_ok=True)
    (stub_dir / "z2jh.py").write_text(_Z2JH_STUB)
    (stub_dir / "values.json").write_text(json.dumps(values))
    (stub_dir / "secret.json").write_text(json.dumps(secret))
    return _CHART_CONFIG.format(stub_dir=str(stub_dir), python=sys.executable)


class ValuesHub(CullerHub):
    """A ``LocalHub`` configured from the values file, with the service's (chart-generated) token."""

    def __init__(self, hub: LocalHub, loopback: Loopback, service_token: str) -> None:
        super().__init__(hub, loopback.policy)
        self.loopback = loopback
        self.service_token = service_token

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


def start_values_hub(
    workdir: Path, text: str, *, policy: str | None = None, pace: dict[str, str] | None = None
) -> Iterator[ValuesHub]:
    """Generator body for module fixtures: a hub configured from values ``text``, always stopped."""

    def make(attempt: int) -> ValuesHub:
        root = workdir / f"attempt-{attempt}"
        loopback = for_loopback(load_values(text), root / "files", free_port(), policy=policy, pace=pace)
        token = secrets.token_hex(32)  # the chart generates one per hub.services entry into its Secret
        config = chart_config(loopback.values, root / "chart", {f"hub.services.{SERVICE}.apiToken": token})
        # the hub's own CULLER_* environment must not matter: services get only their `environment`
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CULLER_")}
        hub = LocalHub(extra_config=config, env=env, workdir=root / "hub", service_port=loopback.port)
        return ValuesHub(hub, loopback, token)

    yield from run_hub(make)
