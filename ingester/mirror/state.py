"""The mirror's progress, kept in ``<history>/_mirror.json``, and what retention makes of it.

The mirror (``ingester mirror``, its own process) writes this small file through
:mod:`ingester.history.durable` whenever its progress changes. It is the only thing the
mirror writes into the history, and the only thing local retention needs from it:

* ``mirroredThrough``: a **watermark**. Every version whose name sorts at or below it
  is in the object store. Names sort in ingestion order, so one name says it all.
* ``holdMax``: how many expired-but-not-yet-mirrored versions retention keeps at most.

While the file exists, retention deletes an expired version only once it is at or
below the watermark, except that it never holds more than ``holdMax`` of them (the
oldest go first): a mirror that is down for ever cannot fill the disk. Removing the
file (when a mirror is retired) ends the hold.

Pure apart from the two small file functions; no boto3 here, so the store and the
watcher can import it freely. The file's model, :class:`~.state_model.MirrorState`
(pydantic), is loaded only where a state file is read or written.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..clock import utc_now
from ..history import durable
from ..history.base import is_future
from ..history.lock import lock_holder
from ..history.names import MIRROR_STATE_NAME
from ..history.retention import DEFAULT_HOLD_MAX

if TYPE_CHECKING:
    from .state_model import MirrorState

__all__ = [
    "DEFAULT_HOLD_MAX",
    "MIRROR_LOCK_NAME",
    "MIRROR_STATE_NAME",
    "STUCK",
    "deletable_count",
    "held_back",
    "mirror_hold",
    "mirror_status",
    "read_mirror_state",
    "unmirrored",
    "withdraw_watermark",
    "write_mirror_state",
]

MIRROR_LOCK_NAME = ".mirror.lock"

STUCK = "stuck"
"""The state while the store answers but a version cannot be mirrored (its object holds
other bytes, or it cannot be read here): it holds the watermark until someone acts."""


STATE_MAX_BYTES = 1 << 20
"""The most of the state file that is read: it is a few hundred bytes."""


EMPTY_DETAIL = "state file empty: no version counts as mirrored until the mirror writes it"
"""The ``detail`` of an empty state file, or one cut to its hold bound: what the mirror
leaves where it cannot replace the file with a lower watermark
(:func:`withdraw_watermark`)."""

_HOLD_ONLY = re.compile(rb'\{\n  "holdMax": ([0-9]{1,18}),\n')
"""The state file cut to its first two lines: the opening brace and the hold bound."""


def read_mirror_state(history_dir: Path) -> MirrorState | None:
    """The state file, or ``None`` when there is none (no mirror configured).

    An unreadable, empty or corrupt file still means "a mirror is configured": it reads
    as a state with no watermark, so retention holds (bounded) rather than deletes.
    """
    path = history_dir / MIRROR_STATE_NAME
    unreadable = False
    try:
        # As a file anyone with write access may have replaced: a FIFO or an endless
        # file there must not hold up retention, which reads this on every pass.
        raw = durable.read_regular(path, STATE_MAX_BYTES)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        unreadable = exc.errno != errno.ELOOP
        raw = None
    # Only now the file's model (pydantic): without a mirror, status, check and
    # retention never load it (some 50 ms of a command's start).
    from pydantic import ValidationError

    from .state_model import MirrorState

    if unreadable:
        return MirrorState(state="unknown", detail="state file unreadable")
    if raw is None:
        return MirrorState(state="unknown", detail="state file is not a regular file")
    if len(raw) > STATE_MAX_BYTES:
        return MirrorState(state="unknown", detail="state file corrupt")
    if not raw:
        # What the mirror leaves where it cannot replace the file with a lower watermark
        # (a full disk): no damage, and no reason to remove it, which would end the hold.
        return MirrorState(state="unknown", detail=EMPTY_DETAIL)
    cut = _HOLD_ONLY.fullmatch(raw)
    if cut is not None:
        # The same, where the file still began with the mirror's bound: it keeps bounding
        # the hold, so a mirror gone for good fills no more disk than its operator allowed.
        return MirrorState(state="unknown", detail=EMPTY_DETAIL, hold_max=int(cut[1]))
    try:
        return MirrorState.model_validate_json(raw)
    except ValidationError:
        return MirrorState(state="unknown", detail="state file corrupt")


def write_mirror_state(history_dir: Path, state: MirrorState) -> None:
    """Durably replace the state file.

    Its bytes are written and fsynced in a file with no name (``O_TMPFILE``, where the
    filesystem offers it), given a temp name only to be renamed over the state file: a
    mirror killed outright (``kill -9``) meanwhile leaves no temp file in the history,
    where only the watcher sweeps them, and only as it starts.

    Raises :class:`~ingester.history.durable.StorageError` on failure.
    """
    data = state.to_json_bytes()
    staged = durable.StagedFile(history_dir, data, 0o644, name=MIRROR_STATE_NAME, unnamed=True)
    with staged:
        staged.commit(MIRROR_STATE_NAME, replace=True)


def withdraw_watermark(history_dir: Path) -> None:
    """Cut the state file, in place, to its first two lines (``{`` and its ``holdMax``),
    or to nothing where it does not begin so; then fsync it.

    For a state file whose watermark must not stand and whose replacement failed (a full
    disk): a cut needs no new block where a replacement does. What is left reads as a
    mirror with no watermark, still bounded by the mirror's ``--mirror-hold``
    (:func:`read_mirror_state`). Never creates the file, never follows a symlink.
    Raises :class:`~ingester.history.durable.StorageError`: action ``cut`` when the file
    was left as it was, ``fsync`` when the cut is made but may not be on the disk.
    """

    def kept(head: bytes) -> int:
        found = _HOLD_ONLY.match(head)
        return 0 if found is None else found.end()

    durable.cut_file(history_dir / MIRROR_STATE_NAME, kept)


def unmirrored(
    sorted_names: Sequence[str], state: MirrorState, now: datetime | None = None
) -> list[str]:
    """The names above the watermark (oldest first): not known to be mirrored.

    Names dated more than a day ahead of ``now`` (default: the clock) are left out: the
    watermark never passes them (it would pass the names the clock gives next, which
    sort below them), and retention keeps them whatever the mirror has done.
    """
    now = now or utc_now()
    start = (
        0
        if state.mirrored_through is None
        else bisect.bisect_right(sorted_names, state.mirrored_through)
    )
    return [name for name in sorted_names[start:] if not is_future(name, now)]


def held_back(sorted_names: Sequence[str], expired: int, state: MirrorState | None) -> int:
    """How many of the ``expired`` oldest names are above the watermark (not uploaded).

    These are what the hold keeps, up to ``hold_max``; 0 without a state file.
    """
    if state is None or expired <= 0:
        return 0
    if state.mirrored_through is None:
        return expired
    return expired - bisect.bisect_right(sorted_names, state.mirrored_through, 0, expired)


def deletable_count(
    sorted_names: Sequence[str],
    expired: int,
    state: MirrorState | None,
    hold_max: int | None = None,
) -> int:
    """How many of the ``expired`` oldest names retention may delete, given the mirror.

    Without a state file, all of them. With one, those at or below the watermark, plus
    the oldest of the rest where more than ``hold_max`` of them would be held (default:
    the state file's bound).
    """
    if state is None or expired <= 0:
        return expired
    bound = state.hold_max if hold_max is None else hold_max
    held = held_back(sorted_names, expired, state)
    return expired - held + max(0, held - bound)


def mirror_hold(
    history_dir: Path,
    sorted_names: Sequence[str],
    expired: int,
    hold_max: int | None = None,
) -> tuple[int, str | None]:
    """Retention's hold for a configured mirror: the hook
    :class:`~ingester.history.store.HistoryStore` is given (``hold=``) by
    :meth:`ingester.settings.resolved.Settings.store`.

    ``sorted_names``: every version, oldest first; ``expired``: how many of the oldest
    the policy would delete; ``hold_max``: the bound the command running retention was
    given (``--mirror-hold``), else the one the mirror recorded in its state file.
    Returns how many may go now (:func:`deletable_count` with the state file; all of
    them without one) and a warning for the log when that includes versions the mirror
    has not uploaded (the hold was full).
    """
    if not os.path.lexists(history_dir / MIRROR_STATE_NAME):
        return expired, None
    state = read_mirror_state(history_dir)
    allowed = deletable_count(sorted_names, expired, state, hold_max)
    warning = None
    if state is not None and allowed and sorted_names[allowed - 1] > (state.mirrored_through or ""):
        bound = state.hold_max if hold_max is None else hold_max
        warning = (
            "cleanup deletes versions the mirror has not uploaded: more than "
            f"{bound} (--mirror-hold) were waiting"
        )
    return allowed, warning


def mirror_status(
    history_dir: Path, sorted_names: Sequence[str], configured: str | None
) -> dict[str, Any] | None:
    """How far behind the mirror is, for ``status`` (``None``: no mirror configured).

    ``waiting`` counts the local versions above the watermark, from the files as they
    are now; ``state`` is what the mirror last recorded (``ok``, ``unreachable``,
    ``throttled``, ``server-error``, ``denied``, ``no-bucket``, ``rejected``, ``stuck``).
    """
    state = read_mirror_state(history_dir)
    if state is None and configured is None:
        return None
    pid = lock_holder(history_dir / MIRROR_LOCK_NAME)
    waiting = unmirrored(sorted_names, state) if state is not None else list(sorted_names)
    return {
        "target": (state.target if state is not None and state.target else configured),
        "running": pid is not None,
        "pid": pid,
        "state": state.state if state is not None else "never-run",
        "detail": state.detail if state is not None else None,
        "since": state.since if state is not None else None,
        "mirroredThrough": state.mirrored_through if state is not None else None,
        "waiting": len(waiting),
        "oldestWaiting": waiting[0] if waiting else None,
        "lastSuccessAt": state.last_success_at if state is not None else None,
        "retention": state.retention if state is not None else None,
        "holdMax": state.hold_max if state is not None else None,
    }
