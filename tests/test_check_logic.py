"""The pure parts of ``check`` and of the rejected retention, exhaustively (hypothesis)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from support.plugin_output import perfdata_problems

from ingester.history.names import generate_version_filename
from ingester.intake.housekeeping import prune_rejected
from ingester.intake.unstored import UNSTORED_AFTER_S
from ingester.mirror.state import write_mirror_state
from ingester.mirror.state_model import MirrorState
from ingester.ops.check import (
    CRITICAL,
    OK,
    WARNING,
    CheckLimits,
    format_perfdata,
    judge,
    parse_duration,
)
from ingester.ops.check_facts import Facts, MirrorFacts, Room, mirror_facts
from ingester.usage.forecast import Forecast, LimitForecast

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

ages = st.floats(min_value=0, max_value=10 * 86400, allow_nan=False)
counts = st.integers(min_value=0, max_value=1000)
limits = st.builds(
    CheckLimits,
    st.floats(min_value=1, max_value=86400, allow_nan=False),
    st.integers(min_value=0, max_value=500),
    st.integers(min_value=0, max_value=500),
    st.floats(min_value=1, max_value=86400, allow_nan=False),
)
mirror_states = st.sampled_from(
    [
        "ok",
        "starting",
        "never-run",
        "unknown",
        "unreachable",
        "throttled",
        "server-error",
        "denied",
        "no-bucket",
        "rejected",
    ]
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


@given(st.integers(min_value=1, max_value=1000), ages, ages, limits)
def test_who_takes_the_drops_decides_how_their_wait_is_judged(
    backlog: int, oldest: float, unstored: float, lim: CheckLimits
) -> None:
    assume(backlog <= lim.max_backlog)  # the count alone says nothing
    unstored = min(unstored, oldest)  # never longer than the drop's own wait
    base = facts(0, backlog, 0, oldest)

    def backlog_code(f: Facts) -> int:
        return {i.name: i.code for i in judge(f, lim).items}["backlog"]

    # No watcher of this spool: WARNING at once, CRITICAL past --max-age.
    absent = backlog_code(replace(base, watcher_absent="no watcher runs"))
    assert absent == (CRITICAL if oldest > lim.max_age else WARNING)
    # One runs: judged by how long it has left the oldest unstored, never by the drop's
    # own age (a watcher started on an old backlog is given its time).
    running = backlog_code(replace(base, watcher_pid=42, unstored_s=unstored))
    if unstored <= UNSTORED_AFTER_S:
        assert running == OK
    else:
        assert running == (CRITICAL if unstored > lim.max_age else WARNING)


def with_mirror(lag: float | None, backlog: int, state: str) -> Facts:
    mirror = MirrorFacts(
        target="s3://bucket/prefix",
        state=state,
        backlog=backlog,
        oldest="2026-11-30T11-00-00-00000000.json" if backlog else None,
        lag=lag if backlog else None,
        pid=None,
    )
    return Facts(
        now=NOW,
        latest="2026-11-30T11-00-00-00000000.json",
        last_updated=NOW,
        mirror=mirror,
    )


@given(ages, counts, limits)
def test_no_mirror_no_mirror_item(age: float, backlog: int, lim: CheckLimits) -> None:
    result = judge(facts(age, backlog, 0, oldest=0.0), lim)
    assert [i.name for i in result.items] == ["age", "backlog", "rejected"]
    assert "mirror" not in result.line()
    assert result.to_json()["mirror"] is None


@given(ages, counts, mirror_states, limits)
def test_the_mirror_item_follows_its_threshold_and_counts_in_the_worst(
    lag: float, backlog: int, state: str, lim: CheckLimits
) -> None:
    result = judge(with_mirror(lag, backlog, state), lim)
    items = {i.name: i for i in result.items}
    assert list(items) == ["age", "backlog", "rejected", "mirror_lag"]
    item = items["mirror_lag"]
    seen = lag if backlog else 0.0
    if state == "denied":
        assert item.code == CRITICAL  # credentials do not come back by waiting
        assert "refuses the credentials" in item.message
    else:
        assert item.code == expected(seen, lim.max_mirror_lag)
    assert (item.warning, item.critical) == (lim.max_mirror_lag, 2 * lim.max_mirror_lag)
    assert result.code == max(i.code for i in result.items)
    # Both numbers are in the performance data and in --json.
    perf = result.line().split(" | ", 1)[1]
    token = format_perfdata("mirror_lag", seen, "s", lim.max_mirror_lag, 2 * lim.max_mirror_lag)
    assert token in perf.split()
    assert f"mirror_backlog={backlog}" in perf.split()
    doc = result.to_json()
    assert doc["mirror"]["backlog"] == backlog
    assert doc["mirror"]["lagSeconds"] == (lag if backlog else None)
    assert doc["checks"][-1]["name"] == "mirror_lag"


@given(ages, ages, st.integers(min_value=1, max_value=1000), mirror_states, limits)
def test_an_older_unuploaded_version_is_never_judged_better(
    a: float, b: float, backlog: int, state: str, lim: CheckLimits
) -> None:
    young, old = sorted((a, b))
    code = {i.name: i.code for i in judge(with_mirror(old, backlog, state), lim).items}
    was = {i.name: i.code for i in judge(with_mirror(young, backlog, state), lim).items}
    assert code["mirror_lag"] >= was["mirror_lag"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=30 * 86400), min_size=0, max_size=12),
    st.integers(min_value=-1, max_value=12),
    st.booleans(),
)
def test_mirror_facts_from_a_state_file(ages_seconds: list[int], mark: int, corrupt: bool) -> None:
    names: list[str] = []
    for age in sorted(ages_seconds, reverse=True):
        names.append(
            generate_version_filename(
                NOW - timedelta(seconds=age), after=names[-1] if names else None
            )
        )
    watermark = names[mark] if 0 <= mark < len(names) else None
    with tempfile.TemporaryDirectory() as tmp:
        history = Path(tmp)
        assert mirror_facts(history, names, None, NOW) is None  # nothing configured
        never = mirror_facts(history, names, "s3://bucket", NOW)
        assert never is not None and never.state == "never-run"
        assert never.backlog == len(names)
        write_mirror_state(history, MirrorState(mirrored_through=watermark, state="ok"))
        if corrupt:
            (history / "_mirror.json").write_bytes(b"{not json")
            watermark = None  # a damaged state file holds everything back
        got = mirror_facts(history, names, None, NOW)  # the state file alone configures it
    assert got is not None
    waiting = [n for n in names if watermark is None or n > watermark]
    assert got.backlog == len(waiting)
    assert got.oldest == (waiting[0] if waiting else None)
    if waiting:
        age = sorted(ages_seconds, reverse=True)[names.index(waiting[0])]
        assert got.lag is not None and abs(got.lag - age) <= 1  # names hold whole seconds
    else:
        assert got.lag is None
    assert got.state == ("unknown" if corrupt else "ok")
    assert got.pid is None


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


# -- the performance data, strictly by the plugin guidelines' grammar -----------------------

huge = st.one_of(
    st.floats(min_value=1, max_value=1e18, allow_nan=False),
    st.sampled_from([1e6, 1.0368e6, 2.592e6, 6 * 365.25 * 86400, 1e15, 0.5, 1e-7]),
)


@settings(max_examples=300)
@given(
    st.sampled_from(["fresh", "no-version", "no-history", "damaged"]),
    st.one_of(
        st.floats(min_value=0, max_value=50 * 365 * 86400.0),
        st.just(6 * 365.25 * 86400),
    ),
    st.integers(min_value=0, max_value=10**15),
    st.integers(min_value=0, max_value=10**15),
    st.one_of(st.none(), huge),
    st.builds(
        CheckLimits,
        huge,
        st.integers(min_value=0, max_value=10**15),
        st.integers(min_value=0, max_value=10**15),
        huge,
        st.floats(min_value=0, max_value=100, allow_nan=False),
    ),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
    st.integers(min_value=0, max_value=10**9),
)
def test_every_state_s_line_follows_the_plugin_grammar(
    kind: str,
    age: float,
    backlog: int,
    rejected: int,
    lag: float | None,
    lim: CheckLimits,
    hold_max: int | None,
    held: int,
) -> None:
    mirror = (
        None
        if lag is None
        else MirrorFacts(
            "s3://bucket/x",
            "unreachable",
            backlog,
            "2026-11-30T11-00-00-00000000.json",
            lag,
            held=held,
            hold_max=hold_max,
        )
    )
    base = Facts(now=NOW, backlog=backlog, rejected_last_hour=rejected, mirror=mirror)
    fact = {
        "fresh": replace(base, latest="v.json", last_updated=NOW - timedelta(seconds=age)),
        "no-version": base,
        "no-history": replace(base, history_problem="no history at /x|y\nz"),
        "damaged": replace(base, latest="v.json", latest_error="not JSON"),
    }[kind]
    line = judge(fact, lim).line()
    assert perfdata_problems(line) == [], line
    assert "e+" not in line.split(" | ", 1)[-1] and "e-" not in line.split(" | ", 1)[-1]
    # An unknown value leaves its token out: the age is there only when it is known.
    assert (" age=" in line) == (kind == "fresh"), line


@given(st.text(max_size=40))
def test_the_line_s_words_hold_no_control_character(name: str) -> None:
    # A path or a limit's name may hold a tab, a line break or an escape: the first
    # line must stay one line of text, with "|" only before the performance data.
    fact = Facts(now=NOW, backlog=0, rejected_last_hour=0, history_problem=f"no history at {name}")
    line = judge(fact, CheckLimits()).line()
    assert line.count("|") == 1, line  # the one before the performance data
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line), repr(line)


def test_perfdata_numbers_are_plain_decimals() -> None:
    six_years = 6 * 365 * 86400.0
    assert format_perfdata("age", six_years, "s", 2.592e6, 5.184e6) == (
        "age=189216000s;2592000;5184000"
    )
    assert format_perfdata("age", 1.0368e6, "s", 900, 1800) == "age=1036800s;900;1800"
    assert format_perfdata("x", 1e-7) == "x=0.0000001"
    assert format_perfdata("x", -0.0) == "x=0"
    big = format_perfdata("x", 10**20, "", 10**21)
    assert big == "x=100000000000000000000;1000000000000000000000"
    assert format_perfdata("age", None, "s", 900, 1800) == ""
    assert format_perfdata("age", float("nan")) == ""
    assert format_perfdata("x", 1, "", float("inf"), 2) == "x=1;;2"
    assert format_perfdata("x", 1, "", None, None, 0, 100) == "x=1;;;0;100"
    assert format_perfdata("a b=c'd|e\n", 3, "%") == "'a b%3Dc%27d%7Ce%0A'=3%"


@given(st.text(max_size=6), st.text(max_size=6))
def test_distinct_labels_stay_distinct(one: str, other: str) -> None:
    # q=x and q_x must not both be written q_x: two limits would share a series.
    assume(one != other)
    assert format_perfdata(one, 1) != format_perfdata(other, 1)


@pytest.mark.parametrize("unit", ["sec", "minutes", " s"])
def test_perfdata_refuses_units_the_guidelines_do_not_define(unit: str) -> None:
    with pytest.raises(ValueError, match="unit"):
        format_perfdata("x", 1, unit)


# -- the mirror's hold ------------------------------------------------------------------------


def with_hold(held: int, hold_max: int) -> Facts:
    mirror = MirrorFacts("s3://b/p", "unreachable", held, None, 0.0, held=held, hold_max=hold_max)
    return Facts(now=NOW, latest="v.json", last_updated=NOW, mirror=mirror)


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=10**6))
def test_the_hold_warns_before_it_is_full_and_is_critical_when_full(
    held: int, hold_max: int
) -> None:
    held = min(held, hold_max)  # retention never keeps more than the hold
    item = judge(with_hold(held, hold_max), CheckLimits()).items[-1]
    assert item.name == "mirror_held"
    if held >= hold_max:
        assert item.code == CRITICAL and "never uploaded" in item.message
    elif held >= 0.8 * hold_max and held:
        assert item.code == WARNING
    else:
        assert item.code == OK


def test_the_hold_item_needs_a_state_file_and_says_when_the_hold_is_off() -> None:
    no_state = MirrorFacts("s3://b/p", "never-run", 3, None, 0.0)
    facts = Facts(now=NOW, latest="v.json", last_updated=NOW, mirror=no_state)
    result = judge(facts, CheckLimits())
    assert [i.name for i in result.items][-1] == "mirror_lag"
    off = judge(with_hold(0, 0), CheckLimits()).items[-1]
    assert off.code == OK and "--mirror-hold 0" in off.message


# -- the forecast item: its status and its perfdata agree ------------------------------------

# Offsets from now in microseconds (the forecast's instants are not whole seconds), from
# ten hours ago to two weeks ahead.
micros_off = st.integers(min_value=-600 * 60_000_000, max_value=20_000 * 60_000_000)


def grapher_status(token: str) -> int:
    """What a grapher makes of ``label=VALUEs;W:;C:`` by the plugin range rules alone
    (``N:`` alerts below N)."""
    value, *bounds = token.split("=", 1)[1].split(";")
    number = float(value.removesuffix("s"))
    warn, crit = (float(b.removesuffix(":")) if b else None for b in [*bounds, "", ""][:2])
    if crit is not None and number < crit:
        return CRITICAL
    return WARNING if warn is not None and number < warn else OK


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), micros_off),
    st.one_of(st.none(), st.just("same"), st.just("in its span"), micros_off),
    st.sampled_from([timedelta(0), timedelta(hours=1), timedelta(days=1)]),
    st.integers(min_value=0, max_value=200 * 60),
)
def test_the_forecast_status_is_what_its_perfdata_says(
    exhausts: int | None, resets: int | str | None, within: timedelta, critical_minutes: int
) -> None:
    """Whatever the run-out and the reset, a reset worded to the hour or the day
    (``within``: the span its words leave open) included."""
    exhausts_at = None if exhausts is None else NOW + timedelta(microseconds=exhausts)
    if resets == "same":  # runs out at the very instant of the reset: not before it
        resets_at = exhausts_at
    elif resets == "in its span":  # 100 % after the earliest reset, before the latest
        resets_at = None if exhausts_at is None else exhausts_at - within / 2
    else:
        resets_at = None if resets is None else NOW + timedelta(microseconds=int(resets))
    before = None
    if exhausts_at is not None and resets_at is not None:
        # As the forecast judges it: null within the span the reset's words leave open.
        if exhausts_at < resets_at:
            before = True
        elif exhausts_at >= resets_at + within:
            before = False
    as_of = NOW - timedelta(minutes=2)
    limit = LimitForecast(
        "currentSession",
        50,
        "2 hr",
        resets_at,
        1.0,
        exhausts_at,
        before,
        5,
        as_of,
        as_of,
        resets_within=None if resets_at is None else within,
    )
    found = Facts(
        now=NOW,
        latest="v",
        last_updated=as_of,
        usage=Forecast(as_of, (limit,)),
    )
    checks = CheckLimits(forecast=True, forecast_critical=critical_minutes * 60.0)
    item = next(i for i in judge(found, checks).items if i.name == "forecast_currentSession")
    token = item.perfdata()
    if exhausts_at is None:
        assert token == "" and item.code == OK
        return
    assert perfdata_problems(f"INGESTER OK - x | {token}") == []
    assert grapher_status(token) == item.code, (token, item.message)
    if before is None and resets_at is not None and resets_at > NOW:
        # It may run out first: as much a run-out as one before the reset.
        soon = exhausts_at - NOW < timedelta(minutes=critical_minutes)
        assert item.code == (CRITICAL if soon else WARNING), (token, item.message)


MIB = 1 << 20


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=64 * MIB),
            st.one_of(st.none(), st.integers(min_value=0, max_value=10)),
            st.booleans(),
        ),
        min_size=1,
        max_size=2,
    ),
    st.integers(min_value=1, max_value=2 * MIB),
)
def test_the_room_item_is_the_worst_filesystem_s_and_only_there_when_short(
    rooms: list[tuple[int, int | None, bool]], max_bytes: int
) -> None:
    """WARNING with room for fewer than 10 drops of the largest size, CRITICAL below one,
    with no inode left or read-only; no item at all while every filesystem has room."""
    held = tuple(
        Room((what,), Path(f"/{what}"), free, files, read_only)
        for what, (free, files, read_only) in zip(("spool", "history"), rooms, strict=False)
    )
    base = replace(facts(60, 0, 0), rooms=held, max_bytes=max_bytes)
    result = judge(base, CheckLimits())
    expected = OK
    for free, files, read_only in rooms:
        if read_only or files == 0 or free < max_bytes:
            expected = CRITICAL
        elif free < 10 * max_bytes:
            expected = max(expected, WARNING)
    items = [i for i in result.items if i.name == "free_space"]
    if expected == OK:
        assert items == []
        return
    (item,) = items
    assert item.code == expected and result.code >= expected
    assert item.value == min(free for free, _files, _ro in rooms)
    assert perfdata_problems(result.line()) == [], result.line()
    if expected == WARNING:
        assert "room for fewer than 10 drops of the largest size" in item.message
    else:
        assert any(
            words in item.message
            for words in ("mounted read-only", "no free inode", "less than one drop")
        ), item.message
