"""``jupyterhub-activity-culler [flags]``: run the service (or one cycle with ``--once``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

from culler import __version__
from culler.adapters.plugins import installed_plugins
from culler.adapters.policy_store import PolicyStore
from culler.cli.flags import (
    POLICY_FIELD_HINT,
    PROG,
    RaisingParser,
    UsageError,
    add_service_flags,
    flag_name,
    flags_policy,
    settings_from,
)
from culler.logs import setup_logging
from culler.settings import Settings
from culler.wiring import Service, build_probes, build_service, serve_unready


def _serve_parser() -> argparse.ArgumentParser:
    parser = RaisingParser(
        prog=PROG,
        argument_default=argparse.SUPPRESS,
        description="Stop JupyterHub servers nobody has reached through the browser for too long. "
        "Subcommands: 'policy check FILE', 'policy schema', 'explain [USER[/SERVER]]' (the demo: ./dev demo).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_service_flags(parser)
    return parser


def policy_store(settings: Settings, plugins: list[str], probes: list[str] | None = None) -> PolicyStore:
    if settings.policy is not None:
        given = settings.policy_flags_given()
        if given:
            hints = ", ".join(f"{flag_name(g)} (use {POLICY_FIELD_HINT[g]})" for g in given)
            raise UsageError(f"with --policy, the policy file decides what is stopped; remove {hints}")
        return PolicyStore(path=settings.policy, plugins=plugins, probes=probes)
    return PolicyStore(fixed=flags_policy(settings))


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
    service = build_service(settings, store, plugins, probes)
    if settings.once:
        return asyncio.run(_once(service))
    return asyncio.run(service.serve())


async def _once(service: Service) -> int:
    try:
        return await service.run_once()
    finally:
        await service.close()
