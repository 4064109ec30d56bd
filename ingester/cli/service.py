"""The service commands: ``watch`` (the spool's consumer) and ``submit`` (a writer's side).

``serve`` (the history over HTTP) is in :mod:`ingester.cli.serve`."""

from __future__ import annotations

import errno
import logging
import os
import select
import stat
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import click

from ..errors import PayloadRejected, StorageError, os_cause
from ..intake.metrics import NO_METRICS, Metrics
from ..payload.gate import check_payload
from ..runtime.signals import ignore_stop_signals
from ..settings.bounds import RESCAN_INTERVAL, RETRY_MAX, SETTLE
from ..settings.watch import WatchOptions
from .common import (
    CLOSED_AT_START,
    App,
    BoundedFloat,
    PathParam,
    fail,
    read_limited,
    read_stream,
    refuse_closed_stdout,
    say,
    say_recorded,
    warn,
)

__all__ = [
    "SpoolLinks",
    "refuse_unsafe_latest",
    "serve_watch_loop_options",
    "submit",
    "waiting_drop",
    "waiting_file",
    "watch",
    "watch_loop_options",
]


def watch_loop_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The watcher loop's options (--polling, --rescan-interval, --retry-max, --settle),
    as ``watch`` lists them."""
    for option in reversed(_loop_options("")):
        command = option(command)
    return command


def serve_watch_loop_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The same options for ``serve``, whose help says they need ``--watch``."""
    for option in reversed(_loop_options(" [with --watch only]")):
        command = option(command)
    return command


