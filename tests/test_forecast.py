"""The forecast's domain rules: windows, burn rate, projection, every limit in a payload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ingester.usage.burn_rate import Point, burn_rate, split_windows
from ingester.usage.forecast import BASIS, LimitForecast, forecast, last_readings
from ingester.usage.readings import Observation, Reading, observe, path_parts, usage_windows
from ingester.usage.resets import ResetTime
from ingester.usage.words import in_words, percent_words, reset_words

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)  # a Friday
HOUR = 3600.0


def pts(*values: float, step: float = 600.0, reset: ResetTime | None = None) -> list[Point]:
    """Readings ``step`` seconds apart from T0."""
    start = T0.timestamp()
    return [Point(start + i * step, v, reset) for i, v in enumerate(values)]


def obs(minutes: float, pct: float, resets_in: str = "Mon 8:59 AM", **more: Any) -> Observation:
    """One observed snapshot ``minutes`` after T0, parsed as the real code parses it."""
    stamp = T0 + timedelta(minutes=minutes)
    payload = {
        "weeklyLimits": {
            "allModels": {"resetsIn": resets_in, "percentageUsed": pct},
            "sonnetOnly": {"resetsIn": resets_in, "percentageUsed": 5},
        },
        "lastUpdated": stamp.isoformat(),
        **more,
    }
    found, _ = observe(payload, UTC, stamp)
    assert found is not None
    return found


def limit_of(result: Any, name: str = "weeklyLimits.allModels") -> Any:
    return next(limit for limit in result.limits if limit.limit == name)


# -- every limit, by shape ----------------------------------------------------------------


def test_every_window_in_the_payload_by_its_dotted_path() -> None:
    payload = {
        "currentSession": {"resetsIn": "4 hr", "percentageUsed": 23},
        "weeklyLimits": {
            "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 41.5},
            "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 7},
            "opusOnly": {"resetsIn": "whenever", "percentageUsed": 2, "extra": 1},
        },
        "monthly": {"credits": {"api": {"resetsIn": "Dec 1, 12:00 AM", "percentageUsed": 0}}},
        "extractionErrors": {"x": "y"},
        "notAWindow": {"resetsIn": "4 hr", "percentageUsed": True},
        "alsoNot": {"percentageUsed": 3},
        "lastUpdated": "2026-11-27T14:05:00Z",
    }
    assert [path for path, _ in usage_windows(payload)] == [
        "currentSession",
        "weeklyLimits.allModels",
        "weeklyLimits.sonnetOnly",
        "weeklyLimits.opusOnly",
        "monthly.credits.api",
    ]
    found, unreadable = observe(payload, ZoneInfo("Europe/Berlin"))
    assert found is not None
    assert [r.limit for r in found.readings] == [p for p, _ in usage_windows(payload)]
    assert unreadable == [("weeklyLimits.opusOnly", "whenever")]
    result = forecast([found])
    # The console's own three first, as it shows them; then the others by their paths.
    assert [limit.limit for limit in result.limits] == [
        "currentSession",
        "weeklyLimits.allModels",
        "weeklyLimits.sonnetOnly",
        "monthly.credits.api",
        "weeklyLimits.opusOnly",
    ]
    assert all(limit.rate_per_hour is None for limit in result.limits)  # one snapshot


def test_a_window_holding_windows_hides_none_of_them() -> None:
    # Unknown fields are allowed, so a group may carry a window's two fields of its own.
    payload = {
        "currentSession": {"resetsIn": "4 hr", "percentageUsed": 23},
        "weeklyLimits": {
            "resetsIn": "Mon 8:59 AM",
            "percentageUsed": 3,
            "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 97},
            "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 7},
        },
        "lastUpdated": "2026-11-27T14:05:00Z",
    }
    assert [path for path, _ in usage_windows(payload)] == [
        "currentSession",
        "weeklyLimits",
        "weeklyLimits.allModels",
        "weeklyLimits.sonnetOnly",
    ]
    found, _ = observe(payload, UTC)
    assert found is not None
    result = forecast([found])
    assert [(x.limit, x.percentage) for x in result.limits] == [
        ("currentSession", 23),
        ("weeklyLimits.allModels", 97),
        ("weeklyLimits.sonnetOnly", 7),
        ("weeklyLimits", 3),
    ]


@pytest.mark.parametrize(
    "window",
    [
        {"resetsIn": "2 hr", "percentageUsed": 100.5},
        {"resetsIn": "2 hr", "percentageUsed": -1},
        {"resetsIn": "2 hr", "percentageUsed": -1.7e308},
        {"resetsIn": "2 hr", "percentageUsed": 1e308},
        {"resetsIn": "", "percentageUsed": 5},
        {"resetsIn": 5, "percentageUsed": 5},
        {"resetsIn": None, "percentageUsed": 5},
    ],
)
def test_a_window_the_named_ones_could_not_be_is_no_window(window: dict[str, Any]) -> None:
    # The model holds currentSession and weeklyLimits to a non-empty resetsIn and 0-100;
    # another window breaking that would give rates no limit can have (or an infinite
    # one, which JSON cannot carry).
    payload = {"extra": {"odd": window}, "lastUpdated": "2026-11-27T14:05:00Z"}
    assert usage_windows(payload) == []


def test_a_negative_zero_reads_as_zero() -> None:
    payload = {
        "currentSession": {"resetsIn": "2 hr", "percentageUsed": -0.0},
        "lastUpdated": "2026-11-27T14:05:00Z",
    }
    found, _ = observe(payload, UTC)
    assert found is not None
    assert str(found.readings[0].percentage) == "0.0"


def test_a_key_holding_a_dot_is_quoted_so_no_two_windows_share_a_name() -> None:
    window = {"resetsIn": "4 hr", "percentageUsed": 1}
    payload = {
        "a.b": {**window, "percentageUsed": 10},
        "a": {"b": {**window, "percentageUsed": 20}},
        "x": {"y.z": {**window, "percentageUsed": 30}, '"q': {**window, "percentageUsed": 40}},
    }
    assert [(path, w["percentageUsed"]) for path, w in usage_windows(payload)] == [
        ('"a.b"', 10),
        ("a.b", 20),
        ('x."y.z"', 30),
        ('x."\\"q"', 40),
    ]


_KEY_PATHS = st.lists(st.text(alphabet='ab."\\', min_size=1, max_size=4), min_size=1, max_size=4)


def _nest(keys: list[str], leaf: dict[str, Any]) -> dict[str, Any]:
    for key in reversed(keys):
        leaf = {key: leaf}
    return leaf


@settings(max_examples=500, deadline=None)
@given(_KEY_PATHS, _KEY_PATHS, st.booleans())
def test_windows_at_different_places_never_share_a_name(
    one: list[str], other: list[str], resplit: bool
) -> None:
    if resplit:  # the same text cut at its dots instead: the likeliest collision
        other = ".".join(one).split(".")
        assume(len(other) <= 8)  # usage_windows looks 8 deep
    window = {"resetsIn": "4 hr", "percentageUsed": 1}
    names = [[path for path, _ in usage_windows(_nest(keys, window))] for keys in (one, other)]
    assert len(names[0]) == len(names[1]) == 1
    assert (names[0] == names[1]) == (one == other), (one, other, names)
    assert path_parts(names[0][0]) == one  # and each name gives its keys back


@pytest.mark.parametrize(
    "payload", [None, [], "x", {}, {"lastUpdated": "yesterday"}, {"lastUpdated": 5}]
)
def test_a_payload_without_a_time_is_no_observation(payload: object) -> None:
    assert observe(payload, UTC) == (None, [])


# -- windows ------------------------------------------------------------------------------


def test_a_drop_confirmed_by_the_next_reading_starts_a_window() -> None:
    windows = split_windows(pts(40, 60, 80, 2, 5, 9))
    assert [[p.pct for p in w] for w in windows] == [[40, 60, 80], [2, 5, 9]]


def test_a_drop_in_the_newest_reading_starts_a_window() -> None:
    assert [[p.pct for p in w] for w in split_windows(pts(40, 60, 80, 2))] == [[40, 60, 80], [2]]


def test_a_lower_reading_under_the_same_reset_stays_in_the_window() -> None:
    # Both readings name the reset of Thursday 09:00: no reset lies between them, so a
    # newest reading one point lower (a stale scrape), and then two more like it, are
    # wrong readings or a correction, not a new window with no rate.
    reset = ResetTime(T0 + timedelta(days=6), timedelta(minutes=1))
    assert [[p.pct for p in w] for w in split_windows(pts(80, 84, 87, 87, 86, reset=reset))] == [
        [80, 84, 87, 87, 86]
    ]
    windows = split_windows(pts(80, 84, 87, 87, 86, 86, 87, reset=reset))
    assert [[p.pct for p in w] for w in windows] == [[80, 84, 87, 87, 86, 86, 87]]
    assert burn_rate(windows[-1]) is not None and burn_rate(windows[-1]) > 0
    # A lone dip is still left out, and a reset that moved still begins a window.
    assert [[p.pct for p in w] for w in split_windows(pts(40, 41, 0, 42, 43, reset=reset))] == [
        [40, 41, 42, 43]
    ]
    moved = ResetTime(T0 + timedelta(days=13), timedelta(minutes=1))
    points = [*pts(80, 84, 87, reset=reset), Point(T0.timestamp() + 1800, 2, moved)]
    assert [[p.pct for p in w] for w in split_windows(points)] == [[80, 84, 87], [2]]


def test_a_lone_dip_is_left_out() -> None:
    # A scraper that read 0 once: the next reading carries on from before.
    assert [[p.pct for p in w] for w in split_windows(pts(40, 41, 0, 42, 43))] == [[40, 41, 42, 43]]


def test_a_lone_spike_is_left_out() -> None:
    assert [[p.pct for p in w] for w in split_windows(pts(40, 41, 95, 42, 43))] == [
        [40, 41, 42, 43]
    ]


def test_a_reset_time_passed_starts_a_window_without_a_drop() -> None:
    # Reset at T0 + 25 min (minute precision): the reading at 30 min is after it.
    reset = ResetTime(T0 + timedelta(minutes=25), timedelta(minutes=1))
    points = [
        Point(p.t, p.pct, reset if p.t < (T0 + timedelta(minutes=25)).timestamp() else None)
        for p in pts(10, 20, 30, 35, 40)
    ]
    assert [[p.pct for p in w] for w in split_windows(points)] == [[10, 20, 30], [35, 40]]


def test_a_coarse_reset_time_waits_for_its_precision() -> None:
    # "2 hr" may mean up to 2 h 59 min: a reading 2 h 30 min later is not past it.
    reset = ResetTime(T0 + timedelta(hours=2), timedelta(hours=1))
    points = [Point(T0.timestamp(), 10, reset), Point(T0.timestamp() + 2.5 * HOUR, 12, reset)]
    assert len(split_windows(points)) == 1
    points.append(Point(T0.timestamp() + 3 * HOUR, 14))
    assert len(split_windows(points)) == 2


# -- the rate -----------------------------------------------------------------------------


def test_no_rate_from_one_point_or_less_than_ten_minutes() -> None:
    assert burn_rate(pts(10)) is None
    assert burn_rate(pts(10, 12, step=599)) is None
    assert burn_rate(pts(10, 12, step=600)) == pytest.approx(12.0)  # 2 % in 10 minutes
    assert burn_rate(pts(10, 11, 12, step=300)) == pytest.approx(12.0)


def test_rate_is_percent_per_hour() -> None:
    assert burn_rate(pts(10, 12.5, 15, 17.5, step=HOUR)) == pytest.approx(2.5)
    assert burn_rate(pts(10, 10, 10, step=HOUR)) == 0


def test_the_rate_is_the_net_pace_idle_hours_included() -> None:
    # Flat at 40 % for 18 hours, then 3 %/h for 6, read every 10 minutes: 18 points in a
    # day is 0.75 %/h, though most readings lie on the flat stretch.
    day = [40 + 3 * max(0.0, i / 6 - 18) for i in range(24 * 6 + 1)]
    assert burn_rate(pts(*day)) == pytest.approx(0.75, abs=0.02)
    # One wrong reading at either end, where the pace is read, is outvoted.
    for where in (0, 1, -2, -1):
        wrong = list(day)
        wrong[where] = 99 if where < 0 else 0
        assert burn_rate(pts(*wrong)) == pytest.approx(0.75, abs=0.02), where
    # A session used in a burst, then idle: 60 % in its first hour, none in the next 3.
    session = [min(60.0, 10.0 * i) for i in range(25)]
    assert 12 < (burn_rate(pts(*session)) or 0) <= 15


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(5, 200),
    rate=st.floats(0, 50, allow_nan=False),
    gaps=st.lists(st.floats(150, 7200, allow_nan=False), min_size=200, max_size=200),
    where=st.integers(0, 199),
    wrong=st.floats(-1000, 1000, allow_nan=False),
)
def test_one_outlier_does_not_move_the_rate(
    n: int, rate: float, gaps: list[float], where: int, wrong: float
) -> None:
    t = [T0.timestamp()]
    for gap in gaps[: n - 1]:
        t.append(t[-1] + gap)
    values = [rate * (x - t[0]) / HOUR for x in t]
    values[where % n] = wrong
    found = burn_rate([Point(x, v) for x, v in zip(t, values, strict=True)])
    assert found == pytest.approx(rate, rel=1e-6, abs=1e-9)


# -- properties of the projection ---------------------------------------------------------

times = st.lists(st.floats(30, 3 * HOUR, allow_nan=False), min_size=1, max_size=40)


def series(gaps: list[float], values: list[float], resets_in: str = "Mon 8:59 AM") -> list[Any]:
    out, minutes = [], 0.0
    for gap, value in zip(gaps, values, strict=False):
        minutes += gap / 60
        out.append(obs(minutes, value, resets_in))
    return out


@settings(max_examples=300, deadline=None)
@given(gaps=times, steps=st.lists(st.floats(0, 5, allow_nan=False), min_size=40, max_size=40))
def test_monotone_usage_projects_monotone(gaps: list[float], steps: list[float]) -> None:
    values, level = [], 0.0
    for step in steps[: len(gaps)]:
        level = min(99.0, level + step)
        values.append(level)
    observations = series(gaps, values, "unknown")  # no reset time: no split by time
    result = limit_of(forecast(observations))
    assert result.points == len(values) or result.since > T0  # all of the window's basis
    if result.rate_per_hour is not None:
        assert result.rate_per_hour >= 0
    if result.exhausts_at is not None:
        assert result.exhausts_at >= result.since
        assert result.exhausts_at >= observations[-1].observed_at
        # More usage now never puts the run-out later.
        raised = [*observations[:-1], obs(gaps_total(gaps) / 60, values[-1] + 0.5, "unknown")]
        later = limit_of(forecast(raised))
        assert later.exhausts_at is not None and later.exhausts_at <= result.exhausts_at


def gaps_total(gaps: list[float]) -> float:
    return sum(gaps)


@settings(max_examples=300, deadline=None)
@given(gaps=times, level=st.floats(0, 99.9, allow_nan=False))
def test_flat_usage_never_exhausts(gaps: list[float], level: float) -> None:
    result = limit_of(forecast(series(gaps, [level] * len(gaps))))
    assert result.exhausts_at is None
    assert result.rate_per_hour in (None, 0)
    if result.rate_per_hour == 0:
        assert result.before_reset is False  # the reset (Monday) comes first


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(st.floats(50, 99, allow_nan=False), min_size=1, max_size=15),
    after=st.lists(st.floats(0, 49, allow_nan=False), min_size=1, max_size=15),
    gap=st.floats(60, 1800, allow_nan=False),
)
def test_a_reset_splits_the_windows(before: list[float], after: list[float], gap: float) -> None:
    before, after = sorted(before), sorted(after)
    values = before + after
    observations = series([gap] * len(values), values, "unknown")
    result = limit_of(forecast(observations))
    assert result.points == len(after)
    assert result.since == observations[len(before)].observed_at
    assert result.percentage == after[-1]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(0, 99, allow_nan=False), min_size=2, max_size=30))
def test_a_reset_time_passed_splits_the_windows(values: list[float]) -> None:
    values = sorted(values)  # rising throughout: only the reset time can split
    # Every 10 minutes from Friday 08:00 UTC; the console names Friday 10:00 as the reset
    # (after 10:00 the same words mean next Friday's). The reading at 10:10 is the first
    # past it (10:00 plus the minute the wording is precise to).
    observations = [obs(10 * i, v, "Fri 10:00 AM") for i, v in enumerate(values)]
    result = limit_of(forecast(observations))
    if len(values) > 13:
        assert result.points == len(values) - 13
        assert result.since == T0 + timedelta(minutes=130)
    else:
        assert result.points == len(values)
        assert result.since == T0


# -- the forecast over snapshots ------------------------------------------------------------


def test_a_short_margin_before_the_reset_is_said_to_the_minute() -> None:
    # 1 h 12 min is not "1 h" to someone deciding whether to wait for the reset.
    limit = LimitForecast(
        limit="currentSession",
        percentage=50,
        resets_in="3 hr",
        resets_at=T0 + timedelta(hours=3),
        rate_per_hour=27.0,
        exhausts_at=T0 + timedelta(hours=1, minutes=48),
        before_reset=True,
        points=5,
        since=T0 - timedelta(hours=1),
        observed_at=T0,
        in_newest=True,
    )
    words = in_words(limit, UTC, T0)
    assert words == "at this rate 100 % by Fri 09:48, 1 h 12 min before the reset (Fri 11:00)"


def test_known_rate_and_run_out_before_the_reset() -> None:
    # 40 % at T0 (Friday 08:00 UTC), 1.5 %/h for 6 hours; the weekly reset is Monday 8:59.
    observations = [obs(30 * i, 40 + 0.75 * i) for i in range(13)]
    result = forecast(observations)
    assert result.as_of == T0 + timedelta(hours=6)
    weekly = limit_of(result)
    assert weekly.rate_per_hour == pytest.approx(1.5)
    assert weekly.percentage == 49
    assert weekly.exhausts_at == T0 + timedelta(hours=6) + timedelta(hours=51 / 1.5)
    assert weekly.resets_at == datetime(2026, 11, 30, 8, 59, tzinfo=UTC)
    assert weekly.before_reset is True
    assert weekly.points == 13 and weekly.since == T0
    words = in_words(weekly, UTC, result.as_of)
    assert words == "at this rate 100 % by Sun 00:00, 33 h before the reset (Mon 08:59)"
    sonnet = limit_of(result, "weeklyLimits.sonnetOnly")
    assert (sonnet.rate_per_hour, sonnet.exhausts_at, sonnet.before_reset) == (0, None, False)
    assert in_words(sonnet, UTC, result.as_of) == "resets before the limit"
    assert result.to_json()["limits"][0] == {
        "limit": "weeklyLimits.allModels",
        "percentageUsed": 49,
        "resetsIn": "Mon 8:59 AM",
        "resetsAt": "2026-11-30T08:59:00.000Z",
        "ratePerHour": 1.5,
        "exhaustsAt": "2026-11-29T00:00:00.000Z",
        "beforeReset": True,
        "basis": {"points": 13, "since": "2026-11-27T08:00:00.000Z"},
        "observedAt": "2026-11-27T14:00:00.000Z",
        "inNewest": True,
        "missingReason": None,
    }


def test_words_for_each_case() -> None:
    slow = forecast([obs(60 * i, 10 + 0.1 * i) for i in range(6)])
    assert in_words(limit_of(slow), UTC, slow.as_of) == "resets before the limit"
    one = forecast([obs(0, 10)])
    assert in_words(limit_of(one), UTC, one.as_of) == "not enough data"
    full = forecast([obs(0, 90), obs(30, 100), obs(60, 100)])
    assert in_words(limit_of(full), UTC, full.as_of) == "at the limit since Fri 08:30"
    # At 100 % in the first reading already: reached then or before.
    before = forecast([obs(0, 100), obs(30, 100)])
    assert in_words(limit_of(before), UTC, before.as_of) == "at the limit since at least Fri 08:00"
    assert limit_of(full).before_reset is True
    unknown = forecast([obs(60 * i, 10 + 10 * i, "whenever") for i in range(4)])
    assert in_words(limit_of(unknown), UTC, unknown.as_of) == (
        "at this rate 100 % by Fri 17:00 (reset time unknown)"
    )
    assert limit_of(unknown).before_reset is None
    crawling = forecast([obs(120 * i, 10 + 0.018 * i, "whenever") for i in range(13)])
    assert in_words(limit_of(crawling), UTC, crawling.as_of) == "100 % not within a year"
    still = forecast([obs(120 * i, 10, "whenever") for i in range(13)])
    assert in_words(limit_of(still), UTC, still.as_of) == "not rising"


@pytest.mark.parametrize(
    ("resets_in", "before", "words"),
    [
        # The reset more than a year ahead, 100 % beyond the year a projection reaches:
        # either may come first, and nothing says which.
        (
            "390 days",
            None,
            "100 % not within a year; whether before or after the reset "
            "(Thu 23 Dec 2027 08:00 at the earliest) is not known",
        ),
        # The reset within the year, 100 % beyond it: the reset comes first.
        ("300 days", False, "resets before the limit"),
    ],
)
def test_a_rise_too_slow_to_project_is_set_against_the_reset_only_within_the_year(
    resets_in: str, before: bool | None, words: str
) -> None:
    # 10 % rising 0.009 %/h: 100 % in some 10,000 hours, past the 366 days projected.
    crawling = forecast([obs(120 * i, 10 + 0.018 * i, resets_in) for i in range(13)])
    weekly = limit_of(crawling)
    assert weekly.rate_per_hour == pytest.approx(0.009)
    assert weekly.exhausts_at is None
    assert weekly.before_reset is before
    assert weekly.to_json()["beforeReset"] is before
    assert in_words(weekly, UTC, crawling.as_of) == words


def test_a_rise_the_json_rounds_to_0_is_worded_as_the_json_carries_it() -> None:
    # 0.00001 %/h is 0.0 in the JSON (4 decimals): the page, which has only that, says
    # "not rising", so the words say it too, not "100 % not within a year".
    flat = forecast([obs(120 * i, 10 + 0.00002 * i, "whenever") for i in range(13)])
    weekly = limit_of(flat)
    assert weekly.rate_per_hour is not None and weekly.rate_per_hour > 0
    assert weekly.to_json()["ratePerHour"] == 0
    assert in_words(weekly, UTC, flat.as_of) == "not rising"
    # And not rising, it never reaches 100 %: a reset however far ahead comes first.
    far = limit_of(forecast([obs(120 * i, 10 + 0.00002 * i, "390 days") for i in range(13)]))
    assert (far.to_json()["ratePerHour"], far.before_reset) == (0, False)
    assert in_words(far, UTC, flat.as_of) == "resets before the limit"


def test_a_limit_not_rising_resets_first_however_far_the_reset() -> None:
    still = forecast([obs(120 * i, 10, "390 days") for i in range(13)])
    weekly = limit_of(still)
    assert (weekly.rate_per_hour, weekly.exhausts_at, weekly.before_reset) == (0, None, False)
    assert in_words(weekly, UTC, still.as_of) == "resets before the limit"


def test_a_limit_held_at_100_is_rated_by_its_rise_to_it_not_by_the_cap() -> None:
    # 40 % rising 10 %/h to 100 % in 6 hours, then held there (the console shows no more)
    # for 12 hours: the pace is the rise, not diluted by the hours at the cap.
    rising = [obs(30 * i, min(100, 40 + 5 * i)) for i in range(37)]
    weekly = limit_of(forecast(rising))
    assert weekly.rate_per_hour == pytest.approx(10)
    assert weekly.exhausts_at == T0 + timedelta(hours=6)
    assert (weekly.before_reset, weekly.points) == (True, 37)
    # At 100 % from the first reading on: no pace to be known.
    pinned = limit_of(forecast([obs(30 * i, 100) for i in range(5)]))
    assert (pinned.rate_per_hour, pinned.exhausts_at, pinned.before_reset) == (None, T0, True)
    assert in_words(pinned, UTC, T0) == "at the limit since at least Fri 08:00"


@pytest.mark.parametrize(
    ("hours", "before", "words"),
    [
        (1.5, True, "30 min before the reset (Fri 12:00)"),
        (2, None, "about when it resets (Fri 12:00 at the earliest)"),
        (2.5, None, "about when it resets (Fri 12:00 at the earliest)"),
        (3, False, "resets before the limit"),
    ],
)
def test_a_reset_given_to_the_hour_judges_a_run_out_in_that_hour_neither_way(
    hours: float, before: bool | None, words: str
) -> None:
    # "2 hr" seen at 10:00: the reset comes from 12:00 to 12:59.
    newest = 120
    start = 60 - 40 / hours  # 60 % at 10:00, rising to 100 % in ``hours``
    seen = [obs(newest - 60, start, "3 hr"), obs(newest, 60, "2 hr")]
    weekly = limit_of(forecast(seen))
    assert weekly.resets_at == T0 + timedelta(hours=4)
    assert weekly.exhausts_at == T0 + timedelta(hours=2 + hours)
    assert weekly.before_reset is before
    assert in_words(weekly, UTC, T0).endswith(words)


def test_a_reset_at_a_wall_time_the_fall_back_hour_shows_twice_waits_for_the_second() -> None:
    # New York falls back on 2027-11-07: 1:30 AM is 5:30 UTC (EDT), then 6:30 UTC (EST).
    # A session read from 4:00 UTC rises 30 %/h; each reading says "Sun 1:30 AM". The
    # reading at 5:40 UTC is still before the second 1:30: no reset has been seen, so
    # the window goes on, and 100 % at 6:00 UTC comes before the reset at 6:30.
    zone = ZoneInfo("America/New_York")
    seen = []
    for minutes, pct in ((0, 40), (30, 55), (60, 70), (100, 90)):
        stamp = datetime(2027, 11, 7, 4, 0, tzinfo=UTC) + timedelta(minutes=minutes)
        payload = {
            "currentSession": {"resetsIn": "Sun 1:30 AM", "percentageUsed": pct},
            "lastUpdated": stamp.isoformat(),
        }
        found, _ = observe(payload, zone, stamp)
        assert found is not None
        seen.append(found)
    session = limit_of(forecast(seen), "currentSession")
    assert (session.points, session.rate_per_hour) == (4, pytest.approx(30))
    assert session.resets_at == datetime(2027, 11, 7, 6, 30, tzinfo=UTC)
    assert session.exhausts_at == datetime(2027, 11, 7, 6, 0, tzinfo=UTC)
    assert session.before_reset is True
    # Read before the first 1:30, the reset is either: both are named, with their zones.
    early = limit_of(forecast(seen[:1]), "currentSession")
    near = seen[0].observed_at
    assert reset_words(early, zone, near) == "Sun 01:30 EDT to Sun 01:30 EST"


def test_percent_words_never_round_across_what_the_reading_is_judged_by() -> None:
    assert percent_words(42) == "42 %"
    assert percent_words(100.0) == "100 %"
    assert percent_words(42.46) == "42.5 %"
    # 100 % says the limit is reached: a reading short of it is never shown as 100.
    assert percent_words(99.97) == "99.97 %"
    assert percent_words(99.94) == "99.9 %"
    assert percent_words(99.9999999999) == "99.9999999999 %"
    # Nor rounded over a check's threshold, either way.
    assert percent_words(89.96, (90.0, 100.0)) == "89.96 %"
    assert percent_words(90.04, (90.02, 100.0)) == "90.04 %"
    assert percent_words(90.04, (90.0, 100.0)) == "90.0 %"


@given(
    st.floats(min_value=0, max_value=200, allow_nan=False),
    st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), max_size=3),
)
def test_percent_words_keep_the_reading_on_its_side_of_every_bound(
    value: float, bounds: list[float]
) -> None:
    text = percent_words(value, [*bounds, 100.0])
    assert text.endswith(" %")
    shown = float(text[:-2])
    assert abs(shown - value) <= 0.05 + 1e-9
    for bound in [*bounds, 100.0]:
        assert (shown >= bound) == (value >= bound), (value, bound, text)


def test_the_basis_is_the_last_day_of_the_window() -> None:
    observations = [obs(60 * i, min(99, 5 + i)) for i in range(40)]
    weekly = limit_of(forecast(observations))
    assert weekly.since == T0 + timedelta(hours=39) - BASIS
    assert weekly.points == 25


def test_the_newest_snapshot_names_the_limits_and_the_time() -> None:
    # Stored in another order than observed (a backfill): the newest by lastUpdated wins.
    late = obs(120, 30)
    result = forecast([late, obs(0, 20), obs(60, 25)])
    assert result.as_of == late.observed_at
    assert limit_of(result).rate_per_hour == pytest.approx(5)


def test_a_snapshot_observed_after_the_one_stored_last_is_left_out() -> None:
    # Observed 50 minutes after it was stored (its scraper's clock ran ahead, within the
    # hour allowed): it counts as observed when it was stored, so the snapshot stored
    # after it is the newest, as the data's own answer (the latest link) shows, not
    # this one until a snapshot observed later still comes.
    ahead = Observation(
        T0 + timedelta(minutes=100), obs(100, 90).readings, stored_at=T0 + timedelta(minutes=50)
    )
    stored_last = obs(60, 25)
    result = forecast([obs(0, 20), ahead, stored_last])
    assert result.as_of == stored_last.observed_at
    weekly = limit_of(result)
    assert (weekly.percentage, weekly.points) == (25, 2)
    assert weekly.rate_per_hour == pytest.approx(5)
    # Nor does a reading of it held from before the basis count.
    held = {"weeklyLimits.allModels": (ahead.readings[0], ahead.observed_at)}
    assert limit_of(forecast([obs(0, 20), stored_last], earlier=held)).percentage == 25


def test_a_snapshot_from_a_clock_far_ahead_is_left_out() -> None:
    good = [obs(0, 10), obs(60, 12)]
    stamp = T0 + timedelta(days=700)
    reading = Reading("weeklyLimits.allModels", 99, "Mon 8:59 AM", None)
    ahead = Observation(stamp, (reading,), stored_at=T0 + timedelta(hours=2))
    result = forecast([*good, ahead])
    assert result.as_of == good[-1].observed_at
    assert limit_of(result).percentage == 12


def test_no_snapshot_is_no_forecast() -> None:
    assert forecast([]).as_of is None
    assert forecast([]).to_json() == {"asOf": None, "limits": []}


# -- a limit the newest snapshot lacks (a partial scrape) ------------------------------------


def partial(minutes: float, pct: float = 30, **more: Any) -> Observation:
    """A snapshot with the current session only, as a scraper that missed the weekly section
    writes it (tests/samples/valid/partial-with-errors.json)."""
    stamp = T0 + timedelta(minutes=minutes)
    payload = {
        "currentSession": {"resetsIn": "4 hr", "percentageUsed": pct},
        "lastUpdated": stamp.isoformat(),
        "isPartial": True,
        "extractionErrors": {"weeklyLimits": "selector 'Weekly limits' not found"},
        **more,
    }
    found, _ = observe(payload, UTC, stamp)
    assert found is not None and found.partial is payload["isPartial"]
    return found


def test_a_partial_snapshot_holds_the_limits_it_lacks_at_their_last_reading() -> None:
    full = [obs(30 * i, 40 + 0.75 * i) for i in range(13)]  # the known-rate history
    result = forecast([*full, partial(6 * 60 + 5)])
    assert result.as_of == T0 + timedelta(hours=6, minutes=5)
    assert [limit.limit for limit in result.limits] == [
        "currentSession",
        "weeklyLimits.allModels",
        "weeklyLimits.sonnetOnly",
    ]
    weekly = limit_of(result)
    # The same answer as without the partial snapshot, marked as held.
    assert weekly.percentage == 49 and weekly.rate_per_hour == pytest.approx(1.5)
    assert weekly.exhausts_at == T0 + timedelta(hours=6) + timedelta(hours=51 / 1.5)
    assert weekly.before_reset is True
    assert weekly.observed_at == T0 + timedelta(hours=6)
    assert weekly.in_newest is False
    assert weekly.missing_reason == (
        "extractionErrors.weeklyLimits: selector 'Weekly limits' not found"
    )
    body = weekly.to_json()
    assert (body["observedAt"], body["inNewest"]) == ("2026-11-27T14:00:00.000Z", False)
    assert in_words(weekly, UTC, result.as_of) == (
        "at this rate 100 % by Sun 00:00, 33 h before the reset (Mon 08:59); "
        "last read Fri 14:00, not in the newest snapshot"
    )
    session = limit_of(result, "currentSession")
    assert session.in_newest and session.observed_at == result.as_of
    assert session.missing_reason is None


def test_the_reason_names_the_extraction_error_or_the_partial_flag() -> None:
    full = [obs(0, 40), obs(30, 41)]
    own = forecast([*full, partial(40, extractionErrors={"sonnetOnly": "timeout"})])
    assert limit_of(own, "weeklyLimits.sonnetOnly").missing_reason == (
        "extractionErrors.sonnetOnly: timeout"
    )
    assert limit_of(own).missing_reason == (
        "a partial scrape (isPartial); no extractionErrors entry names it"
    )
    quiet = forecast([*full, partial(40, isPartial=False, extractionErrors={})])
    assert limit_of(quiet).missing_reason == "no extractionErrors entry names it"


def test_the_reason_finds_the_extraction_error_of_a_key_holding_a_dot() -> None:
    window = {"resetsIn": "4 hr", "percentageUsed": 5}
    first = {"lastUpdated": T0.isoformat(), "m": {"opus.4": window}, "s.x": window}
    later = T0 + timedelta(minutes=30)
    second = {
        "lastUpdated": later.isoformat(),
        "currentSession": window,
        "isPartial": True,
        "extractionErrors": {"opus.4": "selector not found", "s.x": "timeout"},
    }
    found = [observe(body, UTC, stamp)[0] for body, stamp in ((first, T0), (second, later))]
    result = forecast([f for f in found if f is not None])
    assert limit_of(result, 'm."opus.4"').missing_reason == (
        "extractionErrors.opus.4: selector not found"
    )
    assert limit_of(result, '"s.x"').missing_reason == "extractionErrors.s.x: timeout"


def test_a_held_limit_goes_once_its_reset_time_comes() -> None:
    # Weekly resets Monday 8:59 UTC; read fully until two hours before, partially after.
    monday = datetime(2026, 11, 30, 8, 59, tzinfo=UTC)
    before = (monday - T0) / timedelta(minutes=1) - 1
    full = [obs(before - 120 + 30 * i, 40 + i) for i in range(4)]
    held = forecast([*full, partial(before)])
    assert not limit_of(held).in_newest
    gone = forecast([*full, partial(before + 1)])
    assert [limit.limit for limit in gone.limits] == ["currentSession"]
    # Still missing, with no reading that holds: named in ``lapsed`` with its last read.
    last = T0 + timedelta(minutes=before - 30)
    assert gone.lapsed == (("weeklyLimits.allModels", last), ("weeklyLimits.sonnetOnly", last))
    assert held.lapsed == ()


def test_a_held_limit_stays_beyond_the_basis() -> None:
    full = [obs(30 * i, 40 + i, "whenever") for i in range(4)]  # no reset time known
    within = forecast([*full, partial(90 + 24 * 60)])
    assert not limit_of(within).in_newest
    for days in (1, 3, 30):
        beyond = forecast([*full, partial(90 + days * 24 * 60 + 1)])
        weekly = limit_of(beyond)
        assert not weekly.in_newest and weekly.percentage == 43
        assert weekly.observed_at == T0 + timedelta(minutes=90)
        # One reading, outside the basis: no rate from it.
        assert (weekly.points, weekly.rate_per_hour, weekly.since) == (1, None, weekly.observed_at)
        assert beyond.lapsed == ()


def test_earlier_readings_count_as_the_observations_would() -> None:
    full = [obs(30 * i, 40 + i) for i in range(4)]
    now = [partial(3 * 24 * 60)]
    given = forecast([*full, *now])
    folded = forecast(now, earlier=last_readings(full))
    assert folded == given
    assert limit_of(folded).percentage == 43 and not limit_of(folded).in_newest
    # A newer reading given wins over an earlier one; a later fold keeps the newest.
    newer = [obs(60 * 24 * 2, 47)]
    assert limit_of(forecast([*newer, *now], earlier=last_readings(full))).percentage == 47
    assert last_readings(newer, last_readings(full))["weeklyLimits.allModels"][0].percentage == 47
    assert last_readings(full, last_readings(newer))["weeklyLimits.allModels"][0].percentage == 47


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.booleans(), min_size=2, max_size=30),
    st.floats(min_value=0, max_value=5),
)
def test_partial_snapshots_never_hide_a_limit_read_within_the_basis(
    kinds: list[bool], rate: float
) -> None:
    # A history mixing full (True) and partial (False) snapshots 10 minutes apart, the
    # weekly limit rising at ``rate`` %/h: whichever comes last, the weekly limit is there,
    # with the newest reading any snapshot had, observed when that snapshot was.
    kinds[0] = True
    observations = [
        obs(10 * i, 40 + rate * i / 6) if full else partial(10 * i) for i, full in enumerate(kinds)
    ]
    result = forecast(observations)
    last_full = max(i for i, full in enumerate(kinds) if full)
    weekly = limit_of(result)
    assert weekly.percentage == pytest.approx(40 + rate * last_full / 6)
    assert weekly.observed_at == T0 + timedelta(minutes=10 * last_full)
    assert weekly.in_newest is kinds[-1]
    assert (weekly.missing_reason is None) is kinds[-1]
