"""One pass of the mirror: upload what the object store lacks, refresh the latest copy
and the metadata, follow retention's deletions (``--mirror-retention follow``).

Each version is uploaded once, whole and checked, by the object-store backing's writer
(:class:`~ingester.mirror.s3_history.S3History`), several at a time. A remote version
not proven to hold our bytes is reported and never counted as mirrored; an object under
a version name the history lacks is judged by :mod:`.junk`. What a pass did is its
:class:`PassResult`; an object store that cannot be used ends it with
:class:`MirrorBlocked`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, wait
from dataclasses import dataclass
from typing import Any

from ..clock import utc_now
from ..errors import (
    IngesterError,
    MetadataMissing,
    ObjectStoreError,
    VersionExists,
    VersionNotFound,
)
from ..history.base import VersionEntry
from ..history.local import LocalHistory
from ..history.metadata import MetadataCorrupt, StorageMetadata
from ..history.names import is_version_name
from ..history.retention import plan_retention
from ..runtime.signals import StopFlag
from ..threads import THREAD_LIMIT, InlineExecutor, in_order, workers_or_inline
from .junk import JunkObjects
from .objectstore import ClientNotMade, Failure, RemoteObject, S3Client
from .options import MirrorOptions
from .progress import MirrorProgress
from .s3_history import S3History

__all__ = ["MirrorBlocked", "MirrorSync", "PassResult"]

log = logging.getLogger("ingester.mirror")

_CHUNK = 32  # uploads in flight between progress checks (stop, state file, watchdog)
_STATE_EVERY = 1.0  # seconds between state-file writes while a backlog drains
_STOP_LOOK = 0.25  # seconds between looks for a stop while uploads run


class MirrorBlocked(IngesterError):
    """A pass stopped: the object store cannot be used right now (``failure`` says why)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.kind}: {failure.detail}")
        self.failure = failure


@dataclass(frozen=True)
class _Compared:
    """What comparing one version with its object found: ``kind`` is ``proven``,
    ``other`` (other bytes), ``gone`` (deleted since the listing), ``unreadable`` (our
    copy, ``detail`` says why) or ``refused`` (the store refused the read, ``detail``)."""

    kind: str
    detail: str = ""


@dataclass
class PassResult:
    """What one pass did."""

    uploaded: int = 0
    bytes: int = 0
    deleted: int = 0
    waiting: int = 0
    listed: bool = False
    compared: bool = True  # False: a stop cut the comparison after a listing short


