"""Shared fixtures: the fake hub, hub clients on it, and a culler factory; the dummy kubeconfig.

Loading this file puts tests/ on sys.path (pytest's default import mode inserts a conftest's folder), so
that the shared helper modules here (``fakehub``, ``process_support``) import by name from every folder,
also when only tests under tests/realhub/ are run. Tests live in folders that mirror culler's rooms.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from factories import ClientFactory, CullerFactory
from fakehub import API, FakeHub

from culler.adapters.hub import HubClient
from culler.engine.cycle import Culler, CycleOptions

# Fast retries for tests; a test module passes its own on top.
CLIENT_DEFAULTS: dict[str, Any] = {"retries": 2, "backoff": 0.01, "max_backoff": 0.02, "request_timeout": 5.0}
CYCLE_DEFAULTS: dict[str, Any] = {"max_stop_fraction": 1.0, "follow_up_interval": 0.05, "follow_up_timeout": 5.0}


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> FakeHub:
    """A fake hub (tests/fakehub.py). ``pytestmark = pytest.mark.fake_hub(date=...)`` in a module passes
    its arguments on, e.g. to pin the hub's clock."""
    marker = request.node.get_closest_marker("fake_hub")
    return FakeHub(**(marker.kwargs if marker else {}))


@pytest.fixture
async def make_client(fake: FakeHub, aiohttp_server: Any) -> AsyncIterator[ClientFactory]:
    """Hub clients on the fake hub (``token=`` another token); each is closed after the test."""
    server = await aiohttp_server(fake.make_app())
    clients: list[HubClient] = []

    def factory(**kwargs: Any) -> HubClient:
        options = {**CLIENT_DEFAULTS, **kwargs}
        token = options.pop("token", fake.token)
        client = HubClient(str(server.make_url(API)), token, **options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
def culler_factory(make_client: ClientFactory) -> CullerFactory:
    """Cullers on the fake hub: ``client=`` the hub client's options, ``culler=`` Culler's keywords (clock,
    probes, activity), the rest CycleOptions on top of CYCLE_DEFAULTS."""

    def factory(
        *, client: dict[str, Any] | None = None, culler: dict[str, Any] | None = None, **options: Any
    ) -> Culler:
        return Culler(make_client(**(client or {})), CycleOptions(**{**CYCLE_DEFAULTS, **options}), **(culler or {}))

    return factory


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory):
    """A kubeconfig whose API server is an address nothing listens on: KubeSpawner loads it, never calls it."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "none", "user": {"token": "unused"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none", "namespace": "lab"}}],
        "current-context": "none",
    }
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as patch:
        # read once when kubernetes_asyncio is imported, so $KUBECONFIG would come too late here
        patch.setattr("kubernetes_asyncio.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(path))
        yield path
