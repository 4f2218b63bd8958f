"""The command lines Zero-to-JupyterHub and TLJH build for jupyterhub-idle-culler must work unchanged."""

import json
import math
import shlex

import pytest

from culler.cli import main
from culler.cli.flags import UsageError, flags_policy, settings_from
from culler.cli.serve import _serve_parser, policy_store
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
        pytest.param("--shutdown-timeout=12", "shutdown_timeout", 12, id="shutdown-timeout"),
        pytest.param("--probe-timeout=7", "probe_timeout", 7, id="probe-timeout"),
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


# -- the command lines the charts build, row by row ------------------------------------------------------

Z2JH_CULL_DEFAULTS = {
    "users": False,
    "adminUsers": True,
    "removeNamedServers": False,
    "timeout": 3600,
    "every": 600,
    "concurrency": 10,
    "maxAge": 0,
}


def z2jh_command(base_url: str = "/", **cull: object) -> list[str]:
    """The arguments Zero-to-JupyterHub's hub config (jupyterhub/files/hub/jupyterhub_config.py, the
    ``cull.enabled`` block) passes after ``python3 -m jupyterhub_idle_culler``, from ``cull.*`` values:
    falsy numbers leave their flag out, booleans are bare, and adminUsers false adds ``=false``."""
    values = {**Z2JH_CULL_DEFAULTS, **cull}
    args = [f"--url=http://localhost:8081{base_url.rstrip('/')}/hub/api"]
    if values["timeout"]:
        args.append(f"--timeout={values['timeout']}")
    if values["every"]:
        args.append(f"--cull-every={values['every']}")
    if values["concurrency"]:
        args.append(f"--concurrency={values['concurrency']}")
    if values["users"]:
        args.append("--cull-users")
    if not values["adminUsers"]:
        args.append("--cull-admin-users=false")
    if values["removeNamedServers"]:
        args.append("--remove-named-servers")
    if values["maxAge"]:
        args.append(f"--max-age={values['maxAge']}")
    return args


TLJH_CULL_DEFAULTS = {"timeout": 600, "every": 60, "concurrency": 5, "users": False, "max_age": 0}


def tljh_command(remove_named_servers: bool = False, **cull: object) -> list[str]:
    """The arguments TLJH's configurer (tljh/configurer.py, ``set_cull_idle_service``) passes from
    ``services.cull.*``: no --url (the hub-managed service reads $JUPYTERHUB_API_URL), every number
    always with ``%d``, booleans bare."""
    values = {**TLJH_CULL_DEFAULTS, **cull}
    args = [f"--{flag}={int(values[key])}" for flag, key in (("timeout", "timeout"), ("cull-every", "every"))]
    args += [f"--concurrency={int(values['concurrency'])}", f"--max-age={int(values['max_age'])}"]
    if values["users"]:
        args.append("--cull-users")
    if remove_named_servers:
        args.append("--remove-named-servers")
    return args


def test_chart_builders_match_the_known_command_lines():
    """Anchors: the default lines, as the charts' sources write them."""
    assert z2jh_command() == shlex.split(ZTJH)
    assert tljh_command() == ["--timeout=600", "--cull-every=60", "--concurrency=5", "--max-age=0"]


def effective(settings: Settings) -> dict[str, object]:
    policy = flags_policy(settings)
    users = policy.users and (policy.users.delete_inactive_after, policy.users.include_admins)
    return {
        "url": settings.url,
        "interval": settings.interval,
        "concurrency": settings.concurrency,
        "idle": policy.defaults.idle,
        "max_age": policy.defaults.max_age,
        "remove": policy.defaults.remove_named_servers,
        "users": users,
        "rules": [rule.id for rule in policy.rules],
    }


Z2JH_EFFECTIVE = {
    "url": "http://localhost:8081/hub/api",
    "interval": 600,
    "concurrency": 10,
    "idle": 3600,
    "max_age": math.inf,
    "remove": False,
    "users": None,
    "rules": [],
}


@pytest.mark.parametrize(
    ("values", "changed"),
    [
        pytest.param({}, {}, id="chart-defaults"),
        pytest.param({"base_url": "/jhub/"}, {"url": "http://localhost:8081/jhub/hub/api"}, id="base-url"),
        pytest.param({"users": True}, {"users": (3600, True)}, id="users"),
        pytest.param({"users": True, "adminUsers": False}, {"users": (3600, False)}, id="users-not-admins"),
        # the chart adds --cull-admin-users=false even when users is false: still no deletions
        pytest.param({"adminUsers": False}, {}, id="admin-users-false-alone"),
        pytest.param({"removeNamedServers": True}, {"remove": True}, id="remove-named-servers"),
        pytest.param({"maxAge": 28800}, {"max_age": 28800}, id="max-age"),
        pytest.param({"timeout": 1800, "every": 60}, {"idle": 1800, "interval": 60}, id="timeout-every"),
        pytest.param({"concurrency": 25}, {"concurrency": 25}, id="concurrency"),
        # falsy values leave the flag out; README: 7-day default timeout, 300 s default interval
        pytest.param({"timeout": 0}, {"idle": 7 * 86400}, id="timeout-0-omitted"),
        pytest.param({"every": 0}, {"interval": 300}, id="every-0-omitted"),
        pytest.param({"concurrency": 0}, {}, id="concurrency-0-omitted"),
        pytest.param(
            {
                "base_url": "/lab/",
                "users": True,
                "adminUsers": False,
                "removeNamedServers": True,
                "timeout": 7200,
                "every": 300,
                "concurrency": 5,
                "maxAge": 86400,
            },
            {
                "url": "http://localhost:8081/lab/hub/api",
                "users": (7200, False),
                "remove": True,
                "idle": 7200,
                "interval": 300,
                "concurrency": 5,
                "max_age": 86400,
            },
            id="everything",
        ),
    ],
)
def test_zero_to_jupyterhub_cull_values(values, changed):
    values = dict(values)
    base_url = values.pop("base_url", "/")
    command = z2jh_command(base_url, **values)
    assert effective(parse(shlex.join(command))) == Z2JH_EFFECTIVE | changed, command


