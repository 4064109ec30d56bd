"""Time in one place: the ISO spelling and the wall-clock-jump detector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from ingester.clock import CLOCK_JUMP, ClockJump, iso_utc, utc_now


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
