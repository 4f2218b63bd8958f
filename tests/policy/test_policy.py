"""Policy files: parsing, error messages, shadowing warnings, the incumbent's flags, shipped files."""

import json
import math
from pathlib import Path

import pytest
import yaml

from culler.policy.model import (
    Match,
    Policy,
    PolicyError,
    load_policy,
    parse_policy,
    policy_from_flags,
    policy_schema,
    shadowed_rules,
)
from culler.policy.options import OptionMatch

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
DAY = 86400

EXAMPLE = """
version: 1
defaults:
  idle: 7d
  max_age: 30d
  remove_named_servers: false
rules:
  - id: staff
    description: admins are never stopped
    match: {admin: true}
    exempt: true
  - id: gpu
    match: {user_options: {gpu_type: "*"}}
    idle: 1d
    max_age: 2w
  - id: students
    match: {groups: ["course-*"], servers: [""]}
    idle: 36h
  - id: scratch
    match: {servers: ["scratch-*"]}
    idle: 2h
    remove_named_servers: true
  - id: keep-alive
    match: {users: [alice, "guest-*"]}
    plugin: keepalive
    args: {file: .keepalive}
users:
  delete_inactive_after: 90d
  include_admins: false
"""


def errors_of(text: str, plugins=None) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml", plugins)
    assert caught.value.source == "p.yaml"
    return caught.value.errors


def test_example_parses():
    policy = parse_policy(EXAMPLE, "p.yaml", plugins=["keepalive"])
    assert [rule.id for rule in policy.rules] == ["staff", "gpu", "students", "scratch", "keep-alive"]
    assert (policy.defaults.idle, policy.defaults.max_age) == (7 * DAY, 30 * DAY)
    staff, gpu, students, scratch, keep_alive = policy.rules
    assert staff.exempt and staff.match == Match(admin=True)
    assert gpu.match.user_options == {"gpu_type": OptionMatch(any_of=["*"])}
    assert (gpu.idle, gpu.max_age) == (DAY, 14 * DAY)
    assert students.match.groups == ["course-*"] and students.match.servers == [""]
    assert students.max_age is None  # unset fields come from defaults at decision time
    assert scratch.remove_named_servers is True
    assert keep_alive.plugin == "keepalive" and keep_alive.args == {"file": ".keepalive"}
    assert policy.users.delete_inactive_after == 90 * DAY and policy.users.include_admins is False
    assert shadowed_rules(policy) == []


def test_minimal_policy_has_documented_defaults():
    policy = parse_policy("version: 1", "p.yaml")
    assert policy.defaults.idle == 7 * DAY
    assert math.isinf(policy.defaults.max_age)
    assert policy.defaults.remove_named_servers is False
    assert policy.rules == [] and policy.users is None


