"""The decision engine: one server + policy + now -> stop/keep/exempt/skip, with the rule and reason."""

from datetime import datetime, timedelta, timezone

import pytest

from culler.core.decide import Action, Verdict, evaluate, evaluate_user
from culler.core.snapshot import ServerSnapshot, UserSnapshot
from culler.policy.model import Policy, policy_from_flags

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)


def ago(**delta) -> datetime:
    return NOW - timedelta(**delta)


def server(**overrides) -> ServerSnapshot:
    fields = {
        "user": "alice",
        "name": "",
        "admin": False,
        "groups": (),
        "last_activity": ago(hours=2),
        "started": ago(days=1),
        "pending": None,
        "ready": True,
        "user_options": {},
    }
    return ServerSnapshot(**{**fields, **overrides})


def policy(*rules: dict, users: dict | None = None, **defaults) -> Policy:
    data = {"version": 1, "defaults": defaults, "rules": list(rules)}
    if users is not None:
        data["users"] = users
    return Policy.model_validate(data)


# -- match keys ----------------------------------------------------------------------------------
# The rule stops after 1 hour; the defaults never stop. The server is 2 hours idle, so a match shows as STOP.

OPTS = "user_options"


@pytest.mark.parametrize(
    ("criteria", "overrides", "matches"),
    [
        pytest.param({"users": ["alice"]}, {}, True, id="user-name"),
        pytest.param({"users": "alice"}, {}, True, id="user-name-scalar"),
        pytest.param({"users": ["bob"]}, {}, False, id="user-other"),
        pytest.param({"users": ["bob", "alice"]}, {}, True, id="user-list-or"),
        pytest.param({"users": ["guest-*"]}, {"user": "guest-7"}, True, id="user-glob"),
        pytest.param({"users": ["guest-*"]}, {"user": "guest"}, False, id="user-glob-miss"),
        pytest.param({"users": ["Alice"]}, {}, False, id="user-case-sensitive"),
        pytest.param({"groups": ["staff"]}, {"groups": ("x", "staff")}, True, id="group"),
        pytest.param({"groups": ["staff"]}, {"groups": ("x",)}, False, id="group-other"),
        pytest.param({"groups": ["staff"]}, {"groups": ()}, False, id="group-none-of"),
        pytest.param({"groups": ["course-*"]}, {"groups": ("course-101",)}, True, id="group-glob"),
        pytest.param({"groups": ["a", "b"]}, {"groups": ("b",)}, True, id="group-list-or"),
        pytest.param({"admin": True}, {"admin": True}, True, id="admin-true"),
        pytest.param({"admin": True}, {"admin": False}, False, id="admin-true-miss"),
        pytest.param({"admin": False}, {"admin": False}, True, id="admin-false"),
        pytest.param({"admin": False}, {"admin": True}, False, id="admin-false-miss"),
        pytest.param({"servers": [""]}, {"name": ""}, True, id="default-server"),
        pytest.param({"servers": [""]}, {"name": "gpu"}, False, id="default-server-vs-named"),
        pytest.param({"servers": ["gpu"]}, {"name": "gpu"}, True, id="named-server"),
        pytest.param({"servers": ["scratch-*"]}, {"name": "scratch-1"}, True, id="server-glob"),
        pytest.param({"servers": ["scratch-*"]}, {"name": "big"}, False, id="server-glob-miss"),
        pytest.param({"servers": ["?*"]}, {"name": "x"}, True, id="any-named"),
        pytest.param({"servers": ["?*"]}, {"name": ""}, False, id="any-named-not-default"),
        pytest.param({"servers": ["*"]}, {"name": ""}, True, id="star-includes-default"),
        pytest.param({OPTS: {"gpu": "a100"}}, {OPTS: {"gpu": "a100"}}, True, id="option-exact"),
        pytest.param({OPTS: {"gpu": "a100"}}, {OPTS: {"gpu": "h100"}}, False, id="option-exact-miss"),
        pytest.param({OPTS: {"gpu": ["a100", "h100"]}}, {OPTS: {"gpu": "h100"}}, True, id="option-list-or"),
        pytest.param({OPTS: {"gpu": "*100"}}, {OPTS: {"gpu": "h100"}}, True, id="option-glob"),
        pytest.param({OPTS: {"gpu": "*"}}, {OPTS: {"gpu": "t4"}}, True, id="option-any"),
        pytest.param({OPTS: {"gpu": "*"}}, {OPTS: {"gpu": ""}}, True, id="option-any-empty-string"),
        pytest.param({OPTS: {"gpu": "*"}}, {OPTS: {"gpu": False}}, True, id="option-any-false"),
        pytest.param({OPTS: {"gpu": "*"}}, {OPTS: {"gpu": 0}}, True, id="option-any-zero"),
        pytest.param({OPTS: {"gpu": "*"}}, {OPTS: {}}, False, id="option-missing"),
        pytest.param({OPTS: {"gpu": "*"}}, {OPTS: {"gpu": None}}, False, id="option-null-is-missing"),
        pytest.param({OPTS: {"gpu": "*"}}, {OPTS: {"cpu": "4"}}, False, id="option-other-key"),
        pytest.param({OPTS: {"n": 2}}, {OPTS: {"n": 2}}, True, id="option-int"),
        pytest.param({OPTS: {"n": 2}}, {OPTS: {"n": "2"}}, False, id="option-int-vs-string"),
        pytest.param({OPTS: {"n": 2}}, {OPTS: {"n": 3}}, False, id="option-int-other"),
        pytest.param({OPTS: {"n": "2"}}, {OPTS: {"n": 2}}, True, id="option-string-pattern-vs-int"),
        pytest.param({OPTS: {"n": 1}}, {OPTS: {"n": True}}, False, id="option-int-vs-bool"),
        pytest.param({OPTS: {"on": True}}, {OPTS: {"on": True}}, True, id="option-bool"),
        pytest.param({OPTS: {"on": True}}, {OPTS: {"on": False}}, False, id="option-bool-other"),
        pytest.param({OPTS: {"on": True}}, {OPTS: {"on": 1}}, False, id="option-bool-vs-int"),
        pytest.param({OPTS: {"on": True}}, {OPTS: {"on": "true"}}, False, id="option-bool-vs-string"),
        pytest.param({OPTS: {"a": "1", "b": "2"}}, {OPTS: {"a": "1", "b": "2"}}, True, id="options-and"),
        pytest.param({OPTS: {"a": "1", "b": "2"}}, {OPTS: {"a": "1", "b": "3"}}, False, id="options-and-miss"),
        pytest.param({"users": ["alice"], "servers": ["gpu"]}, {"name": "gpu"}, True, id="and-both"),
        pytest.param({"users": ["alice"], "servers": ["gpu"]}, {"name": ""}, False, id="and-one-misses"),
        pytest.param({"users": ["bob"], "groups": ["staff"]}, {"groups": ("staff",)}, False, id="and-user-misses"),
        pytest.param({}, {}, True, id="empty-match-is-everything"),
        pytest.param(None, {}, True, id="no-match-is-everything"),
    ],
)
def test_match_keys(criteria, overrides, matches):
    rule = {"id": "r", "idle": "1h"} | ({"match": criteria} if criteria is not None else {})
    decision = evaluate(policy(rule, idle="never"), server(**overrides), NOW)
    assert (decision.action, decision.rule_id) == ((Action.STOP, "r") if matches else (Action.KEEP, "default"))


