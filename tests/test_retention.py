"""The retention policy, pure: newest N or within D days, future kept."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingester import RetentionPolicy, plan_retention
from ingester.history.names import parse_timestamp_from_filename
from ingester.history.retention import FUTURE_SLACK, expired_prefix, future_suffix

NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
REASONS = {"newest-N", "within-D-days", "future", "expired"}


def name_at(stamp: datetime, suffix: str = "0000abcd") -> str:
    return f"{stamp:%Y-%m-%dT%H-%M-%S}-{suffix}.json"


def expected_kept(names: list[str], now: datetime, policy: RetentionPolicy) -> set[str]:
    """The rule, written out plainly: the union of the three kinds of kept versions."""
    stamps = {n: parse_timestamp_from_filename(n) for n in names}
    versions = {n: s for n, s in stamps.items() if s is not None}
    future = {n for n, s in versions.items() if s > now + timedelta(days=1)}
    present = sorted(n for n in versions if n not in future)
    newest_n = set(present[-policy.max_versions :])
    within = {
        n for n, s in versions.items() if s >= now - timedelta(days=policy.retention_days)
    } - future
    return newest_n | within | future


def test_policy_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        RetentionPolicy(max_versions=0)
    with pytest.raises(ValueError):
        RetentionPolicy(retention_days=0)
    with pytest.raises(ValueError):
        RetentionPolicy(retention_days=-1)
    with pytest.raises(ValueError):
        RetentionPolicy(retention_days=float("nan"))


def test_defaults_are_the_seed_plans() -> None:
    assert RetentionPolicy() == RetentionPolicy(max_versions=100, retention_days=7)


def test_seed_plan_scenario_pure() -> None:
    names = [f"2026-01-{i % 28 + 1:02d}T00-00-00-test{i}.json" for i in range(1, 111)]
    new = name_at(NOW)
    plan = plan_retention([*names, new], NOW, RetentionPolicy())
    assert len(plan.keep) == 100
    assert len(plan.delete) == 11
    assert plan.keep[-1] == new
    assert plan.delete == sorted(names)[:11]
    assert {d.reason for d in plan.decisions} == {"newest-N", "expired"}


def test_within_days_keeps_more_than_n() -> None:
    names = [name_at(NOW - timedelta(hours=h)) for h in range(0, 24 * 10, 2)]  # 120 over 10 days
    plan = plan_retention(names, NOW, RetentionPolicy(max_versions=5, retention_days=7))
    reasons = {d.name: d.reason for d in plan.decisions}
    assert sum(r == "newest-N" for r in reasons.values()) == 5
    assert all(
        reasons[n] == "within-D-days"
        for n in names[5:]
        if parse_timestamp_from_filename(n) >= NOW - timedelta(days=7)  # type: ignore[operator]
    )
    assert plan.delete == sorted(n for n in names if reasons[n] == "expired")
    assert len(plan.keep) == 7 * 12 + 1  # every 2 h for 7 days, both ends included


def test_future_versions_are_kept_and_not_counted_among_newest() -> None:
    old = [name_at(NOW - timedelta(days=30, minutes=i)) for i in range(5)]
    future = [name_at(NOW + timedelta(days=2, minutes=i)) for i in range(3)]
    almost = name_at(NOW + FUTURE_SLACK)  # exactly a day ahead: not future yet
    plan = plan_retention([*old, *future, almost], NOW, RetentionPolicy(max_versions=2))
    reasons = {d.name: d.reason for d in plan.decisions}
    assert all(reasons[n] == "future" for n in future)
    assert reasons[almost] == "newest-N"
    assert sorted(plan.future) == sorted(future)
    # The newest two *non-future* versions are the newest N: almost and the newest old one.
    assert reasons[max(old)] == "newest-N"
    assert len(plan.delete) == 4
    assert future_suffix(sorted(reasons), NOW) == 3


def test_non_version_names_are_ignored() -> None:
    names = ["_metadata.json", ".lock", "foo.json", name_at(NOW - timedelta(days=50))]
    plan = plan_retention(names, NOW, RetentionPolicy())
    assert [d.name for d in plan.decisions] == [names[-1]]


def test_empty_history() -> None:
    plan = plan_retention([], NOW, RetentionPolicy())
    assert plan.decisions == ()
    assert expired_prefix([], NOW, RetentionPolicy()) == 0
    assert future_suffix([], NOW) == 0


# -- property tests ---------------------------------------------------------------------

suffixes = st.one_of(
    st.integers(0, 0xFFFFFFFF).map(lambda n: f"{n:08x}"),
    st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        min_size=1,
        max_size=8,
    ),
)
# Mostly around now, some long ago, some in the future (clock stepped back).
offsets = st.one_of(
    st.integers(-30 * 86400, 3 * 86400),
    st.integers(-3 * 86400, 0),
    st.sampled_from([0, -7 * 86400, 86400, 86401, -86400]),
)
version_names = st.lists(
    st.tuples(offsets, suffixes).map(lambda t: name_at(NOW + timedelta(seconds=t[0]), t[1])),
    max_size=60,
    unique=True,
)
policies = st.builds(
    RetentionPolicy,
    max_versions=st.integers(1, 40),
    retention_days=st.one_of(st.integers(1, 20).map(float), st.floats(0.01, 20)),
)
junk = st.lists(st.sampled_from(["_metadata.json", ".lock", "foo.json", ".tmp-w-1"]), max_size=3)


@settings(max_examples=300, deadline=None)
@given(version_names, policies, junk)
def test_kept_set_is_exactly_the_union(
    names: list[str], policy: RetentionPolicy, extra: list[str]
) -> None:
    plan = plan_retention([*names, *extra], NOW, policy)
    assert set(plan.keep) == expected_kept(names, NOW, policy)
    assert set(plan.keep) | set(plan.delete) == set(names)
    assert not set(plan.keep) & set(plan.delete)
    assert len(plan.decisions) == len(names)


@settings(max_examples=300, deadline=None)
@given(version_names, policies)
def test_reasons_and_actions(names: list[str], policy: RetentionPolicy) -> None:
    plan = plan_retention(names, NOW, policy)
    for d in plan.decisions:
        assert d.reason in REASONS
        assert (d.action == "delete") == (d.reason == "expired")
        assert d.timestamp == parse_timestamp_from_filename(d.name)
        if d.reason == "future":
            assert d.timestamp > NOW + FUTURE_SLACK
        if d.reason == "expired":
            assert d.timestamp < policy.cutoff(NOW)
    assert [d.name for d in plan.decisions] == sorted(names)  # oldest first
    assert sum(d.reason == "newest-N" for d in plan.decisions) <= policy.max_versions


@settings(max_examples=300, deadline=None)
@given(version_names, policies)
def test_never_empty_and_newest_never_deleted(names: list[str], policy: RetentionPolicy) -> None:
    plan = plan_retention(names, NOW, policy)
    if names:
        assert plan.keep
        assert max(names) in plan.keep
        present = [n for n in names if n not in plan.future]
        if present:
            assert max(present) in plan.keep


@settings(max_examples=200, deadline=None)
@given(version_names, policies, st.integers(0, 30), st.floats(0, 10))
def test_monotone_in_n_and_d(
    names: list[str], policy: RetentionPolicy, more_n: int, more_d: float
) -> None:
    base = set(plan_retention(names, NOW, policy).keep)
    bigger_n = RetentionPolicy(policy.max_versions + more_n, policy.retention_days)
    bigger_d = RetentionPolicy(policy.max_versions, policy.retention_days + more_d)
    assert base <= set(plan_retention(names, NOW, bigger_n).keep)
    assert base <= set(plan_retention(names, NOW, bigger_d).keep)


@settings(max_examples=200, deadline=None)
@given(version_names, policies, st.randoms(use_true_random=False))
def test_independent_of_input_order(
    names: list[str], policy: RetentionPolicy, rnd: random.Random
) -> None:
    shuffled = list(names)
    rnd.shuffle(shuffled)
    assert plan_retention(shuffled, NOW, policy) == plan_retention(names, NOW, policy)


@settings(max_examples=300, deadline=None)
@given(version_names, policies)
def test_expired_prefix_matches_the_plan(names: list[str], policy: RetentionPolicy) -> None:
    ordered = sorted(names)
    plan = plan_retention(ordered, NOW, policy)
    count = expired_prefix(ordered, NOW, policy)
    assert count == len(plan.delete)
    assert ordered[:count] == plan.delete  # exactly the first names
    assert future_suffix(ordered, NOW) == len(plan.future)
    assert ordered[len(ordered) - len(plan.future) :] == plan.future
