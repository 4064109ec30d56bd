"""Retention for quarantined drops: ``spool/rejected/`` does not grow forever.

A quarantined drop ``D`` and its reason file ``D.reason.json`` form a **pair**. A pair
is removed once its rejection (the reason file's ``rejectedAt``) is older than
``--rejected-retention-days`` (default 30): the drop first, then the reason file, so
a crash in between leaves a reason file alone (removed on the next pass), never a
drop without its reason.

What is never touched, whatever its age:

* any name that is not a reason file written by the watcher (a regular file named
  ``*.reason.json`` holding a JSON object with a parsable ``rejectedAt``; one over
  4 MiB, which is not read whole, must begin with ``"file"`` then ``"rejectedAt"``, as
  the watcher writes them), or the drop such a file names; so an operator's notes,
  temp files and folders stay;
* folders (a quarantined entry that is a directory is skipped);
* anything outside the rejected folder: it is opened with ``O_NOFOLLOW`` (a symlink
  in its place is refused) and every name is removed relative to that descriptor, so
  a folder swapped meanwhile cannot redirect a removal. Symlinks and FIFOs that were
  quarantined are removed as entries, never followed or opened.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from ..clock import ClockJump, utc_now
from ..history import durable
from ..history.durable import StorageError, fsync_dir
from .spool import REASON_SUFFIX

__all__ = [
    "REASON_SUFFIX",
    "PruneIncomplete",
    "PruneResult",
    "RejectedRetention",
    "prune_rejected",
    "rejected_since",
]

log = logging.getLogger("ingester.housekeeping")

# A reason file holds a reason and the validation errors; far below this. A larger one
# (an older version listed every problem of a drop, some 20 bytes of reason file for
# each byte of drop) is not read whole: only its head, for the date.
_REASON_MAX = 4 << 20
# Our reason files begin with "file" (a name of at most 255 bytes, each escaped as at
# most six characters) and then "rejectedAt": all within this many bytes.
_REASON_HEAD = 4096
_HEAD = re.compile(
    rb'\A\{\s*"file"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*"rejectedAt"\s*:\s*("(?:[^"\\]|\\.)*")'
)
# How often the watcher looks (its maintenance calls in far more often).
PRUNE_EVERY = 600.0


@dataclass
class PruneResult:
    """What one pass did: ``removed`` names (drops and reason files), pairs ``kept``,
    and ``expired_pairs``, the expired drops removed (or, in a dry run, that would be)
    with their reason files: a reason file alone is removed but not counted."""

    removed: list[str] = field(default_factory=list)
    kept: int = 0
    expired_pairs: int = 0


class PruneIncomplete(StorageError):
    """A pass that stopped at an entry it could not read or remove (or at the folder's
    fsync): ``result`` is what it did until then, which stays done. The error's words
    are the cause's."""

    def __init__(self, result: PruneResult, cause: StorageError) -> None:
        super().__init__(cause.action, cause.path, cause.cause)
        self.result = result


