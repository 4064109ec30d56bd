"""The usage items of ``ingester check``: each limit's percentage against
``--usage-warning``/``--usage-critical``, its forecast against its reset
(``--forecast``), and the limits the newest snapshot lacks (held, or lapsed since
their reset). The limits are the forecast's (:mod:`ingester.usage.forecast`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ..usage.forecast import NOTHING_TO_GO_BY, LimitForecast
from ..usage.words import RESET_PASSED, in_words, percent_words, seconds_words
from .check_facts import Facts
from .check_items import CRITICAL, OK, WARNING, CheckLimits, Judgement

__all__ = ["judge_usage"]


def _threshold(value: float) -> str:
    # As given: a threshold is the user's own number, not a reading to round.
    return f"{value:g} %"


def judge_usage(facts: Facts, limits: CheckLimits) -> list[Judgement]:
    """The usage items asked for by ``limits`` (none when none is), or one CRITICAL
    ``usage`` item when the forecast cannot be read, one WARNING when no snapshot
    can be judged."""
    if facts.usage_problem is not None:
        return [Judgement("usage", CRITICAL, None, 0, 0, facts.usage_problem)]
    result = facts.usage
    if result is None:
        return []  # no version at all: the freshness item says so
    if result.as_of is None:
        # A check that cannot see must not say OK: versions exist, none to judge by.
        words = f"no snapshot to judge usage by: {NOTHING_TO_GO_BY}"
        return [Judgement("usage", WARNING, None, 0, 0, words)]
    items = []
    by_percent = limits.usage_warning is not None or limits.usage_critical is not None
    if by_percent:
        critical = limits.usage_critical if limits.usage_critical is not None else 100.0
        warning = limits.usage_warning if limits.usage_warning is not None else critical
        for limit in result.limits:
            pct = limit.percentage
            code = CRITICAL if pct >= critical else WARNING if pct >= warning else OK
            words = f"{limit.limit} {percent_words(pct, (warning, critical, 100.0))} used"
            if limit.resets_at is not None and limit.resets_at <= facts.now:
                # The window has reset since that reading: it says nothing of now.
                code = OK
                words += RESET_PASSED
            elif code:
                words += f" (at or above {_threshold(critical if code == CRITICAL else warning)})"
            missing, words = _held(limit, result.as_of, limits.max_age, words)
            items.append(
                Judgement(
                    f"usage_{limit.limit}", max(code, missing), pct, warning, critical, words, "%"
                )
            )
    if limits.forecast:
        for limit in result.limits:
            item = _judge_forecast(limit, facts, limits, result.as_of)
            if not by_percent:  # the limit's first item says how long it has been missing
                missing, words = _held(
                    limit, result.as_of, limits.max_age, item.message, say_when=False
                )
                item = replace(item, code=max(item.code, missing), message=words)
            items.append(item)
    prefix = "usage_" if by_percent else "forecast_"
    for name, observed_at in result.lapsed:
        items.append(_lapsed(prefix + name, name, observed_at, result.as_of, limits.max_age))
    return items


def _lapsed(
    item: str, limit: str, observed_at: datetime, as_of: datetime, max_age: float
) -> Judgement:
    """A limit missing from the newest snapshot whose window has reset since its last
    reading: no percentage to judge (value unknown), WARNING once missing for longer than
    ``max_age``, however long ago that reading was."""
    missing = max(0.0, (as_of - observed_at).total_seconds())
    words = (
        f"{limit} not in the newest snapshot, last read {seconds_words(missing)} before it; "
        "its window has reset since, so its usage is unknown"
    )
    if missing > max_age:
        return Judgement(
            item, WARNING, None, 0, 0, words + f" (not read for more than {seconds_words(max_age)})"
        )
    return Judgement(item, OK, None, 0, 0, words)


def _held(
    limit: LimitForecast, as_of: datetime, max_age: float, words: str, *, say_when: bool = True
) -> tuple[int, str]:
    """WARNING (and why) for a limit missing from the snapshots for longer than ``max_age``.

    ``say_when``: add to ``words`` how long before the newest snapshot a held limit was
    read (the forecast's words say it already). One partial scrape among full ones changes
    no status; a scraper that keeps failing to read a section does, after ``--max-age``,
    as a stopped scraper does in ``age``.
    """
    if limit.in_newest:
        return OK, words
    missing = max(0.0, (as_of - limit.observed_at).total_seconds())
    if say_when:
        words += f" (last read {seconds_words(missing)} before the newest snapshot, which lacks it)"
    if missing > max_age:
        return WARNING, words + f" (not read for more than {seconds_words(max_age)})"
    return OK, words


def _judge_forecast(
    limit: LimitForecast, facts: Facts, limits: CheckLimits, as_of: datetime
) -> Judgement:
    """WARNING: runs out before the reset; CRITICAL: and that within ``forecast_critical``.

    A run-out within the span the reset's words leave open (``beforeReset`` null: ``2 hr``
    is 2 to 3 hours away) may come first, so it is judged as one before the reset, up to
    the latest instant the words allow.

    The perfdata thresholds say the same as the status, so a grapher that judges the
    value by them agrees with the plugin: the value is the time left until 100 %, the
    WARNING bound the time left until the reset (running out sooner is running out first;
    its latest instant where the run-out falls in its span), the CRITICAL bound
    ``forecast_critical`` capped at that same time (a run-out after the reset is no alert,
    however soon).
    """
    crit = limits.forecast_critical
    words = f"{limit.limit}: {in_words(limit, facts.usage_zone, as_of)}"
    left = None
    if limit.exhausts_at is not None:
        # Unrounded, as the bounds are: a rounded value could fall below a bound the
        # status did not fall below (running out at the very instant of the reset).
        left = max(0.0, (limit.exhausts_at - facts.now).total_seconds())
    # Neither before nor after a reset whose time is known: 100 % falls in the span
    # its words leave open.
    in_span = limit.before_reset is None and limit.resets_at is not None
    until_reset = None
    if limit.resets_at is not None:
        reset = limit.resets_at
        if in_span and limit.resets_within is not None and reset > facts.now:
            # Measured to the latest instant the words allow; once the earliest has
            # passed the reading is not held against the limit (as for any reset).
            reset += limit.resets_within
        until_reset = max(0.0, (reset - facts.now).total_seconds())
    warn = crit if until_reset is None else until_reset
    crit_bound = crit if until_reset is None else min(crit, until_reset)
    code = OK
    if left is not None and limit.resets_at is not None and limit.resets_at <= facts.now:
        words += RESET_PASSED
    elif left is not None and (limit.before_reset or in_span):
        code = CRITICAL if left < crit else WARNING
    elif left is not None and limit.before_reset is None and left < crit:
        code = CRITICAL  # no reset time to set against it: running out this soon is news
    if code == CRITICAL:
        words += f" (within {seconds_words(crit)})"
    return Judgement(
        f"forecast_{limit.limit}", code, left, warn, crit_bound, words, "s", alert_below=True
    )