# -- limits, order, defaults ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_policy", "overrides", "action", "rule_id"),
    [
        pytest.param(policy(idle="3h"), {}, Action.KEEP, "default", id="defaults-keep"),
        pytest.param(policy(idle="1h"), {}, Action.STOP, "default", id="defaults-stop"),
        pytest.param(policy(idle="2h"), {}, Action.STOP, "default", id="idle-exactly-at-limit"),
        pytest.param(
            policy(idle="2h"),
            {"last_activity": ago(hours=2) + timedelta(seconds=1)},
            Action.KEEP,
            "default",
            id="idle-a-second-under",
        ),
        pytest.param(policy(idle="7d"), {}, Action.KEEP, "default", id="documented-default-7d"),
        pytest.param(policy(idle="never"), {"last_activity": ago(weeks=500)}, Action.KEEP, "default", id="never"),
        pytest.param(
            policy({"id": "a", "idle": "1h"}, {"id": "b", "idle": "never"}), {}, Action.STOP, "a", id="first-rule-wins"
        ),
        pytest.param(
            policy({"id": "b", "idle": "never"}, {"id": "a", "idle": "1h"}),
            {},
            Action.KEEP,
            "b",
            id="first-rule-wins-reversed",
        ),
        pytest.param(
            policy({"id": "miss", "match": {"users": ["bob"]}, "idle": "never"}, {"id": "hit", "idle": "1h"}),
            {},
            Action.STOP,
            "hit",
            id="non-matching-rule-skipped",
        ),
        pytest.param(
            policy({"id": "age", "max_age": "30d"}, idle="1h"), {}, Action.STOP, "age", id="idle-from-defaults"
        ),
        pytest.param(
            policy({"id": "idle", "idle": "3h"}, max_age="12h"), {}, Action.STOP, "idle", id="max-age-from-defaults"
        ),
        pytest.param(
            policy(idle="7d", max_age="12h"),
            {"last_activity": ago(seconds=5)},
            Action.STOP,
            "default",
            id="max-age-stops-active-server",
        ),
        pytest.param(
            policy(idle="7d", max_age="1d"), {"last_activity": NOW}, Action.STOP, "default", id="max-age-exactly"
        ),
        pytest.param(
            policy({"id": "vip", "exempt": True}, idle="1s", max_age="1s"),
            {},
            Action.EXEMPT,
            "vip",
            id="exempt-beats-idle-and-max-age",
        ),
        pytest.param(
            policy({"id": "vip", "exempt": True, "idle": "1s"}), {}, Action.EXEMPT, "vip", id="exempt-beats-own-idle"
        ),
        pytest.param(
            policy(idle="3h"),
            {"last_activity": None, "started": ago(hours=4)},
            Action.STOP,
            "default",
            id="no-activity-falls-back-to-started",
        ),
        pytest.param(
            policy(idle="5h"),
            {"last_activity": None, "started": ago(hours=4)},
            Action.KEEP,
            "default",
            id="no-activity-started-recently",
        ),
        pytest.param(
            policy(idle="0s"),
            {"last_activity": NOW + timedelta(hours=1)},
            Action.STOP,
            "default",
            id="zero-limit-stops-even-future",
        ),
        pytest.param(
            policy(idle="1s", max_age="never"),
            {"last_activity": NOW + timedelta(days=3)},
            Action.KEEP,
            "default",
            id="future-activity-is-active",
        ),
        pytest.param(policy(idle="1s"), {"pending": "spawn"}, Action.SKIP, "-", id="pending-spawn"),
        pytest.param(policy(idle="1s"), {"pending": "stop", "ready": False}, Action.SKIP, "-", id="pending-stop"),
        pytest.param(policy(idle="1s"), {"ready": False}, Action.SKIP, "-", id="not-ready"),
        pytest.param(policy({"id": "huge", "idle": "10000000d"}), {}, Action.KEEP, "huge", id="limit-past-year-9999"),
    ],
)
def test_decisions(the_policy, overrides, action, rule_id):
    decision = evaluate(the_policy, server(**overrides), NOW)
    assert (decision.action, decision.rule_id) == (action, rule_id), decision.reason
    assert decision.error is None


