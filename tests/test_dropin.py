"""Drop-in: jupyterhub-idle-culler 2.0 (the incumbent) and this service, given the same command line and the
same backdated hub snapshot, send the same stop and delete requests, except for README's deliberate
differences (the bold rows of its mapping), each asserted exactly.

Each scenario builds two identical fake hubs from one snapshot (one hub per service, so neither sees the
other's stops) and runs both services at once: the incumbent as ``python -m jupyterhub_idle_culler``
(it loops forever: it is terminated once its first cycle is over), this service as ``python -m culler
--once``. Times are minutes to days apart, so the seconds between the two runs cannot matter.

The incumbent 2.0 rejects bare booleans (``--cull-users``: "expected one argument"), which is what
Zero-to-JupyterHub and TLJH write: scenarios are written in the charts' bare form, this service gets them
as written and the incumbent gets ``--flag=true`` (one scenario gives this service that form too).

End of the incumbent's cycle: it handles users one at a time in listing order, so the snapshot's last
user, ``zz-sentinel``, is handled last. Its pending server makes the incumbent log "Not culling server
zz-sentinel/spawning with pending spawn", and nothing of that user causes a request; once that line is in
its log, every request of the cycle has been answered.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web
from fakehub import API, FakeHub
from process_support import culler_env, stop_process, wait_for

TOKEN = "dropin-hub-token-3b8e51c0"
HUB_VERSION = "5.2.1"  # >= 1.3: the incumbent then lists with ?state=ready (and ?state=inactive)
NOWHERE = "http://127.0.0.1:9/hub/api"  # $JUPYTERHUB_API_URL when --url is given: --url must win
SENTINEL_LINE = "Not culling server zz-sentinel/spawning with pending spawn"
DEADLINE = 90.0  # seconds for one service's cycle; a cycle takes well under 5 s on an idle machine
CREATED = datetime(2024, 1, 1, tzinfo=timezone.utc)  # every user is older than any max age here
INCUMBENT_BOOLEANS = {"--cull-users", "--cull-admin-users", "--cull-default-servers", "--cull-named-servers"}
INCUMBENT_BOOLEANS |= {"--remove-named-servers", "--ssl-enabled"}


class DropinHub(FakeHub):
    """The fake hub plus what the incumbent and a real hub need beyond it:

    - ``GET /hub/api/``: the incumbent reads the hub's version there first (to decide whether the ``state``
      filter exists). The rest it needs the fake hub has: the pagination media type, ``state=ready`` and
      ``state=inactive``, and ``servers`` with last_activity, started, ready and pending.
    - a stop sets the user's ``last_activity`` to now, as JupyterHub's ``User.stop`` does (user.py:
      ``self.last_activity = spawner.orm_spawner.last_activity = utcnow()``), unless ``touch_on_stop``
      is off (the plain fake hub's behaviour).
    """

    def __init__(self, *, touch_on_stop: bool = True) -> None:
        super().__init__(TOKEN, touch_on_stop=(lambda: datetime.now(timezone.utc)) if touch_on_stop else None)

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.router.add_get(API + "/", self._root)
        return app

    async def _root(self, request: web.Request) -> web.Response:
        return web.json_response({"version": HUB_VERSION})


def build(hub: FakeHub, now: datetime, students: int = 0) -> None:
    """The snapshot: who is idle how long, relative to ``now``. Users are listed in this order."""

    def ago(**delta: float) -> datetime:
        return now - timedelta(**delta)

    def user(name: str, last: datetime | None, admin: bool = False) -> None:
        hub.add_user(name, admin=admin, last_activity=last, created=CREATED)

    def server(name: str, server: str = "", *, last: datetime | None, started: datetime) -> None:
        hub.add_server(name, server, last_activity=last, started=started)

    user("alice", ago(hours=2))  # default server idle 2 h
    server("alice", last=ago(hours=2), started=ago(hours=3))
    user("bob", ago(minutes=5))  # default server active 5 min ago
    server("bob", last=ago(minutes=5), started=ago(hours=3))
    user("carol", ago(minutes=5))  # active default server, named "lab" idle 2 h, named "scratch" active
    server("carol", last=ago(minutes=5), started=ago(hours=3))
    server("carol", "lab", last=ago(hours=2), started=ago(hours=3))
    server("carol", "scratch", last=ago(minutes=5), started=ago(hours=1))
    user("dave", ago(hours=2))  # only a named server, idle 2 h
    server("dave", "gpu", last=ago(hours=2), started=ago(hours=3))
    user("admin-ann", ago(hours=2), admin=True)  # an admin whose server is idle 2 h
    server("admin-ann", last=ago(hours=2), started=ago(hours=3))
    user("admin-abe", ago(days=30), admin=True)  # an admin without servers, idle 30 days
    user("gone-gil", ago(days=30))  # no servers, idle 30 days
    user("fresh-fay", ago(minutes=5))  # no servers, active 5 min ago (created long ago, like everyone)
    user("old-oli", ago(minutes=1))  # default server older than any max age here (3 days), active
    server("old-oli", last=ago(minutes=1), started=ago(days=3))
    user("old-nat", ago(minutes=1))  # named server 3 days old, active
    server("old-nat", "long", last=ago(minutes=1), started=ago(days=3))
    user("never-ned", None)  # a server that never reported activity: idle since its start, 2 h ago
    server("never-ned", last=None, started=ago(hours=2))
    user("stale-sam", ago(days=8))  # idle 8 days: beyond this service's 7-day default too
    server("stale-sam", last=ago(days=8), started=ago(days=9))
    for i in range(1, students + 1):  # a class left idle: 65, 69, ... minutes, all distinct
        name = f"student-{i:02d}"
        user(name, ago(minutes=61 + 4 * i))
        server(name, last=ago(minutes=61 + 4 * i), started=ago(hours=4))
    # last: a server still spawning, and one whose activity is a day ahead (a skewed clock), so that even
    # --timeout=0 leaves it alone: the sentinel user never causes a request
    user("zz-sentinel", now)
    server("zz-sentinel", last=now + timedelta(days=1), started=ago(minutes=30))
    hub.add_server("zz-sentinel", "spawning", last_activity=None, started=None, ready=False, pending="spawn")


def actions(hub: FakeHub) -> list[str]:
    """Every request that changes the hub, as ``stop U[/S]``, ``remove U/S`` (with remove), ``delete U``."""
    found = []
    for request in hub.requests:
        if request.method == "GET":
            continue
        rest = request.path.removeprefix(API + "/users/")
        remove = (isinstance(request.body, dict) and request.body.get("remove") is True) or request.query.get(
            "remove"
        ) in ("1", "true")
        if request.method != "DELETE" or rest == request.path:
            found.append(f"other {request.method} {request.path}")
        elif rest.endswith("/server"):
            found.append(f"stop {rest.removesuffix('/server')}")
        elif "/servers/" in rest:
            found.append(f"{'remove' if remove else 'stop'} {rest.replace('/servers/', '/')}")
        elif "/" not in rest:
            found.append(f"delete {rest}")
        else:
            found.append(f"other {request.method} {request.path}")
    return found


def listed(hub: FakeHub) -> bool:
    return any(r.query.get("state") == "ready" for r in hub.calls("GET", API + "/users"))


# -- expected requests ------------------------------------------------------------------------------------

IDLE = {"stop alice", "stop carol/lab", "stop dave/gpu", "stop admin-ann", "stop never-ned", "stop stale-sam"}
IDLE_REMOVED = (IDLE - {"stop carol/lab", "stop dave/gpu"}) | {"remove carol/lab", "remove dave/gpu"}
AGED = {"stop old-oli", "stop old-nat/long"}
AGED_REMOVED = {"stop old-oli", "remove old-nat/long"}
# --cull-users, users without servers idle 30 days: both delete them (admins unless --cull-admin-users=false)
IDLE_USERS = {"delete gone-gil", "delete admin-abe"}
# users whose every server this cycle stops, inactive >= 1 h before: both delete them in the same cycle,
# judging the activity listed before the stops, not the stop's time that the hub has set since (DropinHub)
STOPPED_USERS = {"delete alice", "delete dave", "delete admin-ann", "delete never-ned", "delete stale-sam"}
# the incumbent's --max-age also deletes users created longer ago once their servers are gone, however
# recently active (fay; oli and nat, whose servers max age stopped), admins included
AGE_DELETED = {"delete fresh-fay", "delete old-oli", "delete old-nat"}
STUDENTS = {f"stop student-{i:02d}" for i in range(1, 13)}
STUDENTS_HELD = {f"stop student-{i:02d}" for i in range(1, 7)}  # the six least idle of the twelve
ALL_READY = {
    "stop alice",
    "stop bob",
    "stop carol",
    "stop carol/lab",
    "stop carol/scratch",
    "stop dave/gpu",
    "stop admin-ann",
    "stop old-oli",
    "stop old-nat/long",
    "stop never-ned",
    "stop stale-sam",
}

Z2JH = ("--timeout=3600", "--cull-every=600", "--concurrency=10")  # cull.* defaults; --url is added
TLJH = ("--timeout=600", "--cull-every=60", "--concurrency=5", "--max-age=0")  # services.cull defaults
DAY = "--max-age=86400"


@dataclass(frozen=True)
class Scenario:
    id: str
    args: tuple[str, ...]  # as the charts write them (bare booleans), without --url
    both: set[str]
    only_incumbent: set[str]
    only_ours: set[str]
    difference: str = ""  # README's words for the deliberate difference this scenario shows
    url_flag: bool = True  # False: like TLJH, no --url; the URL comes from $JUPYTERHUB_API_URL
    ours_equals_syntax: bool = False  # give this service the incumbent's --flag=true form as well
    students: int = 0
    incumbent_crashes: bool = False
    our_log: str = ""  # a regex this service's log must match
    touch_on_stop: bool = True  # False: a hub that leaves the user's last_activity alone at a stop


MAX_AGE_USERS = "max age never deletes users"
SERVER_FLAGS = "never overrides --cull-*-servers=false"

SCENARIOS = [
    Scenario("z2jh-default", Z2JH, IDLE, set(), set()),
    Scenario(
        "z2jh-users-remove",
        (*Z2JH, "--cull-users", "--remove-named-servers"),
        IDLE_REMOVED | IDLE_USERS | STOPPED_USERS,
        set(),
        set(),
    ),
    Scenario(
        "z2jh-users-remove-equals-syntax",
        (*Z2JH, "--cull-users", "--remove-named-servers"),
        IDLE_REMOVED | IDLE_USERS | STOPPED_USERS,
        set(),
        set(),
        ours_equals_syntax=True,
    ),
    Scenario(
        "z2jh-users-remove-hub-keeps-activity",  # the same with a hub whose stops do not touch the user
        (*Z2JH, "--cull-users", "--remove-named-servers"),
        IDLE_REMOVED | IDLE_USERS | STOPPED_USERS,
        set(),
        set(),
        touch_on_stop=False,
    ),
    Scenario(
        "z2jh-admin-users-false",
        (*Z2JH, "--cull-users", "--cull-admin-users=false"),
        IDLE | {"delete gone-gil"} | (STOPPED_USERS - {"delete admin-ann"}),
        set(),
        set(),
    ),
    Scenario("z2jh-admin-users-false-without-users", (*Z2JH, "--cull-admin-users=false"), IDLE, set(), set()),
    Scenario("z2jh-max-age", (*Z2JH, DAY), IDLE | AGED, set(), set()),
    Scenario(
        "z2jh-all-options",
        (*Z2JH, "--cull-users", "--cull-admin-users=false", "--remove-named-servers", DAY),
        IDLE_REMOVED | AGED_REMOVED | {"delete gone-gil"} | (STOPPED_USERS - {"delete admin-ann"}),
        AGE_DELETED | {"delete admin-abe", "delete admin-ann"},  # admins: by age, despite --cull-admin-users=false
        set(),
        difference=MAX_AGE_USERS,
    ),
    Scenario("tljh-default", TLJH, IDLE, set(), set(), url_flag=False),
    Scenario(
        "tljh-users-remove",
        (*TLJH, "--cull-users", "--remove-named-servers"),
        IDLE_REMOVED | IDLE_USERS | STOPPED_USERS,
        set(),
        set(),
        url_flag=False,
    ),
    Scenario(
        "tljh-users-max-age",
        (*TLJH[:-1], DAY, "--cull-users"),
        IDLE | AGED | IDLE_USERS | STOPPED_USERS,
        AGE_DELETED,
        set(),
        difference=MAX_AGE_USERS,
        url_flag=False,
    ),
    Scenario(
        "default-servers-false",
        (*Z2JH, "--cull-default-servers=false"),
        {"stop carol/lab", "stop dave/gpu"},
        set(),
        set(),
    ),
    Scenario(
        "default-servers-false-max-age",
        (*Z2JH, "--cull-default-servers=false", DAY),
        {"stop carol/lab", "stop dave/gpu", "stop old-nat/long"},
        {"stop old-oli", "stop stale-sam"},
        set(),
        difference=SERVER_FLAGS,
    ),
    Scenario(
        "named-servers-false-max-age",
        (*Z2JH, "--cull-named-servers=false", DAY),
        (IDLE - {"stop carol/lab", "stop dave/gpu"}) | {"stop old-oli"},
        {"stop old-nat/long"},
        set(),
        difference=SERVER_FLAGS,
    ),
    Scenario(
        "timeout-omitted",  # Zero-to-JupyterHub with cull.timeout 0 or null leaves --timeout out
        ("--cull-every=600", "--concurrency=10"),
        {"stop stale-sam"},
        IDLE - {"stop stale-sam"},
        set(),
        difference="default 7 days",
    ),
    Scenario(
        "cull-every-zero",  # TLJH writes services.cull.every: 0 as --cull-every=0
        ("--timeout=3600", "--cull-every=0"),
        set(),
        set(),
        IDLE,
        difference="0 means the default",
        incumbent_crashes=True,
    ),
    Scenario(
        "timeout-zero",  # the incumbent's 0 stops every ready server at once
        ("--timeout=0", "--cull-every=600"),
        set(),
        ALL_READY,
        set(),
        difference="0 means no idle limit (the incumbent then stops every server)",
    ),
    Scenario(
        "mass-idle",  # 24 ready servers, 18 idle: the guard allows max(10, 50 % of 24) = 12, longest idle first
        Z2JH,
        IDLE | (STUDENTS - STUDENTS_HELD),
        STUDENTS_HELD,
        set(),
        difference="mass-stop guard",
        students=12,
        our_log=r"MASS-STOP GUARD: holding stops due=18 limit=12 held=6",
    ),
]


def incumbent_form(args: list[str]) -> list[str]:
    return [arg + "=true" if arg in INCUMBENT_BOOLEANS else arg for arg in args]


def environment(api_url: str) -> dict[str, str]:
    return culler_env(JUPYTERHUB_API_TOKEN=TOKEN, JUPYTERHUB_API_URL=api_url, PYTHONUNBUFFERED="1")


@dataclass
class Run:
    returncode: int | None  # None: still running when its cycle was over (the incumbent), then terminated
    log: str


async def wait_until(check: Callable[[], bool], what: str, log: Path) -> None:
    await wait_for(check, DEADLINE, what, interval=0.05, detail=lambda: log.read_text()[-3000:])


async def run_incumbent(args: list[str], api_url: str, workdir: Path) -> Run:
    """Until its first cycle is over (or it exits); then it is terminated."""
    workdir.mkdir()
    log = workdir / "incumbent.log"
    command = [sys.executable, "-m", "jupyterhub_idle_culler", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=environment(api_url), stdout=out, stderr=out, cwd=workdir)
    try:
        await wait_until(
            lambda: process.poll() is not None or SENTINEL_LINE in log.read_text(), "the incumbent's cycle", log
        )
        returncode = process.poll()
    finally:
        stop_process(process)
    return Run(returncode, log.read_text())


async def run_ours(args: list[str], api_url: str, workdir: Path) -> Run:
    workdir.mkdir()
    log = workdir / "culler.log"
    command = [sys.executable, "-m", "culler", "--once", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=environment(api_url), stdout=out, stderr=out, cwd=workdir)
    try:
        await wait_until(lambda: process.poll() is not None, "this service's --once run", log)
    finally:
        stop_process(process)
    return Run(process.returncode, log.read_text())


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
async def test_same_requests_as_the_incumbent(scenario: Scenario, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    theirs, mine = DropinHub(touch_on_stop=scenario.touch_on_stop), DropinHub(touch_on_stop=scenario.touch_on_stop)
    for hub in (theirs, mine):
        build(hub, now, scenario.students)
        await hub.start()
    try:
        args = list(scenario.args)
        if scenario.url_flag:
            incumbent_env_url, ours_env_url = NOWHERE, NOWHERE
            incumbent_args, ours_args = [f"--url={theirs.url}", *args], [f"--url={mine.url}", *args]
        else:
            incumbent_env_url, ours_env_url = theirs.url, mine.url
            incumbent_args, ours_args = args, list(args)
        if scenario.ours_equals_syntax:
            ours_args = incumbent_form(ours_args)
            assert ours_args != [f"--url={mine.url}", *args], "the scenario has no bare boolean"
        incumbent, ours = await asyncio.gather(
            run_incumbent(incumbent_form(incumbent_args), incumbent_env_url, tmp_path / "incumbent"),
            run_ours(ours_args, ours_env_url, tmp_path / "ours"),
        )
    finally:
        for hub in (theirs, mine):
            await hub.close()

    assert ours.returncode == 0, ours.log
    assert listed(mine), ours.log
    if scenario.incumbent_crashes:
        assert incumbent.returncode not in (None, 0), incumbent.log
        assert "Periodic callback must have a positive callback_time" in incumbent.log
        assert not theirs.requests, "the incumbent crashed before its first cycle"
    else:
        assert incumbent.returncode is None, f"the incumbent exited:\n{incumbent.log}"
        assert listed(theirs)
        assert not +theirs.in_flight, f"requests still in flight after the incumbent's cycle: {theirs.in_flight}"
        assert "Traceback" not in incumbent.log and "Error processing" not in incumbent.log, incumbent.log

    got_incumbent, got_ours = actions(theirs), actions(mine)
    assert len(set(got_incumbent)) == len(got_incumbent), f"a request sent twice: {got_incumbent}"
    assert len(set(got_ours)) == len(got_ours), f"a request sent twice: {got_ours}"
    observed = {
        "both": sorted(set(got_incumbent) & set(got_ours)),
        "only_incumbent": sorted(set(got_incumbent) - set(got_ours)),
        "only_ours": sorted(set(got_ours) - set(got_incumbent)),
    }
    expected = {
        "both": sorted(scenario.both),
        "only_incumbent": sorted(scenario.only_incumbent),
        "only_ours": sorted(scenario.only_ours),
    }
    assert observed == expected, f"difference expected: {scenario.difference or 'none'}"
    if scenario.our_log:
        assert re.search(scenario.our_log, ours.log), ours.log


def test_incumbent_rejects_bare_booleans(tmp_path: Path) -> None:
    """Why the incumbent gets ``--flag=true``: 2.0 (traitlets 5) wants a value after a boolean alias."""
    command = [sys.executable, "-m", "jupyterhub_idle_culler", f"--url={NOWHERE}", "--cull-users"]
    result = subprocess.run(command, env=environment(NOWHERE), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert "expected one argument" in result.stderr
