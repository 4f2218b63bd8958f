"""Parsing hub user models into snapshots: real-looking JupyterHub 6 models, timestamps, untrustworthy input."""

import copy
from datetime import datetime, timezone

import pytest

from culler.core.snapshot import ServerSnapshot, SnapshotError, UserSnapshot, servers_of, user_of
from culler.core.text import isoformat, parse_time


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# GET /hub/api/users?state=ready as JupyterHub 6 answers it to a token with list:users, read:users:activity,
# read:servers and read:users:groups (named servers enabled, a profile list spawner).
HUB6_USER = {
    "kind": "user",
    "name": "alice",
    "admin": False,
    "roles": ["user"],
    "groups": ["course-101", "gpu-users"],
    "server": "/user/alice/",
    "pending": None,
    "created": "2024-01-10T09:00:00.123456Z",
    "last_activity": "2024-06-01T11:58:00.000000Z",
    "servers": {
        "": {
            "name": "",
            "full_name": "alice/",
            "last_activity": "2024-06-01T10:00:00.000000Z",
            "started": "2024-06-01T08:00:00.000000Z",
            "pending": None,
            "ready": True,
            "stopped": False,
            "url": "/user/alice/",
            "user_options": {"profile": "cpu-small"},
            "progress_url": "/hub/api/users/alice/server/progress",
            "full_url": None,
            "full_progress_url": None,
        },
        "gpu": {
            "name": "gpu",
            "full_name": "alice/gpu",
            "last_activity": None,
            "started": "2024-05-31T22:00:00.000000",
            "pending": None,
            "ready": True,
            "stopped": False,
            "url": "/user/alice/gpu/",
            "user_options": {"profile": "a100-gpu", "gpu_type": "a100", "gpus": 2, "shared": False},
            "progress_url": "/hub/api/users/alice/servers/gpu/progress",
        },
        "spawning": {
            "name": "spawning",
            "last_activity": "2024-06-01T11:59:00+02:00",
            "started": None,
            "pending": "spawn",
            "ready": False,
            "stopped": False,
            "url": "/user/alice/spawning/",
            "user_options": None,
        },
    },
}


def test_hub6_user_model():
    default, gpu, spawning = servers_of(HUB6_USER)
    assert default == ServerSnapshot(
        user="alice",
        name="",
        admin=False,
        groups=("course-101", "gpu-users"),
        last_activity=utc(2024, 6, 1, 10, 0),
        started=utc(2024, 6, 1, 8, 0),
        pending=None,
        ready=True,
        user_options={"profile": "cpu-small"},
    )
    assert (default.key, default.label) == ("alice/", "alice")
    assert (gpu.key, gpu.label) == ("alice/gpu", "alice/gpu")
    assert gpu.user_options == {"profile": "a100-gpu", "gpu_type": "a100", "gpus": 2, "shared": False}
    assert gpu.last_activity is None
    assert gpu.started == utc(2024, 5, 31, 22, 0)  # naive: UTC
    assert gpu.activity_time == gpu.started  # no activity reported yet: counts from the start
    assert (spawning.pending, spawning.ready, spawning.user_options) == ("spawn", False, {})
    assert spawning.last_activity == utc(2024, 6, 1, 9, 59)  # an offset is converted to UTC


def test_groups_absent_means_unknown():
    model = copy.deepcopy(HUB6_USER)
    del model["groups"]
    assert {server.groups for server in servers_of(model)} == {None}


def test_groups_empty_means_none():
    model = copy.deepcopy(HUB6_USER) | {"groups": []}
    assert {server.groups for server in servers_of(model)} == {()}


def test_admin():
    model = copy.deepcopy(HUB6_USER) | {"admin": True}
    assert all(server.admin for server in servers_of(model))


def test_user_without_servers():
    assert servers_of({"name": "bob", "servers": {}}) == []


def with_server_field(key, value) -> dict:
    model = copy.deepcopy(HUB6_USER)
    model["servers"][""][key] = value
    return model