class MirrorSync:
    """The passes that copy the history ``local`` to ``options.target``.

    ``client_factory(endpoint_url, timeout=..., concurrency=...)`` makes the S3 client;
    ``progress`` is told each version uploaded or refused and moves the watermark;
    ``stop`` ends a pass between requests; ``alive`` is called between them (the
    watchdog's ping).
    """

    def __init__(
        self,
        local: LocalHistory,
        options: MirrorOptions,
        progress: MirrorProgress,
        *,
        client_factory: Callable[..., S3Client],
        stop: StopFlag,
        alive: Callable[[], None],
    ) -> None:
        self.local = local
        self.options = options
        self.target = options.target
        self.policy = options.policy
        self.progress = progress
        self.last_listing = 0.0  # time.monotonic() of the last listing of the prefix
        self._factory = client_factory
        self._stop = stop
        self._alive = alive
        self._remote: S3History | None = None
        self._gone: set[str] = set()  # of the names, the ones deleted before their upload
        self._compared: dict[str, str] = {}  # name -> the ETag whose bytes proved ours
        # The limit on threads the pools for uploads, for read-backs have met (None: none).
        self._upload_limit: int | None = None
        self._read_limit: int | None = None
        self._delete_refused: str | None = None  # why deletions were refused, once said
        self._last_ours: tuple[tuple[str, str], bytes] | None = None  # (name, ETag), bytes
        self._get_refused: str | None = None  # why reading objects back was refused, once said
        # Objects under version names the history lacks: junk is never counted.
        self._junk = JunkObjects(self.target, stop=stop, alive=alive)

    # -- the object store ---------------------------------------------------------------

    def remote(self) -> S3History:
        """The copy's backing, made on first use (and again after rejected credentials,
        with a new client, or after an outage, so that it lists again).

        A client botocore cannot make (a credential process failing for a moment) ends
        the pass like a failed request, so the service waits and tries again; a
        ``--once`` run has nothing to wait for and reports it as it is.
        """
        if self._remote is None:
            try:
                client = self._factory(
                    self.options.endpoint_url,
                    timeout=self.options.timeout,
                    concurrency=max(1, self.options.concurrency),
                )
            except ClientNotMade as exc:
                if self.options.once:
                    raise
                raise MirrorBlocked(exc.failure) from None
            self._remote = S3History(client, self.target)
        return self._remote

    def known(self) -> dict[str, RemoteObject]:
        """The remote versions as last listed (and uploaded since); empty when unknown."""
        return (self._remote.known if self._remote is not None else None) or {}

    def forget(self, failure: Failure) -> None:
        """After ``failure``: rejected credentials drop the client (a new one re-reads the
        credential chain); anything else drops what is known of the remote (list again).
        A missing bucket also drops what was compared: whatever a bucket of that name
        holds later is compared again."""
        remote = self._remote
        if failure.kind == "no-bucket":
            self._compared.clear()
        if failure.kind == "denied":
            self._remote = None
        elif remote is not None:
            remote.known = None

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
        progress = self.progress
        entries = self.local.list_versions()
        listed = names = progress.names = [e.name for e in entries]
        self._gone = set()
        remote = self.remote()
        if full or remote.known is None:
            self._call(lambda r: r.refresh())
            self.last_listing = time.monotonic()
            result.listed = True
            # What was proven of versions no longer in the history is never asked again:
            # kept, it would grow for the life of the process.
            local = set(names)
            self._compared = {n: tag for n, tag in self._compared.items() if n in local}
            try:
                compared = self._check_sizes(entries)
            except MirrorBlocked:
                self._compared_only(names)
                raise
            if not compared:
                # Stopped before every listed version was compared: none is counted on
                # the listing's word alone (nor on a previous run's watermark), and the
                # next start lists and compares again.
                self._compared_only(names)
                remote.known = None
                result.compared = False
                result.waiting = progress.waiting()
                return result
        known = remote.known or {}
        missing = [n for n in names if n not in known]
        try:
            self._upload(missing, result)
        finally:
            if self._gone:
                # Deleted by retention between the listing and their upload: no longer in
                # the history, so neither waiting nor holding the watermark below them.
                names = progress.names = [n for n in names if n not in self._gone]
            progress.update_watermark(names, self.known())
        # Stopping: the latest copy, the metadata and deletions wait for the next start,
        # as the uploads not begun do, rather than hold the stop up. A --once run has no
        # next start to leave them to: its exit 0 says the copy is whole.
        if not self._stop.is_set() or self.options.once:
            base = self._local_metadata()
            # Its reads are the store's requests like any other: a failure ends the pass.
            junk: set[str] = self._call(
                lambda r: self._junk.no_payloads(r, set(names), self._readers)
            )
            unproven = set(progress.bad) | junk

            def publish(remote: S3History) -> None:
                remote.publish(base, self._junk.payload_or_said, self._ours, unproven)

            self._call(publish)
            if self.options.retention == "follow":
                # The listing as taken: a version that vanished under its upload is
                # never what lets a remote copy go.
                result.deleted = self._follow(listed, junk)
                if result.deleted:
                    # The metadata counted what is deleted now: it describes the bucket
                    # as it is (a --once run has no next pass to put that right).
                    self._call(publish)
        result.waiting = progress.waiting()
        return result

    def _compared_only(self, names: list[str]) -> None:
        """A comparison cut short: the watermark stands no higher than the run of
        ``names`` proven ours in this process (compared, or uploaded, under the ETag the
        store shows now)."""
        proven = {
            name: obj
            for name, obj in self.known().items()
            if obj.etag and self._compared.get(name) == obj.etag
        }
        self.progress.limit_watermark([n for n in names if n not in self._gone], proven)

    def _ours(self, name: str) -> bytes | None:
        """Our bytes of version ``name`` when its object is proven to hold them (compared,
        or uploaded, under the ETag the store shows now), else ``None``. The latest copy
        is made from these: the checksum stored with an object says what its bytes
        should be, not what they are. The last ones read are kept for the next pass."""
        obj = self.known().get(name)
        if obj is None or not obj.etag or self._compared.get(name) != obj.etag:
            return None
        if name in self.progress.bad:
            return None
        last = self._last_ours
        if last is not None and last[0] == (name, obj.etag):
            return last[1]
        try:
            data = self.local.read_version(name)
        except (VersionNotFound, OSError):
            return None
        self._last_ours = ((name, obj.etag), data)
        return data

    def _local_metadata(self) -> StorageMetadata | None:
        """The history's metadata (its totals go with the copy); ``None`` if unusable."""
        try:
            return self.local.read_metadata()
        except (MetadataMissing, MetadataCorrupt, OSError):
            return None

    def _check_sizes(self, entries: list[VersionEntry]) -> bool:
        """After a listing: a remote version not proven to hold our bytes is reported
        (and never counted as mirrored, so retention keeps our copy). ``False`` when a
        stop ended the comparison before every version was compared.

        The sizes first; then the bytes, proven as
        :meth:`~ingester.mirror.s3_history.S3History.proves` proves them: the listing's
        ETag when it is their MD5, else the object's bytes (one ``GET``). Each object is
        compared once per process while its ETag stays the same (one this process
        uploaded is known by the ETag its upload got), except one found bad, which is
        compared at every listing until it is ours again. Between objects the watchdog
        is pinged and a stop is honoured: under SSE-KMS this is a request per version,
        ``--concurrency`` of them in flight (each answer judged in the listing's order).
        """
        known = self.remote().known or {}
        listed = [(e.name, e.size, known[e.name]) for e in entries if e.name in known]
        # Decided before any answer comes: each name is judged by itself, so no answer
        # changes which other objects must be read.
        to_read = [
            (name, remote)
            for name, size, remote in listed
            if size == remote.size
            and (name in self.progress.bad or self._compared.get(name) != remote.etag)
        ]
        # Under SSE-KMS every object is read back: a few reads run ahead of the one
        # judged, so a history of thousands is not compared one round trip at a time.
        pool, threads = self._readers(len(to_read))
        verdicts = in_order(pool, self._compare_one, to_read, threads)
        read = 0  # how many of to_read were judged
        try:
            for name, size, remote in listed:
                if self._stop.is_set():
                    return False
                self._alive()
                if size != remote.size:
                    self.progress.mark_bad(
                        name, f"the object store holds {remote.size} bytes, the history {size}"
                    )
                    continue
                if read == len(to_read) or to_read[read][0] != name:
                    continue
                read += 1
                self._judge(name, size, remote, next(verdicts))
        finally:
            verdicts.close()
            pool.shutdown(wait=True, cancel_futures=True)
        return True

    def _compare_one(self, item: tuple[str, RemoteObject]) -> _Compared:
        """Read our bytes of one version and prove them against its object (on a compare
        thread); what came of it, for :meth:`_judge` to act on in the listing's order.
        Raises :class:`MirrorBlocked` when the store cannot be used, except for a refused
        read, which is an answer."""
        name, remote = item
        try:
            data = self.local.read_version(name)
        except VersionNotFound:
            return _Compared("gone")
        except OSError as exc:
            return _Compared("unreadable", str(exc))
        try:
            return _Compared("proven" if self._proves(remote, data) else "other")
        except MirrorBlocked as exc:
            if not exc.failure.refused_by_policy:
                raise
            return _Compared("refused", exc.failure.detail)

    def _judge(self, name: str, size: int, remote: RemoteObject, found: _Compared) -> None:
        """Act on what comparing version ``name`` with its object found."""
        if found.kind == "gone":
            self._gone.add(name)  # deleted by retention since the listing
        elif found.kind == "unreadable":
            # Not compared, so not proven: it holds the watermark until it can be read
            # (it is compared again at every listing meanwhile).
            self.progress.mark_bad(name, f"cannot compare it: {found.detail}")
        elif found.kind == "refused":
            self._read_refused(name, found.detail)
        elif found.kind == "other":
            self.progress.mark_bad(
                name, f"the object store holds other bytes under its name ({size} bytes, as ours)"
            )
        else:
            self._get_refused = None
            self._compared[name] = remote.etag
            self.progress.bad.pop(name, None)

    def _read_refused(self, name: str, detail: str) -> None:
        """The store refused to let object ``name`` be read back (403: a policy without
        ``s3:GetObject`` or ``kms:Decrypt``, an object another account wrote). That is no
        refusal of the credentials, which list and upload: it is said once in its own
        words, and the version, not proven, holds the watermark while the versions the
        listing lacks are still uploaded."""
        if self._get_refused != detail:
            log.error(
                "object store refused to read back %s (%s): a version is counted as "
                "mirrored only once its bytes are proven; grant s3:GetObject (and "
                "kms:Decrypt under SSE-KMS)",
                self.target.key(name),
                detail,
                extra={"event": "mirror-read-refused"},
            )
        self._get_refused = detail
        self.progress.mark_bad(
            name, f"the object store refused to read it back ({detail})", said=True
        )

    def _proves(self, remote: RemoteObject, data: bytes) -> bool:
        verdict: bool = self._call(lambda r: r.proves(remote, data))
        return verdict

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
                self._alive()
                if time.monotonic() - self.progress.saved_at >= _STATE_EVERY:
                    self.progress.update_watermark(self.progress.names, self.known())
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

    def _readers(self, count: int) -> tuple[Executor, int]:
        """Threads to read ``count`` objects back, ``--concurrency`` at most, and how many
        it has: none (an :class:`InlineExecutor`) where one would do. No threads where
        there is nothing to read: they would still be exiting when the uploads' threads
        start, and count against a limit on threads."""
        wanted = min(self.options.concurrency, count)
        if wanted > 1:
            pool, threads, self._read_limit = self._workers(wanted, "read", self._read_limit)
            return pool, threads
        return InlineExecutor(), 0

    def _uploaders(self) -> Executor:
        """The pass's upload threads, as many of ``--concurrency`` as can start (none: the
        uploads run one after the other on this thread); a change in how many is said."""
        wanted = max(1, self.options.concurrency)
        pool, _threads, self._upload_limit = self._workers(wanted, "upload", self._upload_limit)
        return pool

    def _workers(
        self, wanted: int, work: str, before: int | None
    ) -> tuple[Executor, int, int | None]:
        """Up to ``wanted`` threads for ``work`` (``upload`` or ``read``), as many as can
        start (none: an :class:`InlineExecutor`); the pool, how many it has, and the
        limit on threads known now (``None``: none is).

        ``before`` is the limit known from the pools before (the most threads that could
        start when fewer than wanted did). Hitting a new limit is said in one WARNING
        line, and getting past the known one in one INFO line. How many are wanted
        varies (a read-back wants no more than there are objects to read): a pool that
        got all it wanted, no more than the known limit, says nothing of it.
        """
        doing = {"upload": "uploading", "read": "reading objects back"}[work]
        pool, threads = workers_or_inline(wanted, f"ingester-{work}")
        if threads < wanted:
            if threads != before:
                log.warning(
                    "%s: %s on %s instead of %d",
                    THREAD_LIMIT,
                    doing,
                    f"{threads} thread(s)" if threads else "the mirror's own thread",
                    wanted,
                )
            return pool, threads, threads
        if before is not None and threads > before:
            log.info("%s on %d threads again", doing, wanted)
            return pool, threads, None
        return pool, threads, before

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
            self.progress.mark_bad(name, str(exc))
            return None
        try:
            self._call(lambda r: r.commit(r.stage(data), name))
        except VersionExists:
            self.progress.mark_bad(name, "the object store holds other bytes under its name")
            return None
        uploaded = self.known().get(name)
        if uploaded is not None and uploaded.etag:
            # The store accepted these bytes (Content-MD5) under this ETag: the next
            # listing showing it needs no request to prove them again.
            self._compared[name] = uploaded.etag
        self.progress.bad.pop(name, None)
        return len(data)

    def _follow(self, names: list[str], junk: set[str]) -> int:
        """Delete remote versions local retention deleted; see the module docstring.
        Objects that are no valid payload (``junk``) were never versions here: retention
        never deleted them, so neither is their deletion followed nor do they count."""
        if not names:
            return 0
        known = self.remote().known or {}
        remote_versions = sorted(n for n in known if is_version_name(n) and n not in junk)
        plan = plan_retention(remote_versions, utc_now(), self.policy)
        local = set(names)
        doomed = [n for n in plan.delete if n not in local and n < names[0]]
        deleted = 0
        for name in doomed:
            if not self._remove(name):
                break
            deleted += 1
        if deleted:
            log.info(
                "mirror deleted %d remote version(s) that retention deleted locally",
                deleted,
                extra={"event": "mirror-deleted", "versions": deleted},
            )
        return deleted

    def _remove(self, name: str) -> bool:
        """Delete one remote version; ``False`` when the store refuses the deletion.

        A refused deletion (403: a policy without ``s3:DeleteObject``) is no refusal of
        the credentials, which list and upload: it is said once, in its own words, and
        the versions stay remote (as in ``keep`` mode) while uploads go on.
        """
        try:
            self._call(lambda r: r.remove(name))
        except MirrorBlocked as exc:
            if not exc.failure.refused_by_policy:
                raise
            if self._delete_refused != exc.failure.detail:
                log.error(
                    "object store refused to delete remote version %s (%s): "
                    "--mirror-retention follow needs s3:DeleteObject; remote versions "
                    "stay until it is granted",
                    name,
                    exc.failure.detail,
                    extra={"event": "mirror-delete-refused"},
                )
            self._delete_refused = exc.failure.detail
            return False
        self._delete_refused = None
        return True
