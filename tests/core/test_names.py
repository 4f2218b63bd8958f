"""KubeSpawner's names: our expansions equal KubeSpawner's own ``_expand_user_properties`` for both schemes."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from process_support import culler_env

from culler.adapters.probes.prometheus import PrometheusProbe
from culler.adapters.probes.treescan import TreeScanProbe
from culler.core.names import PLACEHOLDERS, SLUG_SCHEMES, Template, TemplateError, check_template, names_for
from culler.core.snapshot import ServerSnapshot

kubespawner = pytest.importorskip("kubespawner")

USERS = [
    "alice",
    "Alice",  # upper case
    "jane.doe@uni.edu",
    "j_smith",
    "1student",
    "jane-doe",
    "a--b",  # "--" would collide with the user--server join
    "trailing-",
    "x" * 60,
    "ünïcode-ñame",
    "日本語",
    "o'neil",
    "",
]
SERVERS = ["", "gpu", "My Server", "a--b", "s" * 40, "ünï"]


@pytest.fixture
async def spawner(kubeconfig):
    return kubespawner.KubeSpawner(_mock=True)


@pytest.mark.parametrize("scheme", SLUG_SCHEMES)
async def test_every_placeholder_is_kubespawners(spawner, scheme):
    checked = 0
    for user in USERS:
        for server in SERVERS:
            spawner.user.name = user
            spawner.orm_spawner = SimpleNamespace(name=server, server=None)  # what Spawner.name reads
            ours = names_for(user, server, scheme)
            for key in PLACEHOLDERS:
                theirs = spawner._expand_user_properties("{" + key + "}", slug_scheme=scheme)
                assert Template("{" + key + "}", scheme).render(user, server) == theirs, (key, user, server)
                checked += 1
            # and in a template with text around it, e.g. the chart's dynamic volume name
            template = "/homes/{user_server}/x-{username}--{servername}"
            assert Template(template, scheme).render(user, server) == spawner._expand_user_properties(
                template, slug_scheme=scheme
            )
            assert set(ours) == set(PLACEHOLDERS)
    assert checked == len(USERS) * len(SERVERS) * len(PLACEHOLDERS)


def test_the_names_the_team_notes_list():
    # ../shared/kubespawner.md, read from KubeSpawner 7
    assert names_for("j_smith", "")["username"] == "j-smith---be41c01d"
    assert names_for("jane.doe@uni.edu", "")["username"] == "jane-doe-uni-edu---e3900268"
    assert names_for("1student", "")["username"] == "x-1student---41988779"
    assert names_for("jane-doe", "", "escape")["username"] == "jane-2ddoe"
    assert names_for("alice", "gpu")["user_server"] == "alice--gpu"


@pytest.mark.parametrize(
    "text",
    ["/mnt/homes/{userid}", "{pod_name}", "/homes/{username}/{namespace}", "{Username}"],
)
def test_an_unknown_placeholder_is_refused_by_name(text):
    with pytest.raises(TemplateError) as caught:
        check_template(text)
    name = text[text.rindex("{") + 1 : text.rindex("}")]
    assert str(caught.value).startswith(f"unknown placeholder {{{name}}} (the hub's API cannot fill it); known: ")


def test_braces_that_are_not_placeholders_are_text():
    query = 'sum(rate(container_fs_writes_bytes_total{pod="jupyter-{user_server}", container="notebook"}[2m]))'
    assert Template(query).render("j_smith", "") == query.replace("{user_server}", "j-smith---be41c01d")
    assert Template("{}/{ username }/{1}").render("a", "") == "{}/{ username }/{1}"


def test_probes_fill_their_templates_with_kubespawners_names(tmp_path):
    server = ServerSnapshot("Jane.Doe", "gpu", False, (), None, None, None, True)
    safe, escape = names_for("Jane.Doe", "gpu"), names_for("Jane.Doe", "gpu", "escape")
    assert safe["username"].startswith("jane-doe---") and escape["username"] == "-4aane-2e-44oe"
    probe = TreeScanProbe(Template(str(tmp_path / "{username}" / "{servername}")))
    assert probe.root_for(server) == str(tmp_path / safe["username"] / "gpu")
    escaped = TreeScanProbe(Template(str(tmp_path / "{username}"), "escape"))
    assert escaped.root_for(server) == str(tmp_path / "-4aane-2e-44oe")
    prometheus = PrometheusProbe("http://127.0.0.1:9", 'x{pod="jupyter-{user_server}",u="{unescaped_username}"}')
    assert prometheus.query_for(server) == f'x{{pod="jupyter-{safe["user_server"]}",u="Jane.Doe"}}'


def run_culler(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "culler", *args]
    return subprocess.run(command, env=culler_env(**env), capture_output=True, text=True, timeout=60)


def test_policy_check_and_once_refuse_an_unknown_placeholder(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\n")
    checked = run_culler("policy", "check", str(policy), CULLER_PROMETHEUS_QUERY='x{pod="jupyter-{pod_name}"}')
    assert checked.returncode == 1
    assert "error: CULLER_PROMETHEUS_QUERY: unknown placeholder {pod_name}" in checked.stderr
    once = run_culler("--once", "--url", "http://127.0.0.1:9/hub/api", CULLER_TREE_SCAN_PATH="/homes/{userid}")
    assert once.returncode == 2
    assert "invalid setting --tree-scan-path: unknown placeholder {userid}" in once.stderr
    good = run_culler("policy", "check", str(policy), CULLER_TREE_SCAN_PATH="/homes/{username}")
    assert good.returncode == 0, good.stderr


def test_policy_check_warns_about_a_tree_scan_root_that_does_not_exist(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\ndefaults:\n  settle: {probes: [tree-scan]}\n")
    missing = run_culler("policy", "check", str(policy), CULLER_TREE_SCAN_PATH=str(tmp_path / "homes" / "{username}"))
    assert missing.returncode == 0
    assert f"warning: CULLER_TREE_SCAN_PATH: the root {tmp_path}/homes/ does not exist here" in missing.stderr
    (tmp_path / "homes").mkdir()
    present = run_culler("policy", "check", str(policy), CULLER_TREE_SCAN_PATH=str(tmp_path / "homes" / "{username}"))
    assert present.returncode == 0 and "warning" not in present.stderr, present.stderr


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"tree_scan_path": "/h/{username}"},
        {"prometheus_url": "http://127.0.0.1:9"},
        {"tree_scan_path": "/h/{username}", "prometheus_url": "http://127.0.0.1:9", "prometheus_query": "x"},
        {"probe_token": "probe-token"},
        {"probe_token": ""},  # an empty token configures nothing
    ],
)
def test_policy_check_and_the_service_agree_on_the_configured_probes(settings):
    from culler.settings import Settings
    from culler.wiring import build_probes

    made = Settings(**settings)
    assert sorted(build_probes(made)) == made.configured_probes()