def _loop_options(note: str) -> list[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """The loop's options; ``note`` ends each help text."""
    return [
        click.option(
            "--polling",
            is_flag=True,
            help="Poll the spool instead of inotify (NFS, CIFS); drops written in place are "
            f"taken once their size and mtime are --settle seconds old.{note}",
        ),
        click.option(
            "--rescan-interval",
            type=BoundedFloat(RESCAN_INTERVAL),
            default=WatchOptions.rescan_interval,
            show_default=True,
            metavar="S",
            help=f"Full rescan of the spool every S seconds ({RESCAN_INTERVAL.describe()}), "
            f"the backstop for lost events.{note}",
        ),
        click.option(
            "--retry-max",
            type=BoundedFloat(RETRY_MAX),
            default=WatchOptions.retry_max,
            show_default=True,
            metavar="S",
            help="Longest wait between retries while the history cannot be written "
            f"({RETRY_MAX.describe()}).{note}",
        ),
        click.option(
            "--settle",
            type=BoundedFloat(SETTLE),
            default=WatchOptions.settle,
            show_default=True,
            metavar="S",
            help="A drop found by a scan (not by an event) is taken once its mtime is S seconds "
            "old or it has not changed for S seconds (and no one has it open for writing); "
            f"{SETTLE.describe()}.{note}",
        ),
    ]


@click.command()
@click.option(
    "--once",
    is_flag=True,
    help="Drain the backlog already in the spool, then exit: 0, or 1 when anything is left "
    "for the next start (a drop that cannot be stored, taken or set aside, a drop its "
    "writer may still be writing, a spool that cannot be listed, a claim that cannot be "
    "finished), each said in one line.",
)
@watch_loop_options
@click.option(
    "--metrics",
    "metrics_listen",
    metavar="HOST:PORT",
    help="Serve the watcher's own metrics (drops ingested and rejected, store failures, "
    "ingest latency, backlog) in the Prometheus text format at http://HOST:PORT/metrics "
    "([::1]:9464 for IPv6; port 0 picks a free one). Off by default. See docs/serve.md.",
)
@click.pass_obj
def watch(
    app: App,
    once: bool,
    polling: bool,
    rescan_interval: float,
    retry_max: float,
    settle: float,
    metrics_listen: str | None,
) -> None:
    """Run the service: take the backlog (oldest first), then every new drop.

    Each valid drop becomes one version in the history and the latest link moves
    to it within milliseconds; retention and the metadata follow when the spool
    is idle (at most once a second during a burst). Invalid drops go to the
    rejected folder with a reason file. Holds the history's lock and the spool's:
    a second watcher of either exits 1 at once. Temp files killed writers left in
    the spool's tmp/ are removed once an hour old. Stops on SIGTERM/SIGINT/SIGHUP after
    finishing the drop in hand (exit 0); one ignored at its start, as under nohup, stays
    ignored. Under systemd it reports readiness, status
    and watchdog pings.
    A malformed --metrics address exits 2; one that cannot be bound (in use, not
    local) exits 1, before the spool is touched.
    """
    from ..intake.watcher import Watcher

    refuse_unsafe_latest(app)
    metrics: Metrics = NO_METRICS
    if metrics_listen is not None:
        metrics = _start_watch_metrics(metrics_listen)

    options = WatchOptions(
        once=once,
        polling=polling,
        rescan_interval=rescan_interval,
        retry_max=retry_max,
        settle=settle,
    )
    code = Watcher(app.settings, options, metrics=metrics).run()
    ignore_stop_signals()  # stopped: a second SIGHUP must not turn exit 0 into 129
    raise click.exceptions.Exit(code)


def refuse_unsafe_latest(app: App) -> None:
    """Exit 1 before a watcher starts on a history whose start would lose a snapshot.

    A start rebuilds the latest link; where the original server left a regular file
    holding a snapshot no version holds, only ``ingester adopt`` keeps it.
    """
    from ..ops.adopt import unsafe_latest

    try:
        problem = unsafe_latest(app.settings.store())
    except StorageError as exc:
        raise fail(str(exc)) from None
    if problem is not None:
        raise fail(problem)


def _start_watch_metrics(listen: str) -> Metrics:
    """Bind the watcher's metrics server on ``listen`` (HOST:PORT); exit 2 or 1 if it cannot."""
    from ..intake.metrics import WatchMetrics
    from ..serve.sockets import parse_listen

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise fail(f"--metrics: {exc}", 2) from None
    metrics = WatchMetrics()
    try:
        bound = metrics.start(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {listen} for --metrics: {os_cause(exc)}") from None
    logging.getLogger("ingester.watcher").info(
        "metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, bound
    )
    return metrics


@click.command()
@click.argument("source", metavar="FILE|-", type=PathParam())
@click.option(
    "--name",
    metavar="NAME",
    help="Name of the drop (ends in .json, no leading dot, no '/', no control character). "
    "Default: the UTC time and a random part.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate only: print 'valid FILE' (exit 0) or the reasons (exit 1); drop nothing. "
    "A warning says what a real submit by this user would be refused with here.",
)
@click.pass_obj
def submit(app: App, source: str, name: str | None, dry_run: bool) -> None:
    """Drop FILE (or standard input, '-') into the spool atomically; print its path.

    The payload is validated first: an invalid one is refused with the reasons (exit 1)
    and nothing is dropped. The file is written into SPOOL/tmp/, fsynced, then linked
    into the spool, so the watcher never sees a partial drop. A drop of the same name
    still waiting is never replaced: that is refused (exit 1), and so is a FILE that is
    itself a drop still waiting in the spool (by any path, or on standard input). With
    --dry-run the payload is only judged (a scraper's CI can check its output): nothing
    is dropped, and where a real submit by this user would be refused (a folder it may
    not enter or write in, the name taken), a warning says so in the same words.
    """
    from ..intake.spool import Spool, drop_name_for_now, is_drop_name
    from ..ops.queries import root_problem

    if dry_run:
        refuse_closed_stdout("the verdict", "redirect it")
    s = app.settings
    if name is not None and not is_drop_name(name):
        raise click.BadParameter(
            "must end in .json, not start with '.', and contain no '/'", param_hint="--name"
        )
    if name is not None and (bad := _control_character(name)) is not None:
        # The path printed is the record a script keeps: a newline or an escape in it
        # would be printed escaped, and that escaped path is not the drop's.
        raise click.BadParameter(
            f"must hold no control character (it holds U+{ord(bad):04X})", param_hint="--name"
        )
    if not dry_run and source != "-" and waiting_drop(Path(source), s.spool_dir):
        raise fail(
            f"{source} is a drop waiting in {s.spool_dir}; the watcher takes it "
            "(dropped again, it would be stored twice)"
        )
    try:
        if source == "-":
            if sys.stdin is None:
                raise fail("cannot read standard input: it is closed")
            if not dry_run and _stdin_waiting(s.spool_dir):
                raise fail(
                    f"standard input is a drop waiting in {s.spool_dir}; the watcher takes "
                    "it (dropped again, it would be stored twice)"
                )
            data = read_stream(_waiting(sys.stdin.buffer), s.max_bytes)
        else:
            data = read_limited(Path(source), s.max_bytes)
    except OSError as exc:
        raise fail(f"cannot read {source}: {os_cause(exc)}") from None
    try:
        check_payload(data, max_bytes=s.max_bytes)
    except PayloadRejected as exc:
        say(f"refused {source}: {exc.reason}", err=True)
        raise click.exceptions.Exit(1) from None
    # A mistyped root must not become a spool no watcher reads: refused, in the words
    # every command uses for it.
    problem = root_problem(s, s.spool_dir)
    spool = Spool(s.spool_dir, s.rejected_dir)
    if dry_run:
        say(f"valid {source}")
        # The verdict stands (a scraper's CI, with no spool, checks its output so), but
        # whoever tries it where it is to be dropped learns what the drop would meet.
        if problem is None:
            found = spool.submit_problem(name or drop_name_for_now())
            problem = None if found is None else _refused(found, s.spool_dir)
        if problem is not None:
            warn(f"{source} is valid, but a submit by {_this_user()} would be refused: {problem}")
        return
    if problem is not None:
        raise fail(problem)
    # From the publish on, the drop may be stored: a stop now would end the run as a
    # failure, and the writer's retry would store the drop twice. The publish takes
    # milliseconds; the run then ends saying what happened.
    ignore_stop_signals()
    try:
        path = spool.submit(data, name or drop_name_for_now())
    except (FileExistsError, StorageError) as exc:
        raise fail(_refused(exc, s.spool_dir)) from None
    # The drop is published and will be stored: a failure said now would have the
    # writer submit it again.
    unprinted = f"dropped {path}, but its path could not be printed"
    if 1 in CLOSED_AT_START:
        # Given /dev/null at start, stdout takes the path without an error: said here, as
        # a pipe closed by its reader has it said.
        warn(f"{unprinted}: standard output is closed")
        return
    say_recorded(str(path), unprinted)


def _control_character(text: str) -> str | None:
    """The first control character in ``text`` (Unicode category Cc: C0, DEL, C1; or a
    bidirectional control or a line separator, which the output escapes as well), or
    ``None``."""
    from ..runtime.logs import escape_controls

    return next(
        (c for c in text if unicodedata.category(c) == "Cc" or escape_controls(c) != c), None
    )


def waiting_drop(path: Path, spool_dir: Path, links: SpoolLinks | None = None) -> bool:
    """Whether ``path`` (by any path to it: a symlink, a bind mount, a hard link) is a
    drop waiting in the spool ``spool_dir``, or one its watcher has claimed and not
    stored yet: the watcher stores it, and a copy stored or dropped besides would store
    it twice. ``links``: the spool's listing to look a hard link up in, for a command
    given many files (else the spool is listed for each file with more than one link)."""
    from ..intake.spool import Spool, is_drop_name

    spool = Spool(spool_dir)
    real = Path(os.path.realpath(path))
    folder = _folder_id(real.parent)
    if folder is not None:
        if folder == _folder_id(spool.claimed_dir):
            return True
        if folder == _folder_id(spool.dir) and is_drop_name(real.name):
            return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    # Its own name was looked at above: only another link can be a drop.
    if links is not None:
        return links.holds(st)
    return waiting_file(st, spool_dir, other_links=True)


_SETTLE_NS = 2_000_000_000
# A folder's times move by a clock tick, on some filesystems by whole seconds: one
# modified within this of a look may be modified again without its times moving.


class SpoolLinks:
    """The names in a spool (drops) and in its ``.claimed/`` by inode, listed once, when
    first needed: ``ingest`` given many files with other hard links looks each up here
    rather than list a spool of thousands once per file.

    A name found by its inode is checked with a ``stat`` as it is looked up: one gone
    since the listing (the watcher claimed or stored it) sends that file to a fresh
    look (:func:`waiting_file`), so that a drop claimed meanwhile is still found. A
    folder changed since the listing (its modification time: a drop linked or renamed
    in) is listed again, so that a drop put there meanwhile is found too; so is one
    that changed within :data:`_SETTLE_NS` of its look, however it looks now: on a
    filesystem whose times count whole seconds (ext4 with 128-byte inodes, an NFS
    server's), a drop linked in the same second leaves them as they were.
    """

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self._by_inode: dict[int, list[str]] | None = None
        self._listed: tuple[tuple[int, int, int, int] | None, ...] = ()
        self._settled = False  # no folder changed within _SETTLE_NS of the listing's look

    def _folders(self) -> tuple[tuple[tuple[int, int, int, int] | None, ...], bool]:
        """The spool and its ``.claimed/`` as (device, inode, mtime, ctime in ns), or
        ``None`` for one that cannot be looked at: any name added, removed or renamed
        in a folder changes its times. And whether both are settled: neither modified
        within :data:`_SETTLE_NS` of now, so that a change from now on moves its time."""
        from ..intake.spool import Spool

        spool = Spool(self.spool_dir)
        states: list[tuple[int, int, int, int] | None] = []
        settled = True
        for folder in (spool.dir, spool.claimed_dir):
            now = time.time_ns()
            try:
                st = os.stat(folder)
            except OSError:
                states.append(None)
                continue
            states.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
            settled = settled and now - st.st_mtime_ns > _SETTLE_NS
        return tuple(states), settled

    def _listing(self) -> dict[int, list[str]]:
        from ..intake.spool import Spool, is_drop_name

        folders, settled = self._folders()
        if self._by_inode is None or not self._settled or folders != self._listed:
            # Looked at before the listing: a change during it shows at the next look.
            self._listed, self._settled = folders, settled
            by_inode: dict[int, list[str]] = {}
            spool = Spool(self.spool_dir)
            # The spool before .claimed/, as waiting_file looks.
            for folder, drops_only in ((spool.dir, True), (spool.claimed_dir, False)):
                try:
                    with os.scandir(folder) as entries:
                        for entry in entries:
                            if not drops_only or is_drop_name(entry.name):
                                by_inode.setdefault(entry.inode(), []).append(entry.path)
                except OSError:
                    continue
            self._by_inode = by_inode
        return self._by_inode

    def holds(self, st: os.stat_result) -> bool:
        """Whether the file of ``st`` is, under another name, a drop waiting in the spool or
        claimed there (as :func:`waiting_file` with ``other_links``)."""
        if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            return False
        named = self._listing().get(st.st_ino, [])
        for path in named:
            try:
                found = os.stat(path, follow_symlinks=False)
            except OSError:
                # Gone since the listing: claimed, or stored, meanwhile. Look afresh.
                return waiting_file(st, self.spool_dir, other_links=True)
            if (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino):
                return True
        return False


def waiting_file(st: os.stat_result, spool_dir: Path, *, other_links: bool = False) -> bool:
    """Whether the file of ``st`` (a path's stat, or an open descriptor's fstat) is a
    drop waiting in the spool ``spool_dir`` or claimed there, under a name of its own.
    Only a regular file is looked for; with ``other_links`` (the name at hand is known to
    be none of those) only one with more than one link, so that the spool is listed
    only then. A folder that cannot be listed (``.claimed/`` is the service's own) is
    taken to hold none."""
    from ..intake.spool import Spool, is_drop_name

    if not stat.S_ISREG(st.st_mode) or st.st_nlink < (2 if other_links else 1):
        return False
    spool = Spool(spool_dir)
    # The spool before .claimed/: a drop the watcher claims while it is looked for
    # leaves the one for the other, and is found in the second.
    for folder, drops_only in ((spool.dir, True), (spool.claimed_dir, False)):
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.inode() != st.st_ino or (drops_only and not is_drop_name(entry.name)):
                        continue
                    try:
                        found = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino):
                        return True
        except OSError:
            continue
    return False


def _stdin_waiting(spool_dir: Path) -> bool:
    """Whether standard input is a file that is a drop waiting in ``spool_dir``
    (``submit - < SPOOL/x.json``); ``False`` when it has no descriptor to look at."""
    try:
        st = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError):
        return False
    return waiting_file(st, spool_dir)


