"""The mirror's progress: the watermark, the versions that cannot be mirrored, the state
the object store is in, and the state file (``_mirror.json``) that records them.

Local retention holds back every version above the watermark
(:func:`ingester.mirror.state.mirror_hold`), so the watermark only ever passes a whole
run of names found in the object store. A state file that cannot be written leaves the
older watermark standing where it is no higher (retention then holds more, never less);
one higher than the watermark that failed to be written is emptied instead.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..clock import utc_now
from ..errors import StorageError
from ..history.base import is_future
from ..history.names import format_timestamp
from ..runtime.notify import SystemdNotifier
from .objectstore import ACCESS_RULE, ACCOUNT, CLOCK, CREDENTIALS, Failure, RemoteObject, refusal
from .options import MirrorOptions
from .state import (
    MIRROR_STATE_NAME,
    STUCK,
    read_mirror_state,
    unmirrored,
    withdraw_watermark,
    write_mirror_state,
)
from .state_model import MirrorState

__all__ = ["REFUSAL_WORDS", "STATE_WORDS", "MirrorProgress", "failure_words"]

log = logging.getLogger("ingester.mirror")

STATE_WORDS = {
    "unreachable": "object store unreachable",
    "throttled": "object store throttling (slow down)",
    "server-error": "object store failing (server error)",
    "denied": "object store refused the credentials",
    "no-bucket": "bucket does not exist",
    "rejected": "object store refused a request",
    "damaged": "object store holds an object whose bytes are not the ones stored with it",
}
"""Each problem state (a :class:`~ingester.mirror.objectstore.Failure`'s ``kind``) in words."""

REFUSAL_WORDS = {
    CLOCK: "object store refused the request time: this machine's clock is off from the store's",
    ACCESS_RULE: (
        "object store refused the action by its access rules (a bucket or IAM policy without it)"
    ),
    ACCOUNT: "object store refused the account (all access disabled, or an account problem)",
    CREDENTIALS: STATE_WORDS["denied"],
}
"""A ``denied`` in words, by what refused it (:func:`~.objectstore.refusal`)."""


def failure_words(failure: Failure) -> str:
    """``failure`` in words: its kind's (:data:`STATE_WORDS`), a ``denied`` by what
    refused it (:data:`REFUSAL_WORDS`). Each is a ``denied`` to the state file and
    ``check`` (someone has to act), but only bad credentials call for new keys: a
    policy needs the rule, a clock setting right."""
    if failure.kind == "denied":
        return REFUSAL_WORDS[refusal(failure.detail)]
    return STATE_WORDS.get(failure.kind, failure.kind)


class MirrorProgress:
    """The progress of a mirror of ``history_dir`` to ``options.target``.

    ``names`` holds the local versions at the last look (oldest first), ``bad`` the ones
    that cannot be mirrored and why (each said once), ``problem`` why the object store
    cannot be used now (``None`` while it can); :meth:`save` writes them to the state
    file and to systemd's ``STATUS=`` when they change.
    """

    def __init__(
        self, history_dir: Path, options: MirrorOptions, notifier: SystemdNotifier
    ) -> None:
        self.history_dir = history_dir
        self.target = options.target
        self.state = MirrorState(
            target=str(self.target), hold_max=options.hold_max, retention=options.retention
        )
        self.names: list[str] = []
        self.bad: dict[str, str] = {}
        self.problem: Failure | None = None
        self.saved_at = 0.0  # time.monotonic() of the last write of the state file
        self._written: tuple[Any, ...] | None = None
        self._failed: tuple[str, str] | None = None  # the last failed write, as said
        self._notifier = notifier
        # Uploads mark versions bad from their own threads: one writer of the file at once.
        self._lock = threading.RLock()

    def resume(self) -> None:
        """Take up the watermark of the state file a previous run left for this target.

        It stands until the first listing recomputes it: a restart while the store is
        away must not hold back what was mirrored before.
        """
        previous = read_mirror_state(self.history_dir)
        if previous is not None and previous.target == str(self.target):
            self.state = self.state.model_copy(
                update={"mirrored_through": previous.mirrored_through}
            )

    def forget_watermark(self) -> None:
        """Count nothing as mirrored (the store says the bucket does not exist): retention
        holds every version until a listing finds them in the store again."""
        self.state = self.state.model_copy(update={"mirrored_through": None})

    def waiting(self) -> int:
        """How many of :attr:`names` are not counted as mirrored."""
        return len(unmirrored(self.names, self.state))

    def mark_bad(self, name: str, why: str, *, said: bool = False) -> None:
        """Version ``name`` cannot be mirrored, for ``why`` (logged when it changes,
        unless ``said`` already in other words).

        A watermark at or above ``name`` (a previous run's, or this one's) drops below it
        and is written at once: whatever ends the pass after this, retention must not
        take the local copy of a version whose remote object is not ours.
        """
        with self._lock:
            if self.bad.get(name) != why and not said:
                log.error("cannot mirror version %s: %s", name, why)
            self.bad[name] = why
            through = self.state.mirrored_through
            if through is None or name > through:
                return
            below = bisect.bisect_left(self.names, name)
            lowered = self.names[below - 1] if below else None
            self.state = self.state.model_copy(update={"mirrored_through": lowered})
            self.save()

    def limit_watermark(self, names: Iterable[str], proven: Mapping[str, RemoteObject]) -> None:
        """After a comparison cut short: the watermark stands no higher than the run of
        ``names`` (oldest first) that ``proven`` holds (objects proven ours in this
        process), so no version left uncompared counts as mirrored on an older word."""
        with self._lock:
            through = self.state.mirrored_through
            if through is None:
                return
            now = utc_now()
            run: str | None = None
            for name in names:
                if name > through:
                    return  # every version up to the watermark is proven
                if is_future(name, now):
                    continue
                if name not in proven or name in self.bad:
                    break
                run = name
            else:
                return
            self.state = self.state.model_copy(update={"mirrored_through": run})
            self.save()

    def update_watermark(self, names: Iterable[str], remote: Mapping[str, RemoteObject]) -> None:
        """Move the watermark through the run of ``names`` (oldest first) that ``remote``
        (the object store's versions as listed) holds and none of them bad; then save."""
        with self._lock:
            through: str | None = None
            now = utc_now()
            for name in names:
                if is_future(name, now):
                    # Dated ahead of the clock, it sorts above the names the clock gives
                    # next: a watermark past it would count them mirrored before they are,
                    # and let retention delete them. Retention keeps such a version anyway.
                    continue
                if name not in remote or name in self.bad:
                    break
                through = name
            else:
                through = through or self.state.mirrored_through
            self.state = self.state.model_copy(update={"mirrored_through": through})
            self.save()

    def save(self, *, force: bool = False) -> None:
        """Write the state file (and ``STATUS=``) if what it says changed, or ``force``.

        A write that fails is logged, never raised: retention then goes by the older
        watermark, or by none where that one was higher (the file emptied).
        """
        with self._lock:
            self._save(force=force)

    def _save(self, *, force: bool) -> None:
        waiting = self.waiting()
        problem = self.problem
        update: dict[str, Any] = {
            "waiting": waiting,
            "state": "ok" if problem is None else problem.kind,
            "detail": None if problem is None else problem.detail,
        }
        stuck = self.stuck()
        if problem is None and stuck:
            # The store answers, but a version cannot be mirrored, and it holds the
            # watermark: retrying will not move it, so the state says so rather than ok.
            first = stuck[0]
            more = f"; {len(stuck) - 1} more" if len(stuck) > 1 else ""
            update.update(state=STUCK, detail=f"{first}: {self.bad[first]}{more}")
        state = self.state.model_copy(update=update)
        key = (state.mirrored_through, state.state, state.detail, state.waiting)
        if key == self._written and not force:
            self.state = state
            return
        now = format_timestamp(utc_now())
        if state.state != self.state.state or state.since is None:
            state = state.model_copy(update={"since": now})
        if problem is None:
            state = state.model_copy(update={"last_success_at": now})
        state = state.model_copy(update={"updated_at": now})
        self.state = state
        try:
            write_mirror_state(self.history_dir, state)
        except StorageError as exc:
            done = self._unsaid(state)
            # Said once while the same cause leaves the same file standing: a full disk
            # fails every write of every pass, and the line would fill the journal.
            said = (str(exc), done or self._standing())
            if done or said != self._failed:
                log.warning("cannot record the mirror's progress: %s%s", exc, said[1])
            # After a cut, what stands is the cut file: the next failure has nothing new to say.
            self._failed = (said[0], self._standing()) if done else said
            # The service's own state all the same: the backlog it has, not the last one
            # recorded (which may be a failure long gone).
            self._notifier.status(self.describe())
            return
        if self._failed is not None:
            log.info("recorded the mirror's progress again")
            self._failed = None
        self._written = key
        self.saved_at = time.monotonic()
        self._notifier.status(self.describe())

    @property
    def unrecorded(self) -> bool:
        """Whether the last write of the state file failed (and none has succeeded since):
        retention goes by the file as it stands, not by what this run knows."""
        return self._failed is not None

    @property
    def path(self) -> Path:
        """The state file."""
        return self.history_dir / MIRROR_STATE_NAME

    def _standing(self) -> str:
        """What retention goes by while the state file cannot be written: the file as it
        stands, in words to end the log line with."""
        left = read_mirror_state(self.history_dir)
        if left is None:
            return "; there is no state file, so retention does not wait for the mirror"
        if left.mirrored_through is None:
            return "; the state file counts no version as mirrored until a write succeeds"
        return (
            "; retention goes by the state file as it stands (mirrored through"
            f" {left.mirrored_through}) until a write succeeds"
        )

    def _unsaid(self, state: MirrorState) -> str:
        """After a failed write of ``state``: make sure the state file left in place
        counts no version as mirrored that ``state`` does not; returns what was done, in
        words to end the log line with.

        A higher watermark left standing is retention's licence to delete versions the
        mirror has since found not ours (or lost with their bucket), so it must not stand:
        the file is cut to its hold bound (:func:`~.state.withdraw_watermark`), which reads
        as a mirror with no watermark (retention holds, bounded by ``--mirror-hold``). A
        lower or equal one left standing only makes retention hold more, which is safe
        until the next write succeeds.
        """
        left = read_mirror_state(self.history_dir)
        through = None if left is None else left.mirrored_through
        if through is None or (
            state.mirrored_through is not None and state.mirrored_through >= through
        ):
            return ""
        try:
            withdraw_watermark(self.history_dir)
        except StorageError as exc:
            if exc.action == "fsync":
                # The cut is what every reader sees now; only the disk may not hold it.
                self._written = None
                return (
                    f"; emptied the state file, so retention counts no version as mirrored,"
                    f" but the disk may not hold that ({exc}): after a crash its older"
                    f" watermark ({through}) may be back"
                )
            return (
                f"; its older watermark ({through}) could not be withdrawn either ({exc}),"
                " so retention may delete versions no longer counted as mirrored"
            )
        self._written = None
        return (
            "; emptied the state file, so retention counts no version as mirrored"
            " until it is written again"
        )

    def stuck(self) -> list[str]:
        """The history's versions that cannot be mirrored (oldest first)."""
        return [name for name in self.names if name in self.bad] if self.bad else []

    def describe(self) -> str:
        """One line for ``STATUS=``: the state and the backlog."""
        state = self.state
        unrecorded = "; progress not recorded (see the log)" if self.unrecorded else ""
        if self.problem is None:
            stuck = len(self.stuck())
            cannot = f", {stuck} cannot be mirrored" if stuck else ""
            return (
                f"mirroring to {self.target}: {state.waiting} version(s) waiting"
                f"{cannot}{unrecorded}"
            )
        return f"{failure_words(self.problem)}: {state.waiting} waiting{unrecorded}"
