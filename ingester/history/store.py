"""The versioned history: version files, the latest link, ``_metadata.json``, retention.

The public operations are ``initialize``, ``save_version``, ``cleanup_old_versions``,
``get_storage_metadata`` and ``list_versions``, plus read queries; a group of versions
is made durable with one fsync by ``batch()`` (the watcher's way to write).

What is true, and what is derived:

* The **version files** are the truth. Each is written once through
  :mod:`ingester.history.durable` (temp, fsync, link, fsync folder), is read-only, and is never
  modified. Their names sort in ingestion order.
* The **latest link** and **metadata** are caches of that truth: cheap to rebuild from a
  scan, and rebuilt by :meth:`HistoryStore.initialize` whenever they disagree with it.
  The link's upkeep is :class:`~ingester.history.latest.LatestLink`'s; the metadata
  file's reading and replacing, :mod:`~ingester.history.metadata_file`'s.
  Only the two totals (created/deleted) cannot be derived; after a crash they are best
  effort and never decrease.
* The store keeps the sorted list of version names in memory, loaded by one scan, so a
  save and its cleanup cost the same with 20,000 versions as with 100.
* Retention's rule is :mod:`~ingester.history.retention`'s (pure); the hold on it and
  the deletions it makes, :mod:`~ingester.history.cleanup`'s.

A ``HistoryStore`` assumes it is the only writer of its history; the caller makes that
so with :class:`ingester.history.lock.HistoryLock`.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..clock import utc_now
from ..errors import CacheNotRefreshed, MetadataUnreadable, StorageError, unreadable
from . import durable
from .base import derive_metadata, latest_name
from .name_ledger import NameLedger
from .names import format_timestamp, is_version_name

if TYPE_CHECKING:
    from ..payload.model import ConsoleUsageDataSync
from .batch import Batch
from .cleanup import CleanupIncomplete as CleanupIncomplete
from .cleanup import CleanupNotCounted as CleanupNotCounted
from .cleanup import CleanupResult as CleanupResult
from .cleanup import RetentionHold as RetentionHold
from .cleanup import allowed_deletions, held_back, log_cleanup, remove_expired
from .latest import LATEST_TEMP_PREFIXES as LATEST_TEMP_PREFIXES
from .latest import LatestLink
from .metadata import StorageMetadata
from .metadata_file import (
    METADATA_NAME,
    carried_metadata,
    metadata_problem,
    with_larger_totals,
    write_metadata_file,
)
from .retention import RetentionPlan, RetentionPolicy, expired_prefix, future_suffix, plan_retention

__all__ = [
    "CacheNotRefreshed",
    "CleanupIncomplete",
    "CleanupNotCounted",
    "CleanupResult",
    "HistoryStore",
    "InitReport",
    "RetentionHold",
]

log = logging.getLogger("ingester.store")

LOCK_NAME = ".lock"
VERSION_MODE = 0o444


@dataclass
class InitReport:
    """What :meth:`HistoryStore.initialize` found and repaired.

    ``cache_errors`` lists every cache that could not be written; ``metadata_error`` and
    ``latest_error`` are the same errors by cache (``None`` where it was written).
    ``temp_errors``: the stale temp files that would not go (left, and logged).
    """

    removed_temps: list[str] = field(default_factory=list)
    temp_errors: list[StorageError] = field(default_factory=list)
    metadata_rebuilt: str | None = None
    metadata_created: bool = False
    latest_repaired: str | None = None
    cache_errors: list[StorageError] = field(default_factory=list)
    metadata_error: StorageError | None = None
    latest_error: StorageError | None = None


class HistoryStore:
    """The history folder and its latest link, and the operations on them.

    ``hold``: retention's hold (:data:`RetentionHold`); without one, retention deletes
    all the policy lets it. :meth:`ingester.settings.resolved.Settings.store` passes the
    mirror's, which reads its state file in the history when there is one.
    """

    def __init__(
        self,
        history_dir: Path,
        latest_path: Path,
        policy: RetentionPolicy | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        hold: RetentionHold | None = None,
    ) -> None:
        self.history_dir = Path(os.path.abspath(history_dir))
        self.hold = hold
        self._history = os.fspath(self.history_dir)
        self.latest_path = Path(os.path.abspath(latest_path))
        self.policy = policy or RetentionPolicy()
        self.clock = clock
        self._names: list[str] = []
        self._meta = StorageMetadata()
        self._loaded = False
        self._spare: durable.SpareFile | None = None
        self._ledger = NameLedger()
        self._latest = LatestLink(self.latest_path, self.history_dir, self.list_versions)

    # -- paths -------------------------------------------------------------------

    @property
    def metadata_path(self) -> Path:
        """``<history>/_metadata.json``."""
        return self.history_dir / METADATA_NAME

    @property
    def lock_path(self) -> Path:
        """``<history>/.lock``, the one-writer lock."""
        return self.history_dir / LOCK_NAME

    def version_path(self, name: str) -> Path:
        """Where the version ``name`` lives."""
        return self.history_dir / name

    def link_target(self, name: str) -> str:
        """The relative target of the latest link for version ``name``
        (:meth:`LatestLink.target <ingester.history.latest.LatestLink.target>`)."""
        return self._latest.target(name)

    # -- loading -----------------------------------------------------------------

    def scan(self) -> list[str]:
        """Re-read the version names from disk (sorted, oldest first); no writes."""
        try:
            with os.scandir(self.history_dir) as entries:
                names = [
                    e.name
                    for e in entries
                    if is_version_name(e.name) and e.is_file(follow_symlinks=False)
                ]
        except OSError as exc:
            raise StorageError("list", self.history_dir, exc) from exc
        names.sort()
        self._names = names
        self._loaded = True
        self._latest.forget_folder()
        return list(names)

    def read_metadata_file(self) -> tuple[StorageMetadata, str | None]:
        """The metadata as stored, and why it is unusable (``None`` when it is fine)."""
        try:
            return self.metadata_to_carry()
        except MetadataUnreadable as exc:
            return StorageMetadata(), unreadable(exc)

    def metadata_to_carry(self) -> tuple[StorageMetadata, str | None]:
        """:meth:`read_metadata_file` for a writer that carries the totals over: the
        defaults with ``"missing"`` or ``"corrupt"`` (rebuilt then from a scan).

        Raises :class:`MetadataUnreadable` when the file exists but cannot be read: its
        totals cannot be rebuilt, so nothing may replace it.
        """
        return carried_metadata(self.metadata_path)

    def load(self) -> None:
        """Scan the history and read the metadata, without writing anything."""
        self.scan()
        stored, _problem = self.read_metadata_file()
        self._meta = self._derive(stored)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    def initialize(self) -> InitReport:
        """Create the folders, sweep stale temp files, and repair metadata and latest link.

        Idempotent. Call it with the history lock held. A stale temp file that cannot be
        removed is logged and listed in ``temp_errors``. The metadata and the latest link
        are caches: a failure to write them is listed in ``cache_errors``, never raised
        (only a history that cannot be made or listed raises :class:`StorageError`, and
        a metadata file that cannot be read :class:`MetadataUnreadable`: its totals are
        more than a cache).
        """
        report = InitReport()
        try:
            self.history_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError("create folder", self.history_dir, exc) from exc
        try:
            self.latest_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            report.latest_error = StorageError("create folder", self.latest_path.parent, exc)
        # A temp file that will not go (immutable, another user's) is debris, not a
        # fault of the history: it must not stop every writer's start.
        report.removed_temps += durable.remove_stale_temps(
            self.history_dir, errors=report.temp_errors
        )
        for prefix in LATEST_TEMP_PREFIXES:
            with contextlib.suppress(StorageError):  # a cache's folder: never blocks a start
                report.removed_temps += durable.remove_stale_temps(
                    self.latest_path.parent, prefix, errors=report.temp_errors
                )
        if report.temp_errors:
            more = len(report.temp_errors) - 1
            log.warning(
                "a stale temp file is left as it is: %s%s",
                report.temp_errors[0],
                f" (and {more} more)" if more else "",
            )
        self.scan()
        stored, problem = self.metadata_to_carry()
        self._meta = self._derive(stored)
        problem = metadata_problem(stored, problem, self._meta)
        if problem is not None:
            # A new history's first metadata is no repair.
            if problem == "missing" and not self._names:
                report.metadata_created = True
            else:
                report.metadata_rebuilt = problem
            try:
                self._write_metadata()
            except StorageError as exc:
                report.metadata_error = exc
        if report.latest_error is None:  # else the link's folder is what is wrong
            try:
                latest_problem = self.latest_problem()
                if latest_problem is not None:
                    self._update_latest()
                    report.latest_repaired = latest_problem  # only once it really was
            except StorageError as exc:
                report.latest_error = exc
        report.cache_errors += [e for e in (report.metadata_error, report.latest_error) if e]
        return report

    def cache_problems(self) -> tuple[str | None, str | None]:
        """Why the metadata file and the latest link disagree with the versions in memory.

        ``(metadata problem, latest link problem)``, each ``None`` when fine; cheap
        (one small read, one ``readlink``), for a periodic check. No writes.
        """
        self._ensure_loaded()
        stored, meta_problem = self.read_metadata_file()
        meta_problem = metadata_problem(stored, meta_problem, self._derive(stored))
        try:
            latest_problem = self.latest_problem()
        except OSError as exc:
            latest_problem = unreadable(exc)
        return meta_problem, latest_problem

    def write_metadata(self, *, created_at_least: int = 0) -> None:
        """Rewrite ``_metadata.json`` from the versions in memory (atomically).

        ``created_at_least`` raises ``totalVersionsCreated`` to at least that many: how a
        version stored without :meth:`save_version` (adopt's kept snapshot) is counted.
        Raises :class:`StorageError`.
        """
        self._ensure_loaded()
        if created_at_least > self._meta.total_versions_created:
            self._meta = self._meta.model_copy(update={"total_versions_created": created_at_least})
        self._write_metadata()

    # -- derived facts -------------------------------------------------------------

    def _derive(self, base: StorageMetadata) -> StorageMetadata:
        """``base`` with every scan-derived key recomputed from the names in memory."""
        return derive_metadata(self._names, self.clock(), base)

    def latest_version_name(self, now: datetime | None = None) -> str | None:
        """The newest version that is not future-dated: what the latest link names."""
        return latest_name(self._names, now or self.clock())

    def latest_problem(self, names: Sequence[str] | None = None) -> str | None:
        """Why the latest link does not name the newest version, or ``None`` if it does.

        ``names``: the versions as a reader listed them after the store was loaded, the
        newest chosen from them (a reader's report then judges the link by the latest it
        shows, not by one its own listing found deleted); the store's scan by default.
        """
        self._ensure_loaded()
        newest = self.latest_version_name() if names is None else latest_name(names, self.clock())
        return self._latest.problem(newest)

    # -- the public operations ------------------------------------------------------

    def get_storage_metadata(self) -> StorageMetadata:
        """The current metadata (rebuilt from a scan when the file is missing or corrupt)."""
        self._ensure_loaded()
        return self._meta.model_copy()

    def list_versions(self, limit: int | None = None) -> list[Path]:
        """Version paths, newest first, at most ``limit`` of them (every one if ``None``).

        Raises :class:`ValueError` when ``limit`` is not a positive whole number.
        """
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            # A slice would read a zero or negative count as "all but so many".
            raise ValueError(f"limit must be a positive whole number or None, not {limit!r}")
        self._ensure_loaded()
        names = self._names[::-1] if limit is None else self._names[: -limit - 1 : -1]
        return [self.version_path(n) for n in names]

    def version_names(self) -> list[str]:
        """All version names, oldest first (a copy)."""
        self._ensure_loaded()
        return list(self._names)

    def next_version_name(self) -> str:
        """A fresh name that sorts above every non-future version and every non-future
        name handed out and not linked yet or taken back; never one of those names
        (:meth:`NameLedger.next_name <ingester.history.name_ledger.NameLedger.next_name>`)."""
        self._ensure_loaded()
        return self._ledger.next_name(self._names, self.clock())

    def reserve_names(self, names: Iterable[str], *, replace: bool = False) -> None:
        """Never hand out any of ``names``, and hand out none below those not dated more
        than a day ahead: claims found waiting on disk (a crash or a failure left them)
        that keep their names until they are stored. With ``replace``, ``names`` are
        every claim waiting now, and the names reserved before are released (their
        claims are gone), so the reserved names never outnumber the claims. Names that
        are not version names are ignored."""
        self._ensure_loaded()
        self._ledger.reserve(names, replace=replace, stored=self.has_version)

    def give_back(self, name: str) -> None:
        """``name``, handed out by :meth:`next_version_name`, was never used (its drop
        could not be claimed): it need not be kept from later names. A drop that waits
        asks for a name on every try, so names kept for nothing would pile up."""
        self._ledger.give_back(name)

    def write_version(self, name: str, data: bytes) -> Path:
        """Durably store ``data`` as version ``name``; the latest link and metadata wait.

        Once this returns the version is on disk for good. Call :meth:`publish` to
        re-point the latest link and rewrite the metadata (once per batch is enough).
        """
        staged = self._stage_version(data, sync=True, name=name)
        return self._commit_version(staged, name, sync=True)

    def has_version(self, name: str) -> bool:
        """Whether version ``name`` is on disk."""
        return os.path.lexists(os.path.join(self._history, name))

    @contextlib.contextmanager
    def batch(self, *, update_latest: bool = True) -> Iterator[Batch]:
        """Add versions as one group, made durable together by one fsync of the history.

        Inside the block, :meth:`Batch.stage` then :meth:`Batch.commit`, or
        :meth:`Batch.link`, add versions whose names are not durable yet. On leaving it
        (also when the block raised), if any were added: the latest link is re-pointed
        (unless ``update_latest`` is False; a failure is kept in ``Batch.latest_error``,
        never raised: the link is a cache), then the history is fsynced once. If that
        fsync fails, every name of the group is taken back (and never given again), the
        latest link re-pointed, and :class:`StorageError` raised. Setting
        ``Batch.keep_spare`` makes an empty temp file afterwards, for the next copy.
        """
        group = Batch(self)
        try:
            yield group
        finally:
            if group.names:
                group._finish(update_latest)

    def close(self) -> None:
        """Remove the store's unused spare temp file, if any (on shutdown)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                spare.discard()
            except StorageError as exc:
                log.error("%s (an empty temp file, swept on the next start)", exc)

    def remove_stale_temps(self) -> list[str]:
        """Remove temp files a failed step left in the history and the latest's folder.

        Call with the history lock held, between writes. Returns the names removed.
        Raises :class:`StorageError` when a folder cannot be listed, or, once every other
        one is removed, for the first temp file that would not go.
        """
        self.close()  # or the sweep would take the spare for a leftover
        errors: list[StorageError] = []
        removed = durable.remove_stale_temps(self.history_dir, errors=errors)
        for prefix in LATEST_TEMP_PREFIXES:
            removed += durable.remove_stale_temps(self.latest_path.parent, prefix, errors=errors)
        if errors:
            raise errors[0]
        return removed

    # -- one group of versions (see batch) -----------------------------------------

    def _stage_version(
        self, data: bytes, *, sync: bool = False, name: str | None = None
    ) -> durable.StagedFile:
        """The bytes in a temp file; ``name``, when already chosen, is what a failure names."""
        spare, self._spare = self._spare, None
        return durable.StagedFile(
            self.history_dir, data, VERSION_MODE, sync=sync, spare=spare, name=name, unnamed=True
        )

    def _prepare_spare(self) -> None:
        if self._spare is None:
            self._spare = durable.SpareFile(self.history_dir)

    def _counted(self, name: str) -> None:
        bisect.insort(self._names, name)
        self._ledger.linked(name)
        self._meta = self._meta.model_copy(
            update={"total_versions_created": self._meta.total_versions_created + 1}
        )

    def _commit_version(self, staged: durable.StagedFile, name: str, *, sync: bool = False) -> Path:
        self._ensure_loaded()
        path = staged.commit(name, sync_dir=sync)
        self._counted(name)
        return path

    def _withdraw_version(self, name: str) -> None:
        """Take back a version whose name could not be made durable (best effort).

        The name is never given again (its claim may still be waiting).
        """
        self._ledger.withdraw(name)
        with contextlib.suppress(OSError):
            durable.unlink_entry(self.version_path(name))
        index = bisect.bisect_left(self._names, name)
        if index < len(self._names) and self._names[index] == name:
            del self._names[index]
            self._meta = self._meta.model_copy(
                update={"total_versions_created": max(0, self._meta.total_versions_created - 1)}
            )

    def publish(self) -> None:
        """Re-point the latest link at the newest version and rewrite the metadata."""
        self.update_latest()
        self._write_metadata()

    def update_latest(self, *, sync: bool = True) -> None:
        """Re-point the latest link at the newest non-future version (atomically).

        With ``sync=False`` the caller fsyncs the link's folder.
        """
        self._ensure_loaded()
        self._update_latest(sync=sync)

    def save_version(self, data: bytes | ConsoleUsageDataSync) -> Path:
        """Store one payload as a new version, re-point the latest link, refresh the metadata.

        ``data`` is a drop's raw bytes (stored unchanged; validate them first with
        :func:`ingester.payload.model.judge_payload`) or a model (stored as its JSON).
        Returns the path of the new version. Retention is not applied: call
        :meth:`cleanup_old_versions` after it. Raises :class:`StorageError` when nothing
        was stored, and :class:`CacheNotRefreshed` (a subclass) when the version was
        stored but the latest link or the metadata could not be refreshed.
        """
        if not isinstance(data, bytes):
            data = data.model_dump_json(exclude_unset=True).encode()
        path = self.write_version(self.next_version_name(), data)
        try:
            self.publish()
        except StorageError as exc:
            raise CacheNotRefreshed(path, exc) from exc
        return path

    def plan_cleanup(self, now: datetime | None = None) -> RetentionPlan:
        """The retention decision for every version; changes nothing."""
        self._ensure_loaded()
        plan = plan_retention(self._names, now or self.clock(), self.policy)
        # The deletions a configured mirror has not caught up with are kept.
        allowed, _warning = self._deletable(len(plan.delete))
        return held_back(plan, allowed)

    def _deletable(self, expired: int) -> tuple[int, str | None]:
        return allowed_deletions(self.hold, self.history_dir, self._names, expired)

    def cleanup_old_versions(
        self, now: datetime | None = None, *, hold_deletions: bool = False
    ) -> CleanupResult:
        """Delete expired versions and refresh the metadata.

        Looks only at the expired versions (a prefix of the sorted names), so its cost
        does not grow with the history. Never deletes the newest or a future version.
        With ``hold_deletions`` nothing is deleted (the clock is not trusted) and only
        the metadata is refreshed. A cleanup that deleted something is logged at info,
        one that deleted nothing at debug (an idle watcher runs many).

        Raises :class:`CleanupIncomplete` (a :class:`StorageError`) when some expired
        versions could not be deleted, after every other one is deleted and the metadata
        is written; :class:`CleanupNotCounted` (one too) when versions were deleted but
        the metadata that counts them cannot be written; :class:`StorageError` when the
        metadata cannot be written after no deletion, or when the folder cannot be
        fsynced after the deletions (raised once they are counted in the metadata).
        """
        self._ensure_loaded()
        now = now or self.clock()
        count = expired_prefix(self._names, now, self.policy)
        # A configured mirror holds back what it has not uploaded yet (bounded).
        count, warning = (0, None) if hold_deletions else self._deletable(count)
        if warning is not None:
            log.warning("%s", warning)
        deleted, failures = remove_expired(self.history_dir, self._names, count)
        updates: dict[str, Any] = {
            "total_versions_deleted": self._meta.total_versions_deleted + len(deleted)
        }
        if not failures and not hold_deletions:
            updates["last_cleanup"] = format_timestamp(now)
        self._meta = self._meta.model_copy(update=updates)
        unsynced: StorageError | None = None
        if deleted:
            try:
                durable.fsync_dir(self.history_dir)
            except StorageError as exc:
                # The deletions are done all the same (every reader sees them): they
                # are counted before the error is raised, or no later run would count
                # them (a rebuild from the versions left cannot see what went).
                unsynced = exc
        result = CleanupResult(
            deleted=deleted,
            retained=len(self._names),
            future=future_suffix(self._names, now),
            at=now,
        )
        try:
            self._write_metadata()
        except StorageError as exc:
            if not deleted:
                raise
            raise CleanupNotCounted(result, exc) from exc
        if unsynced is not None:
            raise unsynced
        if failures:
            raise CleanupIncomplete(result, failures)
        log_cleanup(result)
        return result

    # -- caches --------------------------------------------------------------------

    def _update_latest(self, *, sync: bool = True) -> None:
        self._latest.update(self.latest_version_name(), sync=sync)

    def regular_latest(self) -> bytes | None:
        """The bytes of the latest path when it is a regular file (not a link), else
        ``None``. Raises :class:`StorageError` when it is one that cannot be read."""
        return self._latest.regular()

    def version_holding(self, data: bytes) -> str | None:
        """The newest version whose bytes are ``data``, or ``None`` (newest first: the
        usual hit). Raises :class:`StorageError` when a version cannot be read."""
        return self._latest.version_holding(data)

    def unkept_latest(self) -> bool:
        """Whether the latest path is a regular file holding a snapshot that no version
        holds (:meth:`LatestLink.unkept <ingester.history.latest.LatestLink.unkept>`):
        only ``adopt`` keeps it. Raises :class:`StorageError` when that cannot be told."""
        return self._latest.unkept()

    def _metadata_on_disk(self) -> StorageMetadata | None:
        """The metadata file's contents, or None when it is missing or corrupt (then it
        may be replaced). Raises :class:`MetadataUnreadable` when a file is there that
        cannot be read (another user's, a folder, a failing disk): it is left as it is,
        as at a start."""
        stored, problem = self.metadata_to_carry()
        return None if problem is not None else stored

    def _write_metadata(self) -> None:
        # A running writer reads before it replaces, as a start does: a file put there
        # since that it cannot read (root's, mode 0600) may be an operator's, and
        # replacing it would hide the permission problem that the next start stops on.
        on_disk = self._metadata_on_disk()
        base = self._meta if on_disk is None else with_larger_totals(self._meta, on_disk)
        self._meta = self._derive(base)
        write_metadata_file(self.history_dir, self._meta)