def _folder_id(path: Path) -> tuple[int, int] | None:
    """The folder ``path`` as (device, inode), whatever path reaches it; ``None`` when it
    is no folder that can be looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _refused(exc: OSError, spool_dir: Path) -> str:
    """What a writer is told when a submit into ``spool_dir`` is refused with ``exc`` (the
    name taken, or a :class:`StorageError`), the same whether it was tried or judged."""
    if isinstance(exc, FileExistsError) and not isinstance(exc, StorageError):
        return _name_taken(exc.filename)
    if exc.errno == errno.EXDEV:
        # A mount on SPOOL/tmp (a tmpfs, say): no drop staged there can be renamed in.
        return (
            f"{exc} ({spool_dir / 'tmp'}, where a drop is written before it is renamed "
            "in, is another filesystem than the spool: make it a plain folder)"
        )
    return str(exc)


def _this_user() -> str:
    """This process's user, by name where it has one (``user scraper``, ``uid 4242``)."""
    import pwd

    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def _name_taken(path: str) -> str:
    """Why the drop name ``path`` is not free: a drop still waiting, or a folder, which
    the watcher leaves where it is, so that the name never comes free by waiting."""
    try:
        is_folder = stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        is_folder = False
    if is_folder:
        return f"{path}: a folder has that name (never a drop, never taken); choose another name"
    return f"{path}: a drop of that name is still waiting"


class _Waiting:
    """A binary stream whose reads wait for input, on a descriptor set non-blocking.

    Non-blocking mode belongs to the open file, shared with whoever else holds it (a
    terminal, a pipe another program made non-blocking): its read then answers ``None``
    while the writer has not written yet, which a read loop takes for the end of the
    input, so a payload still being written was judged cut short or empty.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes, ``b""`` at the end of the input; raises ``OSError``."""
        while True:
            try:
                chunk: bytes | None = self._handle.read(size)
            except BlockingIOError:  # what io's documentation allows in place of None
                chunk = None
            if chunk is not None:
                return chunk
            select.select([self._handle], [], [])


def _waiting(handle: IO[bytes]) -> IO[bytes]:
    """``handle`` read as :func:`read_stream` reads it, waiting for input that is late."""
    # read_stream calls read() alone: _Waiting has all of IO[bytes] it uses.
    return cast(IO[bytes], _Waiting(handle))
