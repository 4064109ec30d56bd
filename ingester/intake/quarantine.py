"""The quarantine folder (``rejected/``): drops set aside, each with its reason file.

A drop that cannot be stored leaves the spool for this folder, under a name that is
free there, beside ``<name>.reason.json`` (why it was set aside, and the drop's own
name). The folder may be shared by several watchers (one ``--rejected-dir``), so nothing
here is ever replaced: every name is taken by a step that refuses to replace, and a
reason file is locked while its move is under way, so that another process tells a
move in progress from one a crash cut short.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..clock import iso_utc, utc_now
from ..errors import MovedNotDurable, StorageError
from ..history import durable
from ..runtime.logs import escape_text
from .outcomes import Rejected
from .reasons import (
    REASON_SUFFIX,
    fit_name,
    left_reason,
    may_name,
    record_of,
    reserve,
    take_back,
)

__all__ = [
    "CLAIM_PREFIX",
    "REASON_SUFFIX",
    "Quarantine",
    "entry_kind",
    "is_set_aside_claim",
    "set_aside_already",
]

log = logging.getLogger("ingester.watcher")

CLAIM_PREFIX = "rejecting."
"""How a drop on its way from the spool to the quarantine is named in ``.claimed/``:
this, then the name it is given in ``rejected/``. Never a version's name, so recovery
tells it from a drop claimed to be stored, and knows where it was going."""

_PUT_BACK_TRIES = 100
"""How many fresh spool names a drop put back tries when its own is taken."""


def is_set_aside_claim(name: str) -> bool:
    """Whether ``name`` in ``.claimed/`` is a drop on its way to the quarantine."""
    return name.startswith(CLAIM_PREFIX) and len(name) > len(CLAIM_PREFIX)


def set_aside_already(claim: Path, rejected_dir: Path) -> bool:
    """Whether ``rejected_dir`` holds the drop of ``claim`` (``.claimed/rejecting.<name>``)
    as ``<name>`` already, and only the claim's removal is left of its move.

    It does when ``<name>`` is the claim's own inode (a rename or a link), or, in a
    ``rejected_dir`` on another filesystem, a copy of the same bytes beside a reason file
    that can name this drop and that no process holds locked. A move writes the reason
    file before the drop and leaves it there once done, so a copy without one is no
    finished move of this drop, and one beside a locked reason file is a move still
    under way. False when the claim is gone or cannot be looked at.

    The one rule by which the watcher's recovery finishes such a claim (see
    :meth:`Quarantine.finish_claim`), and by which ``status`` and ``check`` count it.
    """
    target = claim.name[len(CLAIM_PREFIX) :]
    there, reason = rejected_dir / target, rejected_dir / (target + REASON_SUFFIX)
    said = (record_of(reason) or {}).get("file")
    # The drop the reason file names, as it names it: where the drop's own name
    # cannot be read back from it (\xNN), the target's is no stand-in for it.
    shown = said if isinstance(said, str) and may_name(said, target) else escape_text(target)
    try:
        mine, copy = os.lstat(claim), os.lstat(there)
    except OSError:
        return False
    if os.path.samestat(mine, copy):
        return True
    return (
        mine.st_dev != copy.st_dev
        and stat.S_ISREG(mine.st_mode)
        and stat.S_ISREG(copy.st_mode)
        and mine.st_size == copy.st_size
        and left_reason(reason, shown)
        and _same_bytes(claim, there, (mine.st_dev, mine.st_ino))
    )


def _reason_said(rejected_dir: Path, target: str) -> tuple[dict[str, Any], str]:
    """What the reason file of ``target`` in ``rejected_dir`` says (``{}`` when it
    cannot be read as one), and the name of the drop set aside as ``target``: the
    reason file's ``file``, where that can be the drop's own name, else ``target``."""
    record = record_of(rejected_dir / (target + REASON_SUFFIX)) or {}
    said = record.get("file")
    if (
        isinstance(said, str)
        and said != escape_text(target)
        and said.endswith(".json")
        and not said.startswith(".")
        and "/" not in said
        and "\\x" not in said
        and "\0" not in said
        and may_name(said, target)
    ):
        # A name shortened or given a suffix in rejected/: the drop's own is the one
        # the reason file says, unless it had bytes that are not UTF-8, which the
        # reason file says as \xNN (no name to give back: the target's is). A name
        # that cannot be the target's drop (a reason file edited, or another's) is
        # not taken: the drop would be put back under a name never judged.
        return record, said
    return record, target


def entry_kind(mode: int) -> str:
    """What an entry of ``mode`` (from ``lstat``) is, in words: ``"symlink"``, ``"FIFO"``, ...."""
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _same_bytes(source: Path, copy: Path, ident: tuple[int, int]) -> bool:
    """Whether the file ``source`` (still the one ``ident`` names) and ``copy`` hold the
    same bytes."""
    fds: list[int] = []
    try:
        for path in (source, copy):
            fds.append(os.open(path, durable.READ_NOFOLLOW))
        st = os.fstat(fds[0])
        if (st.st_dev, st.st_ino) != ident or not stat.S_ISREG(os.fstat(fds[1]).st_mode):
            return False
        return durable.same_contents(fds[0], fds[1])
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)


def _put_back_unless(src: Path, dst: Path, expect: tuple[int, int]) -> None:
    """After a move of ``src`` to ``dst``: unless ``dst`` is the file ``expect`` names (a
    writer renamed a new drop onto the name meanwhile), put it back and raise."""
    try:
        moved = os.lstat(dst)
    except OSError as exc:
        raise StorageError("stat", dst, exc) from exc
    if (moved.st_dev, moved.st_ino) == expect:
        return
    try:
        durable.link_entry(dst, src)  # never over a newer file of that name
        durable.unlink_entry(dst)
    except OSError:
        words = (
            f"replaced by another file while being moved, which is now {dst}: "
            f"move it back to {src} by hand"
        )
        raise StorageError("move", src, OSError(errno.ESTALE, words)) from None
    words = "replaced by another file while being moved; left as it is now"
    raise StorageError("move", src, OSError(errno.ESTALE, words))


def _fresh_names(name: str) -> Iterator[str]:
    """``name``, then names beside it a drop put back may take when it is taken:
    ``stem-<random>.json``, as short as a quarantine name."""
    yield name
    stem, dot, ext = fit_name(name).rpartition(".")
    if not dot:
        stem, ext = ext, "json"
    for _ in range(_PUT_BACK_TRIES):
        yield f"{stem}-{secrets.token_hex(4)}.{ext}"


class Quarantine:
    """The quarantine folder ``folder``: drops set aside there, and their count.

    ``claimed_dir`` is the spool's ``.claimed/``, where only the watcher writes: a drop
    leaves the spool for it by one rename before it is moved on (see :meth:`set_aside`),
    once ``check_claimed`` (raising :class:`StorageError`) has found it still the
    watcher's own real folder.
    """

    def __init__(
        self, folder: Path, claimed_dir: Path, check_claimed: Callable[[], object]
    ) -> None:
        self.rejected_dir = folder
        self.claimed_dir = claimed_dir
        self._check_claimed = check_claimed

    def _rejected_names(self, name: str) -> Iterator[str]:
        """Names in ``rejected/`` for drop ``name``, in the order they are tried: the
        name kept, then ``stem-1.ext``, ``stem-2.ext`` and so on.

        Quarantine names and reason-file names never meet: a quarantined drop never
        gets a name ending in ``.reason.json``. Names too long to carry
        ``.reason.json`` are shortened (with a digest, so two long names stay apart);
        the reason file keeps the original name.
        """
        name = fit_name(name)
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        yield name
        n = 0
        while True:
            n += 1
            yield f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"

    def _move_new(
        self,
        source: Path,
        target: Path,
        expect: tuple[int, int] | None,
        progress: durable.CopyProgress | None,
    ) -> bool:
        """Move ``source`` to the new name ``target`` durably; False when ``target`` is
        taken (nothing moved). Never replaces anything: the quarantine is shared by
        every watcher given the same ``--rejected-dir``. See :meth:`set_aside`."""
        try:
            durable.rename_new(source, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise StorageError("move", source, exc) from exc
            try:
                # Across filesystems the copy is linked into place, which never replaces.
                durable.move_file(source, target, expect=expect, progress=progress)
            except StorageError as failed:
                if failed.errno == errno.EEXIST:
                    return False
                raise
            return True
        if expect is not None:
            _put_back_unless(source, target, expect)
        try:
            durable.fsync_dir(target.parent)
            if source.parent != target.parent:
                durable.fsync_dir(source.parent)
        except StorageError as exc:
            raise MovedNotDurable(exc) from exc
        return True

    def _finish_cut_move(self, source: Path, target: Path, original: str) -> bool:
        """Whether ``target`` already holds the drop ``source``, whose move was cut short
        before the spool's name was removed; the move then finished (that name removed).

        Two moves leave such a pair when their process is killed before the last step:
        where no rename can refuse to replace, :func:`durable.rename_new` links then
        unlinks (one file under both names); into another filesystem, the copy is given
        its name, then the spool's is removed (the same bytes twice). Set aside again
        under a new name, the drop would be there twice. A copy counts only beside a
        reason file no process holds (its move is not under way) naming this drop, and
        only with the same bytes."""
        try:
            src, dst = os.lstat(source), os.lstat(target)
        except OSError:
            return False
        if not (stat.S_ISREG(src.st_mode) and stat.S_ISREG(dst.st_mode)):
            return False
        same_file = (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)
        if not same_file and not (
            src.st_dev != dst.st_dev
            and src.st_size == dst.st_size
            and left_reason(target.parent / (target.name + REASON_SUFFIX), original)
            and _same_bytes(source, target, (src.st_dev, src.st_ino))
        ):
            return False
        durable.fsync_dir(target.parent)  # the last step may never have been made durable
        try:
            durable.unlink_entry(source)
        except FileNotFoundError:
            return False  # taken meanwhile: not ours to finish
        except OSError as exc:
            raise StorageError("move", source, exc) from exc
        try:
            durable.fsync_dir(source.parent)
        except StorageError as exc:
            moved = MovedNotDurable(exc)
            moved.moved_to = target.name
            raise moved from exc
        return True

    def _check_rejected_dir(self) -> None:
        """``rejected/`` must be a real folder: never quarantine through a symlink."""
        folder = self.rejected_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)  # removed by hand?
            st = os.lstat(folder)
        except OSError as exc:
            raise StorageError("create folder", folder, exc) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise StorageError(
                "use the quarantine folder",
                folder,
                OSError(errno.ENOTDIR, f"unsafe: it is a {entry_kind(st.st_mode)}, not a folder"),
            )

    def _by_claim(self, source: Path) -> bool:
        """Whether ``source`` leaves the spool through a claim (see :meth:`_claim`): a
        spool's drop, with a ``.claimed/`` on its filesystem to be renamed into."""
        if source.parent == self.claimed_dir:
            return False
        try:
            return os.lstat(self.claimed_dir).st_dev == os.lstat(source.parent).st_dev
        except OSError:
            # No .claimed/ to go through: moved as it is, by a no-replace rename or, into
            # another filesystem, a copy whose source name is compared with the file
            # copied right before its removal (see durable.move_file), the one window
            # left where a writer's rename onto the name could be removed with it.
            return False

    def set_aside(
        self,
        source: Path,
        name: str,
        reason: str,
        errors: list[dict[str, Any]],
        *,
        expect: tuple[int, int] | None = None,
        progress: durable.CopyProgress | None = None,
    ) -> str:
        """Move ``source`` (the entry itself, never a link's target) to ``rejected/``.

        The reason file is written first, so a drop in ``rejected/`` always has its
        reason, even after a crash. A move that fails takes the reason file back: the
        drop stays in the spool, and ``rejected/`` shows nothing of it. Only a process
        killed between the two steps leaves a reason file alone; the drop is then still
        in the spool, and setting it aside again rewrites that same reason file. Counts
        of rejections therefore count drops (or reason files with their drop beside
        them), never reason files alone.

        Nothing in ``rejected/`` is ever replaced, not even by another watcher sharing
        the folder: the reason file and the drop each take a name that is free by a
        step that never replaces (a link, a no-replace rename), and a name found taken
        meanwhile sends both on to the next numeric suffix.

        The drop first leaves the spool by one rename, into ``.claimed/`` as
        ``rejecting.<its name in rejected/>``, then moves on from there: where no
        rename can refuse to replace (NFS, CIFS, some FUSE mounts) that last move is a
        link then an unlink, and into another filesystem a copy then an unlink; either
        way only the claim's name, which no writer can take, is unlinked. A move that
        fails, or is found to have taken a new drop a writer renamed onto the name, puts
        the claim back in the spool (see :meth:`put_back`); one a crash cut short is
        finished by :meth:`finish_claim`.

        ``expect``: the ``(st_dev, st_ino)`` of the drop judged, so that a new drop a
        writer renamed onto its name meanwhile is never set aside in its place.
        ``progress``: told how a copy into a ``rejected/`` on another filesystem goes
        (see :data:`ingester.history.durable.CopyProgress`); never called for a rename.

        Returns the name it was given in ``rejected/``. Raises :class:`StorageError`
        when ``rejected/`` cannot be made, is not a real folder, or the move fails
        (``ENOSPC`` when the drop's data cannot fit there: see
        :func:`ingester.history.durable.move_file`), and what ``progress`` raised
        (:class:`ingester.history.durable.CopyAbandoned`) when it gave the copy up: the
        reason file is taken back in each case, as for a failed move.
        """
        self._check_rejected_dir()
        by_claim = self._by_claim(source)
        # Said as the log says it: a byte that is not UTF-8 as \xNN, never as the lone
        # surrogate Python carries it as (a JSON "\udcff" names no byte).
        shown = escape_text(name)
        record = {
            "file": shown,
            "rejectedAt": iso_utc(utc_now()),
            "reason": reason,
            "errors": errors,
        }
        data = (json.dumps(record, indent=2, default=str) + "\n").encode()
        claim: Path | None = None
        for target in self._rejected_names(name):
            reserved = reserve(self.rejected_dir, target, shown, data)
            if reserved is None:
                if claim is None and self._finish_cut_move(
                    source, self.rejected_dir / target, shown
                ):
                    return target
                continue
            reason_file, held = reserved
            try:
                if by_claim:
                    # Out of the spool first, by one rename (see _claim).
                    moving = self._claim(claim or source, target, source, expect)
                    claim = moving or claim
                    moved = moving is not None and self._move_claim(
                        moving, target, source, progress
                    )
                else:
                    moved = self._move_new(source, self.rejected_dir / target, expect, progress)
            except MovedNotDurable as exc:
                exc.moved_to = target
                raise
            except (StorageError, durable.CopyAbandoned):
                # Left behind, it would say a drop was set aside that never was. If it
                # cannot be removed either, it is still counted nowhere (see above).
                take_back(reason_file)
                if claim is not None:
                    self._give_back(claim, source)
                raise
            else:
                if not moved:
                    # The name was taken meanwhile: on to the next. Taken back while
                    # still locked, so no one takes it for a leftover and writes over it.
                    take_back(reason_file)
            finally:
                os.close(held)
            if moved:
                if claim is not None:
                    self._spool_written(source, target)
                return target
        raise AssertionError("unreachable: the names tried never end")

    def _claim(
        self, current: Path, target: str, source: Path, expect: tuple[int, int] | None
    ) -> Path | None:
        """The drop at ``current`` (the spool's ``source``, or its claim already)
        renamed to its claim for ``rejected/``'s ``target``; None when that claim's name
        is taken (a claim recovery has not finished: the next name is tried).

        One rename, never a link then an unlink of the spool's name (where no rename can
        refuse to replace): a writer may rename a new drop onto that name in between,
        and the unlink would remove it. Once the drop is in ``.claimed/``, where only
        the watcher writes, it is moved on by whatever step the folders allow. A drop
        found to be another file than ``expect`` is put back at once. Raises
        :class:`StorageError` when ``.claimed/`` is no longer the watcher's own folder,
        when the drop cannot be renamed, or was another file.
        """
        self._check_claimed()  # never through a folder put in its place
        claim = self.claimed_dir / (CLAIM_PREFIX + target)
        if os.path.lexists(claim):
            # Only this process writes in .claimed/, so the check cannot race.
            return None
        try:
            durable.rename_entry(current, claim)
        except OSError as exc:
            raise StorageError("move", source, exc) from exc
        if current != source or expect is None:
            return claim
        try:
            st = os.lstat(claim)
        except OSError as exc:
            raise StorageError("stat", claim, exc) from exc
        if (st.st_dev, st.st_ino) == expect:
            return claim
        # A writer renamed a new drop onto the name after it was judged: not this one
        # to set aside. Put back (under a name of its own if its own is taken again),
        # it is judged as it is now.
        self._give_back(claim, source)
        words = "replaced by another file while being moved; left as it is now"
        raise StorageError("move", source, OSError(errno.ESTALE, words))

    def _move_claim(
        self, claim: Path, target: str, source: Path, progress: durable.CopyProgress | None
    ) -> bool:
        """:meth:`_move_new` of ``claim`` (the spool's ``source``) to ``target``: a
        failure names the spool's drop, the claim being the watcher's own business."""
        try:
            return self._move_new(claim, self.rejected_dir / target, None, progress)
        except MovedNotDurable:
            raise
        except StorageError as exc:
            action = exc.action.replace(os.fspath(claim), os.fspath(source))
            path = source if exc.path == claim else exc.path
            raise StorageError(action, path, exc.cause) from exc

    def _give_back(self, claim: Path, source: Path) -> None:
        """Put ``claim`` back in the spool as ``source`` (see :meth:`put_back`) after a
        move that did not go through; where it cannot be, it waits for recovery, which
        puts it back. Never raises: the error of the move is the one to say."""
        try:
            self.put_back(claim, source)
        except StorageError as exc:
            log.warning(
                "%s stays in %s until the watcher puts it back in the spool: %s",
                claim.name,
                claim.parent,
                exc,
            )

    def put_back(self, claim: Path, source: Path) -> str:
        """Move ``claim`` back into the spool as ``source``, never over anything: a
        writer may have taken that name since, and the claim then takes a fresh name
        beside it (``stem-<random>.json``). The spool is fsynced before the claim's
        folder, so the drop has a name in one of them whatever is lost. Returns the
        name it took. Where no step can take a name without a look then a rename (no
        no-replace rename, no hard link), the drop's own name is never taken, and a
        fresh one is. Raises :class:`StorageError` when it cannot be moved or made
        durable."""
        for name in _fresh_names(source.name):
            own = name == source.name
            try:
                # Where no rename can refuse to replace, a link then the unlink of the
                # claim: its name is the watcher's alone, so nothing else is unlinked.
                # Where no link can be made either, only a look then a rename is left,
                # and a writer renaming its next drop onto the drop's own name in
                # between would lose it: a random fresh name is one no writer takes.
                durable.rename_new(claim, source.parent / name, look_first=not own)
            except FileExistsError:
                continue
            except OSError as exc:
                if own and exc.errno == errno.ENOTSUP:
                    continue
                raise StorageError("put back", claim, exc) from exc
            durable.fsync_dir(source.parent)
            durable.fsync_dir(claim.parent)
            return name
        raise StorageError("put back", claim, OSError(errno.EEXIST, "every name tried is taken"))

    def _spool_written(self, source: Path, target: str) -> None:
        """The spool's side of a claim's rename made durable, once the drop is in
        ``rejected/`` as ``target``: lost to a power cut, it would bring the drop back.
        Raises :class:`MovedNotDurable` when the spool cannot be fsynced."""
        try:
            durable.fsync_dir(source.parent)
        except StorageError as exc:
            moved = MovedNotDurable(exc)
            moved.moved_to = target
            raise moved from exc

    def finish_claim(
        self, name: str, spool_dir: Path, spool_names_of: Callable[[Path], list[str]]
    ) -> Rejected | str | None:
        """Finish the claim ``name`` (see :func:`is_set_aside_claim`) that a stop (a
        crash, a failure) left in ``.claimed/`` on its way to the quarantine.

        Where ``rejected/`` holds it already (its own inode, or across filesystems a copy
        of the same bytes beside a reason file no process holds), the move had reached
        its last step: the claim is removed, and the drop counts as set aside
        (:class:`Rejected`, with the reason its reason file gives). Otherwise it goes
        back to the spool, under the drop's name its reason file gives (or a fresh one
        beside it, see :meth:`put_back`), to be judged again and set aside once: the
        name it is put back as is returned. ``spool_names_of(claim)`` gives the spool's
        names that are the claim's very file (a put-back cut short between its link and
        the claim's unlink): the drop is back under that name already, and only the
        claim goes. None when the claim is gone. Raises :class:`StorageError` when it
        cannot be finished yet.
        """
        claim = self.claimed_dir / name
        target = name[len(CLAIM_PREFIX) :]
        record, original = _reason_said(self.rejected_dir, target)
        try:
            mine = os.lstat(claim)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError("stat claim", claim, exc) from exc
        if set_aside_already(claim, self.rejected_dir):
            durable.fsync_dir(self.rejected_dir)  # its last step may not be durable yet
            durable.remove_file(claim)
            durable.fsync_dir(spool_dir)
            return Rejected(original, str(record.get("reason", "set aside")), target)
        back = spool_dir / original
        # Put back by a link whose unlink of the claim was cut short: under the drop's
        # own name, or a fresh one if a writer had taken it, which only a look at every
        # name of the file finds. Put back again, it would be in the spool twice.
        there = spool_names_of(claim) if mine.st_nlink > 1 else []
        if there:
            durable.fsync_dir(spool_dir)
            durable.remove_file(claim)
            return original if original in there else there[0]
        return self.put_back(claim, back)

    def count(self) -> int:
        """How many quarantined drops there are (not reason notes, temp files or folders):
        0 when the folder is missing. Raises :class:`StorageError` when it cannot be
        listed (a count of 0 would be a false one)."""
        try:
            with os.scandir(self.rejected_dir) as entries:
                return sum(
                    1
                    for e in entries
                    if not e.name.endswith(REASON_SUFFIX)
                    and not e.name.startswith(".")  # a temp file cut short by a crash
                    and not e.is_dir(follow_symlinks=False)
                )
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError("list", self.rejected_dir, exc) from exc

    def sweep_temps(self) -> list[str]:
        """Remove our stale temp files from ``rejected/`` (reason files cut short by a crash)."""
        return durable.remove_stale_temps(self.rejected_dir)