def test_future_activity_is_idle_zero():
    decision = evaluate(policy(idle="1h"), server(last_activity=NOW + timedelta(days=3)), NOW)
    assert decision.idle_seconds == 0
    assert decision.stop_at == NOW + timedelta(hours=1)


def test_stop_reason_names_idle_limit_and_rule():
    decision = evaluate(policy({"id": "gpu", "idle": "1h"}), server(last_activity=ago(hours=3)), NOW)
    assert decision.idle_seconds == 3 * 3600
    assert decision.stop_at == ago(hours=2)
    assert decision.reason == "no activity for 3h (limit 1h, rule gpu)"


def test_max_age_reason_and_stop_at():
    decision = evaluate(policy(max_age="12h"), server(last_activity=NOW), NOW)
    assert decision.action is Action.STOP
    assert decision.stop_at == ago(hours=12)
    assert decision.reason == "running for 1d (max age 12h, rule default)"


def test_neither_activity_nor_start_is_kept_with_error():
    decision = evaluate(policy(idle="1s"), server(last_activity=None, started=None), NOW)
    assert decision.action is Action.KEEP and decision.error


# -- stop_at for servers that are kept -----------------------------------------------------------


@pytest.mark.parametrize(
    ("defaults", "overrides", "stop_at"),
    [
        pytest.param({"idle": "3h"}, {}, ago(hours=2) + timedelta(hours=3), id="idle-first"),
        pytest.param({"idle": "3h", "max_age": "25h"}, {}, ago(days=1) + timedelta(hours=25), id="max-age-first"),
        pytest.param({"idle": "7d", "max_age": "30h"}, {}, ago(days=1) + timedelta(hours=30), id="max-age-earlier"),
        pytest.param({"idle": "never"}, {}, None, id="never"),
        pytest.param({"idle": "never", "max_age": "2d"}, {}, ago(days=1) + timedelta(days=2), id="only-max-age"),
        pytest.param(
            {"idle": "3h", "max_age": "1h"},
            {"started": None},
            ago(hours=2) + timedelta(hours=3),
            id="no-start-no-max-age",
        ),
    ],
)
def test_keep_stop_at(defaults, overrides, stop_at):
    decision = evaluate(policy(**defaults), server(**overrides), NOW)
    assert decision.action is Action.KEEP
    assert decision.stop_at == stop_at


