"""The object-store commands: ``mirror`` (the service) and ``restore``.

A thin click layer over :mod:`ingester.mirror.mirror` and :mod:`ingester.mirror.restore`. The
object store's endpoint comes from ``--endpoint-url``, else the standard
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; credentials from the standard chain
(environment, shared config, instance profile), never from the command line.

Exit codes: 0 done; 1 the object store or the history could not be used (one line on
stderr); 2 a usage error.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import SettingError, StorageError
from ..history.lock import HistoryLock, LockHeld
from ..mirror.objectstore import (
    MirrorTarget,
    ObjectStoreUnavailable,
    make_client,
    parse_target,
    require_boto3,
)
from ..runtime.signals import StopFlag, ignore_stop_signals, on_stop_signals
from ..settings.sources import resolve_settings
from .common import App, FiniteRange, PathParam, fail, refuse_closed_stdout, say

if TYPE_CHECKING:
    from ..history.store import HistoryStore

__all__ = ["mirror", "restore"]

_ENDPOINT_HELP = (
    "S3 endpoint of a non-AWS store, e.g. http://127.0.0.1:8333. "
    "[env AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL]"
)


def _target(ctx: click.Context, param: click.Parameter, value: str | None) -> MirrorTarget | None:
    if value is None:
        return None
    try:
        return parse_target(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command()
@click.argument("target", required=False, metavar="[s3://BUCKET/PREFIX]", callback=_target)
@click.option("--endpoint-url", metavar="URL", help=_ENDPOINT_HELP)
@click.option(
    "--once",
    is_flag=True,
    help="One pass (list, upload what is missing), then exit: 0 when every version is "
    "mirrored and its state file records that, 1 otherwise.",
)
@click.option(
    "--reconcile-interval",
    type=FiniteRange(min=1),
    default=300.0,
    show_default=True,
    metavar="S",
    help="List the remote prefix and upload what it lacks every S seconds.",
)
@click.option(
    "--rescan-interval",
    type=FiniteRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="S",
    help="A pass over the history every S seconds, even if its folder looks unchanged.",
)
@click.option(
    "--retry-max",
    type=FiniteRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Longest wait between retries while the object store cannot be used.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=32),
    default=4,
    show_default=True,
    metavar="N",
    help="Uploads in flight while a backlog drains, and objects read back at once while a"
    " listing is compared.",
)
@click.pass_obj
def mirror(
    app: App,
    target: MirrorTarget | None,
    endpoint_url: str | None,
    once: bool,
    reconcile_interval: float,
    rescan_interval: float,
    retry_max: float,
    concurrency: int,
) -> None:
    """Mirror the history to S3-compatible object storage (a service of its own).

    Uploads every version once to s3://BUCKET/PREFIX/<version name> (Content-MD5,
    If-None-Match: *), plus _metadata.json and console-usage-synced.json (a copy of the
    newest version). The target defaults to --mirror / INGESTER_MIRROR. While the
    object store is away, a backlog waits and local retention keeps what is not yet
    mirrored (at most --mirror-hold versions). --mirror-retention follow also deletes
    remote versions that local retention deleted. Credentials from the standard AWS
    chain, never from the command line. Stops on SIGTERM/SIGINT/SIGHUP (exit 0; one ignored at its
    start, as under nohup, stays ignored); exits 1 when
    another mirror runs on this history. See docs/mirror.md.
    """
    from ..mirror.mirror import Mirror
    from ..mirror.options import MirrorOptions
    from ..ops.queries import history_problem

    s = app.settings
    if target is None:
        if s.mirror is None:
            raise click.UsageError(
                "no target: give s3://BUCKET/PREFIX, --mirror or INGESTER_MIRROR"
            )
        target = parse_target(s.mirror)
    problem = history_problem(s)
    if problem is not None:
        raise fail(problem)
    try:
        require_boto3()
    except ObjectStoreUnavailable as exc:
        raise fail(str(exc)) from None
    options = MirrorOptions(
        target=target,
        policy=s.policy(),
        retention=s.mirror_retention,
        hold_max=s.mirror_hold,
        endpoint_url=endpoint_url,
        once=once,
        reconcile_interval=reconcile_interval,
        rescan_interval=rescan_interval,
        retry_max=retry_max,
        concurrency=concurrency,
    )
    try:
        code = Mirror(s.history_dir, options).run()
        ignore_stop_signals()  # stopped: a second SIGHUP must not turn exit 0 into 129
    except LockHeld as exc:
        raise fail(f"{exc}: another mirror runs on this history") from None
    except (StorageError, ObjectStoreUnavailable) as exc:
        raise fail(str(exc)) from None
    raise click.exceptions.Exit(code)


def _make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents, one at a time (shallowest first); return
    those this call made, deepest first. One that someone else made meanwhile (it exists
    when its turn comes) is not counted: it is not this command's to take away. Raises
    ``OSError`` when one cannot be made, after taking away those it made."""
    missing = []
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            break
        missing.append(path)
    made: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            made.insert(0, path)
    except OSError:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return made


def _unmake(store: HistoryStore, made: list[Path], *, locked: bool) -> None:
    """Take away the folders of ``made`` (made by this restore), as long as they hold
    nothing, or (``locked``: this restore holds the history's lock) nothing but the
    lock file (still held: unlinked, it guards nothing more, and the folder it guarded
    is going). Anything else in them (a version written, a file another put there, a
    lock file another holds) keeps them as they are. Best effort: the restore's own
    error is what is said."""
    if not made:
        return
    if store.history_dir in made:
        try:
            left = os.listdir(store.history_dir)
            if left not in ([], [store.lock_path.name] if locked else []):
                return
            if left:
                store.lock_path.unlink()
        except OSError:
            return
    for folder in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
        # Each on its own: only an empty folder goes, and one that will not (another
        # put something in it) keeps its parents too.
        with contextlib.suppress(OSError):
            folder.rmdir()


