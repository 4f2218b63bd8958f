"""Command line: serve (default, with jupyterhub-idle-culler's flat flags), ``policy check|schema``, ``explain``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import yaml
from pydantic import ValidationError

from culler import __version__
from culler.adapters.hub import DEFAULT_LISTING_CAP, HubError
from culler.adapters.plugins import installed_plugins
from culler.adapters.policy_store import PolicyStore
from culler.core.decide import Decision
from culler.core.events import Bus
from culler.core.explain import changes, changes_table, describe, explain_table
from culler.core.names import Template
from culler.core.profiles import Profile, ProfileListError, find_profile_list, judge, read_profiles, table
from culler.core.snapshot import ServerSnapshot, SnapshotError
from culler.core.timeutil import utcnow
from culler.engine.cycle import Culler
from culler.engine.look import Look, decisions_for
from culler.logs import setup_logging
from culler.observers.metrics import Metrics
from culler.policy.durations import format_duration
from culler.policy.model import (
    Policy,
    PolicyError,
    load_policy,
    policy_from_flags,
    policy_hash,
    policy_schema,
    shadowed_rules,
    typed_option_values,
    unconfigured_probes,
)
from culler.settings import DEFAULT_TIMEOUT, Settings
from culler.wiring import Service, build_probes, cycle_options, make_activity, make_hub, make_warnings, serve_unready

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
_POLICY_FIELD_HINT = {
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_service_flags(parser: argparse.ArgumentParser) -> None:
    for name, help_text in _VALUE_FLAGS.items():
        parser.add_argument(_flag(name), dest=name, metavar=name.split("_")[-1].upper(), help=help_text)
    for name in _BOOL_FLAGS:
        parser.add_argument(
            _flag(name), dest=name, nargs="?", const="true", metavar="BOOL", help="bare, or =true / =false"
        )
    for name in ("config", "generate_config"):
        parser.add_argument(_flag(name), dest=name, nargs="?", const="", help=argparse.SUPPRESS)


class _Parser(argparse.ArgumentParser):
    """Bad flags raise ``UsageError`` (a hub-managed service must not exit on them: see ``serve``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        argument_default=argparse.SUPPRESS,
        description="Stop JupyterHub servers nobody has reached through the browser for too long. "
        "Subcommands: 'policy check FILE', 'policy schema', 'explain [USER[/SERVER]]' (the demo: ./dev demo).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_service_flags(parser)
    return parser


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
            f"{_flag(str(e['loc'][0])) if e['loc'] else ''}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        ]
        raise UsageError("invalid setting " + "; ".join(problems)) from error


def policy_store(settings: Settings, plugins: list[str], probes: list[str] | None = None) -> PolicyStore:
    if settings.policy is not None:
        given = settings.policy_flags_given()
        if given:
            hints = ", ".join(f"{_flag(g)} (use {_POLICY_FIELD_HINT[g]})" for g in given)
            raise UsageError(f"with --policy, the policy file decides what is stopped; remove {hints}")
        return PolicyStore(path=settings.policy, plugins=plugins, probes=probes)
    return PolicyStore(fixed=flags_policy(settings))


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


def managed_by_hub(flags: dict[str, Any]) -> bool:
    """Whether this process is a hub-managed service that keeps running (not a ``--once`` run): the hub
    sets ``JUPYTERHUB_SERVICE_NAME`` for the services it starts."""
    once = str(flags.get("once") or os.environ.get("CULLER_ONCE", "")).lower()
    return bool(os.environ.get("JUPYTERHUB_SERVICE_NAME")) and once not in ("1", "true", "yes", "on", "t", "y")


def serve(argv: Sequence[str]) -> int:
    try:
        return _serve(argv)
    except UsageError as error:
        flags = _loose_flags(argv)
        if not managed_by_hub(flags):
            raise
        # The hub exits at start if a managed service with a url is down, and restarts one that exits
        # later at once: keep serving, unready, and say why once.
        setup_logging("text", "INFO", [os.environ[n] for n in Settings.secret_variables() if os.environ.get(n)])
        reason = str(error)
        logging.getLogger("culler").error("invalid settings; serving health 503 and culling nothing: %s", reason)
        bind_url = _loose_setting(flags, "bind_url", "JUPYTERHUB_SERVICE_URL")
        prefix = _loose_setting(flags, "service_prefix", "JUPYTERHUB_SERVICE_PREFIX")
        return asyncio.run(serve_unready(reason, bind_url, prefix))


def _loose_flags(argv: Sequence[str]) -> dict[str, Any]:
    """The flags as given, unvalidated and ignoring unknown ones (the settings did not validate)."""
    try:
        return vars(_serve_parser().parse_known_args(argv)[0])
    except UsageError:
        return {}


def _loose_setting(flags: dict[str, Any], name: str, hub_variable: str) -> str:
    """One setting from the flag, its variables, else its default, as Settings would read it."""
    value = flags.get(name) or os.environ.get(f"CULLER_{name.upper()}") or os.environ.get(hub_variable)
    return str(value or Settings.model_fields[name].default)


def _serve(argv: Sequence[str]) -> int:
    values = vars(_serve_parser().parse_args(argv))
    settings = settings_from(values)
    setup_logging(settings.log_format, settings.log_level, settings.secrets())
    log = logging.getLogger("culler")
    plugins = installed_plugins()
    probes = build_probes(settings)
    store = policy_store(settings, sorted(plugins), sorted(probes))
    if settings.api_token is None or not settings.api_token.get_secret_value().strip():
        raise UsageError("no hub API token: set JUPYTERHUB_API_TOKEN (the hub sets it for managed services)")
    log.info("starting %s %s with %s", PROG, __version__, settings.summary())
    metrics = Metrics(per_server=settings.per_server_metrics)
    metrics.known_probes(probes)
    hub = make_hub(settings, observer=metrics.hub_request)
    bus = Bus()
    store.publish = bus.publish
    culler = Culler(hub, cycle_options(settings), plugins, probes=probes, activity=make_activity(settings), events=bus)
    warnings = make_warnings(settings, bus.publish)
    bus.subscribe(metrics, *([warnings] if warnings else []))
    clocks = [hub.clock] + ([culler.activity.clock] if culler.activity is not None else [])
    metrics.watch(store, culler.ledger, clocks)
    if store.state.policy is not None:
        metrics.known_rules(rule.id for rule in store.state.policy.rules)
    service = Service(settings, store, culler, metrics)
    if settings.once:
        return asyncio.run(_once(service))
    return asyncio.run(service.serve())


async def _once(service: Service) -> int:
    try:
        return await service.run_once()
    finally:
        await service.culler.close()


# -- policy check / schema -----------------------------------------------------------------------


def policy_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} policy")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate policy files; non-zero exit on any error")
    check.add_argument("files", nargs="+", type=Path)
    check.add_argument(
        "--profile-list",
        type=Path,
        metavar="FILE",
        help="a Zero to JupyterHub values file (singleuser.profileList) or a KubeSpawner profile_list "
        "(YAML or JSON): print which rule decides each profile x choice, and warn about rules that miss",
    )
    schema = sub.add_parser("schema", help="print the policy file's JSON Schema")
    schema.add_argument("--output", "-o", type=Path)
    args = parser.parse_args(argv)
    if args.command == "schema":
        text = json.dumps(policy_schema(), indent=2) + "\n"
        if args.output:
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    return check_policies(args.files, args.profile_list)