# -- groups the hub did not report ---------------------------------------------------------------


def test_unknown_groups_under_a_group_rule_keep_with_error():
    the_policy = policy({"id": "students", "match": {"groups": ["course-*"]}, "idle": "1h"}, idle="1s")
    decision = evaluate(the_policy, server(groups=None, last_activity=ago(weeks=10)), NOW)
    assert (decision.action, decision.rule_id) == (Action.KEEP, "students")
    assert "read:users:groups" in decision.error


@pytest.mark.parametrize(
    ("rules", "action", "rule_id"),
    [
        pytest.param(
            [{"id": "first", "idle": "1h"}, {"id": "g", "match": {"groups": ["x"]}}],
            Action.STOP,
            "first",
            id="earlier-rule-decides",
        ),
        pytest.param(
            [{"id": "g", "match": {"groups": ["x"], "users": ["bob"]}}],
            Action.STOP,
            "default",
            id="other-keys-rule-it-out",
        ),
    ],
)
def test_unknown_groups_do_not_matter_when_not_needed(rules, action, rule_id):
    decision = evaluate(policy(*rules, idle="1h"), server(groups=None), NOW)
    assert (decision.action, decision.rule_id, decision.error) == (action, rule_id, None)


# -- plugins -------------------------------------------------------------------------------------


def no_opinion(server, args, now):
    return None


def stop_it(server, args, now):
    return Verdict(Action.STOP, f"plugin says stop ({args['why']})")


def keep_it(server, args, now):
    return Verdict("keep", "plugin says keep")


def exempt_it(server, args, now):
    return Verdict("exempt", "plugin says exempt")


def broken(server, args, now):
    raise RuntimeError("boom")


def bad_action(server, args, now):
    return Verdict("delete-everything", "?")


def not_a_verdict(server, args, now):
    return True


PLUGINS = {f.__name__: f for f in (no_opinion, stop_it, keep_it, exempt_it, broken, bad_action, not_a_verdict)}


@pytest.mark.parametrize(
    ("plugin", "action", "rule_id", "has_error"),
    [
        pytest.param("no_opinion", Action.KEEP, "next", False, id="none-falls-through"),
        pytest.param("stop_it", Action.STOP, "p", False, id="stop"),
        pytest.param("keep_it", Action.KEEP, "p", False, id="keep"),
        pytest.param("exempt_it", Action.EXEMPT, "p", False, id="exempt"),
        pytest.param("broken", Action.KEEP, "p", True, id="raises"),
        pytest.param("bad_action", Action.KEEP, "p", True, id="unknown-action"),
        pytest.param("not_a_verdict", Action.KEEP, "p", True, id="not-a-verdict"),
        pytest.param("missing", Action.KEEP, "p", True, id="not-installed"),
    ],
)
def test_plugins(plugin, action, rule_id, has_error):
    the_policy = policy(
        {"id": "p", "plugin": plugin, "args": {"why": "test"}},
        {"id": "next", "idle": "never"},
        idle="1s",  # the defaults would stop it: a failure must not fall through to them
    )
    decision = evaluate(the_policy, server(name="nb"), NOW, PLUGINS)
    assert (decision.action, decision.rule_id, decision.error is not None) == (action, rule_id, has_error)


