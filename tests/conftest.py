"""Loading this file puts tests/ on sys.path (pytest's default import mode inserts a conftest's folder), so
that the shared helper modules here (``fakehub``, ``process_support``) import by name also when only
tests under tests/realhub/ are run."""

import json

import pytest


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
