"""The operations commands: ``snapshot`` (backups), ``schema`` (the payload contract)
and ``check`` (monitoring).

A thin click layer over :mod:`ingester.ops.snapshot`, :mod:`ingester.payload.schema` and
:mod:`ingester.ops.check`. None of them takes the history lock or writes to the live
history, so all work beside a running watcher, as any user who can read the history.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import click

from ..clock import utc_now
from ..errors import BadEndpoint, ObjectStoreUnavailable, StorageError, os_cause
from ..history import durable
from ..ops.check import CheckLimits, judge, parse_duration
from ..ops.check_facts import Facts, gather_facts
from ..ops.outputs import locked_output, swept_lines
from ..ops.queries import history_problem
from ..ops.snapshot import (
    SnapshotError,
    refuse_live_destination,
    remove_made_folders,
    take_snapshot,
    write_snapshot_tar,
)
from ..runtime.logs import escape_text, one_line
from .advice import before_the_command
from .common import (
    App,
    FiniteRange,
    PathParam,
    announce_exit,
    fail,
    plugin_usage_line,
    refuse_closed_stdout,
    say,
    say_recorded,
)
from .service import refuse_unsafe_latest
from .stores import history_source, s3_history

__all__ = ["check", "schema", "snapshot"]


# -- snapshot ----------------------------------------------------------------------------


@click.command()
@click.argument("dest", metavar="[DEST|-]", required=False, type=PathParam())
@click.option(
    "--tar",
    "as_tar",
    is_flag=True,
    help="Write the snapshot as an uncompressed tar stream to DEST ('-': standard output) "
    "instead of a folder, for backup tools that read a command's output.",
)
@click.option(
    "--copy",
    is_flag=True,
    help="Copy every version instead of hard-linking it (links are used where they can be).",
)
@click.pass_obj
def snapshot(app: App, dest: str | None, as_tar: bool, copy: bool) -> None:
    """Take a consistent point-in-time copy of the history into DEST, beside a running watcher.

    DEST must not exist (missing folders above it are made), nor be in the history,
    the spool or the rejected folder (with --tar too). It becomes a root in
    the default layout, restorable as it is: DEST/console-usage-history/ (the
    versions present at one instant and a _metadata.json that agrees with them)
    and DEST/console-usage-synced.json (a relative link to the newest of them).
    'ingester --root DEST verify' passes on it.
    Versions are hard-linked where DEST is on the history's filesystem (no space
    used), copied otherwise (read-only; a live version left writable is copied, not
    linked). It is built in DEST's folder under a .tmp-snapshot-* name
    and renamed to DEST at the end (never over anything), so a half-made snapshot
    never appears as DEST.

    With --tar the same tree is written as a tar stream (DEST '-' or omitted: standard
    output), built first in $TMPDIR; 'tar -xf' into an empty folder gives the root.

    Takes no lock; never writes to the history. Exits 0 when the snapshot is complete,
    1 when it could not be taken (nothing is left behind then, DEST included when the
    failure came right after it was put in place), or when the history is
    the original server's, not adopted yet (run 'ingester adopt' first: the latest file
    may hold a snapshot no version holds).
    """
    if not as_tar:
        # Before anything is made: the line saying what the snapshot holds is its record.
        refuse_closed_stdout("the line saying what the snapshot holds", "redirect it")
    settings = app.settings
    history = settings.history_dir
    # Stopped (systemctl stop, a closed terminal), it removes what it made, as on a
    # failure, rather than leave a half-made copy or scratch tree behind.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _exit_on_signal)
    problem = history_problem(settings)
    if problem is not None:
        raise fail(problem)
    if as_tar and copy:
        raise click.UsageError("--copy has no meaning with --tar (the stream is a copy)")
    # A latest file holding a snapshot no version holds (the original server's layout,
    # not adopted yet) would be left out of the copy, which would still pass for whole.
    refuse_unsafe_latest(app)
    if not as_tar and (dest is None or dest == "-"):
        raise click.UsageError("give DEST, a folder that does not exist yet (or use --tar -)")
    if dest is not None and dest != "-":
        try:
            refuse_live_destination(
                Path(dest), history, spool=settings.spool_dir, rejected=settings.rejected_dir
            )
        except SnapshotError as exc:
            raise fail(str(exc)) from None
    if as_tar:
        _snapshot_tar(history, dest or "-")
        return
    assert dest is not None
    target = Path(os.path.abspath(dest))
    try:
        result = take_snapshot(history, target, link=not copy)
    except SnapshotError as exc:
        raise fail(str(exc)) from None
    how = f"{result.linked} linked, {result.copied} copied"
    if result.vanished:
        how += f", {result.vanished} deleted by retention meanwhile (left out)"
    say(
        f"snapshot {result.path}: {len(result.versions)} version(s) ({how}); "
        f"latest {result.latest or 'none'}"
    )


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up of what was made


def _snapshot_tar(history: Path, dest: str) -> None:
    if dest != "-":
        path = Path(dest)
        if os.path.lexists(path):
            raise fail(f"{path} already exists; a snapshot never replaces anything")
        # Written under a temp name beside FILE and renamed at the end (never over
        # anything): a run killed midway leaves no cut-off archive under FILE's name.
        made: list[Path] = []
        swept: list[str] = []
        folder = Path(os.path.abspath(path)).parent
        try:
            made = durable.make_folders(folder)  # as for a folder
            with locked_output(path, replace=False, swept=swept) as handle:
                write_snapshot_tar(history, handle)
        except BaseException as exc:
            remove_made_folders(made)
            for line in swept_lines(folder, swept):
                say_recorded(line, "leftovers removed, not said")
            if isinstance(exc, FileExistsError):
                raise fail(f"{path} appeared while the snapshot was taken; left alone") from None
            if isinstance(exc, SnapshotError | StorageError):
                raise fail(str(exc)) from None
            raise
        for line in swept_lines(folder, swept):
            say(line)
        return
    refuse_closed_stdout("the tar stream")
    if os.isatty(1):
        raise fail("refusing to write a tar stream to a terminal; redirect it or give a file")
    # The descriptor itself, so that -q (which holds back stdout text) never swallows the
    # archive.
    out = os.fdopen(os.dup(1), "wb")
    try:
        with out:
            write_snapshot_tar(history, out)
    except SnapshotError as exc:
        raise fail(str(exc)) from None
    except BrokenPipeError:
        raise fail("the reader of the tar stream went away before the end") from None
    except OSError as exc:
        raise fail(f"cannot write the tar stream to standard output: {os_cause(exc)}") from None


# -- schema ------------------------------------------------------------------------------


@click.command()
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of a drop's payload, ConsoleUsageDataSync.

    Generated from the model that judges every drop, so it cannot drift from it; the
    same text is committed as docs/payload.schema.json. A few rules are only
    approximated by a schema (no NaN, UTF-8 without BOM, the size limit): use
    'ingester submit --dry-run FILE' for the exact verdict.
    """
    # Here, not at the top: the schema is the model's, and pydantic's model machinery
    # would cost check and snapshot some 50 ms of their start.
    from ..payload.schema import payload_schema_text

    refuse_closed_stdout("the schema", "redirect it")
    click.echo(payload_schema_text(), nl=False)