def test_rules_without_id_are_numbered():
    policy = parse_policy("version: 1\nrules: [{idle: 1h}, {id: x}, {idle: 2h}]", "p.yaml")
    assert [rule.id for rule in policy.rules] == ["rule-1", "x", "rule-3"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("version: 2", "p.yaml: version: unsupported version 2; this service reads version 1", id="v2"),
        pytest.param("rules: []", "p.yaml: version: Field required", id="no-version"),
        pytest.param(
            "version: 1\nrules:\n  - id: a\n  - id: gpu\n    idle: 5x",
            "p.yaml: rules[1] (id 'gpu'): idle: not a duration: '5x'",
            id="bad-idle",
        ),
        pytest.param(
            "version: 1\nrules:\n  - id: gpu\n    max_age: -1",
            "p.yaml: rules[0] (id 'gpu'): max_age: duration must not be negative",
            id="negative-max-age",
        ),
        pytest.param(
            "version: 1\nrules:\n  - id: gpu\n    idel: 5m",
            "p.yaml: rules[0] (id 'gpu'): idel: Extra inputs are not permitted",
            id="unknown-rule-key",
        ),
        pytest.param(
            "version: 1\nrules:\n  - id: gpu\n    match: {usres: [a]}",
            "p.yaml: rules[0] (id 'gpu'): match.usres: Extra inputs are not permitted",
            id="unknown-match-key",
        ),
        pytest.param(
            "version: 1\ndefaults: {idle: 1d, grace: 1h}",
            "p.yaml: defaults.grace: Extra inputs are not permitted",
            id="unknown-defaults-key",
        ),
        pytest.param("version: 1\ncull: true", "p.yaml: cull: Extra inputs are not permitted", id="unknown-top-key"),
        pytest.param(
            "version: 1\nrules:\n  - id: gpu\n    match: {user_options: {gpu: {a: 1}}}",
            "p.yaml: rules[0] (id 'gpu'): match.user_options.gpu.a: Extra inputs are not permitted",
            id="option-value-mapping",
        ),
        pytest.param(
            "version: 1\nrules:\n  - id: gpu\n  - id: cpu\n  - id: gpu",
            "p.yaml: rules[2] (id 'gpu'): id: 'gpu' is already used by rules[0]",
            id="duplicate-id",
        ),
        pytest.param(
            "version: 1\nrules:\n  - id: default",
            "p.yaml: rules[0] (id 'default'): id: 'default' is reserved",
            id="reserved-id",
        ),
        pytest.param(
            "version: 1\nrules:\n  - id: gpu\n    args: {a: 1}",
            "p.yaml: rules[0] (id 'gpu'): args: 'args' is only meaningful with 'plugin'",
            id="args-without-plugin",
        ),
        pytest.param(
            "version: 1\nrules:\n  - idle: 1h\n  - idle: bogus",
            "p.yaml: rules[1] (id 'rule-2'): idle: not a duration",
            id="rule-without-id",
        ),
        pytest.param(
            "version: 1\nusers: {include_admins: true}",
            "p.yaml: users.delete_inactive_after: Field required",
            id="users-without-limit",
        ),
        pytest.param("version: 1\nrules: {a: 1}", "p.yaml: rules: Input should be a valid list", id="rules-mapping"),
        pytest.param("version: 1\nrules: [: [", "p.yaml: not valid YAML: ", id="bad-yaml"),
        pytest.param("- version: 1", "p.yaml: expected a mapping with 'version: 1' at the top", id="top-list"),
        pytest.param("", "p.yaml: expected a mapping", id="empty-file"),
        pytest.param("just text", "p.yaml: expected a mapping", id="top-scalar"),
    ],
)
def test_errors_name_file_rule_and_field(text, expected):
    errors = errors_of(text)
    assert any(line.startswith(expected) for line in errors), errors


def test_every_problem_is_reported():
    errors = errors_of("version: 1\nrules:\n  - id: a\n    idle: 5x\n    max_age: 1.5h\n  - id: b\n    bogus: 1")
    assert len(errors) == 3
    assert [line.split(":")[1].strip() for line in errors] == ["rules[0] (id 'a')"] * 2 + ["rules[1] (id 'b')"]


def test_yaml_error_is_one_line():
    (line,) = errors_of("version: 1\nrules:\n  - id: a\n   bad: indent")
    assert "\n" not in line


@pytest.mark.parametrize(
    ("plugins", "ok"),
    [
        pytest.param(None, True, id="no-list-no-check"),
        pytest.param(["keepalive"], True, id="installed"),
        pytest.param([], False, id="none-installed"),
        pytest.param(["other"], False, id="other-installed"),
    ],
)
def test_unknown_plugin(plugins, ok):
    if ok:
        parse_policy(EXAMPLE, "p.yaml", plugins)
        return
    (line,) = errors_of(EXAMPLE, plugins)
    assert line.startswith("p.yaml: rules[4] (id 'keep-alive'): plugin: 'keepalive' is not installed")


def test_load_policy_reads_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(EXAMPLE)
    assert load_policy(path).rules[1].id == "gpu"


