"""The command lines Zero-to-JupyterHub and TLJH build for jupyterhub-idle-culler must work unchanged."""

import json
import math
import shlex

import pytest

from culler.cli import UsageError, _serve_parser, flags_policy, main, policy_store, settings_from
from culler.settings import POLICY_FLAGS, Settings

TOKEN = "s3cr3t-hub-token-6c1f"
ENV_NAMES = [
    "JUPYTERHUB_API_URL",
    "JUPYTERHUB_API_TOKEN",
    "JUPYTERHUB_REQUEST_TIMEOUT",
    "JUPYTERHUB_SERVICE_URL",
    "JUPYTERHUB_SERVICE_PREFIX",
    "URL",
    "API_TOKEN",
    "REQUEST_TIMEOUT",
    "BIND_URL",
    "SERVICE_PREFIX",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """The tests' own environment (a hub-managed shell, a CI secret) must not leak into settings."""
    import os

    for name in [*ENV_NAMES, *(n for n in os.environ if n.upper().startswith("CULLER_"))]:
        monkeypatch.delenv(name, raising=False)


def parse(command_line: str) -> Settings:
    return settings_from(vars(_serve_parser().parse_args(shlex.split(command_line))))


ZTJH = "--url=http://localhost:8081/hub/api --timeout=3600 --cull-every=600 --concurrency=10"


def test_zero_to_jupyterhub_command_line():
    settings = parse(ZTJH + " --cull-users --remove-named-servers")
    assert (settings.url, settings.timeout, settings.cull_every, settings.concurrency) == (
        "http://localhost:8081/hub/api",
        3600,
        600,
        10,
    )
    assert (settings.cull_users, settings.remove_named_servers) == (True, True)
    assert settings.interval == 600
    policy = flags_policy(settings)
    assert (policy.defaults.idle, policy.defaults.max_age, policy.defaults.remove_named_servers) == (
        3600,
        math.inf,
        True,
    )
    assert policy.rules == []
    assert (policy.users.delete_inactive_after, policy.users.include_admins) == (3600, True)


def test_tljh_command_line():
    settings = parse("--timeout=600 --cull-every=60 --concurrency=5 --max-age=0 --cull-users")
    policy = flags_policy(settings)
    assert (policy.defaults.idle, policy.defaults.max_age, settings.interval) == (600, math.inf, 60)
    assert policy.users.delete_inactive_after == 600


@pytest.mark.parametrize(
    ("command_line", "field", "value"),
    [
        pytest.param("--cull-users", "cull_users", True, id="bare-bool"),
        pytest.param("--cull-users=true", "cull_users", True, id="bool-equals-true"),
        pytest.param("--cull-users=True", "cull_users", True, id="bool-equals-True"),
        pytest.param("--cull-users false", "cull_users", False, id="bool-space-false"),
        pytest.param("--cull-users=false", "cull_users", False, id="bool-equals-false"),
        pytest.param("--cull-admin-users=false", "cull_admin_users", False, id="admin-false"),
        pytest.param("--cull-default-servers=false", "cull_default_servers", False, id="default-servers-false"),
        pytest.param("--cull-named-servers=0", "cull_named_servers", False, id="bool-zero"),
        pytest.param("--remove-named-servers --cull-users", "remove_named_servers", True, id="bare-then-flag"),
        pytest.param("--max-age=0", "max_age", 0, id="max-age-zero"),
        pytest.param("--max-age=30d", "max_age", 30 * 86400, id="max-age-human"),
        pytest.param("--timeout 36h", "timeout", 36 * 3600, id="timeout-human"),
        pytest.param("--cull-every=0", "interval", 300, id="cull-every-zero-is-default"),
        pytest.param("", "interval", 300, id="cull-every-default"),
        pytest.param("--cull-every=5m", "interval", 300, id="cull-every-human"),
        pytest.param("--concurrency=0", "concurrency", 0, id="concurrency-unlimited"),
        pytest.param("--api-page-size=200", "api_page_size", 200, id="page-size"),
        pytest.param("--ssl-enabled --internal-certs-location=/srv/ssl", "ssl_enabled", True, id="ssl"),
        pytest.param("--dry-run --once", "once", True, id="once"),
        pytest.param("", "timeout", None, id="timeout-unset"),
    ],
)
def test_flag_values(command_line, field, value):
    assert getattr(parse(command_line), field) == value


@pytest.mark.parametrize(
    ("command_line", "flag"),
    [
        pytest.param("--timeout=5x", "--timeout", id="bad-duration"),
        pytest.param("--cull-users=maybe", "--cull-users", id="bad-bool"),
        pytest.param("--concurrency=-1", "--concurrency", id="negative-concurrency"),
        pytest.param("--max-stop-fraction=0", "--max-stop-fraction", id="zero-fraction"),
        pytest.param("--log-format=xml", "--log-format", id="bad-choice"),
    ],
)
def test_bad_values_name_the_flag(command_line, flag):
    with pytest.raises(UsageError, match=f"invalid setting {flag}: "):
        parse(command_line)


@pytest.mark.parametrize(
    ("command_line", "expected"),
    [
        pytest.param("", {"idle": 7 * 86400, "max_age": math.inf, "rules": [], "users": None}, id="nothing"),
        pytest.param("--max-age=1d", {"idle": 7 * 86400, "max_age": 86400, "rules": [], "users": None}, id="age"),
        pytest.param(
            "--cull-default-servers=false",
            {"idle": 7 * 86400, "max_age": math.inf, "rules": ["flag-no-default-servers"], "users": None},
            id="no-default",
        ),
        pytest.param(
            "--cull-named-servers=false --cull-users --cull-admin-users=false",
            {"idle": 7 * 86400, "max_age": math.inf, "rules": ["flag-no-named-servers"], "users": (604800, False)},
            id="no-named-users",
        ),
    ],
)
def test_flags_policy(command_line, expected):
    policy = flags_policy(parse(command_line))
    users = policy.users and (policy.users.delete_inactive_after, policy.users.include_admins)
    got = {"idle": policy.defaults.idle, "max_age": policy.defaults.max_age, "users": users}
    assert got | {"rules": [rule.id for rule in policy.rules]} == expected


@pytest.mark.parametrize("name", POLICY_FLAGS)
def test_policy_flags_rejected_with_policy_file(tmp_path, name):
    flag = "--" + name.replace("_", "-")
    settings = parse(f"--policy={tmp_path / 'p.yaml'} {flag}=1")
    with pytest.raises(UsageError, match=f"remove {flag} "):
        policy_store(settings, [])


def test_policy_file_alone_is_fine(tmp_path):
    path = tmp_path / "p.yaml"
    store = policy_store(parse(f"--policy={path} --cull-every=60"), [])
    assert store.path == path


@pytest.mark.parametrize("command_line", ["--config=idle_culler_config.py", "--config", "--generate-config"])
def test_python_config_file_points_to_policy(command_line):
    with pytest.raises(UsageError, match="--policy FILE"):
        parse(command_line)


# -- environment ---------------------------------------------------------------------------------


def test_culler_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CULLER_TIMEOUT", "2h")
    monkeypatch.setenv("CULLER_CULL_USERS", "true")
    monkeypatch.setenv("CULLER_CULL_EVERY", "120")
    monkeypatch.setenv("CULLER_DRY_RUN", "1")
    monkeypatch.setenv("CULLER_POLICY", str(tmp_path / "p.yaml"))
    monkeypatch.setenv("CULLER_URL", "http://hub:8081/hub/api")
    settings = parse("")
    assert (settings.timeout, settings.cull_users, settings.interval, settings.dry_run) == (7200, True, 120, True)
    assert (settings.policy, settings.url) == (tmp_path / "p.yaml", "http://hub:8081/hub/api")


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("CULLER_TIMEOUT", "2h")
    monkeypatch.setenv("CULLER_CULL_USERS", "true")
    monkeypatch.setenv("CULLER_URL", "http://env/hub/api")
    settings = parse("--timeout=600 --cull-users=false --url=http://flag/hub/api")
    assert (settings.timeout, settings.cull_users, settings.url) == (600, False, "http://flag/hub/api")


def test_hub_environment(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://hub:8081/hub/api")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    monkeypatch.setenv("JUPYTERHUB_REQUEST_TIMEOUT", "15")
    settings = parse("")
    assert settings.url == "http://hub:8081/hub/api"
    assert settings.api_token.get_secret_value() == TOKEN
    assert settings.request_timeout == 15


def test_culler_url_beats_hub_url(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://hub/hub/api")
    monkeypatch.setenv("CULLER_URL", "http://culler/hub/api")
    assert parse("").url == "http://culler/hub/api"


@pytest.mark.parametrize(("name", "field"), [("URL", "url"), ("API_TOKEN", "api_token")])
def test_bare_environment_names_are_not_read(monkeypatch, name, field):
    monkeypatch.setenv(name, "http://unrelated/")
    assert getattr(parse(""), field) in (None, "http://127.0.0.1:8081/hub/api")


def test_token_never_shown(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    settings = parse(ZTJH)
    summary = settings.summary()
    assert summary["api_token"] == "[secret]"
    for text in (repr(settings), str(settings), repr(summary), settings.model_dump_json()):
        assert TOKEN not in text


# -- policy check / schema -----------------------------------------------------------------------


def test_policy_check_good(tmp_path, capsys):
    path = tmp_path / "good.yaml"
    path.write_text("version: 1\ndefaults: {idle: 1d}\nrules: [{id: a}, {id: b, match: {users: [x]}}]\n")
    assert main(["policy", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"ok: {path}: 2 rule(s)")
    assert f"warning: {path}: rules[1] (id 'b') can never match" in err  # shadowed: warned, still ok


def test_policy_check_bad(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("version: 1\n")
    bad.write_text("version: 1\nrules:\n  - id: gpu\n    idle: soon\n")
    assert main(["policy", "check", str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert f"ok: {good}" in out
    assert f"error: {bad}: rules[0] (id 'gpu'): idle: not a duration: 'soon'" in err


def test_policy_check_missing_file(tmp_path, capsys):
    assert main(["policy", "check", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_policy_schema(capsys):
    assert main(["policy", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == {"version", "defaults", "rules", "users"}
