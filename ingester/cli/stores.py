"""Opening the history for a command: the store a writer holds the lock of, the local
history a read command loads, the reader of ``--from s3://BUCKET/PREFIX``, and the
folders a command may create for it.

Command modules import from here, never from :mod:`ingester.cli.group` (which imports them).
"""

from __future__ import annotations

import errno
import os
import pwd
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import ReportError, StorageError
from ..history.lock import HistoryLock, LockHeld, latest_link_lock, latest_link_refused
from ..history.store import HistoryStore
from ..settings.resolved import Settings
from .common import fail, warn

if TYPE_CHECKING:
    from ..history.base import HistoryReader
    from ..mirror.s3_history import S3History

__all__ = [
    "history_source",
    "make_folder",
    "open_history",
    "reading_store",
    "s3_history",
    "s3_reader",
    "writing_store",
]

F = TypeVar("F", bound=Callable[..., Any])


def make_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents; raise ``OSError``.

    Run as root (an operator preparing the service's folders), each new folder takes
    the owner and group of the folder it is made in, so that the service, running as
    its own user, can use what was made for it.
    """
    missing: list[Path] = []
    probe = folder
    while not probe.is_dir() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise  # the callers' StorageError("create folder") words it
            continue
        if os.geteuid() == 0:
            parent = path.parent.stat()
            if (parent.st_uid, parent.st_gid) != (0, 0):
                os.chown(path, parent.st_uid, parent.st_gid)


def history_source(command: F) -> F:
    """Give a read command ``--from s3://BUCKET/PREFIX`` and ``--endpoint-url``.

    The command gets them as ``source`` and ``endpoint_url``; :func:`open_history`
    makes the reader.
    """
    command = click.option(
        "--endpoint-url",
        metavar="URL",
        help="S3 endpoint for --from. [env AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL]",
    )(command)
    return click.option(
        "--from",
        "source",
        metavar="s3://BUCKET/PREFIX",
        help="Read the copy 'ingester mirror' keeps in an object store instead of the "
        "local history (see docs/mirror.md).",
    )(command)


def s3_history(source: str, endpoint_url: str | None) -> S3History:
    """The reader of ``--from s3://BUCKET/PREFIX``.

    A malformed ``source`` is a usage error (:class:`click.BadParameter`); raises
    :class:`~ingester.errors.ObjectStoreUnavailable` when boto3 is not installed.
    """
    from ..mirror.objectstore import make_client, parse_target
    from ..mirror.s3_history import S3History

    try:
        target = parse_target(source)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    return S3History(make_client(endpoint_url), target)


def s3_reader(source: str, endpoint_url: str | None) -> S3History:
    """:func:`s3_history`, with a missing boto3 as the command's one-line failure."""
    from ..errors import ObjectStoreUnavailable

    try:
        return s3_history(source, endpoint_url)
    except ObjectStoreUnavailable as exc:
        raise fail(str(exc)) from None


def open_history(
    settings: Settings, source: str | None = None, endpoint_url: str | None = None
) -> HistoryReader:
    """The history a read command reads: ``--from``'s object store, else the local folder.

    A local history that cannot be reached (no root, no history, a folder this user
    may not enter) is refused here in the words every command uses; an object store is
    first reached by the command's first read (an ``OSError`` naming it).
    """
    if source is not None:
        return s3_reader(source, endpoint_url)
    if endpoint_url is not None:
        raise click.UsageError("--endpoint-url is for --from s3://BUCKET/PREFIX")
    from ..history.local import LocalHistory
    from ..ops.queries import history_problem

    problem = history_problem(settings)
    if problem is not None:
        raise fail(problem)
    return LocalHistory(settings.history_dir)


def reading_store(settings: Settings) -> HistoryStore:
    """The local history, scanned and loaded without writing anything or taking the lock.

    A history that cannot be reached or listed is the command's one-line failure (exit
    1, or the code its :class:`~ingester.errors.ReportError` carries).
    """
    from ..ops.queries import open_store

    try:
        return open_store(settings)
    except ReportError as exc:
        raise fail(str(exc), exc.code) from None


@contextmanager
def writing_store(
    settings: Settings,
    purpose: str,
    *,
    initialize: bool = True,
    creates: str = "history",
    caches_required: bool = False,
) -> Iterator[HistoryStore]:
    """The store with the history lock held; clear errors instead of tracebacks.

    ``creates`` says what the command may create when it is missing: ``"root"`` (init:
    the root, its history and all), ``"history"`` (a history inside a root that exists)
    or ``"nothing"`` (the history must exist). What it may not create is refused in
    the words every read command uses, exit 1, before anything is made: a mistyped
    --root must not become a new empty history that reports success.

    With ``initialize`` (the default) the store is initialized first (temps swept,
    metadata and latest link repaired), unless the latest path is a file holding a
    snapshot no version holds: that would be lost, so the command is refused with a
    pointer to ``ingester adopt``. A latest link or metadata that cannot be repaired is
    a warning (they are caches), unless ``caches_required`` (init, whose job they are):
    then the command fails with that error.
    """
    from ..ops.adopt import unsafe_latest
    from ..ops.queries import history_problem, root_problem

    store = settings.store()
    errors: list[StorageError] = []
    if creates == "nothing":
        problem = history_problem(settings)
    elif creates == "history":
        problem = root_problem(settings, store.history_dir)
    else:
        problem = None
    if problem is not None:
        raise fail(problem)
    in_body = False
    try:
        make_folder(store.history_dir)
        with HistoryLock(store.lock_path, purpose), _latest_link_kept(store, purpose):
            if initialize:
                problem = unsafe_latest(store)
                if problem is not None:
                    raise fail(problem)
                errors = store.initialize().cache_errors
                if errors and caches_required:
                    raise errors[0]
            in_body = True  # an OSError from now on is the command's own
            failure: StorageError | None = None
            try:
                yield store
            except StorageError as exc:
                failure = exc
                raise
            finally:
                for error in errors:
                    # The latest link and metadata are caches: say so, and go on; said
                    # once the command is done, and not at all when its failure is the
                    # same fault (one folder refusing one way): one fault, one line.
                    if failure is None or not _same_fault(error, failure):
                        warn(str(error))
    except LockHeld as exc:
        raise fail(f"{exc}; {_lock_advice(purpose)}") from None
    except StorageError as exc:
        if purpose == "adopt" and not in_body and exc.errno in (errno.EACCES, errno.EPERM):
            # A history copied as root and not yet handed over (the chown before adopt
            # skipped): the lock is the first thing it is refused.
            from ..ops.adopt import refused_advice

            raise fail(f"{exc} (nothing was done; {refused_advice(exc.path)})") from None
        if not in_body and exc.errno == errno.EACCES:
            owner = _other_owner(store.history_dir)
            if owner is not None:
                raise fail(f"{exc} (nothing was done; {owner})") from None
        raise fail(str(exc)) from None
    except OSError as exc:
        if in_body:
            raise  # not a folder it could not make
        where = exc.filename or store.history_dir
        raise fail(str(StorageError("create folder", where, exc))) from None


def _other_owner(history_dir: Path) -> str | None:
    """Advice when this user was refused the history that belongs to another user: a
    writing command run as the wrong user (a reader, a login user beside the service),
    whose fix is to run it as the owner, not to change any mode. ``None`` when the
    history is this user's own, or its owner cannot be told."""
    try:
        uid = os.stat(history_dir).st_uid
    except OSError:
        return None
    if uid == os.geteuid():
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"the history belongs to uid {uid}: run this command as that user"
    return (
        f"the history belongs to {name} (uid {uid}): run this command as that user "
        f"(runuser -u {name} -- ingester ...)"
    )


def _lock_advice(purpose: str) -> str:
    """What to do when the history lock refuses the command ``purpose``: nothing was
    done, and most often the lock's holder is the running service."""
    if purpose == "ingest":
        return "use 'ingester submit' to hand a watcher drops"
    if purpose == "cleanup":
        return (
            "nothing was done; a running watcher applies retention itself after each "
            "version, else run cleanup again once that process has stopped"
        )
    return (
        f"nothing was done; run {purpose} again once that process has stopped "
        "(for the service: systemctl stop its unit first)"
    )


def _same_fault(warning: StorageError, failure: StorageError) -> bool:
    """Whether ``warning`` and ``failure`` are one fault: the same cause in one folder."""
    return warning.errno == failure.errno and warning.path.parent == failure.path.parent


@contextmanager
def _latest_link_kept(store: HistoryStore, purpose: str) -> Iterator[None]:
    """Hold the latest link's lock (taken after the history's) while a command writes.

    Refused, in one line naming the holder, when a process of another history given
    the same latest path holds it: this command would repair, remove or re-point the
    link that process keeps. A lock file that cannot be made (the link's folder missing
    or not writable) is no refusal: the link is a cache, and its folder's problem is
    said as the command's warning.
    """
    lock = latest_link_lock(store.latest_path, purpose)
    try:
        lock.acquire()
    except LockHeld as exc:
        raise fail(latest_link_refused(store.latest_path, exc)) from None
    except StorageError:
        yield
        return
    try:
        yield
    finally:
        lock.release()
