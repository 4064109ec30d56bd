"""``resetsIn`` read as an instant: every wording, time zones, DST and year boundaries."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ingester.usage.resets import (
    MAX_RESET_AHEAD,
    ResetTime,
    load_zone,
    machine_zone,
    parse_resets_in,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
MINUTE = timedelta(minutes=1)
# Friday 2026-11-27 15:05 in Berlin.
SEEN = datetime(2026, 11, 27, 14, 5, 30, tzinfo=UTC)


def at(text: str, seen: datetime = SEEN, zone: ZoneInfo = BERLIN) -> datetime | None:
    found = parse_resets_in(text, seen, zone)
    return None if found is None else found.at


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected", "within"),
    [
        ("4 hr 12 min", SEEN + timedelta(hours=4, minutes=12), MINUTE),
        ("45 min", SEEN + timedelta(minutes=45), MINUTE),
        ("2 hr", SEEN + timedelta(hours=2), timedelta(hours=1)),
        ("3 days", SEEN + timedelta(days=3), timedelta(days=1)),
        ("1 day 4 hr", SEEN + timedelta(days=1, hours=4), timedelta(hours=1)),
        ("in 5 hours, 3 minutes", SEEN + timedelta(hours=5, minutes=3), MINUTE),
        ("Resets in 2d 3h", SEEN + timedelta(days=2, hours=3), timedelta(hours=1)),
        ("0 min", SEEN, MINUTE),
        # Monday 8:59 in Berlin (CET, UTC+1) after Friday 15:05: three days on.
        ("Mon 8:59 AM", utc(2026, 11, 30, 7, 59), MINUTE),
        ("Monday, 8:59 a.m.", utc(2026, 11, 30, 7, 59), MINUTE),
        ("mon 20:59", utc(2026, 11, 30, 19, 59), MINUTE),
        ("Fri 3:00 PM", utc(2026, 12, 4, 14, 0), MINUTE),  # today's 15:00 has passed
        ("Fri 3:05 PM", utc(2026, 11, 27, 14, 5), MINUTE),  # this very minute: today
        ("Dec 5, 8:59 AM", utc(2026, 12, 5, 7, 59), MINUTE),
        ("Dec 5 at 8:59 AM", utc(2026, 12, 5, 7, 59), MINUTE),
        ("December 5th, 8:59 PM", utc(2026, 12, 5, 19, 59), MINUTE),
        ("5 Dec 20:59", utc(2026, 12, 5, 19, 59), MINUTE),
        ("Nov 27, 3:00 PM", utc(2027, 11, 27, 14, 0), MINUTE),  # passed today: next year's
        ("Jan 2, 8:59 AM", utc(2027, 1, 2, 7, 59), MINUTE),
        ("Feb 29, 1:00 AM", utc(2028, 2, 29, 0, 0), MINUTE),  # the next leap year
        ("8:59\u202fPM", utc(2026, 11, 27, 19, 59), MINUTE),  # a browser's narrow space
        ("8:59 AM", utc(2026, 11, 28, 7, 59), MINUTE),  # passed today: tomorrow
        ("tomorrow at 9:00 AM", utc(2026, 11, 28, 8, 0), MINUTE),
        ("today at 9:00 PM", utc(2026, 11, 27, 20, 0), MINUTE),
        ("today at 3:05 PM", utc(2026, 11, 27, 14, 5), MINUTE),  # this very minute
        ("12:30 AM", utc(2026, 11, 27, 23, 30), MINUTE),  # 00:30 Saturday in Berlin
        ("12:30 PM", utc(2026, 11, 28, 11, 30), MINUTE),
    ],
)
def test_each_wording(text: str, expected: datetime, within: timedelta) -> None:
    assert parse_resets_in(text, SEEN, BERLIN) == ResetTime(expected, within)


@pytest.mark.parametrize(
    "text",
    [
        "unknown",
        "",
        "   ",
        "soon",
        "Resets soon",
        "4 hr 4 hr",
        "4 parsecs",
        "1.5 hr",
        "Mon",
        "Mon 8",
        "Mon 13:00 PM",
        "Mon 8:61 AM",
        "Mon 25:00",
        "Feb 30, 1:00 AM",
        "Dec 32, 1:00 AM",
        "Smarch 5, 1:00 AM",
        "Dec 5",
        "8:59 AM PST",
        "today at 8:59 AM",  # already past: the words cannot hold in this zone
        "today at 3:04 PM",
        "99999 days",
        "x" * 1000,
        "\x00",
        "٤ hr",  # digits of another script
    ],
)
def test_anything_else_is_no_reset_time(text: str) -> None:
    assert parse_resets_in(text, SEEN, BERLIN) is None


@pytest.mark.parametrize("value", [None, 4, 4.5, True, ["4 hr"], {"hr": 4}])
def test_a_value_that_is_not_text_is_no_reset_time(value: object) -> None:
    assert parse_resets_in(value, SEEN, BERLIN) is None


def test_the_zone_decides_the_instant_of_an_absolute_wording() -> None:
    assert at("Mon 8:59 AM", zone=NEW_YORK) == utc(2026, 11, 30, 13, 59)
    assert at("Mon 8:59 AM", zone=ZoneInfo("Asia/Kolkata")) == utc(2026, 11, 30, 3, 29)
    # A relative wording does not depend on it.
    assert at("4 hr", zone=NEW_YORK) == at("4 hr", zone=BERLIN)


def test_daylight_saving_changes_between_now_and_the_reset() -> None:
    # Friday before Berlin's change to summer time (Sunday 2027-03-28): Monday 8:59 is
    # CEST (UTC+2), not the CET offset of the day the snapshot was taken.
    friday = utc(2027, 3, 26, 12, 0)
    assert at("Mon 8:59 AM", friday) == utc(2027, 3, 29, 6, 59)
    # ... and back to winter time (Sunday 2027-10-31).
    assert at("Mon 8:59 AM", utc(2027, 10, 29, 12, 0)) == utc(2027, 11, 1, 7, 59)
    # A wall time that does not exist (New York springs from 2:00 to 3:00 on 2027-03-14)
    # is read with the offset before the change: 2:30 EST.
    assert at("Sun 2:30 AM", utc(2027, 3, 12, 12, 0), NEW_YORK) == utc(2027, 3, 14, 7, 30)
    # One that happens twice (1:30 on 2027-11-07) is the first of the two (EDT).
    assert at("Sun 1:30 AM", utc(2027, 11, 5, 12, 0), NEW_YORK) == utc(2027, 11, 7, 5, 30)


@pytest.mark.parametrize("text", ["Sun 2:30 AM", "2:30 AM", "today at 2:30 AM", "Oct 25, 2:30 AM"])
def test_a_wall_time_that_happens_twice_is_the_first_not_yet_past(text: str) -> None:
    # Berlin falls back from 3:00 CEST to 2:00 CET on 2026-10-25. Seen at 2:45 CEST (the
    # first 2:45), the first 2:30 has passed, and the second (CET) is 45 minutes ahead:
    # not next week, nor tomorrow, nor no reset time at all.
    seen = utc(2026, 10, 25, 0, 45)
    assert at(text, seen) == utc(2026, 10, 25, 1, 30)
    # Seen before the first 2:30, that first one is the reset.
    assert at(text, utc(2026, 10, 25, 0, 15)) == utc(2026, 10, 25, 0, 30)


def test_a_wall_time_that_happens_twice_is_precise_only_to_the_second_of_the_two() -> None:
    # 1:30 on 2027-11-07 in New York is 5:30 UTC (EDT) and again 6:30 UTC (EST): the
    # console's "Sun 1:30 AM" fits both, so the reset lies anywhere from the first to the
    # minute of the second.
    friday = utc(2027, 11, 5, 12, 0)
    found = parse_resets_in("Sun 1:30 AM", friday, NEW_YORK)
    assert found == ResetTime(utc(2027, 11, 7, 5, 30), timedelta(hours=1) + MINUTE)
    # Seen between the two, only the second is left: to the minute.
    between = parse_resets_in("Sun 1:30 AM", utc(2027, 11, 7, 5, 45), NEW_YORK)
    assert between == ResetTime(utc(2027, 11, 7, 6, 30), MINUTE)
    # Any other wall time, a spring-forward gap's included, is to the minute.
    later = parse_resets_in("Sun 3:30 AM", friday, NEW_YORK)
    assert later == ResetTime(utc(2027, 11, 7, 8, 30), MINUTE)
    gap = parse_resets_in("Sun 2:30 AM", utc(2027, 3, 12, 12, 0), NEW_YORK)
    assert gap == ResetTime(utc(2027, 3, 14, 7, 30), MINUTE)


def test_year_boundaries_are_the_console_zone_s() -> None:
    auckland = ZoneInfo("Pacific/Auckland")
    # 20:30 UTC on New Year's Eve is 09:30 on January 1 in Auckland (NZDT, UTC+13).
    eve = utc(2026, 12, 31, 20, 30)
    assert at("Jan 1, 10:00 AM", eve, auckland) == utc(2026, 12, 31, 21, 0)
    assert at("Jan 1, 9:00 AM", eve, auckland) == utc(2027, 12, 31, 20, 0)  # passed: next year
    assert at("Dec 31, 11:00 PM", eve, BERLIN) == utc(2026, 12, 31, 22, 0)
    assert at("Jan 1, 12:05 AM", eve, BERLIN) == utc(2026, 12, 31, 23, 5)
    assert at("Thu 9:00 AM", eve, auckland) == utc(2027, 1, 6, 20, 0)  # Thu Jan 7 local


# -- properties ----------------------------------------------------------------------------

ZONES = [
    ZoneInfo(name)
    for name in (
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "America/Santiago",
        "Australia/Lord_Howe",  # a half-hour daylight-saving change
        "Pacific/Auckland",
        "Asia/Kolkata",
        "Pacific/Chatham",
    )
]
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
zones = st.sampled_from(ZONES)
clock_times = st.times().map(lambda t: t.replace(second=0, microsecond=0))
UNIT_WORDS = {
    86_400: ["d", "day", "days"],
    3_600: ["h", "hr", "hrs", "hour", "hours"],
    60: ["m", "min", "mins", "minute", "minutes"],
}


def clock_text(t: time, twelve_hour: bool) -> str:
    if not twelve_hour:
        return f"{t.hour}:{t.minute:02d}"
    return f"{(t.hour % 12) or 12}:{t.minute:02d} {'PM' if t.hour >= 12 else 'AM'}"


def reference(seen: datetime, zone: ZoneInfo) -> datetime:
    return seen.astimezone(zone).replace(second=0, microsecond=0).astimezone(UTC)


def exists(day: date, t: time, zone: ZoneInfo) -> bool:
    """Whether the wall time is real in the zone (not in a spring-forward gap)."""
    instant = datetime.combine(day, t, tzinfo=zone)
    back = instant.astimezone(UTC).astimezone(zone)
    return (back.date(), back.time()) == (day, t)


@settings(max_examples=300, deadline=None)
@given(
    seen=instants,
    parts=st.dictionaries(
        st.sampled_from(sorted(UNIT_WORDS)), st.integers(0, 99), min_size=1, max_size=3
    ),
    data=st.data(),
)
def test_relative_wordings_count_from_the_observation(
    seen: datetime, parts: dict[int, int], data: st.DataObject
) -> None:
    words = " ".join(
        f"{n} {data.draw(st.sampled_from(UNIT_WORDS[unit]))}"
        for unit, n in sorted(parts.items(), reverse=True)
    )
    found = parse_resets_in(words, seen, BERLIN)
    total = timedelta(seconds=sum(unit * n for unit, n in parts.items()))
    assert found == ResetTime(seen + total, timedelta(seconds=min(parts)))


@settings(max_examples=300, deadline=None)
@given(
    seen=instants,
    zone=zones,
    weekday=st.integers(0, 6),
    t=clock_times,
    twelve=st.booleans(),
)
def test_a_weekday_is_the_next_one_at_that_time(
    seen: datetime, zone: ZoneInfo, weekday: int, t: time, twelve: bool
) -> None:
    name = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][weekday]
    found = parse_resets_in(f"{name} {clock_text(t, twelve)}", seen, zone)
    assert found is not None
    start = reference(seen, zone)
    assert start <= found.at < start + timedelta(days=7, hours=2)
    local = found.at.astimezone(zone)
    if exists(local.date(), t, zone):
        assert local.weekday() == weekday
        assert local.time() == t
        # and no earlier instant after the reference has that weekday and time (in a
        # fall-back hour, either of the two instants the wall time names)
        for back in (0, 7):
            for fold in (0, 1):
                wall = datetime.combine(local.date() - timedelta(days=back), t, tzinfo=zone)
                earlier = wall.replace(fold=fold).astimezone(UTC)
                if earlier.astimezone(zone).time() == t:
                    assert not start <= earlier < found.at


@settings(max_examples=300, deadline=None)
@given(seen=instants, zone=zones, day=st.dates(), t=clock_times, style=st.integers(0, 2))
def test_a_month_and_day_is_the_next_one_at_that_time(
    seen: datetime, zone: ZoneInfo, day: date, t: time, style: int
) -> None:
    month = day.strftime("%b")
    clock = clock_text(t, style != 2)
    text = [
        f"{month} {day.day}, {clock}",
        f"{month} {day.day} at {clock}",
        f"{day.day} {month} {clock}",
    ][style]
    found = parse_resets_in(text, seen, zone)
    assert found is not None
    start = reference(seen, zone)
    ahead = timedelta(days=8 * 366) if (day.month, day.day) == (2, 29) else timedelta(days=367)
    assert start <= found.at < start + ahead
    local = found.at.astimezone(zone)
    assume(exists(local.date(), t, zone))
    assert (local.month, local.day, local.time()) == (day.month, day.day, t)


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=80), seen=instants, zone=zones)
def test_any_text_gives_a_reset_time_or_none_never_an_error(
    text: str, seen: datetime, zone: ZoneInfo
) -> None:
    found = parse_resets_in(text, seen, zone)
    if found is not None:
        assert found.at.tzinfo is not None
        # "today at 8:00" may lie earlier today; nothing lies further off than the bound.
        assert (
            seen - timedelta(days=1)
            <= found.at
            <= seen + max(MAX_RESET_AHEAD, timedelta(days=9 * 366))
        )


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(
            ["4", "12", "hr", "min", "days", "Mon", "Dec", "5", ",", "at", "AM", "PM", ":", "59"]
        ),
        max_size=8,
    ),
    seen=instants,
)
def test_near_misses_never_raise(words: list[str], seen: datetime) -> None:
    parse_resets_in(" ".join(words), seen, BERLIN)
    parse_resets_in("".join(words), seen, BERLIN)


# -- the zone setting ---------------------------------------------------------------------


def test_load_zone_names_a_zone_or_says_what_is_wrong() -> None:
    assert load_zone("Europe/Berlin") == BERLIN
    for bad in ("Mars/Olympus", "", "../../etc/passwd", "Europe/", "/etc/localtime"):
        with pytest.raises(ValueError, match="time zone"):
            load_zone(bad)


def test_the_machine_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    assert machine_zone() == (NEW_YORK, "America/New_York")
    monkeypatch.setenv("TZ", ":Europe/Berlin")
    assert machine_zone() == (BERLIN, "Europe/Berlin")
    monkeypatch.setenv("TZ", "Not/AZone")
    zone, name = machine_zone()
    assert (zone, name) == (UTC, "UTC")
