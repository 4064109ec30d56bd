"""``ingester restore``: rebuild a working history from its copy in an object store.

Every version under ``s3://BUCKET/PREFIX/`` is read through the object-store backing
(:class:`~ingester.mirror.s3_history.S3History`), checked, and committed through the local
backing's writer (:class:`~ingester.history.local.LocalWriter`: temp file, fsync, link,
fsync the folder) under its own name, byte for byte and read-only. The writer's
``publish`` then derives the metadata from the files (carrying the remote metadata's
totals when the history had none) and points the latest link at the latest version, so
the result passes ``ingester verify``.

An object named as a version whose bytes the payload's gate refuses (not JSON, not a
payload: placed there by something else) is not restored, and is listed in
:attr:`RestoreResult.invalid`.

A version already in the target history is left alone when its bytes are the same (a
restore can be run again after an interruption and only fetches what is missing); one
with other bytes is reported and never overwritten. No version is ever deleted; the
temp files an earlier run killed outright left in the history (``.tmp-*``: no version
yet) are removed first, under the history lock, and listed in
:attr:`RestoreResult.swept`.

A stop (``stop``, set by a signal handler) is honoured between two versions, never
inside one: the version in hand is written whole (its temp file named, linked and
removed), no further one is begun, and :class:`RestoreStopped` says what is left.

How a download is checked is the backing's one checksum rule
(:func:`ingester.mirror.s3_history.same_bytes`): the listing's size, then the SHA-256 the
mirror stored with the object (a mismatch stops the restore), else the ETag only when
it *equals* the MD5 of the bytes. An object with neither (an SSE-KMS bucket mirrored
before the mirror stored checksums) is restored on its size alone and counted in
:attr:`RestoreResult.unverified`, so that the caller can say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import (
    MetadataMissing,
    ObjectStoreError,
    PayloadRejected,
    RestoreError,
    StorageError,
    VersionExists,
    VersionNotFound,
    VersionTooLarge,
)
from ..history.local import LocalWriter
from ..history.metadata import MetadataCorrupt, StorageMetadata
from ..history.names import is_version_name
from ..payload.gate import MAX_DROP_BYTES
from ..payload.model import judge_payload
from ..runtime.signals import StopFlag
from ..threads import in_order, workers_or_inline
from .objectstore import MirrorTarget, RemoteObject, S3Client
from .s3_history import S3History

if TYPE_CHECKING:
    from ..history.store import HistoryStore

__all__ = [
    "NothingRestored",
    "RestoreError",
    "RestoreResult",
    "RestoreStopped",
    "restore_history",
]


class NothingRestored(RestoreError):
    """No version is in the history after the restore: every object listed as one was no
    valid payload (``invalid``: each name and why, for the caller to say) or was deleted
    before its download. Nothing was written."""

    def __init__(self, message: str, invalid: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.invalid = invalid


class RestoreStopped(RestoreError):
    """A stop ended the restore between two versions: each version it wrote is whole,
    no temp file is left, and ``left`` versions were not restored (run it again)."""

    def __init__(self, left: list[str]) -> None:
        super().__init__(
            f"stopped: {len(left)} version(s) not restored, from {left[0]} on; "
            "run it again to finish"
        )
        self.left = left


@dataclass
class RestoreResult:
    """What a restore did."""

    restored: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    bytes: int = 0
    metadata: bool = False
    latest: str | None = None
    unverified: list[str] = field(default_factory=list)
    """Versions checked by size alone: stored without a checksum, ETag not their MD5."""
    invalid: list[tuple[str, str]] = field(default_factory=list)
    """Objects named as versions whose bytes the payload's gate refuses, with its reason:
    not restored (the history would not pass ``verify``, nor its latest link name one)."""
    gone: list[str] = field(default_factory=list)
    """Versions listed, then deleted from the object store before their download (a
    mirror's ``follow`` retention running meanwhile, say): no longer in the mirror, so
    not restored, and no fault of the restore, while others were there to restore."""
    swept: list[str] = field(default_factory=list)
    """Temp files found in the history (or beside the latest link) and removed before
    anything was written: what a run killed outright (``kill -9``, a crash) left."""


def restore_history(
    client: S3Client,
    target: MirrorTarget,
    store: HistoryStore,
    *,
    concurrency: int = 8,
    max_bytes: int | None = None,
    stop: StopFlag | None = None,
) -> RestoreResult:
    """Restore every remote version into ``store`` (call with the history lock held).

    ``max_bytes``: the largest payload the history takes (``--max-bytes``); a larger
    object is not restored, as one that is no payload is not (``verify`` would refuse it).
    ``stop``: checked between versions (set it from a signal handler); once set, no
    further version is begun.

    Raises :class:`RestoreError` (one line) when the object store cannot be read or a
    download is damaged, :class:`RestoreStopped` when ``stop`` ended it with versions
    left, :class:`NothingRestored` when no version is in the history
    after all (nothing written), and :class:`~ingester.history.durable.StorageError`
    when the history cannot be written. What was written before an error stays: run it
    again to finish.
    """
    remote = S3History(client, target)
    try:
        listing = remote.refresh()
    except ObjectStoreError as exc:
        raise RestoreError(f"cannot list {target}: {exc.detail}") from None
    versions = sorted(n for n in listing if is_version_name(n))
    if not versions:
        raise RestoreError(f"no versions at {target}")
    try:
        store.history_dir.mkdir(parents=True, exist_ok=True)
        store.latest_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError("create folder", store.history_dir, exc) from exc
    had_metadata = store.metadata_path.exists()
    writer = LocalWriter(store)
    result = RestoreResult()
    # With the history lock held no writer is under way: any temp file is a leftover of
    # one killed outright (this restore's last run, say), which verify would flag.
    result.swept = store.remove_stale_temps()
    have = {entry.name for entry in writer.reader.list_versions()}
    # An object larger than the history takes is refused from its listed size, never
    # downloaded: restored it could not be (the gate refuses it), and cut short it
    # would be another version under its name.
    limit = min(max_bytes or MAX_DROP_BYTES, MAX_DROP_BYTES)
    wanted = []
    for name in versions:
        obj = listing[name]
        if name in have:
            continue
        if obj.size > limit:
            result.invalid.append((name, f"drop is over the limit of {limit} bytes"))
        else:
            wanted.append(obj)
    present = [listing[name] for name in versions if name in have]

    def compare(obj: RemoteObject) -> bool | None:
        try:
            local = writer.reader.read_version(obj.name)
        except VersionTooLarge as exc:
            # Ours is larger than any drop: other bytes, unless the object is as large
            # (then neither can be read to tell, and ours is left as it is).
            return None if exc.size == obj.size else False
        try:
            verdict = remote.compare(obj, local)
            if verdict is False and remote.head(obj.name) is None:
                # Not other bytes: the object is gone since the listing (the mirror's
                # retention). Ours is then simply present, and stays as it is.
                return True
            return verdict
        except ObjectStoreError as exc:
            raise RestoreError(f"cannot read {target.key(obj.name)}: {exc.detail}") from None

    def fetch(obj: RemoteObject) -> tuple[bytes, bool] | None:
        """``obj``'s bytes and whether they were proved; ``None``: gone since the listing."""
        try:
            return remote.fetch(obj)
        except VersionNotFound:
            return None
        except VersionTooLarge as exc:  # larger than it was listed: not the object listed
            raise RestoreError(str(exc)) from None
        except ObjectStoreError as exc:
            if exc.kind == "damaged":
                raise RestoreError(exc.detail) from None
            raise RestoreError(f"cannot download {target.key(obj.name)}: {exc.detail}") from None

    def honour_stop(left: list[RemoteObject]) -> None:
        """Raise :class:`RestoreStopped` when a stop was asked and ``left`` remain."""
        if stop is not None and stop.is_set() and left:
            raise RestoreStopped([obj.name for obj in left])

    # As many download threads as can start; none: one download after the other.
    pool, threads = workers_or_inline(max(1, concurrency), "ingester-restore")
    try:
        for obj, verdict in zip(present, in_order(pool, compare, present, threads), strict=True):
            honour_stop(wanted)
            if verdict is False:
                result.conflicts.append(obj.name)
                continue
            result.present.append(obj.name)
            if verdict is None:
                result.unverified.append(obj.name)
        # Downloads run a little ahead in parallel; writes stay in name order, one at a
        # time. A failed download stops the restore before more than a few others begin.
        fetched = in_order(pool, fetch, wanted, threads)
        for at, (obj, got) in enumerate(zip(wanted, fetched, strict=True)):
            # Between two versions: the one before is whole, this one not begun.
            honour_stop(wanted[at:])
            if got is None:
                result.gone.append(obj.name)
                continue
            data, checked = got
            try:
                judge_payload(data, max_bytes=max_bytes)
            except PayloadRejected as exc:
                result.invalid.append((obj.name, exc.reason))
                continue
            try:
                staged = writer.stage(data)
            except StorageError as exc:
                # Staged under a temp name of no meaning to the user (and gone by now):
                # the error names the version that could not be restored instead.
                action = exc.action.removesuffix(" a file in")
                raise StorageError(action, store.version_path(obj.name), exc.cause) from None
            try:
                writer.commit(staged, obj.name)
            except VersionExists:  # written by another since the listing: never replaced
                result.conflicts.append(obj.name)
                continue
            finally:
                staged.discard()  # once linked, a no-op; else no temp file is left
            result.restored.append(obj.name)
            result.bytes += len(data)
            if not checked:
                result.unverified.append(obj.name)
    finally:
        # A failure ends the restore: the downloads queued behind it never start.
        pool.shutdown(wait=True, cancel_futures=True)

    if result.gone and not (result.restored or result.present or result.invalid):
        # Not a history to point a latest link at: the prefix was emptied meanwhile.
        raise NothingRestored(
            f"no versions at {target}: the {len(result.gone)} listed were deleted before "
            "their download",
            [],
        )
    if result.invalid and not (result.restored or result.present or writer.reader.list_versions()):
        # Nor is one of no valid version: its metadata and latest link are not written.
        gone = f", {len(result.gone)} deleted before their download" if result.gone else ""
        raise NothingRestored(
            f"no valid version at {target}: of the {len(versions)} listed, "
            f"{len(result.invalid)} not a valid payload (each said above){gone}; nothing "
            "restored",
            result.invalid,
        )
    base: StorageMetadata | None = None
    if not had_metadata:
        try:
            base = remote.read_metadata()
        except (MetadataMissing, MetadataCorrupt):
            pass  # the totals are then what the files say
        except ObjectStoreError as exc:
            raise RestoreError(f"cannot download the metadata: {exc.detail}") from None
        if base is not None:
            base = _brought_back(base, len(writer.reader.list_versions()))
    # The metadata's counts and the latest link now follow the files on disk.
    writer.publish(base)
    result.metadata = base is not None
    store.initialize()
    result.latest = store.latest_version_name()
    return result


def _brought_back(base: StorageMetadata, on_hand: int) -> StorageMetadata:
    """``base`` (the bucket's metadata) for a restored history of ``on_hand`` versions.

    A bucket in keep mode still holds versions local retention deleted, and the restore
    brings them back: they are on hand again, so no longer counted deleted. Without
    this, the totals would count them twice (created >= deleted + on hand).
    """
    back = base.total_versions_deleted + on_hand - base.total_versions_created
    if back <= 0:
        return base
    deleted = max(0, base.total_versions_deleted - back)
    return base.model_copy(update={"total_versions_deleted": deleted})
