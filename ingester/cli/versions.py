"""``ingester list`` and ``ingester show``: the versions themselves, listed or printed.

A thin click layer over :mod:`ingester.ops.queries` (each version read and judged by
:func:`~ingester.ops.queries.list_report`; ``show`` judges the very bytes it prints).
Both read the local history or, with ``--from s3://BUCKET/PREFIX``, the copy in an
object store; neither takes the history lock nor writes.

Exit codes: 0 shown; 1 no history, no such version, a damaged version to show, or the
history cannot be listed; 2 a usage error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from ..clock import utc_now
from ..errors import (
    PERMISSION_ADVICE,
    VersionNotFound,
    VersionTooLarge,
    describe_os_error,
    is_permission_problem,
)
from ..history.base import HistoryReader, at_or_before, latest_name
from ..history.names import format_timestamp
from ..ops.queries import VersionInfo, list_report, payload_problem, resolve_version_name
from .common import (
    App,
    align,
    echo_json,
    fail,
    human_size,
    human_time,
    refuse_closed_stdout,
    relative_age,
    say,
    time_option,
    warn,
)
from .stores import history_source, open_history

__all__ = ["list_versions", "show", "version_json"]


def _verify_advice(source: str | None) -> str:
    """What to run about a damaged version: ``verify`` checks a local history only; a
    mirror's copy is checked by verifying the history it copies (and by ``restore``)."""
    if source is None:
        return "run 'ingester verify'"
    return "run 'ingester verify' on the history the mirror copies"


# -- list --------------------------------------------------------------------------------


@click.command("list")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Show the newest N only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
@history_source
@click.pass_obj
def list_versions(
    app: App, limit: int | None, as_json: bool, source: str | None, endpoint_url: str | None
) -> None:
    """List versions, newest first: name, ingest time, size, lastUpdated, isPartial.

    Each listed file is read; a damaged one is shown with an error marker (and a
    warning on stderr) instead of its fields. One that retention deletes meanwhile is
    left out: it is no longer in the history. Never takes the lock. With --from, the
    versions of the mirror in an object store.
    """
    refuse_closed_stdout("the list", "redirect it")
    now = utc_now()
    reader = open_history(app.settings, source, endpoint_url)
    try:
        infos = list_report(reader, limit, now)
    except OSError as exc:
        raise fail(describe_os_error(exc)) from None
    denied = sum(1 for i in infos if is_permission_problem(i.error))
    damaged = sum(1 for i in infos if i.error) - denied
    if as_json:
        echo_json([version_json(i) for i in infos])
    elif not infos:
        say("no versions yet")
    else:
        rows = [["VERSION", "INGESTED (UTC)", "AGE", "SIZE", "LAST UPDATED", "PARTIAL"]]
        for i in infos:
            age = relative_age(now - i.ingested_at) if i.ingested_at else "-"
            if i.future:
                age += " (future)"
            if i.error:
                rows.append(
                    [
                        i.name,
                        human_time(i.ingested_at),
                        age,
                        human_size(i.size),
                        f"ERROR: {i.error}",
                        "",
                    ]
                )
                continue
            partial = "-" if i.is_partial is None else ("yes" if i.is_partial else "no")
            rows.append(
                [
                    i.name,
                    human_time(i.ingested_at),
                    age,
                    human_size(i.size),
                    f"{human_time(i.last_updated)} ({relative_age(now - i.last_updated)})"
                    if i.last_updated
                    else "-",
                    partial,
                ]
            )
        for line in align(rows, right=(3,)):
            say(line)
    try:
        if damaged:
            warn(f"{damaged} damaged version(s) listed; {_verify_advice(source)}")
        if denied:
            warn(f"{denied} version(s) listed unreadable: {PERMISSION_ADVICE}")
    except OSError:
        # Standard error cannot take it (a full disk): the list itself is whole, so it
        # stands; the damage is marked in it as well.
        pass


