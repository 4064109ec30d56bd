"""``ingester mirror``: copy the history to S3-compatible object storage, in its own process.

What it keeps true, and how:

* **Never in the way of ingest.** It is a separate process that only *reads* the
  history (and writes its own ``_mirror.json``): the watcher never waits for it, and
  an object store that is slow or down costs the watcher nothing.
* **Each version uploaded once, whole, checked.** One ``PutObject`` per version under
  ``PREFIX/<version name>``, with ``Content-MD5`` (the server refuses bytes that do not
  match) and ``If-None-Match: *`` (a version name is immutable: the store refuses to
  overwrite it). A single PUT is atomic in S3: a killed upload leaves no partial object.
  ``PREFIX/_metadata.json`` and ``PREFIX/console-usage-synced.json`` (a copy of the
  newest version: object stores have no symlinks) are small single PUTs too. Every
  object carries the SHA-256 of its bytes in its metadata (the latest copy also the
  version it copies): that, never the ETag (not an MD5 under SSE-KMS), is how restore
  checks a download and how the mirror knows the two fixed objects are current (one
  ``HEAD`` each after a listing, then what it uploaded itself).
* **No journal of its own.** On start, after any outage, and every
  ``--reconcile-interval`` seconds it lists the remote prefix and uploads exactly what
  the local history has and the listing lacks. Between listings it trusts what it has
  uploaded itself, and learns of new versions by looking at the history folder's mtime
  twice a second (one ``stat``), with a full pass every ``--rescan-interval`` seconds.
* **A backlog, not a loss.** An outage, throttling (503 SlowDown), 5xx answers or
  rejected credentials stop the pass; it retries with backoff (0.5 s doubling up to
  ``--retry-max``) and logs one line when the state changes, not one per retry. After
  rejected credentials each retry builds a new client, so a fixed credentials file (or a
  refreshed instance role) is picked up without a restart. Meanwhile local retention
  holds back every version above the mirror's watermark (:mod:`ingester.mirror.state`).
* **Deletions** (``--mirror-retention follow``): remote versions that the retention
  policy deletes when applied to the remote listing, that are gone locally and older
  than the oldest local version, are deleted. Never the newest, never anything while
  the local history is empty. With ``keep`` (the default) nothing is ever deleted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..clock import Backoff, utc_now
from ..errors import (
    IngesterError,
    MetadataMissing,
    ObjectStoreError,
    PayloadRejected,
    StorageError,
    VersionExists,
    VersionNotFound,
)
from ..history.base import VersionEntry, is_future
from ..history.local import LocalHistory
from ..history.lock import HistoryLock
from ..history.metadata import MetadataCorrupt, StorageMetadata
from ..history.names import format_timestamp, is_version_name
from ..history.retention import RetentionPolicy, plan_retention
from ..payload.model import judge_payload
from ..runtime.notify import SystemdNotifier
from ..runtime.signals import StopFlag, on_stop_signals
from ..threads import THREAD_LIMIT, workers_or_inline
from .objectstore import Failure, MirrorTarget, RemoteObject, S3Client, make_client
from .s3_history import S3History
from .state import (
    DEFAULT_HOLD_MAX,
    MIRROR_LOCK_NAME,
    STUCK,
    read_mirror_state,
    unmirrored,
    write_mirror_state,
)
from .state_model import MirrorState

__all__ = ["Mirror", "MirrorBlocked", "MirrorOptions", "PassResult"]

log = logging.getLogger("ingester.mirror")

_BACKOFF_START = 0.5
_CHUNK = 32  # uploads in flight between progress checks (stop, state file, watchdog)
_STATE_EVERY = 1.0  # seconds between state-file writes while a backlog drains
_STOP_LOOK = 0.25  # seconds between looks for a stop while uploads run
# After an event, wait this long before the pass: the watcher has finished publishing the
# version by then (the pass never competes with that ingest for the CPU or the disk), and
# a burst of drops becomes one pass.
_COALESCE = 0.25
# How often an idle mirror looks at the history folder's mtime (one stat). Not inotify:
# a watch on the history wakes this process a dozen times during every ingest (temp
# file, write, chmod, link, metadata rename...), CPU taken at the very moment the
# watcher needs it; a stat twice a second costs nothing and adds at most 0.5 s of lag.
_POLL = 0.5

_STATE_WORDS = {
    "unreachable": "object store unreachable",
    "throttled": "object store throttling (slow down)",
    "server-error": "object store failing (server error)",
    "denied": "object store refused the credentials",
    "no-bucket": "bucket does not exist",
    "rejected": "object store refused a request",
}


@dataclass(frozen=True)
class MirrorOptions:
    """How the mirror runs. Times in seconds."""

    target: MirrorTarget
    policy: RetentionPolicy = field(default_factory=RetentionPolicy)
    retention: str = "keep"
    hold_max: int = DEFAULT_HOLD_MAX
    endpoint_url: str | None = None
    once: bool = False
    reconcile_interval: float = 300.0
    rescan_interval: float = 30.0
    retry_max: float = 30.0
    concurrency: int = 4
    timeout: float = 10.0


class MirrorBlocked(IngesterError):
    """A pass stopped: the object store cannot be used right now (``failure`` says why)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.kind}: {failure.detail}")
        self.failure = failure


