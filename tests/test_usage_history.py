"""The forecast over a real history folder: which versions are read, and how often."""

from __future__ import annotations

import json
import logging
import math
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.serveproc import put_version, version_name
from support.watchproc import payload

from ingester.history.index import HistoryIndex
from ingester.history.local import LocalHistory
from ingester.usage.usage_history import UsageHistory

NOW = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)


def body(updated: datetime, pct: float, resets: str = "3 days", **extra: Any) -> bytes:
    return json.dumps(
        {
            "weeklyLimits": {
                "allModels": {"resetsIn": resets, "percentageUsed": pct},
                "sonnetOnly": {"resetsIn": resets, "percentageUsed": 1},
            },
            "lastUpdated": updated.isoformat().replace("+00:00", "Z"),
            **extra,
        }
    ).encode()


def engine(root: Path) -> UsageHistory:
    # settle=0: versions written by the test a moment ago count at once.
    index = HistoryIndex(LocalHistory(root / "console-usage-history", settle=0))
    return UsageHistory(index, UTC, "UTC")


def weekly(usage: UsageHistory, now: datetime = NOW) -> Any:
    answer = usage.answer(now)
    assert answer is not None
    return next(x for x in answer.forecast.limits if x.limit == "weeklyLimits.allModels")


def test_each_version_is_read_once_and_only_the_basis_kept(root: Path) -> None:
    # Three days of snapshots, one every 30 minutes, 0.5 %/h.
    start = NOW - timedelta(days=3)
    for i in range(144):
        at = start + timedelta(minutes=30 * i)
        put_version(root, version_name(at, i), body(at, min(99, 0.25 * i)))
    usage = engine(root)
    result = weekly(usage)
    assert result.rate_per_hour == pytest.approx(0.5)
    # Every version once: the last day (and the hour a clock may run ahead) for the rate,
    # the two days before it for the limits they hold; only the basis' 48 + 2 are kept.
    assert usage.reads == 144
    assert len(usage._observations) <= 51
    first = usage.reads
    assert usage.answer(NOW) is usage.answer(NOW)  # nothing changed: the same answer
    assert usage.reads == first
    at = NOW + timedelta(minutes=30)
    put_version(root, version_name(at, 999), body(at, 0.25 * 144))
    assert weekly(usage, at).percentage == 36
    assert usage.reads == first + 1


def test_a_backfill_stored_at_once_is_read_by_its_own_times(root: Path) -> None:
    # Versions stored within one second, observed over six hours (a scraper catching up).
    for i in range(13):
        updated = NOW - timedelta(hours=6) + timedelta(minutes=30 * i)
        put_version(root, version_name(NOW, i), body(updated, 20 + i))
    result = weekly(engine(root), NOW + timedelta(seconds=5))
    assert result.rate_per_hour == pytest.approx(2)
    assert result.points == 13
    assert result.since == NOW - timedelta(hours=6)


def test_old_data_stored_late_is_still_found(root: Path) -> None:
    # Normal snapshots until a week ago; then a backfill of older snapshots stored today.
    week_ago = NOW - timedelta(days=7)
    for i in range(6):
        at = week_ago + timedelta(minutes=30 * i)
        put_version(root, version_name(at, i), body(at, 10 + i))
    for i in range(3):
        put_version(root, version_name(NOW, 100 + i), body(week_ago - timedelta(days=2), 5))
    result = weekly(engine(root))
    assert result.since == week_ago
    assert result.rate_per_hour == pytest.approx(2)


def test_damaged_and_odd_versions_are_skipped_or_used_as_they_can_be(root: Path) -> None:
    for i in range(4):
        at = NOW - timedelta(hours=3) + timedelta(hours=i)
        put_version(root, version_name(at, i), body(at, 10 + 5 * i))
    put_version(root, version_name(NOW + timedelta(minutes=1), 50), b"{not json")
    put_version(root, version_name(NOW + timedelta(minutes=2), 51), b"[1, 2]")
    result = weekly(engine(root), NOW + timedelta(minutes=5))
    assert result.rate_per_hour == pytest.approx(5)
    # Only damaged versions at all: no snapshot, no limits, no error.
    other = root.parent / "other"
    put_version(other, version_name(NOW, 1), b"{not json")
    answer = engine(other).answer(NOW)
    assert answer is not None and answer.forecast.as_of is None


