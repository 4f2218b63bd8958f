"""The pure settle judgement: probe observations + the policy's settle section -> wait, stop or hold."""

from __future__ import annotations

import pytest

from culler.core.settle import Observation, Seen, SettleVerdict, active, judge, quiet, unknown
from culler.policy.model import Settle

SETTLE = Settle(probes=["tree-scan", "prometheus"], window=60, max_deferral=600)
SKIP = Settle(probes=["tree-scan", "prometheus"], window=60, max_deferral=600, at_cap="skip")


def both(tree: Observation, prom: Observation) -> dict[str, Observation]:
    return {"tree-scan": tree, "prometheus": prom}


@pytest.mark.parametrize(
    ("observations", "waited", "verdict"),
    [
        (both(quiet(60), quiet(60)), 0, SettleVerdict.STOP),
        (both(quiet(3600), quiet(61)), 10, SettleVerdict.STOP),
        (both(quiet(59.9), quiet(3600)), 10, SettleVerdict.WAIT),  # one probe short of the window
        (both(quiet(3600), active("file grew")), 10, SettleVerdict.WAIT),
        (both(unknown("scanning"), quiet(3600)), 10, SettleVerdict.WAIT),
        (both(unknown("boom", error=True), quiet(3600)), 10, SettleVerdict.WAIT),
        ({}, 10, SettleVerdict.WAIT),
        (both(quiet(3600), active("still writing")), 599.9, SettleVerdict.WAIT),
        (both(quiet(3600), active("still writing")), 600, SettleVerdict.STOP_UNVERIFIED),
        (both(unknown("scanning"), unknown("no data")), 601, SettleVerdict.STOP_UNVERIFIED),
        ({}, 700, SettleVerdict.STOP_UNVERIFIED),
        (both(quiet(60), quiet(60)), 7000, SettleVerdict.STOP),  # settled at the cap is verified
    ],
)
def test_judge_table(observations: dict[str, Observation], waited: float, verdict: SettleVerdict) -> None:
    assert judge(observations, SETTLE, waited)[0] is verdict


@pytest.mark.parametrize("waited", [600, 601, 10**6])
def test_at_cap_skip_holds_instead_of_stopping(waited: float) -> None:
    got, reason = judge(both(active("writing"), quiet(3600)), SKIP, waited)
    assert got is SettleVerdict.HOLD
    assert "at_cap: skip" in reason and "tree-scan: active: writing" in reason
    assert judge(both(quiet(60), quiet(60)), SKIP, waited)[0] is SettleVerdict.STOP  # quiet after all: stop verified


@pytest.mark.parametrize("waited", [0, 1, 599, 600, 10**9])
def test_no_observations_never_stop_verified(waited: float) -> None:
    for settle in (SETTLE, SKIP):
        verdict, reason = judge({}, settle, waited)
        assert verdict is not SettleVerdict.STOP
        if waited < 600:
            assert "no observation yet" in reason


def test_reasons_name_every_probe_and_its_state() -> None:
    observations = both(quiet(120, "3 passes of 10 entries"), unknown("query failed", error=True))
    verdict, reason = judge(observations, SETTLE, 5)
    assert verdict is SettleVerdict.WAIT
    assert "prometheus: unknown: query failed" in reason
    assert "tree-scan: quiet for 2m (3 passes of 10 entries)" in reason
    verdict, reason = judge(both(quiet(120), quiet(90)), SETTLE, 5)
    assert verdict is SettleVerdict.STOP and "1m" in reason and "prometheus: quiet for 1m30s" in reason
    verdict, reason = judge(both(active("a.txt changed"), quiet(90)), SETTLE, 600)
    assert verdict is SettleVerdict.STOP_UNVERIFIED
    assert "stopping unverified" in reason and "tree-scan: active: a.txt changed" in reason and "10m" in reason


def test_observation_helpers() -> None:
    assert quiet(-5).quiet_for == 0.0  # clock trouble never vouches for more than nothing
    assert quiet(5).seen is Seen.QUIET and active("x").seen is Seen.ACTIVE
    assert unknown("x").error is False and unknown("x", error=True).error is True
    assert active("x").quiet_for == 0.0
    assert str(unknown("scanning")) == "unknown: scanning" and str(active("")) == "active"
