"""Finishing what a crash or a failure left in ``.claimed/``: a pure function of names.

A claim's name is the version name it was given before it was claimed, so what is left
after a crash at any step is decided from names alone (``docs/design.md``, "Crashes"):

* a claim whose version exists with the same bytes: its version is adopted (its name
  made durable) and the claim removed, with any second name of the claimed drop back in
  the spool (a power cut can lose the spool's side of the claim's rename);
* a claim whose version name is taken by other bytes: stored anew under a new name;
* a claim whose drop is back in the spool as well (put back by a step that stopped
  before removing the claim): the spool's name taken out, and the claim stored as below;
* otherwise: the claimed bytes are judged and stored as their version.

A claim named ``rejecting.<name>`` is a drop on its way to the quarantine as ``<name>``:
finished first, by :meth:`Quarantine.finish_claim <.quarantine.Quarantine.finish_claim>`
(removed where ``rejected/`` holds it already, else put back in the spool to be judged
again), never stored.

Run on start with the history lock held, and in the maintenance rounds after a failure.
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

from ..errors import StorageError, os_cause
from ..history import durable
from ..history.batch import Batch
from ..history.names import is_version_name
from .done_claims import is_claim_name, stored_already
from .intake import Intake
from .outcomes import Dropped, Ignored, Outcome, Recovered, Rejected, Stored
from .quarantine import CLAIM_PREFIX, is_set_aside_claim
from .spool import Opened, Spool, is_drop_name

__all__ = ["ClaimRecovery", "ClaimsLeft", "take_back_claims"]

log = logging.getLogger("ingester.watcher")


_FRESH_NAME_TRIES = 100
"""How many fresh names setting a drop aside tries before it gives up for this round:
each one taken is a claim on disk the store did not know of."""


class ClaimRecovery:
    """The recovery of the claims left in ``intake``'s ``.claimed/``."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.store = intake.store
        self.spool = intake.spool
        # What finishing one claim finished besides (a new drop found where a second
        # name of it was), for recover() to report with it.
        self._more: list[Outcome] = []
        # Whether the spool may have changed since its last fsync: a claim that is its
        # drop's last name is removed only once it has not (see _remove_stored).
        self._spool_changed = True
        # A claim kept because the spool could not be fsynced: the rest go on, and
        # this is raised once they are done.
        self._kept: StorageError | None = None
        # The spool's drop names by inode number, from one listing per recovery (see
        # _spool_names_of); None until a claim first needs it.
        self._spool_inodes: dict[int, list[str]] | None = None

    def recover(self, finished: Callable[[Outcome], None]) -> None:
        """Finish every claim left by a crash or a failure (with the history lock held);
        ``finished`` hears what became of each, as it is finished.

        Raises :class:`StorageError` when a claim cannot be finished yet; those finished
        before it have been told already (each is stored, and its "ingested" line and
        count must not wait for the one that cannot be). A stored claim kept only
        because the spool could not be fsynced holds nothing up: the others are
        finished first (their second names in the spool set aside, so none is taken as
        a new drop meanwhile), then its error is raised.
        """
        self._spool_changed, self._kept, self._spool_inodes = True, None, None
        names = self.spool.claimed()
        if names:
            self.intake.check_claimed()
            for name in [n for n in names if is_set_aside_claim(n)]:
                names.remove(name)
                self._finish_set_aside(name, finished)
            names = self._one_name_each(names)
        # A fresh name drawn while these are finished (a drop set aside, a claim stored
        # anew) must be none of theirs: names run ahead of the clock after a burst or a
        # clock set back, so the store's next name can be a waiting one. Those of the
        # claims found last time and gone since are free again.
        self.store.reserve_names(names, replace=True)
        with self.store.batch(update_latest=False) as batch:
            for version in names:
                try:
                    outcome = self._recover_claim(version, batch)
                except BaseException:
                    self._tell_more(finished)  # a drop found and finished on the way
                    raise
                if outcome is not None:
                    finished(outcome)
                self._tell_more(finished)
        if self._kept is not None:
            raise self._kept

    def _finish_set_aside(self, name: str, finished: Callable[[Outcome], None]) -> None:
        """Finish a drop's way to the quarantine, cut short in ``.claimed/`` as ``name``
        (see :meth:`Quarantine.finish_claim <.quarantine.Quarantine.finish_claim>`):
        ``finished`` hears of one found set aside; one put back in the spool is said in
        the log, and judged again as it comes. Raises :class:`StorageError` when it
        cannot be finished yet."""
        done = self.spool.rejected.finish_claim(name, self.spool.dir, self._spool_names_of)
        self._spool_changed = True
        if isinstance(done, Rejected):
            finished(done)
        elif done is not None:
            log.warning(
                "%s was on its way to the quarantine when the watcher stopped: put back "
                "in the spool as %s, to be judged again",
                name.removeprefix(CLAIM_PREFIX),
                done,
            )

    def _tell_more(self, finished: Callable[[Outcome], None]) -> None:
        more, self._more = self._more, []
        for outcome in more:
            finished(outcome)

    def _one_name_each(self, names: list[str]) -> list[str]:
        """``names`` with every claim that is another claim's file under a second name
        removed. A crash while a second name of a claimed drop was being set aside
        (:meth:`_set_aside`) leaves one: finished as its own claim, the drop would be
        stored twice. The name kept is one whose version exists (the drop is stored as
        it), else the first: the fresh name sorts below the claim's when that was dated
        ahead of a clock set back since, and kept, it would store the drop once more.
        Raises :class:`StorageError` when one cannot be removed."""
        files: dict[tuple[int, int], list[str]] = {}
        kept = []
        for version in names:
            claim = self.spool.claimed_dir / version
            try:
                st = os.lstat(claim)
            except OSError:
                kept.append(version)  # gone, or said when it is finished
                continue
            if is_version_name(version) and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                files.setdefault((st.st_dev, st.st_ino), []).append(version)
            kept.append(version)
        for same in files.values():
            if len(same) < 2:
                continue
            first = next((v for v in same if self.store.has_version(v)), same[0])
            for version in same:
                if version == first:
                    continue
                durable.remove_file(self.spool.claimed_dir / version)
                kept.remove(version)
                log.info("%s was a second name of the claim %s; removed it", version, first)
        return kept

    def _recover_claim(self, version: str, batch: Batch) -> Outcome | None:
        claim = self.spool.claimed_dir / version
        if not is_version_name(version):
            return Ignored(
                version, claim.name, f"ignoring {claim}: not a name this watcher gives claims"
            )
        target = version
        if self.store.has_version(version):
            if stored_already(claim, self.store.version_path(version)):
                # The version's name durable before its claim goes; and it may be new to
                # this process too (its claim could not be removed at once).
                batch.adopt(version)
                for name in self._spool_names_of(claim):
                    # The claimed drop itself, back in the spool: its bytes are
                    # stored, so it must not be taken again. Its claim still holds
                    # them until this is done.
                    self._set_aside(name, claim, version, batch)
                self._remove_stored(claim, version)
                return Recovered(version)
            # Its name is taken by other bytes (or the claim was written to since its
            # copy was made): nothing claimed is deleted unless its bytes are stored, so
            # it is stored under a new name. The claim takes that name first (made
            # durable below, before its version): killed once the version is written,
            # a claim still under its old name would be stored once more.
            target = self.store.next_version_name()
            try:
                claim = self._rename_claim(claim, target)
            except StorageError:
                self.store.give_back(target)  # nothing holds it
                raise
        # A drop put back in the spool by a step that stopped before its claim was
        # removed (a crash, a failed fsync) is still the claim's file there: taken out,
        # so that the claim alone holds it and it is stored once, from here.
        self._take_back(claim, version, batch)
        started = time.perf_counter()
        opened = self.intake.open_and_judge(claim, version, claimed=True)
        if isinstance(opened, Dropped):
            return None
        if not isinstance(opened, Opened):
            return opened
        # A claim may not be on disk yet: a process killed before its group's fsyncs
        # left it (a zero-copy group's claims are never fsynced), or this recovery made
        # it (a second name taken as a claim). Stored as a copy, it must be durable
        # before its version: lost to a power cut, it would leave the drop back in the
        # spool with one link, like a new drop. Only a claim stored so needs it.
        durable.fsync_dir(self.spool.claimed_dir)
        # Written from the spare temp file made ahead, if any: let go first where the
        # history's default ACL (or group) changed since, as before a group's copies.
        self.intake.look_at_history()
        self.store.write_version(target, opened.data)
        self._remove_stored(claim, target)
        return Stored(version, target, len(opened.data), started, pending=False)

    def _remove_stored(self, claim: Path, stored_as: str) -> None:
        """Remove ``claim``, its bytes stored as version ``stored_as``. Where it is the
        drop's last name (a copy's claim), the spool's side of its rename is made durable
        first (see :meth:`Intake.release <ingester.intake.intake.Intake.release>`); if
        that fails the claim is kept for a later round, under its version's name (which
        that round then finds stored), and the error raised at the end of
        :meth:`recover`. Raises :class:`StorageError` when it cannot be removed."""
        try:
            last = os.lstat(claim).st_nlink == 1
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError("stat claim", claim, exc) from exc
        if last and self._spool_changed:
            try:
                durable.fsync_dir(self.spool.dir)
            except StorageError as exc:
                # Kept under its version's name, which the next round finds stored.
                self._kept = self._kept or exc
                return
            self._spool_changed = False
        durable.remove_file(claim)

    def _rename_claim(self, claim: Path, name: str) -> Path:
        """``claim`` renamed to ``name`` in ``.claimed/`` (not durable yet); its path.

        Never onto a waiting claim (only this process writes there, so the check cannot
        race), and by one rename: a link then an unlink, cut by a crash, would leave two
        names of the claim, each stored. Raises :class:`StorageError` when it cannot be
        renamed; the claim then waits under its own name for the next round.
        """
        renamed = self.spool.claimed_dir / name
        try:
            if os.path.lexists(renamed):
                raise FileExistsError(errno.EEXIST, "a claim waits there")
            durable.rename_entry(claim, renamed)
        except OSError as exc:
            raise StorageError("rename claim", claim, exc) from exc
        return renamed

    def _take_back(self, claim: Path, version: str, batch: Batch) -> None:
        """Take each spool name of ``claim``'s file out of the spool (:meth:`_set_aside`):
        a drop put back there by a step that stopped before removing its claim (see
        :func:`.claims.unclaim`), which the claim, stored from here, then holds alone.

        Storing it from the spool instead would need the claim removed first, and a
        writer renaming a new drop onto that name in between would leave the put-back
        drop with no name at all. Raises :class:`StorageError` when the spool or the
        claim cannot be looked at, or a name cannot be taken: the claim then waits for
        the next round (and the drop in the spool with it, see
        :func:`.second_names.remove_second_name`).
        """
        for name in self._spool_names_of(claim):
            self._set_aside(name, claim, version, batch, stored=False)

    def _set_aside(
        self, name: str, claim: Path, version: str, batch: Batch, *, stored: bool = True
    ) -> None:
        """Remove the spool's ``name``, a second name of ``claim`` (stored already, or
        about to be, ``stored=False``).

        Never removed as a name: a writer may have renamed a new drop onto it since the
        spool was listed. It is taken as a claim of its own under a fresh name first,
        and removed only once it is seen to be the claim's file; anything else is a drop
        like any other, finished at once as its claim. A crash between leaves two names
        of one claimed file, which :meth:`_one_name_each` reduces to one.
        """
        for _ in range(_FRESH_NAME_TRIES):
            fresh = self.store.next_version_name()
            taken = self.spool.claimed_dir / fresh
            if os.path.lexists(taken):
                # Never onto a claim that waits: its drop would have no name left. Only
                # this process writes in .claimed/, so the check cannot race.
                self.store.reserve_names([fresh])
                continue
            try:
                # One rename, never a link then an unlink of the spool's name (where no
                # no-replace rename exists): a writer may rename a new drop onto that
                # name in between, and the unlink would remove it.
                durable.rename_entry(self.spool.dir / name, taken)
            except FileNotFoundError:
                self.store.give_back(fresh)
                return  # gone meanwhile
            except OSError as exc:
                self.store.give_back(fresh)
                raise StorageError("claim", self.spool.dir / name, exc) from exc
            break
        else:
            raise StorageError(
                "claim", self.spool.dir / name, OSError(errno.EEXIST, "every fresh name is taken")
            )
        self._spool_changed = True
        try:
            same = os.path.samestat(os.lstat(taken), os.lstat(claim))
        except OSError as exc:
            raise StorageError("stat claim", taken, exc) from exc
        if not same:
            outcome = self._recover_claim(fresh, batch)
            if outcome is not None:
                self._more.append(outcome)
            return
        durable.remove_file(taken)
        if not stored:
            log.info(
                "%s is the drop claimed as %s, put back in the spool by a step that "
                "stopped: taken from the spool, stored from its claim",
                name,
                version,
            )
            return
        log.warning(
            "%s is the drop claimed as %s, stored already (a power cut can leave it in "
            "the spool): removed it from the spool",
            name,
            version,
        )

    def _spool_names_of(self, claim: durable.StrPath) -> list[str]:
        """The spool's drop names that are the claimed inode itself (none: one link).

        The spool is listed once per recovery, however many claims ask (a backlog of
        100,000 drops listed once per claim made a restart take minutes), and each name
        of the inode number asked for is checked by ``lstat`` as it is asked: a name
        taken away since is no longer one. A name made meanwhile cannot be one either:
        only the watcher links a claimed file into the spool, and it is recovering.
        Raises :class:`StorageError` when the claim or the spool cannot be looked at.
        """
        try:
            st = os.lstat(claim)
        except OSError as exc:
            raise StorageError("stat claim", claim, exc) from exc
        if st.st_nlink < 2:
            return []
        if self._spool_inodes is None:
            self._spool_inodes = self._list_spool()
        names = []
        for name in self._spool_inodes.get(st.st_ino, []):
            try:
                found = os.lstat(self.spool.dir / name)
            except FileNotFoundError:
                continue  # taken away since the listing
            except OSError as exc:
                raise StorageError("stat", self.spool.dir / name, exc) from exc
            if stat.S_ISREG(found.st_mode) and os.path.samestat(found, st):
                names.append(name)
        return names

    def _list_spool(self) -> dict[int, list[str]]:
        """The spool's drop names by inode number (from the listing: no ``stat`` of
        each), each number's names in order. Raises :class:`StorageError` when the spool
        cannot be listed."""
        inodes: dict[int, list[str]] = {}
        try:
            with os.scandir(self.spool.dir) as entries:
                for entry in entries:
                    if is_drop_name(entry.name):
                        inodes.setdefault(entry.inode(), []).append(entry.name)
        except OSError as exc:
            raise StorageError("list", self.spool.dir, exc) from exc
        for names in inodes.values():
            names.sort()
        return inodes


