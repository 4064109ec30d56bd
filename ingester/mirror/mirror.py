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
  checks a download. The mirror counts an object as its copy (a version, or a fixed
  object as current) only on proof of its bytes (an ETag equal to their MD5, else the
  bytes read back), never on that metadata, which a tool may copy along with other
  bytes.
* **No journal of its own.** On start, after any outage, and every
  ``--reconcile-interval`` seconds it lists the remote prefix and uploads exactly what
  the local history has and the listing lacks (and reports a remote version not
  proven to hold our bytes). Between listings it trusts what it has
  uploaded itself, and learns of new versions by looking at the history folder's mtime
  twice a second (one ``stat``), with a full pass every ``--rescan-interval`` seconds.
* **A backlog, not a loss.** An outage, throttling (503 SlowDown), 5xx answers or
  rejected credentials stop the pass; it retries with backoff (0.5 s doubling up to
  ``--retry-max``) and logs one line when the state changes, not one per retry. After
  rejected credentials each retry builds a new client, so a fixed credentials file (or a
  refreshed instance role) is picked up without a restart. Meanwhile local retention
  holds back every version above the mirror's watermark (:mod:`ingester.mirror.state`);
  a missing bucket drops the watermark, so that it holds back every version.
* **Deletions** (``--mirror-retention follow``): remote versions that the retention
  policy deletes when applied to the remote listing, that are gone locally and older
  than the oldest local version, are deleted. Never the newest, never anything while
  the local history is empty. With ``keep`` (the default) nothing is ever deleted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..clock import Backoff
from ..history.local import LocalHistory
from ..history.lock import HistoryLock
from ..runtime.notify import SystemdNotifier
from ..runtime.signals import StopFlag, on_stop_signals
from .objectstore import Failure, S3Client, make_client
from .options import MirrorOptions
from .progress import MirrorProgress, failure_words
from .state import MIRROR_LOCK_NAME
from .sync import MirrorBlocked, MirrorSync, PassResult

__all__ = ["Mirror"]

log = logging.getLogger("ingester.mirror")

_BACKOFF_START = 0.5
# After an event, wait this long before the pass: the watcher has finished publishing the
# version by then (the pass never competes with that ingest for the CPU or the disk), and
# a burst of drops becomes one pass.
_COALESCE = 0.25
# How often an idle mirror looks at the history folder's mtime (one stat). Not inotify:
# a watch on the history wakes this process a dozen times during every ingest (temp
# file, write, chmod, link, metadata rename...), CPU taken at the very moment the
# watcher needs it; a stat twice a second costs nothing and adds at most 0.5 s of lag.
_POLL = 0.5


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
    (:class:`~ingester.mirror.s3_history.S3History`), one pass at a time
    (:class:`~ingester.mirror.sync.MirrorSync`); the one file it writes into the history
    is its state file (:class:`~ingester.mirror.progress.MirrorProgress`).
    ``client_factory(endpoint_url, timeout=...)`` makes the S3 client (boto3's, by
    default). :meth:`sync` runs one pass; :meth:`run` is the service.
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
        self._stop = StopFlag()
        self._seen: tuple[tuple[int, int, int] | None, bool] = (None, False)
        self._problem_since = 0.0
        self._notifier = SystemdNotifier.from_environ()
        self._pinged = 0.0
        self.progress = MirrorProgress(self.history_dir, options, self._notifier)
        self.passes = MirrorSync(
            self.local,
            options,
            self.progress,
            client_factory=client_factory,
            stop=self._stop,
            alive=self._ping,
        )

    def sync(self, *, full: bool = False) -> PassResult:
        """One pass (:meth:`ingester.mirror.sync.MirrorSync.sync`); raises
        :class:`~ingester.mirror.sync.MirrorBlocked` when the object store cannot be used."""
        return self.passes.sync(full=full)

    def describe(self) -> str:
        """One line for ``STATUS=``: the state and the backlog."""
        return self.progress.describe()

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
        progress = self.progress
        if failure.kind == "no-bucket":
            # Not an outage but the store's answer that the bucket, and every version in
            # it, is gone: nothing counts as mirrored, so retention holds (bounded).
            progress.forget_watermark()
        if progress.problem is None or progress.problem.kind != failure.kind:
            self._problem_since = time.monotonic()
            # A --once run ends here: it says what is left, and promises no retry.
            then = (
                "not mirrored"
                if self.options.once
                else f"waiting; retrying with backoff up to {self.options.retry_max:g} s"
            )
            log.error(
                "%s (%s); %d version(s) %s",
                failure_words(failure),
                failure.detail,
                progress.waiting(),
                then,
                extra={"event": "mirror-blocked", "kind": failure.kind},
            )
        else:
            log.debug("still %s (%s); next try in %.1f s", failure.kind, failure.detail, backoff)
        progress.problem = failure
        self.passes.forget(failure)
        progress.save()

    def _recovered(self) -> None:
        if self.progress.problem is not None:
            log.info(
                "object store usable again after %.1f s",
                time.monotonic() - self._problem_since,
                extra={"event": "mirror-recovered"},
            )
            self.progress.problem = None
            self.progress.save(force=True)

    def _install_signals(self) -> None:
        # SIGHUP (a closed terminal) stops it the same way, not by its default.
        on_stop_signals(self.stop)

    def run(self) -> int:
        """The service (or one pass with ``once``): exit status 0, or 1 on failure.

        With ``once``: 0 when every local version is in the object store afterwards and
        the state file says so; 1 also when the state file could not be written, since
        retention then goes by an older record and still holds what was mirrored.
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
            self.progress.resume()
            self.progress.save(force=True)
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
            full = time.monotonic() - self.passes.last_listing >= self.options.reconcile_interval
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
            self.progress.save()
            if self.options.once:
                # Its exit 0 says every version is proven mirrored: a version found not
                # ours, or a comparison a stop cut short, is never that, whatever the
                # watermark says.
                left = max(result.waiting, len(self.progress.stuck()))
                bad = min(len(self.progress.stuck()), left)
                if not result.compared:
                    log.error(
                        "stopped before every version was compared with the object store; "
                        "%d version(s) not counted as mirrored",
                        left,
                    )
                    return 1
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
                elif self.progress.unrecorded:
                    # The copy is whole, but the record retention goes by is not: a cron
                    # job reading exit 0 would take both as done. The next run that can
                    # write it lists and records them, uploading nothing again.
                    log.error(
                        "every version is mirrored, but that could not be recorded in %s "
                        "(said above): retention holds what that file does not count as "
                        "mirrored until a run records it; fix what refuses the write and "
                        "run again",
                        self.progress.path,
                    )
                    return 1
                return 1 if left else 0
            until_listing = self.options.reconcile_interval - (
                time.monotonic() - self.passes.last_listing
            )
            self._sleep(max(0.0, min(self.options.rescan_interval, until_listing)), wake=True)
        if self.options.once:
            # Stopped before its one pass began: its exit 0 would say the copy is whole.
            log.error("stopped before its pass; no version was mirrored or compared")
            return 1
        log.info("mirror stopped; %d version(s) waiting", self.progress.state.waiting)
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
