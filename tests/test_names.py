"""Version names: format, parsing, ingestion order under any clock, and the names a store
has promised (its ledger)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingester import generate_version_filename, parse_timestamp_from_filename
from ingester.history.name_ledger import NameLedger
from ingester.history.names import format_timestamp, is_version_name

GENERATED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-[0-9a-f]{8}\.json$")
NOW = datetime(2026, 11, 28, 10, 30, 0, 412_000, tzinfo=UTC)


def test_generated_name_has_the_format_and_carries_the_time() -> None:
    name = generate_version_filename(NOW)
    assert GENERATED.match(name), name
    assert name.startswith("2026-11-28T10-30-00-")
    assert parse_timestamp_from_filename(name) == NOW.replace(microsecond=0)


def test_generated_name_uses_utc() -> None:
    plus_two = datetime(2026, 11, 28, 14, 30, 0, tzinfo=timezone(timedelta(hours=2)))
    assert generate_version_filename(plus_two).startswith("2026-11-28T12-30-00-")


def test_default_clock_is_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = parse_timestamp_from_filename(generate_version_filename())
    after = datetime.now(UTC)
    assert stamp is not None
    assert before <= stamp <= after


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("2026-01-05T00-00-00-test5.json", datetime(2026, 1, 5, tzinfo=UTC)),
        ("2026-01-28T00-00-00-test110.json", datetime(2026, 1, 28, tzinfo=UTC)),
        ("2026-11-28T10-30-00-1a2b3c4d.json", datetime(2026, 11, 28, 10, 30, tzinfo=UTC)),
        ("2024-02-29T23-59-59-X.json", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
        ("2026-11-28T10-30-00-ABCdef.json", datetime(2026, 11, 28, 10, 30, tzinfo=UTC)),
    ],
)
def test_legacy_and_own_names_parse(name: str, expected: datetime) -> None:
    assert parse_timestamp_from_filename(name) == expected
    assert is_version_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "_metadata.json",
        ".lock",
        "foo.json",
        "console-usage-synced.json",
        ".tmp-w-0123456789ab",
        ".tmp-link-0123456789ab",
        "2026-13-01T00-00-00-test.json",  # month 13
        "2026-02-30T00-00-00-test.json",  # no such day
        "2025-02-29T00-00-00-test.json",  # not a leap year
        "2026-01-01T24-00-00-test.json",
        "2026-01-01T00-60-00-test.json",
        "2026-01-01T00-00-61-test.json",
        "2026-01-01T00-00-00-.json",  # empty suffix
        "2026-01-01T00-00-00-te_st.json",  # suffix not letters or digits
        "2026-01-01T00-00-00-te-st.json",
        "2026-01-01T00-00-00-test.json.bak",
        "2026-01-01T00-00-00-test.JSON",
        "2026-01-01T00-00-00-test.json.tmp",
        ".2026-01-01T00-00-00-test.json",
        "2026-01-01T00:00:00-test.json",  # colons, not dashes
        "2026-01-01 00-00-00-test.json",
        "26-01-01T00-00-00-test.json",
        "2026-01-01T00-00-00.json",
        "",
        "2026-01-01T00-00-00-test.json\n",
        "\uff12\uff10\uff12\uff16-01-01T00-00-00-test.json",  # full-width digits
    ],
)
def test_non_version_names_return_none(name: str) -> None:
    assert parse_timestamp_from_filename(name) is None
    assert not is_version_name(name)


def test_format_timestamp() -> None:
    assert format_timestamp(NOW) == "2026-11-28T10:30:00.412Z"
    assert format_timestamp(None) is None
    east = NOW.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert format_timestamp(east) == "2026-11-28T10:30:00.412Z"


def test_same_millisecond_names_still_increase() -> None:
    names = [generate_version_filename(NOW)]
    for _ in range(5000):
        names.append(generate_version_filename(NOW, after=names[-1]))
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert all(GENERATED.match(n) for n in names)


def test_after_a_legacy_name_in_the_same_second() -> None:
    legacy = "2026-11-28T10-30-00-test5.json"  # letters sort above any hex suffix
    name = generate_version_filename(NOW, after=legacy)
    assert name > legacy
    assert GENERATED.match(name)
    stamp = parse_timestamp_from_filename(name)
    assert stamp is not None and stamp >= NOW.replace(microsecond=0)


def test_after_an_exhausted_second() -> None:
    last = "2026-11-28T10-30-00-ffffffff.json"
    name = generate_version_filename(NOW, after=last)
    assert name > last
    assert name.startswith("2026-11-28T10-30-01-")


def test_after_must_be_a_version_name_when_it_matters() -> None:
    with pytest.raises(ValueError):
        generate_version_filename(NOW, after="zzz-not-a-version.json")


# -- property tests ---------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)
legacy_suffixes = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    min_size=1,
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(instants)
def test_parse_round_trip(now: datetime) -> None:
    name = generate_version_filename(now)
    assert GENERATED.match(name)
    assert parse_timestamp_from_filename(name) == now.replace(microsecond=0)


@settings(max_examples=100, deadline=None)
@given(instants, legacy_suffixes)
def test_any_letters_or_digits_suffix_parses(now: datetime, suffix: str) -> None:
    name = f"{now:%Y-%m-%dT%H-%M-%S}-{suffix}.json"
    assert parse_timestamp_from_filename(name) == now.replace(microsecond=0)


# A clock that steps: mostly forward by a little, sometimes not at all, sometimes back.
clock_steps = st.lists(
    st.one_of(
        st.just(timedelta(0)),
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(milliseconds=5)),
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(seconds=3)),
        st.timedeltas(min_value=timedelta(hours=-48), max_value=timedelta(0)),  # stepped back
    ),
    min_size=1,
    max_size=200,
)


@settings(max_examples=60, deadline=None)
@given(instants, clock_steps, st.none() | legacy_suffixes)
def test_names_strictly_increase_whatever_the_clock_does(
    start: datetime, steps: list[timedelta], legacy: str | None
) -> None:
    previous = f"{start:%Y-%m-%dT%H-%M-%S}-{legacy}.json" if legacy else None
    names = [] if previous is None else [previous]
    clock = start
    for step in steps * 20:  # thousands of names in all
        clock += step
        name = generate_version_filename(clock, after=previous)
        assert previous is None or name > previous, (previous, name)
        assert GENERATED.match(name)
        names.append(name)
        previous = name
    assert names == sorted(names)
    stamps = [parse_timestamp_from_filename(n) for n in names]
    assert all(s is not None for s in stamps)
    assert stamps == sorted(stamps)  # type: ignore[type-var]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(instants, legacy_suffixes | st.just("")), min_size=2, max_size=50))
def test_timestamps_never_decrease_along_sorted_names(items: list[tuple[datetime, str]]) -> None:
    names = sorted(
        f"{t:%Y-%m-%dT%H-%M-%S}-{s}.json" if s else generate_version_filename(t) for t, s in items
    )
    stamps = [parse_timestamp_from_filename(n) for n in names]
    assert all(s is not None for s in stamps)
    assert stamps == sorted(stamps)  # type: ignore[type-var]


# -- the naming ledger ------------------------------------------------------------------


def named(stamp: datetime, suffix: str) -> str:
    """The version name of ``stamp`` (to the second) with ``suffix``."""
    return f"{stamp:%Y-%m-%dT%H-%M-%S}-{suffix}.json"


def never_stored(name: str) -> bool:
    return False


# Dated after the clock (NOW), not a day ahead: every name is derived from one above it,
# so each is known in advance.
STORED = [named(NOW + timedelta(minutes=1), "00000000")]


def test_a_ledger_hands_out_names_in_a_row_each_above_the_last_and_every_version() -> None:
    ledger = NameLedger()
    first = ledger.next_name(STORED, NOW)
    second = ledger.next_name(STORED, NOW)
    assert first == named(NOW + timedelta(minutes=1), "00000001")
    assert STORED[-1] < first < second
    assert ledger.handed == [first, second]


def test_a_ledger_s_names_stay_unique_and_in_order_under_a_clock_set_back() -> None:
    ledger = NameLedger()
    names = [
        ledger.next_name([], clock)
        for clock in (NOW, NOW - timedelta(hours=1), NOW - timedelta(hours=23), NOW)
    ]
    assert names == sorted(names)
    assert len(set(names)) == len(names)


def test_a_name_handed_out_days_ahead_is_passed_over_by_the_clock_but_never_handed_again() -> None:
    ledger = NameLedger()
    ahead = ledger.next_name([], NOW + timedelta(days=3))
    later = ledger.next_name([], NOW)  # the clock set back: named by the clock again
    assert parse_timestamp_from_filename(later) == NOW.replace(microsecond=0)
    assert later < ahead
    assert ledger.handed == [later, ahead]


def test_a_reserved_name_is_never_handed_out_and_later_names_sort_above_it() -> None:
    ledger = NameLedger()
    waiting = named(NOW + timedelta(hours=1), "00000005")
    ledger.reserve([waiting], replace=True, stored=never_stored)
    assert ledger.next_name([], NOW) == named(NOW + timedelta(hours=1), "00000006")
    ledger.give_back(waiting)  # never handed out: it stays reserved
    assert ledger.next_name([], NOW) > waiting


@pytest.mark.parametrize("held", ["handed out", "reserved", "stored", "taken back"])
def test_a_name_a_day_ahead_is_never_handed_out_even_where_the_next_name_is_it(held: str) -> None:
    ledger = NameLedger()
    legacy = named(NOW + timedelta(days=1), "test")  # not future: dated to the second
    # The name after it, one second on, is future: passed over, and still not given,
    # whether a drop on its way, a waiting claim, a version or one taken back holds it.
    ahead = named(NOW + timedelta(days=1, seconds=1), "00000000")
    versions = [legacy, ahead] if held == "stored" else [legacy]
    if held == "handed out":
        assert ledger.next_name(versions, NOW) == ahead
    elif held == "reserved":
        ledger.reserve([ahead], replace=True, stored=never_stored)
    elif held == "taken back":
        ledger.withdraw(ahead)
    assert ledger.next_name(versions, NOW) == named(NOW + timedelta(days=1, seconds=1), "00000001")


def test_reserving_again_with_replace_releases_the_names_reserved_before() -> None:
    ledger = NameLedger()
    ledger.reserve([named(NOW + timedelta(hours=2), "00000000")], replace=True, stored=never_stored)
    waiting = named(NOW + timedelta(hours=1), "00000000")
    stored = named(NOW + timedelta(hours=3), "00000000")  # its claim's version is on disk
    ledger.reserve(
        [waiting, "_metadata.json", stored], replace=True, stored=lambda name: name == stored
    )
    assert ledger.next_name([], NOW) == named(NOW + timedelta(hours=1), "00000001")


def test_a_name_given_back_may_be_handed_out_again() -> None:
    ledger = NameLedger()
    given = ledger.next_name(STORED, NOW)
    ledger.give_back(given)
    assert ledger.handed == []
    assert ledger.next_name(STORED, NOW) == given


@pytest.mark.parametrize("held", ["reserved", "taken back"])
def test_names_sort_above_a_name_reserved_or_taken_back_above_every_version(held: str) -> None:
    ledger = NameLedger()
    kept = named(NOW + timedelta(hours=1), "00000000")
    if held == "reserved":
        ledger.reserve([kept], replace=True, stored=never_stored)
    else:
        ledger.withdraw(kept)
    assert ledger.next_name(STORED, NOW) == named(NOW + timedelta(hours=1), "00000001")


def test_a_name_taken_back_is_never_handed_out_again() -> None:
    ledger = NameLedger()
    name = ledger.next_name(STORED, NOW)
    ledger.linked(name)
    ledger.withdraw(name)  # its version gone again, its claim may wait under it
    ledger.give_back(name)
    assert ledger.next_name(STORED, NOW) > name


def test_a_linked_name_is_left_to_the_versions_to_keep() -> None:
    ledger = NameLedger()
    waiting = named(NOW + timedelta(hours=1), "00000000")
    ledger.reserve([waiting], replace=False, stored=never_stored)
    name = ledger.next_name(STORED, NOW)
    ledger.linked(name)
    ledger.linked(waiting)
    assert ledger.handed == []
    # Neither is kept any more: without the versions, the clock names the next one.
    assert parse_timestamp_from_filename(ledger.next_name([], NOW)) == NOW.replace(microsecond=0)


def test_names_handed_out_below_a_version_linked_since_are_no_longer_kept() -> None:
    ledger = NameLedger()
    handed = ledger.next_name([], NOW)  # its drop given up, never given back
    later = ledger.next_name(STORED, NOW)  # a version above it was linked meanwhile
    assert handed < STORED[-1] < later
    assert ledger.handed == [later]