TEMPLATE_SETTINGS = ("tree_scan_path", "prometheus_query")


def _environment_check() -> tuple[list[str] | None, list[str], list[str]]:
    """What this environment's CULLER_* settings say for a policy check: the probes they configure (None:
    the settings don't validate), errors in probe templates a service would refuse, and warnings."""
    try:
        settings = Settings()
    except ValidationError as error:
        problems = [
            f"CULLER_{str(e['loc'][0]).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
            if e["loc"] and e["loc"][0] in TEMPLATE_SETTINGS
        ]
        return None, problems, []
    warnings = []
    if settings.tree_scan_path:
        root = Template(settings.tree_scan_path, settings.slug_scheme).root()
        if not os.path.isdir(root):
            warnings.append(
                f"CULLER_TREE_SCAN_PATH: the root {root} does not exist here (where the homes are mounted?)"
            )
    return settings.configured_probes(), [], warnings


def check_policies(files: Sequence[Path], profile_list: Path | None = None) -> int:
    plugins = sorted(installed_plugins())
    configured, problems, setup_warnings = _environment_check()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    for warning in setup_warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        profiles = load_profiles(profile_list) if profile_list else None
    except ProfileListError as error:
        print(f"error: {profile_list}: {error}", file=sys.stderr)
        return 1
    failed = bool(problems)
    for path in files:
        try:
            policy = load_policy(path, plugins)
        except PolicyError as error:
            failed = True
            for line in error.errors:
                print(f"error: {line}", file=sys.stderr)
            continue
        warnings = shadowed_rules(policy) + unconfigured_probes(policy, configured) + typed_option_values(policy)
        if profiles is not None:
            report = judge(policy, profiles)
            print(f"{path} with the profile list {profile_list} ('*': the default):")
            print("\n".join("  " + line for line in table(report)))
            warnings += report.warnings
        for warning in warnings:
            print(f"warning: {path}: {warning}", file=sys.stderr)
        idle = format_duration(policy.defaults.idle)
        print(f"ok: {path}: {len(policy.rules)} rule(s), default idle {idle}, hash {policy_hash(path.read_bytes())}")
    return 1 if failed else 0