def test_load_policy_errors_name_the_path(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 2")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.errors == [f"{path}: version: unsupported version 2; this service reads version 1"]


@pytest.mark.parametrize("name", ["missing.yaml", "."], ids=["missing", "directory"])
def test_unreadable_file(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (line,) = caught.value.errors
    assert line.startswith(f"{path}: cannot read: ")
    assert caught.value.source == str(path)


# -- shadowing ----------------------------------------------------------------------------------


def rules_policy(*matches, plugin_first=False) -> Policy:
    rules = [{"id": f"r{i}", "match": m} for i, m in enumerate(matches)]
    if plugin_first:
        rules[0]["plugin"] = "p"
    return Policy.model_validate({"version": 1, "rules": rules})


@pytest.mark.parametrize(
    ("earlier", "later", "shadowed"),
    [
        pytest.param(None, {"users": ["x"]}, True, id="catch-all"),
        pytest.param({}, {"servers": [""]}, True, id="empty-match-catch-all"),
        pytest.param({"groups": ["a"]}, {"groups": ["a"], "users": ["x"]}, True, id="group-narrowed-by-user"),
        pytest.param({"groups": ["a"]}, {"groups": ["b"]}, False, id="other-group"),
        pytest.param({"groups": ["a"]}, {"groups": ["a", "b"]}, False, id="wider-group-list"),
        pytest.param({"groups": ["course-*"]}, {"groups": ["course-101"]}, True, id="group-glob"),
        pytest.param({"groups": ["a"]}, {"users": ["x"]}, False, id="later-not-limited-to-group"),
        pytest.param({"servers": ["scratch-*"]}, {"servers": ["scratch-1"]}, True, id="server-glob"),
        pytest.param({"servers": ["scratch-*"]}, {"servers": ["scratch-1", "big"]}, False, id="server-glob-partial"),
        pytest.param({"servers": ["scratch-1"]}, {"servers": ["scratch-*"]}, False, id="narrow-glob-not-covered"),
        pytest.param({"servers": ["?*"]}, {"servers": [""]}, False, id="named-vs-default"),
        pytest.param({"admin": True}, {"admin": True, "users": ["x"]}, True, id="admin"),
        pytest.param({"admin": True}, {"users": ["x"]}, False, id="admin-vs-anyone"),
        pytest.param({"admin": False}, {"admin": True}, False, id="admin-false-vs-true"),
        pytest.param({"user_options": {"gpu": "*"}}, {"user_options": {"gpu": "a100"}}, True, id="option-any"),
        pytest.param({"user_options": {"gpu": "a*"}}, {"user_options": {"gpu": ["a100", "h100"]}}, False, id="opt"),
        pytest.param({"user_options": {"gpu": "*"}}, {"users": ["x"]}, False, id="option-vs-no-option"),
        pytest.param({"user_options": {"n": 1}}, {"user_options": {"n": 1}}, True, id="option-int-same"),
        pytest.param({"user_options": {"n": 1}}, {"user_options": {"n": "1"}}, False, id="option-int-vs-string"),
        pytest.param({"user_options": {"n": "1"}}, {"user_options": {"n": 1}}, True, id="option-string-vs-int"),
        pytest.param({"user_options": {"on": True}}, {"user_options": {"on": "True"}}, False, id="option-bool-vs-str"),
        pytest.param({"user_options": {"on": True}}, {"user_options": {"on": 1}}, False, id="option-bool-vs-int"),
    ],
)
def test_shadowed_rules(earlier, later, shadowed):
    warnings = shadowed_rules(rules_policy(earlier, later))
    assert warnings == (
        ["rules[1] (id 'r1') can never match: rule 'r0' comes first and matches every server it would"]
        if shadowed
        else []
    )


def test_plugin_rules_never_shadow():
    assert shadowed_rules(rules_policy(None, {"users": ["x"]}, plugin_first=True)) == []


def test_shadowed_once_per_rule():
    warnings = shadowed_rules(rules_policy(None, {}, {"users": ["x"]}))
    assert [w.split(" can")[0] for w in warnings] == ["rules[1] (id 'r1')", "rules[2] (id 'r2')"]


# -- the incumbent's flags ----------------------------------------------------------------------

FLAG_DEFAULTS = {
    "timeout": 3600,
    "max_age": 0,
    "cull_default_servers": True,
    "cull_named_servers": True,
    "remove_named_servers": False,
    "cull_users": False,
    "cull_admin_users": True,
}


def flags(**overrides) -> dict:
    no_settle = {"probes": [], "window": 120, "max_deferral": 21600, "at_cap": "stop"}
    data = {
        "version": 1,
        "defaults": {
            "idle": 3600.0,
            "max_age": math.inf,
            "remove_named_servers": False,
            "settle": no_settle,
            "keep": None,  # the incumbent's flags let nobody keep a server
        },
    }
    data["rules"] = overrides.pop("rules", [])
    data["users"] = overrides.pop("users", None)
    data["defaults"].update(overrides)
    return data


EXEMPT = {
    "exempt": True,
    "idle": None,
    "max_age": None,
    "remove_named_servers": None,
    "settle": None,
    "keep": None,
    "plugin": None,
}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param({}, flags(), id="zero-to-jupyterhub-defaults"),
        pytest.param({"max_age": 86400}, flags(max_age=86400.0), id="max-age"),
        pytest.param({"remove_named_servers": True}, flags(remove_named_servers=True), id="remove-named"),
        pytest.param(
            {"cull_default_servers": False},
            flags(rules=[{"id": "flag-no-default-servers", "match": {"servers": [""]}, **EXEMPT}]),
            id="no-default-servers",
        ),
        pytest.param(
            {"cull_named_servers": False},
            flags(rules=[{"id": "flag-no-named-servers", "match": {"servers": ["?*"]}, **EXEMPT}]),
            id="no-named-servers",
        ),
        pytest.param(
            {"cull_users": True},
            flags(users={"delete_inactive_after": 3600.0, "include_admins": True}),
            id="cull-users",
        ),
        pytest.param(
            {"cull_users": True, "cull_admin_users": False},
            flags(users={"delete_inactive_after": 3600.0, "include_admins": False}),
            id="cull-users-not-admins",
        ),
        pytest.param({"cull_admin_users": False}, flags(), id="admin-flag-alone-does-nothing"),
    ],
)
def test_policy_from_flags(given, expected):
    policy = policy_from_flags(**{**FLAG_DEFAULTS, **given})
    dumped = policy.model_dump(exclude={"rules": {"__all__": {"description", "args"}}})
    for rule in dumped["rules"]:
        rule["match"] = {k: v for k, v in rule["match"].items() if v is not None}
    assert dumped == expected