@pytest.mark.parametrize(
    ("model", "message"),
    [
        pytest.param({"name": "bob", "admin": False}, "read:servers", id="servers-missing"),
        pytest.param({"name": "bob", "servers": None}, "read:servers", id="servers-null"),
        pytest.param({"name": "bob", "servers": []}, "read:servers", id="servers-list"),
        pytest.param({"servers": {}}, "without a name", id="no-name"),
        pytest.param({"name": "", "servers": {}}, "without a name", id="empty-name"),
        pytest.param({"name": 5, "servers": {}}, "without a name", id="name-not-string"),
        pytest.param(["alice"], "not an object", id="list"),
        pytest.param("alice", "not an object", id="string"),
        pytest.param(None, "not an object", id="null"),
        pytest.param({"name": "bob", "servers": {"": "running"}}, "bob/: model is not an object", id="server-string"),
        pytest.param({"name": "bob", "servers": {}, "groups": "staff"}, "'groups' is not a list", id="groups-str"),
        pytest.param({"name": "bob", "servers": {}, "groups": [1]}, "'groups' is not a list", id="groups-ints"),
        pytest.param(with_server_field("last_activity", "yesterday"), "alice/: ", id="garbage-activity"),
        pytest.param(with_server_field("started", "2024-13-01T00:00:00Z"), "alice/: ", id="month-13"),
        pytest.param(with_server_field("started", 1717236000), "not a timestamp", id="epoch-number"),
        pytest.param(with_server_field("user_options", ["gpu"]), "'user_options' is not an object", id="options"),
    ],
)
def test_untrustworthy_models(model, message):
    with pytest.raises(SnapshotError, match=message):
        servers_of(model)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2024-06-01T10:00:00Z", utc(2024, 6, 1, 10), id="z"),
        pytest.param("2024-06-01T10:00:00.123456Z", utc(2024, 6, 1, 10, 0, 0, 123456), id="z-micro"),
        pytest.param("2024-06-01T10:00:00", utc(2024, 6, 1, 10), id="naive-is-utc"),
        pytest.param("2024-06-01T10:00:00.5", utc(2024, 6, 1, 10, 0, 0, 500000), id="naive-fraction"),
        pytest.param("2024-06-01T12:00:00+02:00", utc(2024, 6, 1, 10), id="offset"),
        pytest.param(" 2024-06-01T10:00:00Z ", utc(2024, 6, 1, 10), id="whitespace"),
        pytest.param(None, None, id="null"),
    ],
)
def test_parse_time(text, expected):
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed is None or parsed.tzinfo == timezone.utc


@pytest.mark.parametrize("text", ["", "yesterday", "2024-06-01T25:00:00Z", "ZZ"])
def test_parse_time_garbage(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_isoformat_writes_z():
    assert isoformat(utc(2024, 6, 1, 10)) == "2024-06-01T10:00:00Z"
    assert isoformat(None) is None


# -- users, for deletion -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {},
            UserSnapshot(
                "alice",
                False,
                ("course-101", "gpu-users"),
                utc(2024, 6, 1, 11, 58),
                utc(2024, 1, 10, 9, 0, 0, 123456),
                True,
            ),
            id="with-servers",
        ),
        pytest.param(
            {"servers": {}, "admin": True, "last_activity": None, "groups": None},
            UserSnapshot("alice", True, None, None, utc(2024, 1, 10, 9, 0, 0, 123456), False),
            id="inactive-admin",
        ),
    ],
)
def test_user_of(overrides, expected):
    assert user_of(copy.deepcopy(HUB6_USER) | overrides) == expected


@pytest.mark.parametrize(
    ("model", "message"),
    [
        # without the servers map a user with running servers would look deletable
        pytest.param({"name": "bob", "last_activity": None}, "read:servers", id="servers-missing"),
        pytest.param({"name": "bob", "servers": None}, "read:servers", id="servers-null"),
        pytest.param({"name": "bob", "servers": {}, "created": "soon"}, "user 'bob': ", id="garbage-created"),
        pytest.param({"name": "bob", "servers": {}, "groups": "staff"}, "'groups' is not a list", id="groups"),
        pytest.param(42, "not an object", id="number"),
    ],
)
def test_user_of_untrustworthy(model, message):
    with pytest.raises(SnapshotError, match=message):
        user_of(model)
