"""The service's flags (jupyterhub-idle-culler's flat ones and ours), read into ``Settings``; usage errors."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from culler.policy.model import Policy, policy_from_flags
from culler.settings import DEFAULT_TIMEOUT, Settings

PROG = "jupyterhub-activity-culler"
USAGE_ERROR = 2

_BOOL_FLAGS = (
    "cull_users",
    "cull_admin_users",
    "cull_default_servers",
    "cull_named_servers",
    "remove_named_servers",
    "ssl_enabled",
    "dry_run",
    "once",
    "per_server_metrics",
)
_VALUE_FLAGS: dict[str, str] = {
    "url": "hub API URL (default $JUPYTERHUB_API_URL)",
    "policy": "policy file (env CULLER_POLICY)",
    "cull_every": "seconds between cycles (default 300; 0 means the default)",
    "concurrency": "hub API requests at once, across all users (default 10; 0 unlimited)",
    "api_page_size": "users per listing page (default 0: ask for 500, capped by the hub)",
    "max_request_rate": "hub API requests per second, at most (default 100)",
    "listing_deadline": "longest a listing may take (default 0: a request timeout a page, capped by the interval)",
    "recheck_fraction": "re-read due servers before stopping after a listing this share of the shortest idle "
    "limit long (default 0.01)",
    "clock_skew_warning": "warn when the hub's or the proxy's clock is this far from ours (default 60s)",
    "max_clock_skew": "beyond this clock skew, stop nothing (default 1d)",
    "timeout": "idle limit without --policy (default 7d; seconds or 90s/30m/36h/7d)",
    "max_age": "maximum server age without --policy (default 0: never)",
    "internal_certs_location": "internal SSL certificates directory",
    "max_stops_per_cycle": "mass-stop guard: most stops per cycle (default 100; 0 none)",
    "max_stop_fraction": "mass-stop guard: most stops per cycle as a share of ready servers (default 0.5)",
    "follow_up_timeout": "seconds to follow a stop the hub answered 202 to (default 120)",
    "policy_poll": "seconds between policy file checks (default 10)",
    "log_format": "text or json",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "bind_url": "where the health endpoints listen (default $JUPYTERHUB_SERVICE_URL or http://127.0.0.1:10101)",
    "service_prefix": "URL prefix (default $JUPYTERHUB_SERVICE_PREFIX or /)",
    "activity_source": "hub (the hub's last_activity, default) or proxy (configurable-http-proxy route activity)",
    "proxy_api_url": "configurable-http-proxy's API (default http://127.0.0.1:8001; token: $CONFIGPROXY_AUTH_TOKEN)",
    "slug_scheme": "how KubeSpawner names users' pods and homes: safe (KubeSpawner 7, default) or escape (6)",
    "tree_scan_path": "settle probe tree-scan: where homes are mounted, e.g. /mnt/homes/{username} "
    "(KubeSpawner's names: README, Placeholders)",
    "tree_scan_budget": "tree-scan: seconds of scanning per server per settle poll (default 0.05)",
    "tree_scan_hot_files": "tree-scan: recently changed files re-checked at every poll (default 32)",
    "prometheus_url": "settle probe prometheus: the Prometheus base URL",
    "prometheus_query": "prometheus: PromQL with KubeSpawner's names, e.g. a write rate of "
    'pod="jupyter-{user_server}"',
    "prometheus_threshold": "prometheus: quiet while the value is at most this (default 0)",
    "settle_poll": "seconds between settle polls (default 15)",
    "probe_timeout": "seconds one probe may take (default 30)",
    "shutdown_timeout": "seconds the running cycle may finish its stops at SIGTERM (default 5)",
    "service_name": "the hub service's name (default $JUPYTERHUB_SERVICE_NAME or activity-culler)",
    "metrics_bind_url": "also serve /metrics without a token here, for in-cluster scraping",
    "warn_before": "warn this long before a server is due (default 1d)",
    "warn_secret_header": "header carrying the webhook secret (default Authorization; value: CULLER_WARN_SECRET)",
    "warn_retries": "webhook retries (default 3)",
    "warn_timeout": "webhook timeout in seconds (default 10)",
    "activity_page_url": "a link for users, put in warning payloads",
}
POLICY_FIELD_HINT = {
    "timeout": "defaults.idle",
    "max_age": "defaults.max_age",
    "cull_users": "users.delete_inactive_after",
    "cull_admin_users": "users.include_admins",
    "cull_default_servers": 'a rule with match: {servers: [""]} and exempt: true',
    "cull_named_servers": 'a rule with match: {servers: ["?*"]} and exempt: true',
    "remove_named_servers": "defaults.remove_named_servers",
}


class UsageError(Exception):
    pass


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_service_flags(parser: argparse.ArgumentParser) -> None:
    for name, help_text in _VALUE_FLAGS.items():
        parser.add_argument(flag_name(name), dest=name, metavar=name.split("_")[-1].upper(), help=help_text)
    for name in _BOOL_FLAGS:
        parser.add_argument(
            flag_name(name), dest=name, nargs="?", const="true", metavar="BOOL", help="bare, or =true / =false"
        )
    for name in ("config", "generate_config"):
        parser.add_argument(flag_name(name), dest=name, nargs="?", const="", help=argparse.SUPPRESS)


class RaisingParser(argparse.ArgumentParser):
    """Bad flags raise ``UsageError`` (a hub-managed service must not exit on them: see ``serve``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def settings_from(values: dict[str, Any]) -> Settings:
    """Settings from parsed flags (flags win over CULLER_* environment variables)."""
    if "config" in values or "generate_config" in values:
        raise UsageError(
            "--config/--generate-config are jupyterhub-idle-culler's python config file; this service reads "
            "its rules from a YAML policy file instead (--policy FILE; start from policies/default.yaml) "
            "and its settings from flags or CULLER_* environment variables"
        )
    secrets_dir = os.environ.get("CULLER_SECRETS_DIR")  # e.g. a mounted Kubernetes Secret
    if secrets_dir and not Path(secrets_dir).is_dir():
        raise UsageError(f"CULLER_SECRETS_DIR {secrets_dir!r} is not a directory")
    try:
        return Settings(_secrets_dir=secrets_dir, **values)
    except ValidationError as error:
        problems = [
            f"{flag_name(str(e['loc'][0])) if e['loc'] else ''}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        ]
        raise UsageError("invalid setting " + "; ".join(problems)) from error


def flags_policy(settings: Settings) -> Policy:
    def flag(name: str, default: bool) -> bool:
        value = getattr(settings, name)
        return default if value is None else bool(value)

    timeout = DEFAULT_TIMEOUT if settings.timeout is None else settings.timeout or math.inf  # 0: never idle-stop
    return policy_from_flags(
        timeout=timeout,
        max_age=settings.max_age or 0,
        cull_default_servers=flag("cull_default_servers", True),
        cull_named_servers=flag("cull_named_servers", True),
        remove_named_servers=flag("remove_named_servers", False),
        cull_users=flag("cull_users", False),
        cull_admin_users=flag("cull_admin_users", True),
    )
