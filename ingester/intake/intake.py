"""One drop, exactly once: read, judge, claim, seal, link; release; and recovery.

The steps and what a crash at each leaves are described in ``docs/design.md`` (its
numbering is used here). :meth:`Intake.take` runs steps 1-4 for one drop and returns
an :class:`Outcome`; it never reaches into the service loop's bookkeeping, which
applies the outcome once (:mod:`ingester.intake.groups`: counts, logs, per-drop
backoff, when to look again). :meth:`Intake.commit_group` runs steps 5-6 for the drops
claimed since; step 7 (the group's latest link and history fsync) is the group's
batch; then :meth:`Intake.release` runs step 8 for the drops it stored.
:mod:`ingester.intake.recovery` finishes the claims a crash or a failure left, as a
pure function of their names.

This module orders the steps and holds what they remember between them. What is done
to a claimed drop's own file (:mod:`.claims`), when a drop's own inode may become its
version (:mod:`.zero_copy`), a drop set aside in the quarantine (:mod:`.set_aside`) and
a drop that is a stored version under a second name (:mod:`.second_names`) each live in
a module of their own.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IngesterError, PayloadRejected, StorageError
from ..history import durable
from ..history.batch import Batch
from ..history.store import HistoryStore
from ..payload.gate import check_payload
from ..runtime.signals import StopFlag
from .arrivals import How
from .claims import (
    WRITTEN,
    claim_changed,
    claim_holds,
    links_reach,
    release_copy,
    seal_claim,
    unclaim,
)
from .outcomes import (
    Abandoned,
    Behind,
    Blocked,
    Deferred,
    Dropped,
    GroupFailure,
    Ignored,
    Outcome,
    Rejected,
    SecondName,
    Stored,
)
from .readiness import Folder, Gone, Readiness, Wait
from .second_names import remove_second_name
from .set_aside import SetAside
from .spool import Opened, Spool, open_entry
from .zero_copy import ZeroCopy

__all__ = ["Intake", "WaitsBehind"]

log = logging.getLogger("ingester.watcher")


def _no_one_listens() -> None:
    """The default :attr:`Intake.alive`: no loop to keep informed."""


WaitsBehind = Callable[[str, int], float | None]
"""Asked of a complete, valid drop (its name, its mtime in ns) before its claim: when to
look at it again if an older drop must be stored first, else None."""


def _waits_for_none(_name: str, _mtime_ns: int) -> float | None:
    """The default of :meth:`Intake.take`: no drop waits for another."""
    return None


@dataclass
class _Claimed:
    """A drop of the current group: claimed, its bytes not durable yet (step 5 waits).

    ``staged`` is its copy in the history; ``fd`` (zero-copy) its own inode, open.
    """

    stored: Stored
    claim: str
    path: str
    opened: Opened
    staged: durable.StagedFile | None = None
    fd: int | None = None

    def unsynced(self) -> int | None:
        """The descriptor step 5 fsyncs: the copy's, or the claimed inode's (None: none)."""
        if self.staged is not None:
            return self.staged.unsynced()
        return self.fd

    def synced(self, error: OSError | None) -> None:
        """Step 5 done (the bytes on disk, and the inode's mode), or failed: StorageError."""
        if self.staged is not None:
            self.staged.synced(error)
            return
        fd, self.fd = self.fd, None
        if fd is None:
            return
        os.close(fd)
        if error is not None:
            raise StorageError("seal", self.claim, error) from error

    def close(self) -> None:
        """Let go of the copy and the descriptor (after a failure)."""
        if self.staged is not None:
            self.staged.discard()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _DropWaits(IngesterError):
    """Inside :meth:`Intake._claim`: this drop alone cannot be claimed."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class Intake:
    """The drop path, with what it must remember between a drop's steps.

    ``settle`` (seconds) is how long a drop found changed waits before another look.
    Store failures of the history raise :class:`StorageError`; the loop backs off.
    ``alive`` is called from inside a step that may last long (a drop copied into a
    quarantine on another filesystem) each time it has put another piece on disk: the
    loop's liveness (its watchdog pings) follows the progress of such a step. ``stop`` is
    the loop's stop flag: once it is set, such a copy is given up at its next piece
    (:class:`Abandoned`), so that a stop never waits for the rest of it. Both are handed
    to the set-aside path (:class:`~ingester.intake.set_aside.SetAside`) as the intake is
    made.
    """

    store: HistoryStore
    spool: Spool
    max_bytes: int
    readiness: Readiness
    settle: float
    alive: Callable[[], None] = _no_one_listens
    stop: StopFlag = field(default_factory=StopFlag)
    euid: int = field(default_factory=os.geteuid)
    umask: int = field(default_factory=durable.current_umask)
    same_fs: bool = False
    history_id: tuple[int, int] = (0, 0)
    copied: bool = False  # drops of another user seen: keep a spare temp file ready
    _copied_claims: dict[str, tuple[int, int]] = field(default_factory=dict)
    _group: list[_Claimed] = field(default_factory=list)
    _group_copies: int = 0  # how many of _group are copies
    _spool: str = ""  # the spool and .claimed/ as strings: the drop path joins names to them
    _claimed: str = ""

    def __post_init__(self) -> None:
        self._set_aside = SetAside(self.spool, self.alive, self.stop)
        self._zero_copy = ZeroCopy(self.store)
        self._spool = os.fspath(self.spool.dir)
        self._claimed = os.fspath(self.spool.claimed_dir)

    # -- start ----------------------------------------------------------------------

    def start(self) -> None:
        """Make the spool's folders and check ``.claimed/`` (raises ``OSError``)."""
        self.spool.ensure_folders()
        history = os.stat(self.store.history_dir)
        self.history_id = (history.st_dev, history.st_ino)
        claimed = self.spool.check_claimed(self.euid, self.history_id)
        self.same_fs = claimed[0] == history.st_dev and links_reach(
            self.spool.claimed_dir, self.store.history_dir
        )

    def check_claimed(self) -> None:
        """Every use of ``.claimed/`` checks it is still our own real folder.

        One removed by hand is made again (as at start); anything else in its place
        raises :class:`StorageError` naming the folder and what is wrong.
        """
        try:
            self.spool.check_claimed(self.euid, self.history_id)
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise
            self.spool.ensure_folders()
            self.spool.check_claimed(self.euid, self.history_id)

    def look_at_history(self) -> int | None:
        """Look now at what a new file made in the history gets, letting go of the spare
        temp file where that changed (:meth:`ZeroCopy.look_at_history
        <ingester.intake.zero_copy.ZeroCopy.look_at_history>`): its group where that is
        all, else None. Called before every version written outside a group's takes
        (the recovery's) too.
        """
        return self._zero_copy.look_at_history()

    # -- steps 1-6 ------------------------------------------------------------------

    def take(
        self, name: str, how: How, batch: Batch, behind: WaitsBehind = _waits_for_none
    ) -> Outcome:
        """Steps 1-4 for ``<spool>/name`` in the current group: what became of it.

        A valid drop is claimed and its bytes staged (a copy) or made read-only (its own
        inode), not yet durable: it is returned as a pending :class:`Stored`, and
        :meth:`commit_group` makes the whole group durable and links its versions.
        ``behind(name, mtime_ns)`` is asked of a drop found complete and valid, before
        its claim: the monotonic time to look at it again when an older drop must be
        stored first (it is then left in the spool: :class:`Behind`), else None.
        """
        path = os.path.join(self._spool, name)
        ready = self.readiness.check(path, how)
        if isinstance(ready, Gone):
            return self._done(Dropped(name))
        if isinstance(ready, Folder):
            return _folder(name, self.spool.dir)
        if isinstance(ready, Wait):
            return Deferred(name, ready.until, settling=self.readiness.settling(name))
        started = time.perf_counter()
        opened = self.open_and_judge(path, name, may_be_open=ready.may_be_open)
        if not isinstance(opened, Opened):
            return opened
        # Until it is taken (or set aside), a later look at it trusts the event that
        # said it complete only for the file judged now: it may wait behind an older
        # drop, or out a failure, while its writer makes something else of the name.
        self.readiness.judged(name, (opened.ino, opened.size, opened.mtime_ns))
        until = behind(name, opened.mtime_ns)
        if until is not None:
            return Behind(name, until)
        if opened.nlink > 1:
            second = self._second_name(path, name, opened)
            if second is not None:
                return second
        # 3. stage. Zero-copy where the rule allows it (:mod:`.zero_copy`): its own
        # inode becomes the version (as a rename would), made read-only and fsynced.
        # Otherwise (another user's file, other filesystem, another group or ACL) the
        # bytes are copied, so no one else can ever write to a version.
        zero_copy = self._zero_copy.allows(opened, same_fs=self.same_fs, euid=self.euid)
        if not zero_copy:
            self.copied = True
        staged = None if zero_copy else batch.stage(opened.data)
        try:
            claimed = self._claim(path, name, opened, staged, batch, started)
        except _DropWaits as exc:
            if staged is not None:
                staged.discard()
            return Blocked(name, "claim", exc.error)
        except BaseException:
            if staged is not None:
                staged.discard()
            raise
        if not isinstance(claimed, _Claimed) and staged is not None:
            staged.discard()  # the group holds the copies of the drops it claimed
        if isinstance(claimed, Deferred):
            self.readiness.forget(name)
            return claimed
        self._done(Dropped(name))
        if claimed is None:
            return Dropped(name)
        return claimed.stored

    def open_and_judge(
        self,
        path: durable.StrPath,
        name: str,
        *,
        may_be_open: os.stat_result | None = None,
        claimed: bool = False,
    ) -> Opened | Outcome:
        """Steps 1 and 2: read ``path`` (never following a link) and judge its bytes.

        Returns what was read when it is a valid payload; otherwise what became of it:
        set aside in quarantine (invalid, not a regular file, or a mode we cannot read),
        gone, a folder, (``may_be_open``: judged complete by stability alone) left to
        its writer a while longer, or left where it is by a stop asked amid its copy
        into the quarantine (:class:`Abandoned`). A ``claimed`` file is our own: one we
        cannot read is a storage failure to retry, never a reason to set it aside.
        """
        # 1. read
        try:
            opened = open_entry(path, self.max_bytes)
        except StorageError as exc:
            if claimed or exc.errno not in (errno.EACCES, errno.EPERM):
                raise
            # The writer gave it a mode we cannot read: a problem of this drop alone,
            # so set it aside instead of holding up every drop behind it.
            return self._reject(path, name, f"cannot read: {exc.strerror}")
        if opened is None:
            return Dropped(name)
        if not isinstance(opened, Opened):
            if opened.is_dir and not claimed:
                return _folder(name, self.spool.dir)
            return self._reject(path, name, f"not a regular file: a {opened.kind}, never opened")
        # 2. judge
        try:
            if opened.size > self.max_bytes:
                raise PayloadRejected(
                    f"drop is {opened.size} bytes, over the limit of {self.max_bytes}"
                )
            check_payload(opened.data, max_bytes=self.max_bytes)
        except PayloadRejected as exc:
            if may_be_open is not None:
                until = self.readiness.still_being_written(name, may_be_open)
                if until is not None:
                    return Deferred(name, until)
            return self._reject(
                path, name, exc.reason, exc.errors, exc.kind, expect=(opened.dev, opened.ino)
            )
        return opened

    def _claim(
        self,
        path: str,
        name: str,
        opened: Opened,
        staged: durable.StagedFile | None,
        batch: Batch,
        started: float,
    ) -> _Claimed | Deferred | None:
        """Step 4 and the checks of step 5: None if the drop went away; Deferred if changed.

        What is claimed is what is stored: after the claim, its bytes are compared with
        the bytes judged (an inode number alone can name another file by then). If they
        differ, the claim goes back to the spool, to be judged again as it is now.
        Raises :class:`_DropWaits` when this drop alone cannot be claimed.
        """
        version = self.store.next_version_name()
        claim = os.path.join(self._claimed, version)
        self.check_claimed()
        if os.path.lexists(claim):
            # Only this process writes in .claimed/, so the check cannot race; a claim
            # of that name waits for recovery and must never be replaced.
            raise StorageError("claim", claim, FileExistsError(errno.EEXIST, "claim exists"))
        # 4. claim
        try:
            durable.rename_entry(path, claim)
        except FileNotFoundError as exc:
            # Nothing is claimed under the name: free for later drops (a drop that
            # waits would otherwise keep one more name from them on every try).
            self.store.give_back(version)
            if not os.path.lexists(path):
                return None  # taken or removed meanwhile
            # .claimed/ is gone (removed by hand?): make it again, and retry the drop.
            self.spool.ensure_folders()
            raise StorageError("claim", path, exc) from exc
        except OSError as exc:
            self.store.give_back(version)
            # The drop itself cannot be moved (made immutable, say): it waits alone.
            raise _DropWaits(StorageError("claim", path, exc)) from exc
        item = _Claimed(
            Stored(name, version, len(opened.data), started), claim, path, opened, staged
        )
        # 5. seal, first half: the claimed inode made read-only, or the copy checked
        # against the claim. The fsyncs wait for the rest of the group.
        try:
            if staged is None:
                sealed = seal_claim(claim, opened, self.umask)
                if isinstance(sealed, int):
                    item.fd = sealed
                else:
                    with contextlib.suppress(OSError):
                        durable.set_mode(claim, stat.S_IMODE(opened.mode))
                    if sealed != "copy":
                        return claim_changed(claim, path, name, self.settle)
                    # Someone may still hold it open for writing, or leases are not
                    # offered here: store a copy of the bytes judged (the claim's own,
                    # compared below), never the inode itself.
                    item.staged = staged = batch.stage(opened.data)
                    self.copied = True
            if staged is not None:
                seen = claim_holds(claim, opened.data)
                if seen is None:
                    staged.discard()
                    return claim_changed(claim, path, name, self.settle)
                self._copied_claims[version] = seen
                if not self._group_copies:
                    # The group's first copy: alone, its write is under way while the
                    # loop looks for more. The rest start theirs in the group's fsyncs,
                    # all at once; a hint each would cost the loop more than it saves.
                    staged.start_writeback()
        except StorageError:
            self._undo(item)
            raise
        self._group.append(item)
        self._group_copies += staged is not None
        return item

    # -- steps 5 and 6, once per group -------------------------------------------------

    def commit_group(self, batch: Batch) -> tuple[list[Stored], GroupFailure | None]:
        """Steps 5 and 6 for every drop claimed since the last call.

        Each drop's bytes (its copy, or its own inode) are fsynced, and ``.claimed/``
        where the group holds a copy, all at once: every copy's claim is durable before
        any of the group's versions is named.
        Then each version is linked into ``batch`` (the commit point; its name is made
        durable when the batch ends). Returns the drops committed, and the error that
        stopped the group, if one did: the drop it hit and those after it are put back
        in the spool (or, failing that, left claimed for recovery). Never raises
        :class:`StorageError`.
        """
        group, self._group = self._group, []
        self._group_copies = 0
        self._zero_copy.next_group()
        error: GroupFailure | None = None
        synced: list[_Claimed] = []
        if not group:
            return [], None
        # 5. seal: every drop's bytes fsynced, and .claimed/ where the group holds a copy
        # (each its own fsync, each error its own file's); all done before the first link.
        folder: int | None = None
        if any(item.staged is not None for item in group):
            # A copy's claim is the drop's own inode and the version another: were the
            # claim's rename lost to a power cut while the version's name survived, the
            # drop would be back in the spool with one link, like a new drop, and stored
            # twice. Made durable first, the claim keeps it a second name of a stored
            # version (intake/second_names.py). A zero-copy claim needs no fsync: its
            # version is the drop's own inode, so a drop found back in the spool beside
            # it is always such a second name, and on a filesystem with a journal the
            # history's fsync commits the claim's earlier rename with the version's name.
            try:
                folder = durable.open_dir(self.spool.claimed_dir)
            except StorageError as exc:
                return [], GroupFailure(None, exc, self._undo_all(group))
        fds = [item.unsynced() for item in group]
        try:
            results = durable.fsync_each(
                [*(fd for fd in fds if fd is not None), *([] if folder is None else [folder])]
            )
        finally:
            if folder is not None:
                os.close(folder)
        claimed_error = results.pop() if folder is not None else None
        each = iter(results)
        for n, item in enumerate(group):
            try:
                item.synced(next(each) if fds[n] is not None else None)
            except StorageError as exc:
                # A failed write of this drop: it and the drops after it go back to the
                # spool (to be taken again in their order); those before it go on.
                error = GroupFailure(item.stored.drop, exc, self._undo_all(group[n:]))
                break
            synced.append(item)
        if claimed_error is not None and synced:
            failed = StorageError("fsync folder", self.spool.claimed_dir, claimed_error)
            returned = self._undo_all(synced) + (error.returned if error else [])
            error = GroupFailure(None, failed, returned)
            synced = []
        committed: list[Stored] = []
        for n, item in enumerate(synced):
            # 6. link: the commit point (durable with the group's history fsync)
            try:
                if item.staged is None:
                    batch.link(item.claim, item.stored.version)
                else:
                    batch.commit(item.staged, item.stored.version)
            except StorageError as exc:
                if item.staged is None and exc.errno == errno.EXDEV:
                    # One filesystem (one st_dev) seen through two mounts (a container's
                    # bind mounts): no link crosses them. Copies from now on; this drop
                    # and those after it are taken again as copies.
                    self.same_fs = False
                    exc = StorageError(
                        "link",
                        self.store.history_dir,
                        OSError(
                            errno.EXDEV,
                            "the spool and the history are mounted apart (no link crosses "
                            "two mounts): storing copies from now on",
                        ),
                    )
                error = GroupFailure(item.stored.drop, exc, self._undo_all(synced[n:]))
                break
            committed.append(item.stored)
        return committed, error

    def _undo_all(self, items: list[_Claimed]) -> list[str]:
        for item in items:
            self._undo(item)
        return [item.stored.drop for item in items]

    def _undo(self, item: _Claimed) -> None:
        """A claimed drop that will not be committed now: back to the spool, as it was.

        If its version's name could not be taken back, the claim stays, and recovery
        (after the backoff) makes sure the drop is stored exactly once.
        """
        version = item.stored.version
        self._copied_claims.pop(version, None)
        item.close()
        if self.store.has_version(version):
            return
        if item.staged is None:
            with contextlib.suppress(OSError):
                durable.set_mode(item.claim, stat.S_IMODE(item.opened.mode))
        unclaim(item.claim, item.path)
        opened = item.opened
        self.readiness.judged(item.stored.drop, (opened.ino, opened.size, opened.mtime_ns))

    # -- step 8 ---------------------------------------------------------------------

    def release(self, items: list[Stored]) -> list[StorageError | None]:
        """Step 8, once the versions' names are durable: remove the drops' claims.

        Returns each item's error, in order (None: released), for a claim that could
        not be removed (recovery removes it later: its version exists). A claim written
        to after its copy was stored goes back to the spool as a new drop instead (or
        stays for recovery). The claims of copies are released at once (each checked,
        then removed, on durable's worker threads): removing one frees its inode and
        blocks, most of a copied drop's release.
        """
        errors: dict[str, StorageError] = {}
        copies: list[Stored] = []
        jobs: list[tuple[str, tuple[int, int]]] = []
        for item in items:
            claim = os.path.join(self._claimed, item.version)
            seen = self._copied_claims.pop(item.version, None)
            if seen is not None:
                copies.append(item)
                jobs.append((claim, seen))
                continue
            # The version is this very inode: removing the claim removes a name only,
            # and the folder's lock would make such removals take turns anyway.
            try:
                durable.remove_file(claim)
            except StorageError as exc:
                errors[item.version] = exc
        if jobs:
            # A copy's claim is the drop's last name: removed, it frees the drop. The
            # spool's side of the claim's rename must be on disk first, or a power cut
            # on a disk without a journal could keep the drop's spool name and lose the
            # claim's: the drop back with one link, like a new drop, stored twice. Once
            # per group, after the versions are visible; the spool folder is fsynced
            # nowhere on a drop's path.
            try:
                durable.fsync_dir(self._spool)
            except StorageError as exc:
                # The claims stay: recovery removes them once the folder is written.
                for item in copies:
                    errors[item.version] = exc
                copies, jobs = [], []
        released = durable.each_at_once(release_copy, jobs)
        for item, (claim, _), result in zip(copies, jobs, released, strict=True):
            if result == WRITTEN:
                # A writer still holding the file added to it after its copy was stored:
                # those bytes are not stored, so the claim was kept.
                log.warning("%s was written to after it was stored; taking it again", item.drop)
                unclaim(claim, os.path.join(self._spool, item.drop))
            elif isinstance(result, StorageError):
                errors[item.version] = result
        return [errors.get(item.version) for item in items]

    def withdrawn(self, item: Stored) -> None:
        """The group's fsync failed: ``item``'s version was taken back; its claim stays."""
        self._copied_claims.pop(item.version, None)

    # -- a drop set aside, a second name --------------------------------------------

    def _reject(
        self,
        path: durable.StrPath,
        name: str,
        reason: str,
        errors: list[dict[str, Any]] | None = None,
        kind: str | None = None,
        *,
        expect: tuple[int, int] | None = None,
    ) -> Rejected | Blocked | Abandoned:
        """Set ``path`` aside (see :meth:`SetAside.drop`); once set aside, it is done."""
        outcome = self._set_aside.drop(path, name, reason, errors, kind, expect=expect)
        if isinstance(outcome, Rejected):
            self._done(Dropped(name))
        return outcome

    def _second_name(self, path: str, name: str, opened: Opened) -> Outcome | None:
        """A drop that is a version's own file: its spool name removed (None: it is not;
        a claim's file waits; see :func:`remove_second_name`). Once removed, or gone, it
        is done."""
        outcome = remove_second_name(
            path,
            name,
            opened,
            history_dir=self.store.history_dir,
            claimed_dir=self._claimed,
            check_claimed=self.check_claimed,
            settle=self.settle,
        )
        if isinstance(outcome, Dropped | SecondName):
            self._done(Dropped(name))
        return outcome

    def _done(self, outcome: Dropped) -> Dropped:
        self.readiness.forget(outcome.drop)
        return outcome


def _folder(name: str, spool_dir: Path) -> Ignored:
    return Ignored(name, name, f"ignoring {spool_dir / name}: a folder, not a drop")
