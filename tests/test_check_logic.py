"""The pure parts of ``check`` and of the rejected retention, exhaustively (hypothesis)."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ingester.check import CRITICAL, OK, WARNING, CheckLimits, Facts, judge, parse_duration
from ingester.housekeeping import prune_rejected

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

ages = st.floats(min_value=0, max_value=10 * 86400, allow_nan=False)
counts = st.integers(min_value=0, max_value=1000)
limits = st.builds(
    CheckLimits,
    st.floats(min_value=1, max_value=86400, allow_nan=False),
    st.integers(min_value=0, max_value=500),
    st.integers(min_value=0, max_value=500),
)


def facts(age: float, backlog: int, rejected: int, oldest: float | None = None) -> Facts:
    return Facts(
        now=NOW,
        latest="2026-11-30T11-00-00-00000000.json",
        last_updated=NOW - timedelta(seconds=age),
        backlog=backlog,
        oldest_drop_age=oldest if backlog else None,
        rejected_last_hour=rejected,
    )


def expected(value: float, warning: float) -> int:
    return CRITICAL if value > 2 * warning else WARNING if value > warning else OK


@given(ages, counts, counts, limits)
def test_each_item_follows_its_thresholds_and_the_worst_wins(
    age: float, backlog: int, rejected: int, lim: CheckLimits
) -> None:
    result = judge(facts(age, backlog, rejected, oldest=0.0), lim)
    by_name = {i.name: i.code for i in result.items}
    seen = (NOW - (NOW - timedelta(seconds=age))).total_seconds()  # to the microsecond
    assert by_name["age"] == expected(seen, lim.max_age)
    assert by_name["backlog"] == expected(backlog, lim.max_backlog)
    assert by_name["rejected"] == expected(rejected, lim.max_rejected_per_hour)
    assert result.code == max(by_name.values())
    assert result.line().startswith(f"INGESTER {('OK', 'WARNING', 'CRITICAL')[result.code]} - ")


@given(ages, ages, limits)
def test_older_data_is_never_judged_better(a: float, b: float, lim: CheckLimits) -> None:
    young, old = sorted((a, b))
    assert judge(facts(old, 0, 0), lim).code >= judge(facts(young, 0, 0), lim).code


@given(st.integers(min_value=1, max_value=1000), ages, limits)
def test_a_drop_waiting_longer_than_max_age_is_critical(
    backlog: int, oldest: float, lim: CheckLimits
) -> None:
    code = {i.name: i.code for i in judge(facts(0, backlog, 0, oldest), lim).items}["backlog"]
    if oldest > lim.max_age:
        assert code == CRITICAL


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["", "s", "m", "h", "d"]))
def test_durations(number: int, unit: str) -> None:
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{number}{unit}") == number * factor


names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=30
).filter(lambda n: n not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(names, st.sampled_from(["file", "dir", "link"]), max_size=8),
    st.dictionaries(names, st.floats(min_value=0, max_value=100, allow_nan=False), max_size=8),
)
def test_prune_removes_exactly_the_expired_pairs(
    entries: dict[str, str], reasons: dict[str, float]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, kind in entries.items():
            if kind == "file":
                (folder / name).write_bytes(b"{bad")
            elif kind == "dir":
                (folder / name).mkdir()
            else:
                os.symlink("/nonexistent", folder / name)
        for drop, age_days in reasons.items():
            reason = f"{drop}.reason.json"
            if len(os.fsencode(reason)) > 255 or reason in entries:
                continue
            stamp = (NOW - timedelta(days=age_days)).isoformat().replace("+00:00", "Z")
            (folder / reason).write_text(json.dumps({"file": drop, "rejectedAt": stamp}))
        before = set(os.listdir(folder))
        result = prune_rejected(folder, 30, NOW)
        after = set(os.listdir(folder))
        removed = before - after
        assert removed == set(result.removed)
        for name in removed:
            if name.endswith(".reason.json") and name[: -len(".reason.json")] in reasons:
                assert reasons[name[: -len(".reason.json")]] > 30
                continue
            # Otherwise it is the drop of an expired reason file, and never a folder.
            assert f"{name}.reason.json" in removed
            assert entries.get(name) != "dir"