TLJH_EFFECTIVE = {
    "url": "http://127.0.0.1:8081/tljh/hub/api",
    "interval": 60,
    "concurrency": 5,
    "idle": 600,
    "max_age": math.inf,
    "remove": False,
    "users": None,
    "rules": [],
}


@pytest.mark.parametrize(
    ("values", "changed"),
    [
        pytest.param({}, {}, id="tljh-defaults"),
        pytest.param({"users": True}, {"users": (600, True)}, id="users"),
        pytest.param({"remove_named_servers": True}, {"remove": True}, id="remove-named-servers"),
        pytest.param({"max_age": 86400}, {"max_age": 86400}, id="max-age"),
        pytest.param(
            {"timeout": 3600, "every": 300, "concurrency": 10},
            {"idle": 3600, "interval": 300, "concurrency": 10},
            id="numbers",
        ),
        pytest.param({"every": 0}, {"interval": 300}, id="every-0-is-the-default"),  # the incumbent 2.0 crashes
        pytest.param(
            {"users": True, "remove_named_servers": True, "max_age": 43200, "timeout": 1800},
            {"users": (1800, True), "remove": True, "max_age": 43200, "idle": 1800},
            id="everything",
        ),
    ],
)
def test_tljh_cull_values(monkeypatch, values, changed):
    monkeypatch.setenv("JUPYTERHUB_API_URL", TLJH_EFFECTIVE["url"])  # set by the hub for its managed service
    command = tljh_command(**values)
    assert effective(parse(shlex.join(command))) == TLJH_EFFECTIVE | changed, command


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(z2jh_command(users=True, removeNamedServers=True, adminUsers=False, maxAge=3600), id="z2jh"),
        pytest.param(tljh_command(True, users=True, max_age=3600), id="tljh"),
    ],
)
def test_chart_command_lines_with_incumbent_boolean_syntax(command):
    """jupyterhub-idle-culler 2.0 itself needs ``--cull-users=true``: both spellings mean the same here."""
    bools = {"--cull-users", "--remove-named-servers"}
    spelled = [arg + "=true" if arg in bools else arg for arg in command]
    assert spelled != command
    assert effective(parse(shlex.join(spelled))) == effective(parse(shlex.join(command)))


def test_login_page_follows_the_hub_base_url(monkeypatch):
    monkeypatch.delenv("CULLER_OAUTH_AUTHORIZE_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_BASE_URL", raising=False)
    assert Settings().authorize_url == "/hub/api/oauth2/authorize"
    monkeypatch.setenv("JUPYTERHUB_BASE_URL", "/jhub/")  # z2jh hub.baseUrl, passed on to managed services
    assert Settings().authorize_url == "/jhub/hub/api/oauth2/authorize"
    monkeypatch.setenv("CULLER_OAUTH_AUTHORIZE_URL", "https://hub.example.org/hub/api/oauth2/authorize")
    assert Settings().authorize_url == "https://hub.example.org/hub/api/oauth2/authorize"


def test_the_grouped_views_carry_the_flat_settings_and_never_show_a_secret() -> None:
    from culler.settings import Settings

    settings = Settings(
        api_token="hub-secret-token-1",
        warn_url="https://hooks.example.org/T0/secret-path",
        warn_secret="Bearer webhook-secret-2",
        activity_source="proxy",
        proxy_api_token="proxy-secret-3",
        concurrency=3,
        max_stops_per_cycle=7,
        tree_scan_path="/mnt/homes/{username}",
    )
    assert (settings.hub.token, settings.hub.concurrency, settings.hub.internal_certs) == (
        "hub-secret-token-1",
        3,
        None,
    )
    assert settings.cycle.max_stops == 7 and settings.probes.tree_scan_path == "/mnt/homes/{username}"
    assert settings.proxy is not None and settings.proxy.token == "proxy-secret-3"
    assert settings.notices is not None and settings.notices.secret_header == (
        "Authorization",
        "Bearer webhook-secret-2",
    )
    shown = repr((settings.hub, settings.proxy, settings.notices, settings.cycle, settings.probes, settings.clocks))
    for secret in ("hub-secret-token-1", "secret-path", "webhook-secret-2", "proxy-secret-3"):
        assert secret not in shown
    assert Settings(api_token="t", dry_run=True, warn_url="https://x/").notices is None  # no warnings in dry runs
