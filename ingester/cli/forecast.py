"""``ingester forecast``: each usage limit's burn rate and when it runs out, as a table.

A thin click layer over :mod:`ingester.usage.usage_history` (the same answer ``serve`` gives at
``GET /api/claude/console-usage/forecast``). Reads only; never takes the history lock.
Exit codes: 0 shown; 1 no history, no version, or the history cannot be read.
"""

from __future__ import annotations

import click

from ..clock import utc_now
from ..errors import describe_os_error
from ..usage.forecast import NOTHING_TO_GO_BY, LimitForecast
from ..usage.usage_history import forecast_json, forecast_of
from ..usage.words import RESET_PASSED, format_when, in_words, percent_words, reset_words
from .common import App, align, echo_json, fail, refuse_closed_stdout, say
from .stores import open_history

__all__ = ["forecast"]


def _rate(limit: LimitForecast) -> str:
    return "-" if limit.rate_per_hour is None else f"{limit.rate_per_hour:+.2f} %/h"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The JSON the HTTP API answers.")
@click.pass_obj
def forecast(app: App, as_json: bool) -> None:
    """Show each usage limit: used, reset time, burn rate, and when it reaches 100 %.

    One row per limit (currentSession, weeklyLimits.allModels, weeklyLimits.sonnetOnly
    and any other); a limit the newest snapshot lacks (a partial scrape) shows its last
    reading, said so, until it is read again or its reset time comes, however old.
    The rate is the net pace over the current window (since the last reset, its last 24
    hours; idle hours count): the median slope from its first 3 snapshots to its last 3;
    no rate from fewer than 2 snapshots or less than 10 minutes, and for a limit at 100 %
    only the rise up to its first reading there. Absolute reset times ('Mon 8:59 AM') are
    read in --console-timezone, and times are shown in it; a reset worded to the hour or
    day ('2 hr', '3 days') is shown as the span it allows, and a run-out within that span
    is said to come about when it resets. Reads only; never takes the lock.
    Exits 0, or 1 when there is no history or no version. See docs/operations.md.
    """
    refuse_closed_stdout("the forecast", "redirect it")
    settings = app.settings
    reader = open_history(settings)
    zone, zone_name = settings.console_zone()
    now = utc_now()
    try:
        answer = forecast_of(reader, zone, zone_name, now)
    except OSError as exc:
        raise fail(f"cannot read the history: {describe_os_error(exc)}") from None
    if answer is None:
        try:
            count = len(reader.list_versions())
        except OSError:
            count = 0
        if count:
            # Only "future" versions (dated more than a day ahead), which no reader takes
            # as the latest: "no version" would contradict status and verify.
            raise fail(
                f"no version to forecast from in {reader.location}: the {count} held are dated "
                "more than a day ahead of this clock (see 'ingester status')"
            )
        raise fail(f"no version in {reader.location} yet")
    if as_json:
        echo_json(forecast_json(answer, zone_name))
        return
    result = answer.forecast
    if result.as_of is None:
        # As the JSON answers it (asOf null, exit 0): versions exist, none to go by.
        say(f"no snapshot to forecast from: {NOTHING_TO_GO_BY}")
        return
    as_of = result.as_of.astimezone(zone)
    say(
        f"as of {as_of.strftime('%a %Y-%m-%d %H:%M')} (the newest snapshot's lastUpdated), "
        f"times in {zone_name}"
    )
    rows = [["limit", "used", "resets", "rate", "at this rate"]]
    for limit in result.limits:
        # Times are dated when they lie 6 days or more from now, the reader's time: the
        # newest data may itself be days old.
        resets = (
            reset_words(limit, zone, now)
            if limit.resets_at is not None
            else f"? ({limit.resets_in})"
        )
        words = in_words(limit, zone, now)
        if limit.resets_at is not None and limit.resets_at <= now:
            words += RESET_PASSED  # as check says it
        rows.append([limit.limit, percent_words(limit.percentage), resets, _rate(limit), words])
    for line in align(rows, right=(1, 3)):
        say(line)
    held = [limit for limit in result.limits if not limit.in_newest]
    for limit in held:
        observed = format_when(limit.observed_at, zone, now)
        say(
            f"{limit.limit}: last read {observed}; not in the newest snapshot "
            f"({limit.missing_reason})"
        )
    if answer.not_latest is not None:
        # The data's own answer (and `ingester show latest`) shows another snapshot.
        say(f"of {answer.version}, not the latest version: {answer.not_latest}")