def test_a_version_the_gate_refuses_is_left_out_and_named_once(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Valid JSON with usage windows, placed by hand (a restore, an old gate): list, show
    # and export call these damaged, so the forecast must not read them either.
    for i in range(4):
        at = NOW - timedelta(hours=3) + timedelta(hours=i)
        put_version(root, version_name(at, i), body(at, 10 + 5 * i))
    late = NOW + timedelta(minutes=1)
    put_version(root, version_name(late, 50), body(late, 150))
    nan = body(late, 40).replace(b'"percentageUsed": 1}', b'"percentageUsed": NaN}')
    assert b"NaN" in nan
    put_version(root, version_name(late, 51), nan)
    # Beyond the basis, a limit only a damaged version holds is not held.
    old = NOW - timedelta(days=3)
    legacy = {"resetsIn": "Mon 8:59 AM", "percentageUsed": 50}
    session = {"resetsIn": "1 hr", "percentageUsed": "40"}  # a string: the gate refuses it
    put_version(root, version_name(old, 60), body(old, 5, legacy=legacy, currentSession=session))
    usage = engine(root)
    later = NOW + timedelta(minutes=5)
    with caplog.at_level(logging.WARNING, logger="ingester.forecast"):
        answer = usage.answer(later)
        usage.answer(later + timedelta(minutes=1))
    assert answer is not None
    assert [x.limit for x in answer.forecast.limits] == [
        "weeklyLimits.allModels",
        "weeklyLimits.sonnetOnly",
    ]
    assert weekly(usage, later).percentage == 25
    assert weekly(usage, later).rate_per_hour == pytest.approx(5)
    assert usage.damaged == 3
    said = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(said) == 3, said
    assert any("must be at most 100" in line for line in said), said


def test_no_version_is_no_answer(root: Path) -> None:
    assert engine(root).answer(NOW) is None  # not even a history folder
    (root / "console-usage-history").mkdir()
    assert engine(root).answer(NOW) is None


def test_a_future_version_is_not_the_newest(root: Path) -> None:
    at = NOW - timedelta(hours=1)
    put_version(root, version_name(at, 1), body(at, 10))
    put_version(root, version_name(NOW + timedelta(days=3), 2), body(NOW, 90))
    assert weekly(engine(root)).percentage == 10


def test_an_unknown_wording_is_counted_and_said_once(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(5):
        at = NOW - timedelta(minutes=10 * i)
        put_version(root, version_name(at, i), body(at, 10, resets="sometime next week"))
    usage = engine(root)
    with caplog.at_level(logging.WARNING, logger="ingester.forecast"):
        result = weekly(usage)
        usage.answer(NOW + timedelta(minutes=1))
    assert result.resets_at is None and result.before_reset is None
    assert usage.unparsable == 10  # two windows in each of five versions
    said = [r for r in caplog.records if "sometime next week" in r.getMessage()]
    assert len(said) == 1


def test_serve_reads_no_version_until_asked(root: Path) -> None:
    # The metrics registry describes collectors at registration: that must not read the
    # history (a slow start, or a failing one over an unreachable object store).
    from ingester.serve.app import create_app
    from ingester.serve.context import ServeConfig
    from ingester.settings.sources import resolve_settings

    for i in range(3):
        at = NOW - timedelta(minutes=10 * i)
        put_version(root, version_name(at, i), body(at, 10))
    app = create_app(ServeConfig(resolve_settings({"root": str(root)}, environ={})))
    assert app.state.usage.reads == 0


def session_only(updated: datetime) -> bytes:
    return json.dumps(
        {
            "currentSession": {"resetsIn": "4 hr", "percentageUsed": 10},
            "lastUpdated": updated.isoformat().replace("+00:00", "Z"),
            "isPartial": True,
        }
    ).encode()


def test_a_limit_only_old_versions_hold_is_held_until_retention_deletes_them(
    root: Path,
) -> None:
    old = NOW - timedelta(days=2)
    old_name = version_name(old, 0)
    put_version(root, old_name, body(old, 70, resets="5 days"))
    for i in range(1, 60):  # the last day and a half: partial scrapes only
        at = NOW - timedelta(hours=36) + timedelta(minutes=36 * i)
        put_version(root, version_name(at, i), session_only(at))
    usage = engine(root)
    held = weekly(usage)
    assert (held.percentage, held.observed_at, held.in_newest) == (70, old, False)
    reads = usage.reads
    # One more partial version: read alone; the versions leaving the basis are not re-read.
    at = NOW + timedelta(hours=3)
    put_version(root, version_name(at, 99), session_only(at))
    assert weekly(usage, at).observed_at == old
    assert usage.reads == reads + 1
    # Retention deleted the only version holding it: no longer in the history, not held.
    (root / "console-usage-history" / old_name).unlink()
    at = NOW + timedelta(hours=4)
    put_version(root, version_name(at, 100), session_only(at))
    answer = usage.answer(at)
    assert answer is not None
    assert [x.limit for x in answer.forecast.limits] == ["currentSession"]
    assert answer.forecast.lapsed == ()


def drifting_snapshot(rng: random.Random, stored: datetime) -> bytes:
    """A snapshot as scrapers send them: mostly on time, some late (a backfill), some
    from a clock running ahead (by minutes, hours or days), limits coming and going."""
    lag = rng.choice(
        [timedelta(seconds=-5)] * 6
        + [timedelta(hours=-5), timedelta(minutes=50), timedelta(hours=2), timedelta(days=2)]
    )
    windows: dict[str, Any] = {}
    if rng.random() < 0.8 or rng.random() < 0.5:
        windows["currentSession"] = {"resetsIn": "4 hr", "percentageUsed": rng.randint(0, 100)}
    if rng.random() < 0.6 or not windows:
        windows["weeklyLimits"] = {
            "allModels": {"resetsIn": "3 days", "percentageUsed": rng.choice([-0.0, 0, 40, 99])},
            "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": rng.randint(0, 100)},
        }
    updated = (stored + lag).isoformat().replace("+00:00", "Z")
    return json.dumps({**windows, "lastUpdated": updated}).encode()


@pytest.mark.parametrize("seed", range(12))
def test_a_long_running_reader_answers_as_a_fresh_one(root: Path, seed: int) -> None:
    """The answers ``serve`` keeps working out as versions arrive, retention deletes the
    oldest and a hand deletes one from among the others are those a fresh process
    (``ingester forecast``) gives for the same history at each step: over three days of
    snapshots from scrapers whose clocks drift."""
    rng = random.Random(seed)
    history = root / "console-usage-history"
    usage = engine(root)
    stored = NOW - timedelta(days=3)
    for i in range(70):
        stored += timedelta(minutes=rng.choice([5, 30, 90, 240]))
        put_version(root, version_name(stored, i), drifting_snapshot(rng, stored))
        held = sorted(history.glob("2*.json"))
        if len(held) > 5 and rng.random() < 0.15:  # retention deletes the oldest
            for old in held[: rng.randint(1, 3)]:
                old.unlink()
        elif len(held) > 5 and rng.random() < 0.1:  # one deleted by hand, not the newest
            held[rng.randrange(1, len(held) - 1)].unlink()
        now = stored + timedelta(seconds=5)
        kept, fresh = usage.answer(now), engine(root).answer(now)
        assert kept is not None and fresh is not None
        assert repr(kept.forecast) == repr(fresh.forecast), f"step {i}"
        for limit in kept.forecast.limits:
            assert math.copysign(1, limit.percentage) == 1, limit  # never "-0 %"


def test_a_history_of_no_readable_version_is_one_fault_however_many_versions_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``serve`` as a user who may list the history but read none of its versions (the
    watcher's umask 077, or a restore made as root: EACCES on each file, injected here
    as the tests run as root). The fault is the history's, in words that stay the same
    as versions come (not the first version's, which changes with each new one once
    the history spans more than the basis): one line, then at most one a minute.

    A scraper every 30 s and a dashboard polling every 15 s, for 10 minutes."""
    import errno as _errno

    from starlette.requests import Request

    from ingester.history.index import HistoryIndex
    from ingester.history.local import LocalHistory
    from ingester.serve.read_faults import HISTORY, ReadFaults
    from ingester.usage.usage_history import UsageHistory

    history = tmp_path / "console-usage-history"
    history.mkdir()
    now = datetime.now(UTC).replace(microsecond=0)
    base = now - timedelta(hours=27)
    step = timedelta(seconds=30)
    data = payload(1)

    def put(at: datetime, seq: int) -> None:
        name = f"{at.strftime('%Y-%m-%dT%H-%M-%S')}-{seq:08x}.json"
        (history / name).write_bytes(data)

    count = int(timedelta(hours=26) / step)
    for i in range(count):
        put(base + i * step, i)
    reader = LocalHistory(history, settle=0.0)

    def denied(name: str) -> bytes:
        raise PermissionError(_errno.EACCES, "Permission denied", str(history / name))

    monkeypatch.setattr(reader, "read_version", denied)
    usage = UsageHistory(HistoryIndex(reader), UTC, "UTC")
    clock = [0.0]
    faults = ReadFaults(clock=lambda: clock[0])
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/claude/console-usage/forecast",
        "headers": [],
        "client": ("127.0.0.1", 4000),
        "query_string": b"",
    }
    with caplog.at_level(logging.INFO, logger="ingester.serve"):
        for k in range(20):  # 10 minutes: a version each 30 s, two requests between
            put(base + (count + k) * step, count + k)
            for _ in range(2):
                try:
                    usage.answer(now)
                except OSError as exc:
                    faults.failed(Request(scope), HISTORY, exc)
                else:
                    pytest.fail("a history with no readable version gave an answer")
                clock[0] += 15.0
    lines = [r.getMessage() for r in caplog.records if r.name == "ingester.serve"]
    # One line, then at most one a minute while the fault lasts: 10 minutes, 11 lines.
    assert len(lines) <= 11, f"{len(lines)} lines for 40 requests in 10 minutes:\n" + "\n".join(
        lines[:6]
    )


def test_versions_deleted_while_unreadable_do_not_silence_a_new_unreadable_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A long-running reader (serve) met six versions it could not read (named five,
    then "more versions ... names no more of them"); retention (or an operator) then
    deleted them. A version whose read fails later (EIO: a bad sector) is still named:
    the first five are counted among the versions still listed, not for the life of
    the process."""
    import errno as _errno

    from ingester.history.index import HistoryIndex
    from ingester.history.local import LocalHistory
    from ingester.usage.usage_history import UNREADABLE_EVENT, UsageHistory

    history = tmp_path / "console-usage-history"
    history.mkdir()
    now = datetime.now(UTC).replace(microsecond=0)
    names = []
    for i in range(10):
        at = now - timedelta(minutes=10 * (10 - i))
        name = f"{at.strftime('%Y-%m-%dT%H-%M-%S')}-{i:08x}.json"
        (history / name).write_bytes(payload(i))
        names.append(name)
    reader = LocalHistory(history, settle=0.0)
    real = reader.read_version
    bad: dict[str, int] = dict.fromkeys(names[:6], _errno.EACCES)

    def read_version(name: str) -> bytes:
        if name in bad:
            raise OSError(bad[name], os.strerror(bad[name]), str(history / name))
        return real(name)

    monkeypatch.setattr(reader, "read_version", read_version)
    usage = UsageHistory(HistoryIndex(reader), UTC, "UTC")
    with caplog.at_level(logging.WARNING, logger="ingester.forecast"):
        assert usage.answer(now) is not None
        first = [r for r in caplog.records if getattr(r, "event", None) == UNREADABLE_EVENT]
        assert len(first) == 6
        caplog.clear()
        for name in names[:6]:  # deleted by retention, or by hand
            (history / name).unlink()
            del bad[name]
        assert usage.answer(now) is not None
        # Later: a new version whose read fails (EIO: a bad sector).
        at = now - timedelta(minutes=1)
        late = f"{at.strftime('%Y-%m-%dT%H-%M-%S')}-000000ff.json"
        (history / late).write_bytes(payload(99))
        bad[late] = _errno.EIO
        assert usage.answer(now) is not None
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == UNREADABLE_EVENT]
    assert any(late in line for line in said), (
        f"{late} is left out of the forecast (EIO) without a line: {said}"
    )