def version_json(info: VersionInfo) -> dict[str, Any]:
    """The ``list --json`` object for one version."""
    return {
        "name": info.name,
        "ingestedAt": format_timestamp(info.ingested_at),
        "size": info.size,
        "lastUpdated": format_timestamp(info.last_updated),
        "isPartial": info.is_partial,
        "future": info.future,
        "error": info.error,
    }


# -- show --------------------------------------------------------------------------------


_LOOKS = 3
"""Listings ``show`` takes before a version it chose (not one named) that retention
deletes each time under the read is an error: retention deletes the oldest versions, so
the next choice is newer, or none is left."""


def _chosen(reader: HistoryReader, name: str | None, at: datetime | None, now: datetime) -> str:
    """The version ``show`` prints: ``name``, else the newest at ``at``, else the
    latest, from one listing. Raises the one-line error when there is none."""
    try:
        names = [entry.name for entry in reader.list_versions()]
    except OSError as exc:
        raise fail(describe_os_error(exc)) from None
    if at is not None:
        chosen = at_or_before(names, at)
        if chosen is None:
            raise fail(f"no version at or before {human_time(at)} UTC")
        return chosen
    if name is None:
        chosen = latest_name(names, now)
        if chosen is None:
            raise fail(f"no versions yet in {reader.location}")
        return chosen
    if name not in set(names):
        raise fail(f"no version {name} in {reader.location}")
    return name


def _read_chosen(
    reader: HistoryReader, name: str | None, at: datetime | None, now: datetime, source: str | None
) -> tuple[str, bytes]:
    """The name and the bytes of the version ``show`` prints (see :func:`_chosen`).

    Raises the one-line error when there is none or it cannot be read.
    """
    for look in range(1, _LOOKS + 1):
        chosen = _chosen(reader, name, at, now)
        try:
            return chosen, reader.read_version(chosen)
        except VersionNotFound:
            # Deleted since the listing (retention). One named is then gone; one chosen
            # (the latest, or the newest at TIME) is chosen again from the history as it
            # now is.
            if name is None and look < _LOOKS:
                continue
            raise fail(f"no version {chosen} in {reader.location} (deleted meanwhile)") from None
        except VersionTooLarge as exc:  # never read whole, so never printed in part
            advice = _verify_advice(source)
            raise fail(f"version {chosen} is damaged: {exc.reason}; {advice}") from None
        except OSError as exc:
            raise fail(describe_os_error(exc)) from None
    raise AssertionError("unreachable")


@click.command()
@click.argument("version", required=False, metavar="[VERSION|latest]")
@click.option(
    "--at",
    "at",
    metavar="TIME",
    callback=time_option,
    help="The version that was newest at TIME (ISO-8601; without an offset, UTC).",
)
@history_source
@click.pass_obj
def show(
    app: App,
    version: str | None,
    at: datetime | None,
    source: str | None,
    endpoint_url: str | None,
) -> None:
    """Print a version's JSON exactly as stored (default: the latest version).

    VERSION is a name from 'ingester list', with or without .json. With --at, the
    newest version whose time is at or before TIME. With --from, a version of the
    mirror in an object store. Exits 1 when there is none, or when the version file is
    damaged (nothing is printed then).
    """
    if version is not None and at is not None:
        raise click.UsageError("give VERSION or --at TIME, not both")
    name: str | None = None
    if version is not None and version != "latest":
        try:
            name = resolve_version_name(version)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="VERSION") from None
    refuse_closed_stdout("the version", "redirect it")
    now = utc_now()
    reader = open_history(app.settings, source, endpoint_url)
    name, data = _read_chosen(reader, name, at, now, source)
    # Judge the very bytes that are printed, so a damaged file never reaches stdout.
    problem = payload_problem(data)
    if problem is not None:
        raise fail(f"version {name} is damaged: {problem}; {_verify_advice(source)}")
    click.echo(data, nl=False)
