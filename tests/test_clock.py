"""Time in one place: the ISO spelling and the wall-clock-jump detector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingester.clock import CLOCK_JUMP, ClockJump, iso_utc, parse_iso_time, utc_now


def test_one_iso_spelling_in_utc_with_z() -> None:
    stamp = datetime(2026, 11, 27, 15, 5, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert iso_utc(stamp) == "2026-11-27T14:05:00.123Z"
    assert iso_utc(stamp, "seconds") == "2026-11-27T14:05:00Z"
    assert iso_utc(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000Z"
    assert utc_now().tzinfo is UTC


def test_a_forward_jump_stands_until_the_clock_is_set_back() -> None:
    clocks = {"wall": 1_000_000.0, "boot": 50.0}
    jump = ClockJump(wall=lambda: clocks["wall"], boot=lambda: clocks["boot"])
    assert not jump.jumped()
    clocks["wall"] += 600
    clocks["boot"] += 600
    assert not jump.jumped()  # time passing on both clocks is no jump
    clocks["wall"] += CLOCK_JUMP + 1
    assert jump.jumped()
    clocks["wall"] += 600
    clocks["boot"] += 600
    assert jump.jumped()  # it stands while both run on
    clocks["wall"] -= CLOCK_JUMP + 1
    assert not jump.jumped()


def test_a_backward_step_is_the_new_reference() -> None:
    clocks = {"wall": 1_000_000.0, "boot": 50.0}
    jump = ClockJump(wall=lambda: clocks["wall"], boot=lambda: clocks["boot"])
    jump.gained()
    clocks["wall"] -= 86400  # retention then keeps more: never a reason to hold back
    assert not jump.jumped()
    clocks["wall"] += CLOCK_JUMP - 1
    assert not jump.jumped()
    clocks["wall"] += 2
    assert jump.jumped()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2026-02-30", "'2026-02-30' is not a time that exists (day is out of range for month)"),
        ("2026-13-01", "'2026-13-01' is not a time that exists (month must be in 1..12)"),
        (
            "2026-02-28T25:00Z",
            "'2026-02-28T25:00Z' is not a time that exists (hour must be in 0..23)",
        ),
        (
            "2026-02-28T10:00+05:99",
            "'2026-02-28T10:00+05:99' is not a time that exists "
            "(an offset's minutes run from 00 to 59)",
        ),
        ("28.02.2026", "'28.02.2026' is not an ISO-8601 time (e.g. 2026-11-28T10:30:00Z)"),
        ("", "'' is not an ISO-8601 time (e.g. 2026-11-28T10:30:00Z)"),
    ],
)
def test_a_time_typed_wrong_is_named_for_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_iso_time(text)
    assert str(caught.value) == words


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-28T10:30:00Z\x00junk",
        "2026-02-28T10:30:00Z\x00",
        "2026-02-28T10:30\x00",
        "2026-02-28T10:30+01:00\x00junk",
        "2026-02-28T10:30:00\x1b[0m",
        "2026-02-28T1\u0660:30",
    ],
)
def test_a_typed_time_with_anything_after_a_nul_or_a_control_character_is_refused(
    text: str,
) -> None:
    """datetime's parser stops at a NUL: what follows it must not pass unseen."""
    with pytest.raises(ValueError) as caught:
        parse_iso_time(text)
    assert str(caught.value) == f"{text!r} is not an ISO-8601 time (e.g. 2026-11-28T10:30:00Z)"


def test_a_typed_time_without_an_offset_is_utc() -> None:
    assert parse_iso_time("2026-02-28T10:30") == datetime(2026, 2, 28, 10, 30, tzinfo=UTC)
    assert parse_iso_time("2026-02-28T11:30+01:00") == datetime(2026, 2, 28, 10, 30, tzinfo=UTC)