@dataclass
class ClaimsLeft:
    """What :func:`take_back_claims` found in a spool folder moved away.

    ``where``: the folder's path now (``None`` when it cannot be told); ``moved``: the
    claims brought into the spool's ``.claimed/``, for recovery to finish; ``stuck``:
    those that could not be, with why (``problem`` when none could be, for one
    reason); ``waiting``: drops not taken yet, left there.
    """

    where: str | None
    moved: list[str] = field(default_factory=list)
    stuck: list[tuple[str, OSError]] = field(default_factory=list)
    problem: str | None = None
    waiting: int = 0


def _path_of(fd: int) -> str | None:
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return None if path.endswith(" (deleted)") else path


def take_back_claims(old_spool: int, spool: Spool) -> ClaimsLeft:
    """Bring the claims left in ``old_spool`` (a descriptor on the spool folder the
    watcher locked, moved away since; closed here) into ``spool``'s ``.claimed/``, and
    say in the log what was brought back and what stays there.

    They are drops the watcher took and has not stored yet (or stored, and not yet
    released): recovery finishes them there, each once. Each claim is linked into the
    new folder (never replacing a claim there), that folder is fsynced, and only then
    is the old name removed, so a crash at any point leaves each claim where recovery
    or a later start finds it. A folder removed rather than moved holds nothing.
    Never raises; the caller runs recovery when ``moved`` is not empty.
    """
    try:
        left = _take_back(old_spool, spool)
    finally:
        os.close(old_spool)
    _say(left, spool)
    return left