def test_plugin_stop_carries_reason_and_remove():
    the_policy = policy({"id": "p", "plugin": "stop_it", "args": {"why": "gpu"}}, remove_named_servers=True)
    decision = evaluate(the_policy, server(name="nb", last_activity=NOW), NOW, PLUGINS)
    assert (decision.action, decision.reason, decision.stop_at, decision.remove) == (
        Action.STOP,
        "plugin says stop (gpu)",
        NOW,
        True,
    )


def test_plugin_gets_server_args_and_now():
    seen = []
    the_policy = policy({"id": "p", "plugin": "spy", "args": {"k": 1}})
    evaluate(the_policy, server(), NOW, {"spy": lambda s, a, n: seen.append((s.user, dict(a), n))})
    assert seen == [("alice", {"k": 1}, NOW)]


def test_plugin_rule_not_matching_is_not_asked():
    the_policy = policy({"id": "p", "plugin": "broken", "match": {"users": ["bob"]}}, idle="1h")
    assert evaluate(the_policy, server(), NOW, PLUGINS).action is Action.STOP


def test_plugin_not_installed_without_a_plugin_map():
    decision = evaluate(policy({"id": "p", "plugin": "stop_it"}, idle="1s"), server(), NOW)
    assert (decision.action, decision.error) == (Action.KEEP, "plugin 'stop_it' is not installed")


# -- remove named servers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("default_remove", "rule_remove", "name", "remove"),
    [
        pytest.param(False, None, "nb", False, id="off"),
        pytest.param(True, None, "nb", True, id="defaults-on"),
        pytest.param(True, None, "", False, id="never-default-server"),
        pytest.param(True, False, "nb", False, id="rule-off"),
        pytest.param(False, True, "nb", True, id="rule-on"),
        pytest.param(False, True, "", False, id="rule-on-default-server"),
    ],
)
def test_remove(default_remove, rule_remove, name, remove):
    rule = {"id": "r", "idle": "1h"} | ({"remove_named_servers": rule_remove} if rule_remove is not None else {})
    decision = evaluate(policy(rule, remove_named_servers=default_remove), server(name=name), NOW)
    assert decision.action is Action.STOP
    assert decision.remove is remove


# -- users ---------------------------------------------------------------------------------------


def user(**overrides) -> UserSnapshot:
    fields = {
        "name": "alice",
        "admin": False,
        "groups": (),
        "last_activity": ago(days=100),
        "created": ago(days=400),
        "has_servers": False,
    }
    return UserSnapshot(**{**fields, **overrides})


DELETE_90D = {"delete_inactive_after": "90d"}