@click.command()
@click.argument("source", metavar="s3://BUCKET/PREFIX", callback=_target)
@click.option(
    "--root",
    "restore_root",
    metavar="DIR",
    type=PathParam(),
    help="Restore into this root (its history and latest link), instead of the global --root.",
)
@click.option("--endpoint-url", metavar="URL", help=_ENDPOINT_HELP)
@click.pass_context
def restore(
    ctx: click.Context, source: MirrorTarget, restore_root: str | None, endpoint_url: str | None
) -> None:
    """Rebuild a working history from its mirror at s3://BUCKET/PREFIX.

    Downloads every version (checked against its size and the SHA-256 the mirror
    stored with it) and writes it durably, byte for byte; puts the mirrored
    _metadata.json in place when the history has none; points the latest link at the
    newest version. The result passes 'ingester verify'. Versions already present with
    the same bytes are skipped (run it again to finish an interrupted restore); nothing
    is overwritten or deleted. An object named as a version that is not a valid payload
    is not restored (exit 1, each named). Refuses while a watcher holds the history.
    One that fails before it writes a version takes away what it made itself (the
    root and any parents it made, the history folder and its lock file), nothing else.
    SIGTERM/SIGINT/SIGHUP stop it between two versions (exit 1, run it again to finish);
    temp files a run killed outright left are removed (and said).
    """
    # A stop ends it between two versions, never inside one: no temp file is left.
    stop = StopFlag()
    on_stop_signals(stop.set)
    try:
        _restore(ctx, source, restore_root, endpoint_url, stop)
    finally:
        ignore_stop_signals()


def _restore(
    ctx: click.Context,
    source: MirrorTarget,
    restore_root: str | None,
    endpoint_url: str | None,
    stop: StopFlag,
) -> None:
    from ..mirror.restore import NothingRestored, RestoreError, restore_history
    from ..ops.adopt import unsafe_latest

    # Before anything is made: the lines saying what was restored are its record.
    refuse_closed_stdout("the lines saying what was restored", "redirect it")
    app: App = ctx.obj
    settings = app.settings
    if restore_root is not None:
        parent = ctx.parent.params if ctx.parent is not None else {}
        options: dict[str, Any] = {
            k: v for k, v in parent.items() if k not in ("config_path", "verbose", "log_format")
        }
        options["root"] = restore_root
        # That root's own history and latest link, whatever the environment or a config
        # file name for the global root's.
        root = Path(restore_root)
        options["history_dir"] = str(root / "console-usage-history")
        options["latest_path"] = str(root / "console-usage-synced.json")
        try:
            settings = resolve_settings(options, config_path=parent.get("config_path"))
        except SettingError as exc:
            raise click.UsageError(str(exc), ctx) from None
    store = settings.store()
    # The folders this restore makes itself (the history's, the root and its parents,
    # the latest link's), for a restore that fails before any version is written to take
    # away again: a retry, or 'init', then meets the state before it. Made here, one by
    # one, so that one made by another meanwhile is never counted as this restore's.
    made: list[Path] = []
    try:
        client = make_client(endpoint_url)
        made += _make_folders(store.history_dir)
        locked = False
        try:
            made += _make_folders(store.latest_path.parent)
            with HistoryLock(store.lock_path, "restore"):
                locked = True
                try:
                    # A restore ends by pointing the latest link at the newest version:
                    # a file there holding a snapshot no version holds would be lost.
                    unsafe = unsafe_latest(store)
                    if unsafe is not None:
                        raise fail(unsafe)
                    result = restore_history(
                        client, source, store, max_bytes=settings.max_bytes, stop=stop
                    )
                except BaseException:
                    _unmake(store, made, locked=True)
                    raise
        except BaseException:
            if not locked:
                _unmake(store, made, locked=False)
            raise
    except ObjectStoreUnavailable as exc:
        raise fail(str(exc)) from None
    except LockHeld as exc:
        raise fail(f"{exc}; stop the watcher before restoring into its history") from None
    except RestoreError as exc:
        if isinstance(exc, NothingRestored):
            for name, reason in exc.invalid:
                fail(f"{name} in the object store is not a valid payload ({reason}); not restored")
        raise fail(str(exc)) from None
    except StorageError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(str(StorageError("create folder", store.history_dir, exc))) from None
    say(
        f"restored {len(result.restored)} version(s) ({result.bytes} bytes) from {source} "
        f"into {store.history_dir}"
        + (f"; {len(result.present)} already present" if result.present else "")
        + (
            f"; {len(result.gone)} deleted from the object store since its listing, not restored"
            if result.gone
            else ""
        )
        + (f"; removed {len(result.swept)} leftover temp file(s)" if result.swept else "")
    )
    say(f"latest:  {store.latest_path} -> {result.latest}")
    if result.unverified:
        say(
            f"warning: {len(result.unverified)} version(s) checked by size only: mirrored "
            "before the mirror stored a SHA-256 with each object, in a bucket whose ETags "
            "are not MD5s (SSE-KMS); 'ingester verify' checks that they parse and validate",
            err=True,
        )
    # Said as fail() says an error: a JSON object each under --log-format json.
    for name, reason in result.invalid:
        fail(f"{name} in the object store is not a valid payload ({reason}); not restored")
    for name in result.conflicts:
        fail(f"{name} differs from the object store's copy; left as it is")
    if result.conflicts or result.invalid:
        raise click.exceptions.Exit(1)
