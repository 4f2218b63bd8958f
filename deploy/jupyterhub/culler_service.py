# Register jupyterhub-activity-culler as a hub-managed service. Include it from jupyterhub_config.py:
#
#     load_subconfig("/etc/jupyterhub/culler_service.py")
#
# It reads its choices from the hub's environment when the config is loaded (all optional):
#   CULLER_SERVICE_NAME   service name (default "activity-culler")
#   CULLER_SERVICE_PORT   port of its health/API endpoints on 127.0.0.1 (default 10101)
#   CULLER_POLICY         policy file (default: none, which means the built-in 7-day policy that
#                         policies/default.yaml spells out)
#   CULLER_DRY_RUN        "true": decide and report, stop nothing (shadow mode). Set "false" to act.
#   CULLER_DELETE_USERS   "true" if the policy has a `users:` section (adds the admin:users scope)
#   CULLER_PYTHON         the python that has the package installed (default: the hub's own)
#   CULLER_DATABASE       a SQLite file for keeps, the stop history and page sessions (default: in memory,
#                         lost at restart), e.g. /srv/jupyterhub/activity-culler.sqlite beside the hub's own
#   CULLER_PROBE_TOKEN    a token for the in-server probe (settle probe `server`; the user image needs
#                         jupyterhub-activity-culler-probe): registers a second service holding only the
#                         custom scope custom:activity-culler:probe, so the token that can stop servers
#                         never goes to a server a user controls
# Every other CULLER_* variable in the hub's environment (CULLER_CULL_EVERY, CULLER_LOG_FORMAT, ...)
# is passed on to the service; see the README for the full list.
import os
import sys

c = get_config()  # noqa: F821 (provided by traitlets when the hub loads this file)

_name = os.environ.get("CULLER_SERVICE_NAME", "activity-culler")
_port = int(os.environ.get("CULLER_SERVICE_PORT", "10101"))
_dry_run = os.environ.get("CULLER_DRY_RUN", "true").lower() in ("1", "true", "yes", "on")
_delete_users = os.environ.get("CULLER_DELETE_USERS", "false").lower() in ("1", "true", "yes", "on")
_SNIPPET_ONLY = {"CULLER_SERVICE_NAME", "CULLER_SERVICE_PORT", "CULLER_DRY_RUN", "CULLER_DELETE_USERS", "CULLER_PYTHON"}
_passed_on = {k: v for k, v in os.environ.items() if k.startswith("CULLER_") and k not in _SNIPPET_ONLY}
_passed_on["CULLER_DRY_RUN"] = "true" if _dry_run else "false"
if "CONFIGPROXY_AUTH_TOKEN" in os.environ:  # for --activity-source=proxy (the hub's own proxy token)
    _passed_on.setdefault("CULLER_PROXY_API_TOKEN", os.environ["CONFIGPROXY_AUTH_TOKEN"])

_command = [os.environ.get("CULLER_PYTHON", sys.executable), "-m", "culler"]

c.JupyterHub.services.append(
    {
        "name": _name,
        "url": f"http://127.0.0.1:{_port}",
        "command": _command,
        "environment": _passed_on,
        "display": True,
        "oauth_no_confirm": True,
    }
)

# Only the scopes the service needs: list users, read activity, groups and servers, stop servers.
_scopes = ["list:users", "read:users:activity", "read:users:groups", "read:servers", "delete:servers"]
if _delete_users:
    _scopes.append("admin:users")
c.JupyterHub.load_roles.append({"name": f"{_name}-service", "scopes": _scopes, "services": [_name]})

# The in-server probe's credential: a service of its own whose role holds only the probe scope.
if os.environ.get("CULLER_PROBE_TOKEN"):
    _probe_scope = "custom:activity-culler:probe"
    _custom = c.JupyterHub.custom_scopes if isinstance(c.JupyterHub.custom_scopes, dict) else {}
    _custom[_probe_scope] = {"description": "Ask a server's activity-culler probe whether its home is written to"}
    c.JupyterHub.custom_scopes = _custom
    c.JupyterHub.services.append({"name": f"{_name}-probe", "api_token": os.environ["CULLER_PROBE_TOKEN"]})
    c.JupyterHub.load_roles.append({"name": f"{_name}-probe", "scopes": [_probe_scope], "services": [f"{_name}-probe"]})

# Let every user reach the service's pages (their countdown); `self` keeps the default user role intact.
_roles = c.JupyterHub.load_roles  # a lazy value (not a list) while nothing earlier set it
_user_role = next((r for r in _roles if r.get("name") == "user"), None) if isinstance(_roles, list) else None
if _user_role is None:
    c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self", f"access:services!service={_name}"]})
else:
    _user_role.setdefault("scopes", ["self"]).append(f"access:services!service={_name}")