@dataclass
class PassResult:
    """What one pass did."""

    uploaded: int = 0
    bytes: int = 0
    deleted: int = 0
    waiting: int = 0
    listed: bool = False


def _folder_token(folder: str) -> tuple[tuple[int, int, int] | None, bool]:
    """``((inode, mtime_ns, ctime_ns), settled)`` of a folder; ``(None, True)`` if gone.

    Every version linked in or deleted and every ``_metadata.json`` replaced creates or
    removes an entry, which moves the folder's mtime. A token taken within 50 ms of its
    own change is not *settled*: a second change within one clock tick might not move it.
    """
    try:
        st = os.stat(folder)
    except OSError:
        return None, True
    changed = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns), time.time() - changed > 0.05


class Mirror:
    """Mirrors the history folder ``history_dir`` to one ``s3://BUCKET/PREFIX``.

    It reads the history through its reader (:class:`~ingester.history.local.LocalHistory`)
    and writes the copy through the object-store backing's writer
    (:class:`~ingester.mirror.s3_history.S3History`); the one file it writes into the history
    is its state file. ``client_factory(endpoint_url, timeout=...)`` makes the S3 client
    (boto3's, by default). :meth:`sync` runs one pass; :meth:`run` is the service.
    """

    def __init__(
        self,
        history_dir: Path,
        options: MirrorOptions,
        *,
        client_factory: Callable[..., S3Client] = make_client,
    ) -> None:
        self.local = LocalHistory(history_dir)
        self.history_dir = self.local.dir
        self.options = options
        self.target = options.target
        self.policy = options.policy
        self._factory = client_factory
        self._remote: S3History | None = None
        self._names: list[str] = []  # the local versions at the last look
        self._gone: set[str] = set()  # of those, the ones deleted before their upload
        self._last_listing = 0.0
        self._bad: dict[str, str] = {}  # names that cannot be mirrored, and why (logged once)
        self._compared: dict[str, str] = {}  # name -> the ETag whose bytes proved ours
        self._stop = StopFlag()
        self._seen: tuple[tuple[int, int, int] | None, bool] = (None, False)
        self._problem: Failure | None = None
        self._problem_since = 0.0
        self._state = MirrorState(
            target=str(self.target), hold_max=options.hold_max, retention=options.retention
        )
        self._state_written: tuple[Any, ...] | None = None
        self._state_at = 0.0
        self._notifier = SystemdNotifier.from_environ()
        self._pinged = 0.0
        self._upload_threads: int | None = None  # how many started, at the last pass

    # -- the object store ---------------------------------------------------------------

    def remote(self) -> S3History:
        """The copy's backing, made on first use (and again after rejected credentials,
        with a new client, or after an outage, so that it lists again)."""
        if self._remote is None:
            client = self._factory(self.options.endpoint_url, timeout=self.options.timeout)
            self._remote = S3History(client, self.target)
        return self._remote

    def _call(self, what: Callable[[S3History], Any]) -> Any:
        try:
            return what(self.remote())
        except ObjectStoreError as exc:
            raise MirrorBlocked(Failure(exc.kind, exc.detail)) from None

    # -- one pass -----------------------------------------------------------------------

    def sync(self, *, full: bool = False) -> PassResult:
        """One pass: upload what is missing, refresh latest and metadata, follow deletions.

        ``full`` lists the remote prefix first (also done when nothing is known yet).
        Raises :class:`MirrorBlocked` when the object store cannot be used.
        """
        result = PassResult()
        entries = self.local.list_versions()
        listed = names = self._names = [e.name for e in entries]
        self._gone = set()
        remote = self.remote()
        if full or remote.known is None:
            self._call(lambda r: r.refresh())
            self._last_listing = time.monotonic()
            result.listed = True
            self._check_sizes(entries)
        known = remote.known or {}
        missing = [n for n in names if n not in known]
        try:
            self._upload(missing, result)
        finally:
            if self._gone:
                # Deleted by retention between the listing and their upload: no longer in
                # the history, so neither waiting nor holding the watermark below them.
                names = self._names = [n for n in names if n not in self._gone]
            self._update_watermark(names)
        # Stopping: the latest copy, the metadata and deletions wait for the next start,
        # as the uploads not begun do, rather than hold the stop up. A --once run has no
        # next start to leave them to: its exit 0 says the copy is whole.
        if not self._stop.is_set() or self.options.once:
            base = self._local_metadata()
            self._call(lambda r: r.publish(base, self._payload_or_said))
            if self.options.retention == "follow":
                # The listing as taken: a version that vanished under its upload is
                # never what lets a remote copy go.
                result.deleted = self._follow(listed)
        result.waiting = len(unmirrored(names, self._state))
        return result

    def _payload_or_said(self, name: str, data: bytes) -> bool:
        """Whether object ``name`` may be the latest copy: a valid payload. Another
        writer's junk under a version's name is said once and never published."""
        try:
            judge_payload(data)
        except PayloadRejected as exc:
            log.warning(
                "%s in %s is no valid payload (%s): never the latest copy; remove it",
                name,
                self.target,
                exc.reason,
            )
            return False
        return True

    def _local_metadata(self) -> StorageMetadata | None:
        """The history's metadata (its totals go with the copy); ``None`` if unusable."""
        try:
            return self.local.read_metadata()
        except (MetadataMissing, MetadataCorrupt, OSError):
            return None

    def _check_sizes(self, entries: list[VersionEntry]) -> None:
        """After a listing: a remote version that is not ours byte for byte is reported
        (and never counted as mirrored, so retention keeps our copy).

        The sizes first; then the bytes, by the one rule for comparing them
        (:func:`~ingester.mirror.s3_history.same_bytes`: the listing's ETag when it is
        the bytes' MD5, else one ``HEAD`` for the SHA-256 stored with the object). Each
        object is compared once per process while its ETag stays the same, except one
        found bad, which is compared at every listing until it is ours again.
        """
        known = self.remote().known or {}
        for entry in entries:
            name, size = entry.name, entry.size
            remote = known.get(name)
            if remote is None:
                continue
            if size != remote.size:
                self._mark_bad(
                    name, f"the object store holds {remote.size} bytes, the history {size}"
                )
            elif name in self._bad or self._compared.get(name) != remote.etag:
                # A version found bad is compared at every listing: someone may have put
                # the right bytes back (their ETag may be the one compared good before).
                try:
                    data = self.local.read_version(name)
                except (VersionNotFound, OSError):
                    continue  # gone since the listing, or unreadable: uploading says why
                if self._same_bytes(remote, data) is False:
                    self._mark_bad(
                        name,
                        f"the object store holds other bytes under its name ({size} bytes, "
                        "as ours)",
                    )
                    continue
                self._compared[name] = remote.etag
                self._bad.pop(name, None)

    def _same_bytes(self, remote: RemoteObject, data: bytes) -> bool | None:
        verdict: bool | None = self._call(lambda r: r.compare(remote, data))
        return verdict

    def _mark_bad(self, name: str, why: str) -> None:
        if self._bad.get(name) != why:
            log.error("cannot mirror version %s: %s", name, why)
        self._bad[name] = why

    def _upload(self, missing: list[str], result: PassResult) -> None:
        if not missing:
            return
        started = time.monotonic()
        pool = self._uploaders()
        try:
            for first in range(0, len(missing), _CHUNK):
                if self._stop.is_set():
                    break
                futures: dict[Future[int | None], str] = {}
                for name in missing[first : first + _CHUNK]:
                    # Where no thread can start, each upload runs as it is submitted: a
                    # stop or a failure ends the chunk there, as the wait below does.
                    if self._stop.is_set():
                        break
                    future = pool.submit(self._put_version, name)
                    futures[future] = name
                    if future.done() and future.exception() is not None:
                        break
                self._wait_uploads(set(futures))
                # All at once, before waiting on any: while this thread waits on one,
                # the pool would start the next.
                for future in futures:
                    future.cancel()  # only one not started yet: it waits for the next pass
                blocked: MirrorBlocked | None = None
                for future in futures:
                    if future.cancelled():
                        continue
                    try:
                        size = future.result()
                    except MirrorBlocked as exc:
                        blocked = blocked or exc
                        continue
                    if size is not None:
                        result.uploaded += 1
                        result.bytes += size
                if blocked is not None:
                    raise blocked
                self._ping()
                if time.monotonic() - self._state_at >= _STATE_EVERY:
                    self._update_watermark(self._names)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if result.uploaded:
                log.info(
                    "mirrored %d version(s), %d bytes, in %.2f s",
                    result.uploaded,
                    result.bytes,
                    time.monotonic() - started,
                    extra={"event": "mirrored", "versions": result.uploaded},
                )

    def _uploaders(self) -> Executor:
        """The pass's upload threads, as many of ``--concurrency`` as can start (none: the
        uploads run one after the other on this thread); a change in how many is said."""
        wanted = max(1, self.options.concurrency)
        pool, threads = workers_or_inline(wanted, "ingester-upload")
        if threads < wanted and threads != self._upload_threads:
            log.warning(
                "%s: uploading on %s instead of %d",
                THREAD_LIMIT,
                f"{threads} thread(s)" if threads else "the mirror's own thread",
                wanted,
            )
        elif threads == wanted and self._upload_threads not in (None, wanted):
            log.info("uploading on %d threads again", wanted)
        self._upload_threads = threads
        return pool

    def _wait_uploads(self, futures: set[Future[int | None]]) -> None:
        """Wait until every upload in ``futures`` is done, one has failed, or a stop is
        asked; the uploads already running are then left to finish, each bounded by
        the client's timeouts, and those not started are not started."""
        pending = futures
        while pending and not self._stop.is_set():
            done, pending = wait(pending, timeout=_STOP_LOOK, return_when=FIRST_EXCEPTION)
            if any(not f.cancelled() and f.exception() is not None for f in done):
                return

    def _put_version(self, name: str) -> int | None:
        """Upload one version; its size, or None when it was not (gone, unreadable)."""
        try:
            data = self.local.read_version(name)
        except VersionNotFound:
            self._gone.add(name)  # deleted by retention since the listing
            return None
        except OSError as exc:
            # Unreadable, or larger than any drop (VersionTooLarge, never read whole):
            # refused with its one line, never uploaded in part. Streaming it whole
            # instead would copy gigabytes of what no drop could be into every bucket.
            self._mark_bad(name, str(exc))
            return None
        try:
            self._call(lambda r: r.commit(r.stage(data), name))
        except VersionExists:
            self._mark_bad(name, "the object store holds other bytes under its name")
            return None
        self._bad.pop(name, None)
        return len(data)

    def _follow(self, names: list[str]) -> int:
        """Delete remote versions local retention deleted; see the module docstring."""
        if not names:
            return 0
        known = self.remote().known or {}
        remote_versions = sorted(n for n in known if is_version_name(n))
        plan = plan_retention(remote_versions, utc_now(), self.policy)
        local = set(names)
        doomed = [n for n in plan.delete if n not in local and n < names[0]]
        for name in doomed:
            self._remove(name)
        if doomed:
            log.info(
                "mirror deleted %d remote version(s) that retention deleted locally",
                len(doomed),
                extra={"event": "mirror-deleted", "versions": len(doomed)},
            )
        return len(doomed)

    def _remove(self, name: str) -> None:
        self._call(lambda r: r.remove(name))

    # -- progress: the watermark and the state file ---------------------------------------

    def _update_watermark(self, names: Iterable[str]) -> None:
        remote = (self._remote.known if self._remote is not None else None) or {}
        through: str | None = None
        now = utc_now()
        for name in names:
            if is_future(name, now):
                # Dated ahead of the clock, it sorts above the names the clock gives next:
                # a watermark past it would count them mirrored before they are, and let
                # retention delete them. Retention keeps such a version anyway.
                continue
            if name not in remote or name in self._bad:
                break
            through = name
        else:
            through = through or self._state.mirrored_through
        self._state = self._state.model_copy(update={"mirrored_through": through})
        self._save_state()

    def _save_state(self, *, force: bool = False) -> None:
        waiting = len(unmirrored(self._names, self._state))
        problem = self._problem
        update: dict[str, Any] = {
            "waiting": waiting,
            "state": "ok" if problem is None else problem.kind,
            "detail": None if problem is None else problem.detail,
        }
        stuck = self._stuck()
        if problem is None and stuck:
            # The store answers, but a version cannot be mirrored, and it holds the
            # watermark: retrying will not move it, so the state says so rather than ok.
            first = stuck[0]
            more = f"; {len(stuck) - 1} more" if len(stuck) > 1 else ""
            update.update(state=STUCK, detail=f"{first}: {self._bad[first]}{more}")
        state = self._state.model_copy(update=update)
        key = (state.mirrored_through, state.state, state.detail, state.waiting)
        if key == self._state_written and not force:
            self._state = state
            return
        now = format_timestamp(utc_now())
        if state.state != self._state.state or state.since is None:
            state = state.model_copy(update={"since": now})
        if problem is None:
            state = state.model_copy(update={"last_success_at": now})
        state = state.model_copy(update={"updated_at": now})
        self._state = state
        try:
            write_mirror_state(self.history_dir, state)
        except StorageError as exc:
            # Retention then goes by the older watermark: it holds more, never less.
            log.warning("cannot record the mirror's progress: %s", exc)
            return
        self._state_written = key
        self._state_at = time.monotonic()
        self._notifier.status(self.describe())

    def _stuck(self) -> list[str]:
        """The history's versions that cannot be mirrored (oldest first)."""
        return [name for name in self._names if name in self._bad] if self._bad else []

    def describe(self) -> str:
        """One line for ``STATUS=``: the state and the backlog."""
        state = self._state
        if self._problem is None:
            stuck = len(self._stuck())
            cannot = f", {stuck} cannot be mirrored" if stuck else ""
            return f"mirroring to {self.target}: {state.waiting} version(s) waiting{cannot}"
        return (
            f"{_STATE_WORDS.get(self._problem.kind, self._problem.kind)}: {state.waiting} waiting"
        )

    # -- the service -----------------------------------------------------------------------

    def stop(self, *_args: object) -> None:
        """Finish the uploads in flight, then stop (signal handler)."""
        self._stop.set()

    def _ping(self) -> None:
        interval = self._notifier.watchdog_interval
        if interval is not None and time.monotonic() - self._pinged >= interval:
            self._notifier.watchdog()
            self._pinged = time.monotonic()

    def _blocked(self, failure: Failure, backoff: float) -> None:
        """Enter (or stay in) a problem state; one log line per change of state."""
        if self._problem is None or self._problem.kind != failure.kind:
            self._problem_since = time.monotonic()
            log.error(
                "%s (%s); %d version(s) waiting; retrying with backoff up to %.0f s",
                _STATE_WORDS.get(failure.kind, failure.kind),
                failure.detail,
                len(unmirrored(self._names, self._state)),
                self.options.retry_max,
                extra={"event": "mirror-blocked", "kind": failure.kind},
            )
        else:
            log.debug("still %s (%s); next try in %.1f s", failure.kind, failure.detail, backoff)
        self._problem = failure
        remote = self._remote
        if failure.kind == "denied":
            self._remote = None  # a new client re-reads the credential chain
        elif remote is not None:
            remote.known = None  # what happened meanwhile is unknown: list again
        self._save_state()

    def _recovered(self) -> None:
        if self._problem is not None:
            log.info(
                "object store usable again after %.1f s",
                time.monotonic() - self._problem_since,
                extra={"event": "mirror-recovered"},
            )
            self._problem = None
            self._save_state(force=True)

    def _install_signals(self) -> None:
        # SIGHUP (a closed terminal) stops it the same way, not by its default.
        on_stop_signals(self.stop)

    def run(self) -> int:
        """The service (or one pass with ``once``): exit status 0, or 1 on failure.

        With ``once``: 0 when every local version is in the object store afterwards.
        """
        if not self.history_dir.is_dir():
            log.error("no history at %s; run 'ingester init' to create it", self.history_dir)
            return 1
        lock = HistoryLock(self.history_dir / MIRROR_LOCK_NAME, "mirror")
        lock.acquire()  # LockHeld / StorageError: the caller reports them
        try:
            self._install_signals()
            log.info(
                "mirroring %s -> %s (retention %s)",
                self.history_dir,
                self.target,
                self.options.retention,
            )
            # The last watermark stands until the first listing recomputes it: a restart
            # while the store is away must not hold back what was mirrored before.
            previous = read_mirror_state(self.history_dir)
            if previous is not None and previous.target == str(self.target):
                self._state = self._state.model_copy(
                    update={"mirrored_through": previous.mirrored_through}
                )
            self._save_state(force=True)
            self._notifier.ready(self.describe())
            return self._loop()
        finally:
            self._notifier.stopping()
            lock.release()
            self._notifier.close()

    def _loop(self) -> int:
        backoff = Backoff(self.options.retry_max, _BACKOFF_START)
        while not self._stop.is_set():
            # Taken before the pass: a change during it shows as a new token afterwards.
            self._seen = _folder_token(os.fspath(self.history_dir))
            full = time.monotonic() - self._last_listing >= self.options.reconcile_interval
            try:
                result = self.sync(full=full)
            except MirrorBlocked as exc:
                delay = backoff.failed()
                self._blocked(exc.failure, delay)
                if self.options.once:
                    return 1
                self._sleep(delay, wake=False)
                continue
            backoff.succeeded()
            self._recovered()
            self._save_state()
            if self.options.once:
                left = result.waiting
                bad = min(len(self._bad), left)
                if left and self._stop.is_set():
                    log.error("stopped before %d version(s) were mirrored", left)
                elif left and 0 < bad < left:
                    # The watermark passes only a whole run of names: the ones after the
                    # first that failed wait behind it, uploaded or not.
                    log.error(
                        "%d version(s) could not be mirrored (each said above); %d more "
                        "are not counted as mirrored while an older one is not",
                        bad,
                        left - bad,
                    )
                elif left:
                    log.error("%d version(s) could not be mirrored", left)
                return 1 if left else 0
            until_listing = self.options.reconcile_interval - (
                time.monotonic() - self._last_listing
            )
            self._sleep(max(0.0, min(self.options.rescan_interval, until_listing)), wake=True)
        log.info("mirror stopped; %d version(s) waiting", self._state.waiting)
        return 0

    def _sleep(self, seconds: float, *, wake: bool) -> None:
        """Wait ``seconds`` (pinging the watchdog); with ``wake``, a change of the history
        folder (or an unsettled token from before the last pass) ends it early."""
        deadline = time.monotonic() + seconds
        folder = os.fspath(self.history_dir)
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if wake:
                token, _settled = _folder_token(folder)
                if token != self._seen[0] or not self._seen[1]:
                    self._stop.wait(_COALESCE)
                    return
            interval = self._notifier.watchdog_interval
            step = min(left, _POLL if wake else left, interval or left)
            if self._stop.wait(step):
                return
            self._ping()
