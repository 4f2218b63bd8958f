"""An in-server settle probe for jupyterhub-activity-culler, as a Jupyter Server extension.

``GET <base_url>api/activity-culler/probe`` says whether anything writes under the server's roots (its
root dir, or ``$HOME``, plus ``ActivityCullerProbe.extra_roots``) and since when it has been quiet. It never
counts as activity, and answers only a hub token holding the probe scope (``custom:activity-culler:probe``):
none 401, any other 403. The answer holds no paths, pids or file names.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_server.serverapp import ServerApp
from traitlets import Enum, Float, List, Unicode
from traitlets.config import Configurable

from activity_culler_probe.handler import ProbeHandler
from activity_culler_probe.processes import Scope, choose_mode
from activity_culler_probe.sampler import Sampler

__version__ = "0.1.0"
SCOPE = "custom:activity-culler:probe"
PATH = "api/activity-culler/probe"


class ActivityCullerProbe(Configurable):
    extra_roots = List(Unicode(), help="more persistent roots to watch, e.g. /home/data").tag(config=True)
    interval = Float(2.0, help="shortest pause between samples while someone asks").tag(config=True)
    max_cpu = Float(0.01, help="longer pauses where a sample would cost more than this share of a core").tag(
        config=True
    )
    idle_stop = Float(300.0, help="stop sampling this many seconds after the last ask").tag(config=True)
    budget = Float(30.0, help="seconds one sample may take; longer is 'cannot tell'").tag(config=True)
    scope = Unicode(SCOPE, help="the hub scope a caller's token must hold").tag(config=True)
    processes = Enum(
        ["auto", "namespace", "tree", "off"],
        "auto",
        help="which processes' writes count: a stop kills every process in a container (namespace), the "
        "server's process tree on a shared host (tree); auto picks by whether this runs in a container; "
        "off counts every write under the roots",
    ).tag(config=True)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "activity_culler_probe"}]


def _load_jupyter_server_extension(app: ServerApp) -> None:
    settings = ActivityCullerProbe(config=app.config)
    root = str(app.root_dir) if app.root_dir else os.path.expanduser("~")
    roots = [root, *settings.extra_roots]
    scope = _scope(settings.processes)
    sampler = Sampler(
        roots, settings.interval, settings.idle_stop, settings.budget, max_cpu=settings.max_cpu, scope=scope
    )
    base_url = app.web_app.settings["base_url"]
    route = base_url.rstrip("/") + "/" + PATH
    app.web_app.add_handlers(".*$", [(route, ProbeHandler, {"sampler": sampler, "scope": settings.scope})])
    app.log.info("activity-culler probe at %s (processes: %s)", route, scope.mode if scope else "any")


def _scope(setting: str) -> Scope | None:
    if setting == "off":
        return None
    scope = Scope(choose_mode(setting), os.getpid())
    return scope if scope.available() else None  # no /proc: every write under the roots counts