@pytest.mark.parametrize(
    ("the_policy", "overrides", "delete"),
    [
        pytest.param(policy(users=DELETE_90D), {}, True, id="inactive"),
        pytest.param(policy(users=DELETE_90D), {"last_activity": ago(days=90)}, True, id="exactly-at-limit"),
        pytest.param(policy(users=DELETE_90D), {"last_activity": ago(days=89)}, False, id="recently-active"),
        pytest.param(policy(users=DELETE_90D), {"last_activity": NOW + timedelta(days=1)}, False, id="future"),
        pytest.param(policy(), {}, False, id="section-off"),
        pytest.param(policy(users=DELETE_90D), {"has_servers": True}, False, id="has-servers"),
        pytest.param(policy(users=DELETE_90D), {"admin": True}, False, id="admin"),
        pytest.param(policy(users=DELETE_90D | {"include_admins": True}), {"admin": True}, True, id="admin-included"),
        pytest.param(policy(users=DELETE_90D), {"last_activity": None}, True, id="falls-back-to-created"),
        pytest.param(
            policy(users=DELETE_90D), {"last_activity": None, "created": ago(days=10)}, False, id="created-recently"
        ),
        pytest.param(policy(users=DELETE_90D), {"last_activity": None, "created": None}, False, id="no-times"),
        pytest.param(policy(users={"delete_inactive_after": "never"}), {}, False, id="never"),
        pytest.param(
            policy({"id": "vip", "match": {"users": ["alice"]}, "exempt": True}, users=DELETE_90D),
            {},
            False,
            id="exempt-rule",
        ),
        pytest.param(
            policy({"id": "vip", "match": {"users": ["bob"]}, "exempt": True}, users=DELETE_90D),
            {},
            True,
            id="exempt-rule-for-others",
        ),
        pytest.param(
            policy({"id": "st", "match": {"groups": ["staff"]}, "exempt": True}, users=DELETE_90D),
            {"groups": ("staff",)},
            False,
            id="exempt-group",
        ),
        pytest.param(
            policy({"id": "st", "match": {"groups": ["staff"]}, "exempt": True}, users=DELETE_90D),
            {"groups": None},
            False,
            id="groups-unknown",
        ),
        pytest.param(
            policy({"id": "short", "match": {"users": ["alice"]}, "idle": "1h"}, users=DELETE_90D),
            {},
            True,
            id="non-exempt-rule",
        ),
        pytest.param(policy({"id": "p", "plugin": "x"}, users=DELETE_90D), {}, False, id="plugin-rule-may-keep"),
        pytest.param(
            policy({"id": "p", "plugin": "x", "match": {"users": ["bob"]}}, users=DELETE_90D),
            {},
            True,
            id="plugin-rule-for-others",
        ),
        # a rule about some servers protects those servers, not the account
        pytest.param(
            policy({"id": "d", "match": {"servers": [""]}, "exempt": True}, users=DELETE_90D),
            {},
            True,
            id="exempt-default-servers",
        ),
        pytest.param(
            policy(
                {"id": "g", "match": {"users": ["alice"], "user_options": {"gpu": "*"}}, "exempt": True},
                users=DELETE_90D,
            ),
            {},
            True,
            id="exempt-gpu-servers",
        ),
        pytest.param(
            policy({"id": "d", "match": {"servers": [""], "groups": ["x"]}, "exempt": True}, users=DELETE_90D),
            {"groups": None},
            True,
            id="server-rule-groups-unknown",
        ),
    ],
)
def test_evaluate_user(the_policy, overrides, delete):
    decision = evaluate_user(the_policy, user(**overrides), NOW)
    assert decision.delete is delete, decision.reason


def test_user_deletion_reason():
    decision = evaluate_user(policy(users=DELETE_90D), user(), NOW)
    assert decision.reason == "inactive for 14w2d (limit 12w6d)"


# -- the incumbent's flags, end to end -----------------------------------------------------------

INCUMBENT = {
    "timeout": 3600,
    "max_age": 0,
    "cull_default_servers": True,
    "cull_named_servers": True,
    "remove_named_servers": False,
    "cull_users": False,
    "cull_admin_users": True,
}


@pytest.mark.parametrize(
    ("flags", "overrides", "action"),
    [
        pytest.param({}, {}, Action.STOP, id="timeout"),
        pytest.param({"timeout": 3 * 3600}, {}, Action.KEEP, id="within-timeout"),
        pytest.param({"cull_default_servers": False}, {}, Action.EXEMPT, id="default-servers-off"),
        pytest.param({"cull_default_servers": False}, {"name": "nb"}, Action.STOP, id="default-off-named-on"),
        pytest.param({"cull_named_servers": False}, {"name": "nb"}, Action.EXEMPT, id="named-servers-off"),
        pytest.param({"cull_named_servers": False}, {}, Action.STOP, id="named-off-default-on"),
        # unlike jupyterhub-idle-culler (README: "never overrides --cull-*-servers=false")
        pytest.param({"cull_default_servers": False, "max_age": 12 * 3600}, {}, Action.EXEMPT, id="kind-beats-age"),
        pytest.param(
            {"cull_named_servers": False, "max_age": 12 * 3600},
            {"name": "nb"},
            Action.EXEMPT,
            id="named-kind-beats-age",
        ),
        pytest.param(
            {"timeout": 3 * 3600, "max_age": 12 * 3600}, {"last_activity": NOW}, Action.STOP, id="max-age-active"
        ),
    ],
)
def test_incumbent_flags(flags, overrides, action):
    the_policy = policy_from_flags(**{**INCUMBENT, **flags})
    assert evaluate(the_policy, server(**overrides), NOW).action is action


@pytest.mark.parametrize("kind", ["cull_default_servers", "cull_named_servers"])
def test_incumbent_server_kind_flags_do_not_stop_user_deletion(kind):
    the_policy = policy_from_flags(**{**INCUMBENT, "cull_users": True, kind: False})
    assert evaluate_user(the_policy, user(), NOW).delete