def _open_folder(folder: Path) -> int | None:
    """A descriptor on ``folder`` itself (never through a symlink); None when missing."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StorageError("open folder (a symlink or not a folder)", folder, exc) from exc
        raise StorageError("open folder", folder, exc) from exc


def _rejected_at(dir_fd: int, name: str) -> datetime | None:
    """``rejectedAt`` of the reason file ``name``, or None when it is not one of ours.

    One over :data:`_REASON_MAX` bytes is ours when it begins as ours do (``{"file":
    ..., "rejectedAt": ...``): its date is read from its first :data:`_REASON_HEAD`
    bytes, and nothing more of it is read.
    """
    try:
        fd = os.open(name, durable.READ_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        large = st.st_size > _REASON_MAX
        chunks = []
        while chunk := os.read(fd, _REASON_HEAD if large else 1 << 20):
            chunks.append(chunk)
            if large and sum(map(len, chunks)) >= _REASON_HEAD:
                break
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        if large:
            head = _HEAD.match(b"".join(chunks))
            if head is None:
                return None
            when = json.loads(head[1])
        else:
            when = json.loads(b"".join(chunks))["rejectedAt"]
        stamp = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return stamp if stamp.tzinfo is not None else None


def _reason_names(dir_fd: int) -> list[str]:
    with os.scandir(dir_fd) as entries:
        return sorted(
            e.name
            for e in entries
            if e.name.endswith(REASON_SUFFIX)
            and not e.name.startswith(".")
            and e.is_file(follow_symlinks=False)
        )


def _remove(dir_fd: int, name: str, folder: Path) -> bool:
    """Remove the entry ``name`` (not a folder); False when it was already gone."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError("stat", folder / name, exc) from exc
    if stat.S_ISDIR(st.st_mode):
        return False
    try:
        # Relative to the folder's descriptor: removes this entry in this folder only.
        durable.unlink_entry(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError("remove", folder / name, exc) from exc
    return True


def prune_rejected(
    folder: Path, retention_days: float, now: datetime, *, dry_run: bool = False
) -> PruneResult:
    """Remove the pairs in ``folder`` rejected more than ``retention_days`` before ``now``.

    With ``dry_run`` nothing is removed; ``removed`` lists what would be. Raises
    :class:`StorageError` when the folder cannot be opened, and :class:`PruneIncomplete`
    when it cannot be listed or an entry cannot be removed (what was removed until then
    stays removed, and is its ``result``: a caller can still say what was done).
    """
    result = PruneResult()
    dir_fd = _open_folder(folder)
    if dir_fd is None:
        return result
    try:
        _prune_pairs(dir_fd, folder, retention_days, now, dry_run, result)
    except StorageError as exc:
        if result.removed and not dry_run:
            with contextlib.suppress(StorageError):
                fsync_dir(folder)
        raise PruneIncomplete(result, exc) from exc
    finally:
        os.close(dir_fd)
    if result.removed and not dry_run:
        try:
            fsync_dir(folder)
        except StorageError as exc:
            raise PruneIncomplete(result, exc) from exc
    return result


def _prune_pairs(
    dir_fd: int,
    folder: Path,
    retention_days: float,
    now: datetime,
    dry_run: bool,
    result: PruneResult,
) -> None:
    """:func:`prune_rejected`'s pass over the open folder, recording into ``result`` as
    it goes (so that what was done before a failure is known)."""
    try:
        reasons = _reason_names(dir_fd)
    except OSError as exc:
        raise StorageError("list", folder, exc) from exc
    cutoff = now - timedelta(days=retention_days)
    for reason in reasons:
        rejected_at = _rejected_at(dir_fd, reason)
        if rejected_at is None:
            continue  # not a reason file of ours: never touched
        if rejected_at >= cutoff:
            if _is_drop(dir_fd, reason[: -len(REASON_SUFFIX)]):
                result.kept += 1  # a reason file alone is no drop kept
            continue
        drop = reason[: -len(REASON_SUFFIX)]
        # A drop is counted when it is (or would be) removed: a reason file whose drop
        # is gone is removed too, but no drop goes with it.
        if dry_run and _is_drop(dir_fd, drop):
            result.expired_pairs += 1
        for name in (drop, reason):  # the drop first: never a drop without its reason
            if dry_run:
                with contextlib.suppress(OSError):
                    os.lstat(name, dir_fd=dir_fd)
                    result.removed.append(name)
            elif _remove(dir_fd, name, folder):
                result.removed.append(name)
                if name == drop:
                    result.expired_pairs += 1


def _is_drop(dir_fd: int, name: str) -> bool:
    """Whether ``name`` in the folder is an entry other than a folder (a set-aside drop)."""
    try:
        return not stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def rejected_since(folder: Path, since: datetime) -> int:
    """How many drops in ``folder`` were set aside at or after ``since``: reason files
    written since then (by mtime) with their drop beside them.

    A reason file is written when its drop is rejected, so this counts rejections in a
    window without reading any file. One alone is not counted: its drop was never set
    aside (a process killed between the two steps of a quarantine leaves one), or was
    taken out since. 0 when the folder is missing or unreadable
    (:func:`count_rejected_since` tells the two apart).
    """
    try:
        return count_rejected_since(folder, since)
    except StorageError:
        return 0


def count_rejected_since(folder: Path, since: datetime) -> int:
    """:func:`rejected_since`, but raises :class:`StorageError` when ``folder`` exists and
    cannot be opened or listed (0 when it is missing: nothing was ever rejected)."""
    threshold = since.timestamp()
    dir_fd = _open_folder(folder)
    if dir_fd is None:
        return 0
    try:
        count = 0
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if not entry.name.endswith(REASON_SUFFIX) or entry.name.startswith("."):
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if (
                        stat.S_ISREG(st.st_mode)
                        and st.st_mtime >= threshold
                        and _is_drop(dir_fd, entry.name[: -len(REASON_SUFFIX)])
                    ):
                        count += 1
        return count
    except OSError as exc:
        raise StorageError("list", folder, exc) from exc
    finally:
        os.close(dir_fd)


class RejectedRetention:
    """The watcher's side: :func:`prune_rejected` at start, then every 10 minutes.

    Like version retention it does not act on a wall-clock jump (:class:`ClockJump`):
    while the wall clock stands more than an hour ahead of the monotonic clock, each
    pass is held back (logged); ``ingester cleanup`` applies the rule as written.
    ``every`` is in seconds.
    """

    def __init__(
        self,
        folder: Path,
        retention_days: float,
        *,
        wall: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        every: float = PRUNE_EVERY,
    ) -> None:
        self.folder = folder
        self.retention_days = retention_days
        self._wall = wall
        self._monotonic = monotonic
        self._every = every
        self._next = 0.0
        self._jump = ClockJump(wall=lambda: self._wall().timestamp(), boot=monotonic)

    def run_if_due(self) -> PruneResult | None:
        """One pass if it is time; never raises (a failure is logged and retried later)."""
        mono = self._monotonic()
        if mono < self._next:
            return None
        self._next = mono + self._every
        jump = self._jump.gained()
        if jump > self._jump.limit:
            log.warning(
                "the wall clock jumped %.0f s ahead; rejected drops are not removed this time",
                jump,
            )
            return None
        try:
            result = prune_rejected(self.folder, self.retention_days, self._wall())
        except StorageError as exc:
            log.error("cannot apply the retention of rejected drops: %s", exc)
            return None
        if result.expired_pairs:
            log.info(
                "removed %d rejected drop(s) older than %g days, kept %d",
                result.expired_pairs,
                self.retention_days,
                result.kept,
                extra={"event": "rejected-cleanup", "removed": result.expired_pairs},
            )
        return result