# -- shipped files ------------------------------------------------------------------------------

SHIPPED = sorted([POLICIES / "default.yaml", *POLICIES.glob("examples/*.yaml")])


def test_shipped_policies_exist():
    assert len(SHIPPED) >= 5


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_load_cleanly(path):
    policy = load_policy(path, plugins=[])
    assert shadowed_rules(policy) == []


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_follow_the_json_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    document = yaml.safe_load(path.read_text())
    assert list(jsonschema.Draft202012Validator(policy_schema()).iter_errors(document)) == []


def test_default_policy_is_seven_days_idle():
    policy = load_policy(POLICIES / "default.yaml")
    assert (policy.defaults.idle, policy.defaults.max_age, policy.rules) == (7 * DAY, math.inf, [])


def test_schema_file_is_current():
    expected = json.dumps(policy_schema(), indent=2) + "\n"
    actual = (POLICIES / "policy.schema.json").read_text()
    assert actual == expected, "regenerate: jupyterhub-activity-culler policy schema -o policies/policy.schema.json"


def test_schema_is_strict_json():
    text = json.dumps(policy_schema(), allow_nan=False)  # no Infinity for a "never" default
    schema = json.loads(text)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["version"]


def test_the_server_probe_with_at_cap_skip_is_warned_about() -> None:
    from culler.policy.model import trusting_servers

    policy = Policy.model_validate(
        {
            "version": 1,
            "defaults": {"settle": {"probes": ["server"], "window": "30s", "at_cap": "skip"}},
            "rules": [{"id": "ok", "settle": {"probes": ["server", "tree-scan"], "at_cap": "stop"}}],
        }
    )
    [warning] = trusting_servers(policy)
    assert warning.startswith("defaults: settle.probes includes 'server' with at_cap: skip")