# -- check -------------------------------------------------------------------------------


class _PluginCommand(click.Command):
    """``check``'s command: a usage error also gives the monitoring agent its one line on
    stdout. Nagios shows a plugin's stdout only: exit 2 with nothing there reads as
    "(No output)", which says nothing of the cause."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: object,
    ) -> click.Context:
        as_json = "--json" in args  # read first: the parser consumes the list
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.NoSuchOption as exc:
            plugin_usage_line(_told_where(exc, parent), as_json=as_json)
            raise
        except click.UsageError as exc:
            plugin_usage_line(exc, as_json=as_json)
            raise

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            plugin_usage_line(exc, as_json=bool(ctx.params.get("as_json")))
            raise
        except BadEndpoint as exc:
            # Found only where --from's client is made, in the command's body: a usage
            # error all the same, which the agent must see the cause of.
            error = click.UsageError(escape_text(one_line(str(exc))), ctx)
            plugin_usage_line(error, as_json=bool(ctx.params.get("as_json")))
            raise error from None


def _told_where(exc: click.NoSuchOption, parent: click.Context | None) -> click.UsageError:
    """``exc`` for the plugin line: an option of ``ingester`` itself given after ``check``
    (``check --root DIR``) is told to go before the command, in the words the ``Error:``
    line on stderr has, instead of a close match among check's own options (``Did you
    mean '--from'?``) that would send the reader astray. Any other is ``exc`` itself."""
    name = exc.option_name
    group = parent.command if parent is not None else None
    if group is None or not any(name in p.opts + p.secondary_opts for p in group.params):
        return exc
    command = exc.ctx.info_name if exc.ctx is not None and exc.ctx.info_name else "check"
    where = before_the_command(name, command)
    return click.UsageError(f"{exc.message.rstrip('.')} here: {where}", exc.ctx)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command(cls=_PluginCommand)
@click.option(
    "--max-age",
    default="15m",
    show_default=True,
    metavar="DURATION",
    callback=_duration,
    help="WARNING when the newest version's lastUpdated is older (e.g. 900, 90s, 15m, 2h, 1d), "
    "or dated more than 1 h ahead of this clock (its age cannot be told); CRITICAL at twice "
    "this.",
)
@click.option(
    "--max-backlog",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="N",
    help="WARNING when more than N drops wait in the spool, when any waits and no watcher "
    "of this spool runs, or when a running watcher has left one unstored for 183 s; "
    "CRITICAL above 2N, or when a waiting drop is older than --max-age (with a watcher "
    "running, counted from its start).",
)
@click.option(
    "--max-rejected-per-hour",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="N",
    help="WARNING when more than N drops were rejected in the last hour; CRITICAL above 2N.",
)
@click.option(
    "--max-mirror-lag",
    default="15m",
    show_default=True,
    metavar="DURATION",
    callback=_duration,
    help="Only with a mirror: WARNING when the oldest version not yet uploaded is older; "
    "CRITICAL at twice this, or when the object store refuses the mirror's requests "
    "(its credentials, an access rule, the account, or the request time: this machine's "
    "clock is off from the store's).",
)
@click.option(
    "--mirror-hold-warning",
    default=80.0,
    show_default=True,
    type=FiniteRange(min=0, max=100),
    metavar="PERCENT",
    help="Only with a mirror: WARNING when the expired versions retention keeps back for "
    "it fill this share of the --mirror-hold (the one given to check, else the mirror's); "
    "CRITICAL when they fill all of it (retention then deletes versions that were never "
    "uploaded).",
)
@click.option(
    "--usage-warning",
    type=FiniteRange(0, 100),
    metavar="PCT",
    help="Judge each usage limit in the newest snapshot: WARNING at or above PCT percent "
    "used (by default the critical threshold).",
)
@click.option(
    "--usage-critical",
    type=FiniteRange(0, 100),
    metavar="PCT",
    help="CRITICAL when a usage limit is at or above PCT percent used (default 100 once "
    "--usage-warning is given).",
)
@click.option(
    "--forecast",
    "judge_forecast",
    is_flag=True,
    help="Judge each usage limit's projection: WARNING when it reaches 100 % before it "
    "resets, or about when it does (within the hour or day a reset such as '2 hr' or "
    "'3 days' leaves open), CRITICAL when that is within --forecast-critical (see "
    "'ingester forecast').",
)
@click.option(
    "--forecast-critical",
    type=FiniteRange(min=0, max=24 * 366),
    default=1.0,
    show_default=True,
    metavar="HOURS",
    help="CRITICAL when a usage limit runs out before its reset within HOURS (given "
    "alone, it turns --forecast on).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the line.")
@history_source
@click.pass_obj
def check(
    app: App,
    max_age: float,
    max_backlog: int,
    max_rejected_per_hour: int,
    max_mirror_lag: float,
    mirror_hold_warning: float,
    usage_warning: float | None,
    usage_critical: float | None,
    judge_forecast: bool,
    forecast_critical: float,
    as_json: bool,
    source: str | None,
    endpoint_url: str | None,
) -> None:
    """Monitoring: one summary line and an exit code (Nagios plugin convention).

    Exit 0 OK, 1 WARNING, 2 CRITICAL. CRITICAL also when there is no history, no
    version yet, or the newest version is damaged. With a mirror configured (settings
    or its state file in the history), more items judge how far behind it is and how
    full the hold retention keeps for it (--mirror-hold) is. With --usage-warning,
    --usage-critical or --forecast (or --forecast-critical), one more item per usage
    limit; a limit the newest snapshot lacks is judged on its last reading. Where the
    spool's or the history's filesystem has room for fewer than 10 drops of the largest
    size (--max-bytes), a WARNING item says so; CRITICAL below one, with no inode left,
    or mounted read-only (POSTs and submit fail there now). Files in spool/.claimed/
    the watcher will not take are a WARNING item naming them, and so is a latest link
    left behind the newest version for over a minute. The
    line ends with performance data after '|'. Reads only; never takes the lock. With
    --from, judges the mirror in an object store: the age and usage items only. For
    cron, systemd timers with OnFailure= and monitoring agents: see docs/monitoring.md.
    """
    if usage_warning is not None and usage_critical is not None and usage_warning > usage_critical:
        raise click.UsageError(
            f"--usage-warning {usage_warning:g} is above --usage-critical {usage_critical:g}"
        )
    # A threshold for the forecast asks for the forecast: judging nothing by it would
    # leave the user believing they are covered.
    given = click.get_current_context().get_parameter_source("forecast_critical")
    if given not in (None, click.core.ParameterSource.DEFAULT):
        judge_forecast = True
    limits = CheckLimits(
        max_age,
        max_backlog,
        max_rejected_per_hour,
        max_mirror_lag,
        mirror_hold_warning,
        usage_warning=usage_warning,
        usage_critical=usage_critical,
        forecast=judge_forecast,
        forecast_critical=forecast_critical * 3600,
    )
    if source is not None:
        try:
            reader = s3_history(source, endpoint_url)
        except ObjectStoreUnavailable as exc:
            # Without boto3 the mirror cannot be seen: an outage of the monitoring, so
            # CRITICAL with the plugin line like any other store that cannot be read.
            facts = Facts(now=utc_now(), history_problem=f"{source}: {exc}", source=source)
        else:
            facts = gather_facts(app.settings, usage=limits.judges_usage, reader=reader)
    elif endpoint_url is not None:
        raise click.UsageError("--endpoint-url is for --from s3://BUCKET/PREFIX")
    else:
        facts = gather_facts(app.settings, usage=limits.judges_usage)
    result = judge(facts, limits)
    if result.code > 1:
        # The verdict is the exit code: a line that cannot be written (stdout on a full
        # disk) must not turn CRITICAL into the 1 of a failed write, which reads WARNING.
        announce_exit(result.code)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        say(result.line())
    if result.code:
        raise click.exceptions.Exit(result.code)
