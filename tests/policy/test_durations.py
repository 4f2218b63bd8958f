"""Human durations: what parses, what is rejected, and how seconds are written back."""

import math

import pytest

from culler.policy.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("36h", 36 * 3600),
        ("7d", 7 * 86400),
        ("2w", 14 * 86400),
        ("1d12h", 36 * 3600),
        ("1w2d3h4m5s", 7 * 86400 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("0s", 0),
        (3600, 3600),
        (0, 0),
        (1.5, 1.5),
        ("3600", 3600),
        ("0", 0),
        (" 7D ", 7 * 86400),
        ("1D12H", 36 * 3600),
        ("\t30m\n", 1800),
    ],
    ids=lambda v: repr(v),
)
def test_parses(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["never", "NEVER", " Never "])
def test_never_is_none(text):
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("-5", id="negative-string"),
        pytest.param(-5, id="negative-int"),
        pytest.param("5x", id="unknown-unit"),
        pytest.param("1.5h", id="fraction-with-unit"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("h", id="unit-only"),
        pytest.param("1d 12h", id="inner-space"),
        pytest.param("12h1", id="trailing-digits"),
        pytest.param("²", id="superscript-digit"),
        pytest.param("٣", id="arabic-indic-digit"),
        pytest.param("٣h", id="arabic-indic-digit-with-unit"),
        pytest.param("neverr", id="not-never"),
        pytest.param(True, id="true"),
        pytest.param(False, id="false"),
        pytest.param(None, id="none"),
        pytest.param(math.nan, id="nan"),
        pytest.param([1], id="list"),
    ],
)
def test_rejects(value):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "never"),
        (math.inf, "never"),
        (0, "0s"),
        (-3, "0s"),
        (0.9, "0s"),
        (90, "1m30s"),
        (1800, "30m"),
        (36 * 3600, "1d12h"),
        (7 * 86400, "1w"),
        (14 * 86400, "2w"),
        (7 * 86400 + 3600 + 5, "1w1h"),  # two largest parts only
    ],
    ids=lambda v: repr(v),
)
def test_format(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [90, 1800, 36 * 3600, 14 * 86400, 3 * 86400 + 4 * 3600, None])
def test_round_trip(seconds):
    assert parse_duration(format_duration(seconds)) == seconds
