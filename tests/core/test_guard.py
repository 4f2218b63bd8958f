"""The mass-stop guard: how many due servers one cycle may stop, and which."""

from datetime import datetime, timezone

import pytest

from culler.core.decide import Action, Decision
from culler.core.guard import FRACTION_FLOOR, apply_guard, stop_limit
from culler.core.snapshot import ServerSnapshot

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("ready", "max_stops", "max_fraction", "limit"),
    [
        pytest.param(1000, 100, 0.5, 100, id="absolute-cap"),
        pytest.param(1000, 0, 0.5, 500, id="no-absolute-cap"),
        pytest.param(100, 100, 0.5, 50, id="fraction-cap"),
        pytest.param(25, 100, 0.5, 13, id="fraction-rounds-up"),
        pytest.param(300, 0, 0.1, 30, id="fraction-no-float-error-0.1"),
        pytest.param(100, 0, 0.7, 70, id="fraction-no-float-error-0.7"),
        pytest.param(3, 100, 0.5, FRACTION_FLOOR, id="floor-small-hub"),
        pytest.param(19, 100, 0.5, FRACTION_FLOOR, id="floor-at-19"),
        pytest.param(30, 100, 0.1, FRACTION_FLOOR, id="floor-over-fraction"),
        pytest.param(3, 5, 0.5, 5, id="absolute-cap-below-floor"),
        pytest.param(0, 100, 0.5, FRACTION_FLOOR, id="nothing-ready"),
        pytest.param(40, 100, 1.0, 40, id="fraction-one-is-everything"),
        pytest.param(40, 7, 1.0, 7, id="fraction-one-absolute-cap"),
    ],
)
def test_stop_limit(ready, max_stops, max_fraction, limit):
    assert stop_limit(ready, max_stops, max_fraction) == limit


def due(name: str, idle: float | None) -> Decision:
    snapshot = ServerSnapshot("u", name, False, (), None, NOW, None, True)
    return Decision(snapshot, Action.STOP, "default", "idle", idle, NOW)


def names(decisions) -> list[str]:
    return [d.server.name for d in decisions]


@pytest.mark.parametrize(
    ("idles", "ready", "max_stops", "max_fraction", "allowed", "held"),
    [
        pytest.param([5, 50, 20], 3, 2, 0.5, ["s50", "s20"], ["s5"], id="longest-idle-first"),
        pytest.param([5, 50, 20], 3, 100, 0.5, ["s50", "s20", "s5"], [], id="floor-lets-all-through"),
        pytest.param([5, None, 20], 3, 2, 0.5, ["s20", "s5"], ["sNone"], id="unknown-idle-last"),
        pytest.param(
            list(range(30)),
            40,
            100,
            0.5,
            [f"s{i}" for i in range(29, 9, -1)],
            [f"s{i}" for i in range(9, -1, -1)],
            id="fraction-of-ready",
        ),
        pytest.param([], 40, 1, 0.5, [], [], id="nothing-due"),
    ],
)
def test_apply_guard(idles, ready, max_stops, max_fraction, allowed, held):
    result = apply_guard([due(f"s{i}", i) for i in idles], ready, max_stops, max_fraction)
    assert (names(result.allowed), names(result.held)) == (allowed, held)
    assert result.limit == stop_limit(ready, max_stops, max_fraction)
    assert result.tripped is bool(held)
