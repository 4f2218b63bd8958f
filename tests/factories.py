"""The types of the shared factory fixtures in tests/conftest.py, for annotations in test modules."""

from __future__ import annotations

from collections.abc import Callable

from culler.adapters.hub import HubClient
from culler.engine.cycle import Culler

ClientFactory = Callable[..., HubClient]
CullerFactory = Callable[..., Culler]