def _say(left: ClaimsLeft, spool: Spool) -> None:
    where = left.where or "the spool folder moved away"
    if left.moved:
        log.warning(
            "brought %d taken drop(s) back from %s/.claimed into %s; storing them now",
            len(left.moved),
            where,
            spool.claimed_dir,
        )
    stuck = ", ".join(f"{name} ({os_cause(exc)})" for name, exc in left.stuck)
    if left.problem is not None or stuck:
        log.error(
            "taken drops stay in %s/.claimed: %s; stop the watcher, move them into %s "
            "(not into the spool: some may be stored already), then start it",
            where,
            left.problem or stuck,
            spool.claimed_dir,
        )
    if left.waiting:
        log.warning(
            "%d drop(s) wait in %s, which is no longer the spool; move them into %s to have "
            "them stored",
            left.waiting,
            where,
            spool.dir,
        )


def _take_back(old_spool: int, spool: Spool) -> ClaimsLeft:
    left = ClaimsLeft(_path_of(old_spool))
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        left.waiting = sum(1 for name in os.listdir(old_spool) if is_drop_name(name))
        old = os.open(".claimed", flags, dir_fd=old_spool)
    except OSError:
        return left  # removed, or nothing was ever taken there
    try:
        claims = sorted(name for name in os.listdir(old) if is_claim_name(name))
        if claims:
            _link_claims(claims, old, spool.claimed_dir, left)
    except (OSError, StorageError) as exc:
        left.problem = str(exc) if isinstance(exc, StorageError) else os_cause(exc)
    finally:
        os.close(old)
    return left


def _link_claims(claims: list[str], old: int, claimed: Path, left: ClaimsLeft) -> None:
    new = durable.open_dir(claimed)
    try:
        for name in claims:
            try:
                durable.link_entry(name, name, src_dir_fd=old, dst_dir_fd=new)
            except OSError as exc:
                left.stuck.append((name, exc))
            else:
                left.moved.append(name)
    finally:
        os.close(new)
    if not left.moved:
        return
    # Until this returns the new names may not survive a crash: a failure raises, and
    # the old names stay, so no claim loses its last name.
    durable.fsync_dir(claimed)
    for name in left.moved:
        with contextlib.suppress(OSError):  # a second name left behind is harmless
            durable.unlink_entry(name, dir_fd=old)
    with contextlib.suppress(OSError):
        durable.fsync_fd(old)