def load_profiles(path: Path) -> list[Profile]:
    """A profile list file, normalized with KubeSpawner's own slugify when it is installed."""
    try:
        raw = yaml.safe_load(path.read_text())  # JSON is YAML
    except (OSError, yaml.YAMLError) as error:
        raise ProfileListError(f"cannot read: {' '.join(str(error).split())}") from error
    found, _ = find_profile_list(raw)
    try:
        from slugify import slugify  # python-slugify, which KubeSpawner uses for missing slugs
    except ImportError:
        return read_profiles(found)
    return read_profiles(found, slugify)


# -- explain ---------------------------------------------------------------------------------------


def explain_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} explain",
        argument_default=argparse.SUPPRESS,
        description="Explain decisions for the servers on the live hub; stops nothing. With --policy FILE, "
        "show which decisions FILE would change versus the policy in force (--in-force, $CULLER_POLICY, "
        "or the flags).",
    )
    parser.add_argument("target", nargs="?", help="USER or USER/SERVER (default: every ready server)")
    parser.add_argument("--in-force", type=Path, help="the policy in force (default $CULLER_POLICY)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.add_argument(
        "--service-url",
        help="the running service, for its settling servers (default: <hub>/services/activity-culler/; "
        "needs a token with read:servers)",
    )
    add_service_flags(parser)
    values = vars(parser.parse_args(argv))
    target = values.pop("target", None)
    as_json = values.pop("json", False)
    service_url = values.pop("service_url", None)
    in_force_path = values.pop("in_force", None) or os.environ.get("CULLER_POLICY")
    candidate_path = values.pop("policy", None)
    settings = settings_from(values)
    plugins = installed_plugins()
    in_force = load_policy(Path(in_force_path), sorted(plugins)) if in_force_path else flags_policy(settings)
    candidate = load_policy(Path(candidate_path), sorted(plugins)) if candidate_path else None
    servers = asyncio.run(_fetch(settings, target))
    now = utcnow()
    current = decisions_for(servers, in_force, plugins)
    if candidate is None or (in_force_path and Path(in_force_path) == Path(candidate_path or "")):
        settling = asyncio.run(_fetch_settling(service_url or _default_service_url(settings.url), settings))
        _print_decisions(current, now, as_json, settling)
        return 0
    proposed = decisions_for(servers, candidate, plugins)
    rows = changes(current, proposed, now)
    print("\n".join(json.dumps(r) for r in rows) if as_json else changes_table(rows, len(servers)))
    return 0


def _print_decisions(decisions: list[Decision], now: Any, as_json: bool, settling: dict[str, Any] | str) -> None:
    known = settling if isinstance(settling, dict) else None
    if as_json:
        for decision in sorted(decisions, key=lambda d: d.server.key):
            print(json.dumps(describe(decision, now, known)))
        return
    print(explain_table(decisions, now, known))
    if isinstance(settling, str) and any(d.settle is not None for d in decisions):
        print(f"(settling state unknown: {settling})")


def _default_service_url(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/hub/api") + "/services/activity-culler/"


async def _fetch_settling(service_url: str, settings: Settings) -> dict[str, Any] | str:
    """The running service's settling servers by label, or why they could not be read."""
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    url = service_url.rstrip("/") + "/api/settling"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url, headers={"Authorization": f"token {token}"}) as response,
        ):
            if response.status != 200:
                return f"{url} answered {response.status}"
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        return f"cannot read {url}: {type(error).__name__}"
    return {str(item["server"]): item for item in body.get("settling", []) if isinstance(item, dict)}


async def _fetch(settings: Settings, target: str | None) -> list[ServerSnapshot]:
    """The servers to explain, read as the service reads them (culler.look)."""
    look = Look(make_hub(settings), make_activity(settings))
    try:
        return await _fetch_servers(look, target)
    finally:
        await look.close()


async def _fetch_servers(look: Look, target: str | None) -> list[ServerSnapshot]:
    if target is None:
        listing = await look.everything(DEFAULT_LISTING_CAP)
        for problem in listing.problems:  # as the service does: skip that user, keep going
            print(f"skipped: {problem}", file=sys.stderr)
        return list(listing.servers.values())
    user, _, server = target.partition("/")
    found = await look.user(user, server if "/" in target else None)
    if found is None:
        raise UsageError(f"no user {user!r} on the hub")
    return found


# -- entry point -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"policy": policy_command, "explain": explain_command, "demo": _demo}
    handler = commands.get(args[0]) if args else None
    try:
        return handler(args[1:]) if handler else serve(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except (PolicyError, HubError, SnapshotError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _demo(argv: Sequence[str]) -> int:
    """The demo lives in the checkout (devtools/), outside the service's package."""
    raise UsageError("the demo runs from a checkout of the repository: ./dev demo [--duration S]")
