"""Policy plugins: callables registered in the ``jupyterhub_activity_culler.policies`` entry-point group.

A plugin is ``plugin(server: ServerSnapshot, args: Mapping, now: datetime) -> Verdict | None``;
``None`` means "no opinion" and the next matching rule decides.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from culler.core.decide import PluginFn
from culler.logs import event
from culler.policy.model import PLUGIN_GROUP

log = logging.getLogger("culler.plugins")


def installed_plugins() -> dict[str, PluginFn]:
    """Every plugin that loads; one that fails to import is logged and left out (rules naming it are invalid)."""
    plugins: dict[str, PluginFn] = {}
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            plugin = entry.load()
        except Exception as error:  # third-party import code: anything can go wrong
            event(log, logging.ERROR, "policy plugin failed to load", plugin=entry.name, error=repr(error)[:300])
            continue
        if not callable(plugin):
            event(log, logging.ERROR, "policy plugin is not callable", plugin=entry.name)
            continue
        plugins[entry.name] = plugin
    return plugins
