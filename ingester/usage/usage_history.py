"""The forecast of a history: :mod:`ingester.usage.forecast` over the versions a reader holds.

:class:`UsageHistory` reads versions through a
:class:`~ingester.history.index.HistoryIndex` (a local folder or an object store) and
keeps what it read:

* each version's :class:`~ingester.usage.readings.Observation`, by version name (versions
  never change, so one read is enough for the life of the process; one found damaged is
  read again once its file is another, put right from a backup);
* the last answer, for as long as the set of versions stays the same.

Only the versions that can hold the basis are read. A snapshot is observed before it
is stored (its ``lastUpdated`` is at most :data:`~ingester.usage.readings.CLOCK_AHEAD` after
the ingest time in its version name), so::

    start = newest ingest time - BASIS - CLOCK_AHEAD
    repeat:
        read the versions ingested since start (those not read before)
        as_of = the lastUpdated of the newest of them (forecast.newest_of)
        if as_of - BASIS - CLOCK_AHEAD >= start: done
        start = as_of - BASIS - CLOCK_AHEAD     # a backfill: older data stored lately

On a history of 20,000 versions taken every 30 s that is the last day's 2,900 or so,
read once; after that, one new version costs one read and one pass over the cached
observations.

The versions before the basis count only for the limits they hold: each limit's last
reading there (:func:`~ingester.usage.forecast.last_readings`), so a limit the recent versions
lack is still held. They are read once each, newest first (``resetsIn`` parsed only for
a reading newer than the one found), when the first answer is made, and folded in from
the kept observations as versions leave the basis; a reading whose version retention
has deleted is dropped, and when one deleted by hand from among the others held a
limit's last reading, the versions before the basis are folded again from the start
(so a long-running reader answers as a fresh one does).
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import logging
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from ..errors import (
    ObjectStoreError,
    PayloadRejected,
    StorageError,
    VersionNotFound,
    VersionTooLarge,
    describe_os_error,
)
from ..history.base import HistoryReader, VersionEntry
from ..history.index import HistoryIndex, HistorySnapshot
from ..history.names import format_timestamp
from ..payload.gate import check_payload, load_json
from .forecast import BASIS, MAX_LIMIT_NAME, MAX_LIMITS, Forecast, forecast, newest_of
from .readings import CLOCK_AHEAD, Observation, Reading, newer_readings, observe

__all__ = [
    "DAMAGED_EVENT",
    "LIMITS_LEFT_OUT_EVENT",
    "RESETS_UNREAD_EVENT",
    "UNREADABLE_EVENT",
    "ForecastAnswer",
    "UsageHistory",
    "forecast_json",
    "forecast_of",
]

log = logging.getLogger("ingester.forecast")

_REMEMBERED_WORDINGS = 64  # distinct unreadable resetsIn texts logged once each

_NAMED_UNREADABLE = 5
"""Versions named one by one as unreadable, per reader; more are said in one line: a
history of thousands that this user may not read is the history's fault, not theirs."""

_PROCESS_FAULTS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
"""Read faults of the process, not of a version (out of descriptors or memory): the
history cannot be read now, and leaving each version out would answer as if it held none."""

_LOOKS = 3
"""Looks at the history before an answer whose latest was deleted under each read
stands as computed from the others."""

DAMAGED_EVENT = "damaged-version"
"""The ``event`` of the warning on a version the forecast leaves out as damaged."""

UNREADABLE_EVENT = "unreadable-version"
"""The ``event`` of the warning on a version the forecast leaves out because it cannot be
read (this user may not, an I/O error): said once per version, tried again each answer."""

LIMITS_LEFT_OUT_EVENT = "limits-left-out"
"""The ``event`` of the warning on usage windows the forecast leaves out (over its cap)."""

_NAMED_LEFT_OUT = 3  # left-out limits named in that warning (each cut to 80 characters)

RESETS_UNREAD_EVENT = "resets-unread"
"""The ``event`` of the warning on a ``resetsIn`` this version cannot read (``-q`` leaves
it out)."""


@dataclass(frozen=True)
class ForecastAnswer:
    """A forecast and the tag that names the versions it came from, and those of them it
    could not read (for ``ETag``).

    ``version`` names the version whose snapshot it is as of (``None`` without one);
    ``not_latest`` says why that is not the latest version, the one the data's own
    answer shows (``None`` when it is)."""

    forecast: Forecast
    tag: str
    versions: int
    version: str | None = None
    not_latest: str | None = None


class UsageHistory:
    """Forecasts over the versions of ``index``, cached by version and by answer.

    ``zone`` is the console's time zone (for absolute ``resetsIn`` forms), ``zone_name``
    its name (part of the answer's tag). Thread-safe.
    """

    def __init__(
        self,
        index: HistoryIndex,
        zone: tzinfo,
        zone_name: str,
        *,
        basis: timedelta = BASIS,
    ) -> None:
        self.index = index
        self.zone = zone
        self.zone_name = zone_name
        self.basis = basis
        self._lock = threading.Lock()
        self._observations: dict[str, Observation | None] = {}
        self._answer: tuple[HistorySnapshot, int, ForecastAnswer] | None = None
        self._wordings: set[str] = set()
        # Each limit's last reading in the versions before the basis, with its version's
        # name; the newest version folded in so far (by name, as the history sorts).
        self._earlier: dict[str, tuple[Reading, datetime, str]] = {}
        self._folded: str | None = None
        # The names listed up to ``_folded`` when it was folded: a name that sorts among
        # them and was not there then (a version restored by hand) is folded in late.
        self._folded_names: frozenset[str] = frozenset()
        self.unparsable = 0
        """``resetsIn`` texts read that gave no reset time (each version counted once)."""
        self.reads = 0
        """Versions read and parsed (each once, unless a backfill brings it back into the
        basis after it was folded in, or a version deleted by hand makes the ones before
        the basis be folded again)."""
        self.damaged = 0
        """Versions left out because they are no valid payload (each counted once)."""
        self._damaged: set[str] = set()
        # The stamp of each damaged version's file when it was read (the index's
        # version_stamp): another stamp since, and it is read again, so a version put
        # right from a backup counts without a restart.
        self._damaged_stamps: dict[str, Hashable | None] = {}
        self._read_stamp: tuple[str, Hashable | None] = ("", None)  # of the last read
        self._gone: set[str] = set()  # found deleted since the listing, in this answer
        # Versions that could not be read (said once each). Those before the basis are
        # tried again at each fold: a file whose mode is put right counts from then on.
        self._unreadable: set[str] = set()
        self._unread: dict[str, OSError] = {}  # this answer's, said once it is made
        self._unfolded: set[str] = set()
        self._newest_name: str | None = None  # the version of the last computed as_of
        self._left_out_said = 0  # limits over the cap when that was last logged

    def _read(self, name: str) -> bytes | None:
        """Version ``name``'s bytes; ``None`` when it is gone since the listing, larger
        than any drop, or its bytes are not the ones stored under its name (an object
        store's checksum says so): damaged, left out as the gate's refusal is; ``None``
        too when this one file cannot be read (``EACCES``, ``EIO``, ...): left out, as
        ``export`` skips it, said once the answer is made (:meth:`_say_unreadable`),
        and not taken as damaged (it is tried again).

        Raises ``ObjectStoreError`` when the object store fails other than on the
        version's own bytes (unreachable, throttled, denied), and ``OSError`` when the
        process is out of descriptors or memory: that is the store, or the process, not
        the version, and leaving out every version would answer as if there were none.
        """
        self._read_stamp = (name, self.index.version_stamp(name))
        try:
            data = self.index.reader.read_version(name)
        except VersionNotFound:
            self._gone.add(name)
            return None
        except VersionTooLarge as exc:  # never read whole: damaged, as the gate's refusals
            self._left_out(name, exc.reason)
            return None
        except ObjectStoreError as exc:
            if exc.kind != "damaged":
                raise
            self._left_out(name, exc.detail)
            return None
        except OSError as exc:
            if exc.errno in _PROCESS_FAULTS:
                raise
            self._unread.setdefault(name, exc)
            return None
        self._unreadable.discard(name)
        return data

    def _say_unreadable(self, entries: Sequence[VersionEntry]) -> None:
        """Name each version this answer could not read, once while it cannot (the first
        :data:`_NAMED_UNREADABLE` still listed in ``entries``; one line for the rest)."""
        # Versions deleted while unreadable no longer count against the first few.
        self._unreadable = {n for n in self._unreadable if _entry(entries, n) is not None}
        for name, exc in self._unread.items():
            if name in self._unreadable:
                continue
            self._unreadable.add(name)
            if len(self._unreadable) <= _NAMED_UNREADABLE:
                log.warning(
                    "%s cannot be read (%s); the forecast leaves it out while it cannot",
                    name,
                    describe_os_error(exc),
                    extra={"event": UNREADABLE_EVENT},
                )
            elif len(self._unreadable) == _NAMED_UNREADABLE + 1:
                log.warning(
                    "more versions cannot be read (%s, for one: %s); the forecast leaves "
                    "them out while it cannot, and names no more of them",
                    name,
                    describe_os_error(exc),
                    extra={"event": UNREADABLE_EVENT},
                )

    def _left_out(self, name: str, reason: str) -> None:
        read, stamp = self._read_stamp
        self._damaged_stamps[name] = stamp if read == name else None
        if name not in self._damaged:
            self._damaged.add(name)
            self.damaged += 1
            log.warning(
                "%s is damaged (%s); the forecast leaves it out",
                name,
                reason,
                extra={"event": DAMAGED_EVENT},
            )

    def _judged(self, name: str, data: bytes) -> bool:
        """Whether the version ``name`` holding ``data`` passes the payload's gate.

        A version placed by hand, restored or adopted may not: ``list``, ``show`` and
        ``export`` call it damaged, so the forecast does not read it either (it is
        named once in the log).
        """
        try:
            # The gate, not the model: the same verdict, without loading pydantic's model
            # machinery at start-up (about 50 ms; tests/test_gate.py holds the two together).
            check_payload(data)
        except PayloadRejected as exc:
            self._left_out(name, exc.reason)
            return False
        return True

    def _observation(self, name: str, stored_at: datetime) -> Observation | None:
        if name in self._observations:
            return self._observations[name]
        data = self._read(name)
        if data is None:
            # Deleted since the listing (not part of the history any more), or damaged.
            if name in self._damaged:
                self._observations[name] = None
            return None
        self.reads += 1
        if not self._judged(name, data):
            self._observations[name] = None
            return None
        try:
            payload = load_json(data)
        except (ValueError, RecursionError):  # what the gate's parser and json's differ on
            payload = None
        observation, unreadable = observe(payload, self.zone, stored_at)
        for path, text in unreadable:
            self.unparsable += 1
            if text not in self._wordings and len(self._wordings) < _REMEMBERED_WORDINGS:
                self._wordings.add(text)
                log.warning(
                    "%s: resetsIn %r of %s is no wording this version reads; no reset time "
                    "for it (said once per wording)",
                    name,
                    text,
                    path,
                    extra={"event": RESETS_UNREAD_EVENT},
                )
        self._observations[name] = observation
        return observation

    def _compute(self, snap: HistorySnapshot, newest: int) -> Forecast:
        span = self.basis + CLOCK_AHEAD
        entries = snap.entries[: newest + 1]
        times = snap.times[: newest + 1]
        start = times[-1] - span.total_seconds()
        lo = len(entries)
        observations: list[Observation] = []
        names: list[str] = []
        self._newest_name = None
        while True:
            first = bisect.bisect_left(times, start)
            if first < lo:
                fresh, fresh_names = [], []
                for entry in entries[first:lo]:
                    obs = self._observation(entry.name, entry.ingested_at)
                    if obs is not None:
                        fresh.append(obs)
                        fresh_names.append(entry.name)
                observations = fresh + observations
                names = fresh_names + names
                lo = first
            usable = [o for o in observations if not o.ran_ahead()]
            newest_obs = newest_of(usable) if usable else None
            as_of = newest_obs.observed_at if newest_obs is not None else None
            if lo == 0:
                break
            if as_of is None:  # nothing readable this recent: look further back
                start = times[lo - 1] - span.total_seconds()
                continue
            wanted = as_of.timestamp() - span.total_seconds()
            if wanted >= start:
                break
            start = wanted
        if newest_obs is not None:
            self._newest_name = next(
                n for n, o in zip(names, observations, strict=True) if o is newest_obs
            )
        self._fold(entries, lo)
        # Keep only what the next answer can need: versions in (or after) this basis.
        held = {e.name for e in entries[lo:]}
        if len(self._observations) > len(held):
            self._observations = {k: v for k, v in self._observations.items() if k in held}
        if self._unread and not observations and not self._earlier:
            # Not one version could be read: the history's fault (its files' owner or
            # mode, a failing disk), said as such, not a forecast from nothing, in words
            # that stay the same as versions come (a server says a lasting fault once).
            fault = next(iter(self._unread.values()))
            cause = OSError(fault.errno, fault.strerror or describe_os_error(fault))
            raise StorageError("read any version of", self.index.reader.location, cause)
        earlier = {limit: (r, at) for limit, (r, at, _) in self._earlier.items()}
        return forecast(observations, basis=self.basis, earlier=earlier)

    def _fold(self, entries: Sequence[VersionEntry], lo: int) -> None:
        """Fold the versions before position ``lo`` not folded yet into ``_earlier``.

        A reading whose version is no longer listed goes: one retention deleted (it
        sorts before the oldest version left, as every older one does) simply goes; for
        one deleted from among the others (by hand) the versions before the basis are
        folded again from the start, since another of them may hold the limit's last
        reading now. Versions that could not be read are tried again, and so are
        versions listed now among those folded that were not listed when they were (put
        back by hand: a version's name says when it was stored, not when it came).
        """
        if entries and self._earlier:
            oldest = entries[0].name
            self._earlier = {k: v for k, v in self._earlier.items() if v[2] >= oldest}
            if any(_entry(entries, v[2]) is None for v in self._earlier.values()):
                self._earlier, self._folded, self._unfolded = {}, None, set()
        first = 0
        if self._folded is not None:
            first = bisect.bisect_right(entries, self._folded, key=lambda e: e.name)
        seen = {limit: held[1] for limit, held in self._earlier.items()}
        # The unreadable ones folded already (before ``first``) and still before the
        # basis, and the ones come since among those folded; one after those is read in
        # its turn.
        bound = entries[min(first, lo)].name if lo else ""
        found = (_entry(entries, name) for name in self._unfolded if name < bound)
        late = [e for e in entries[:first] if e.name < bound and e.name not in self._folded_names]
        retry = sorted(
            {e.name: e for e in (*found, *late) if e is not None}.values(), key=lambda e: e.name
        )
        unfolded: set[str] = set()
        if first >= lo and not retry:
            self._unfolded = unfolded
            return
        # Newest first: a limit's last reading is then found early, and the older
        # versions only need looking at (their resetsIn is parsed only when newer).
        for entry in reversed([*retry, *entries[first:lo]]):
            cached = self._observations.get(entry.name)
            if cached is not None:  # left the basis since it was read
                if cached.ran_ahead():
                    continue  # left out, as the basis left it out
                for reading in cached.readings:
                    before = seen.get(reading.limit)
                    if before is None or before < cached.observed_at:
                        seen[reading.limit] = cached.observed_at
                        self._earlier[reading.limit] = (reading, cached.observed_at, entry.name)
                continue
            data = self._read(entry.name)
            if data is None:
                if entry.name in self._unread:
                    unfolded.add(entry.name)
                continue  # deleted since the listing, damaged, or unreadable for now
            self.reads += 1
            try:
                payload = load_json(data)
            except (ValueError, RecursionError):
                # Damaged (the gate says how): named once, and read again once its file
                # is put right.
                self._judged(entry.name, data)
                continue
            taken = list(newer_readings(payload, self.zone, seen, entry.ingested_at))
            # The gate's check costs more than the parse: made only for a version that
            # would give a reading.
            if not taken or not self._judged(entry.name, data):
                continue
            for reading, at in taken:
                seen[reading.limit] = at
                self._earlier[reading.limit] = (reading, at, entry.name)
        if first < lo or late:
            if first < lo:
                self._folded = entries[lo - 1].name
            self._folded_names = frozenset(e.name for e in entries[: max(first, lo)])
        self._unfolded = unfolded

    def cached(self, now: datetime) -> ForecastAnswer | None:
        """The last answer while the versions are the same as for it, else ``None``.

        Costs what looking up the latest costs (the index's change check, and one
        ``lstat`` per version found damaged), reads no version: the caller may call it
        where blocking is not welcome.
        """
        snap = self.index.snapshot()
        held = self._answer
        if held is not None and held[0] is snap and held[1] == snap.latest_position(now):
            return None if self._replaced() else held[2]
        return None

    def _replaced(self) -> list[str]:
        """The versions found damaged whose file is another since (put right from a
        backup, or gone), or could not be told apart when read: one ``lstat`` each."""
        held = list(self._damaged_stamps.items())
        return [n for n, st in held if st is None or self.index.version_stamp(n) != st]

    def _forget_replaced(self) -> None:
        """Forget the verdicts of :meth:`_replaced` versions, so the next answer reads
        them again, within the basis or before it (lock held)."""
        replaced = self._replaced()
        for name in replaced:
            del self._damaged_stamps[name]
            self._damaged.discard(name)
            self._observations.pop(name, None)
            self._unfolded.add(name)
        if replaced:
            self._answer = None

    def answer(self, now: datetime) -> ForecastAnswer | None:
        """The forecast as of the newest version; ``None`` when there is no version.

        ``now`` decides which versions count (one dated more than a day ahead of it is
        "future", as for the latest). Raises ``OSError`` when the history cannot be read.
        """
        for look in range(1, _LOOKS + 1):
            snap = self.index.snapshot()
            newest = snap.latest_position(now)
            if newest is None:
                return None
            with self._lock:
                self._forget_replaced()
                cached = self._answer
                if cached is not None and cached[0] is snap and cached[1] == newest:
                    return cached[2]
                self._gone.clear()
                self._unread = {}
                result = self._compute(snap, newest)
                self._say_unreadable(snap.entries)
                if snap.entries[newest].name in self._gone and look < _LOOKS:
                    # The latest was deleted under the read (by hand: retention never
                    # deletes it): answered from the history as it now is, which may
                    # hold no version at all, never as if one were there to go by.
                    continue
                return self._answered(snap, newest, result)
        raise AssertionError("unreachable")

    def _answered(self, snap: HistorySnapshot, newest: int, result: Forecast) -> ForecastAnswer:
        """The answer of ``result``, tagged and kept for the next call (lock held)."""
        # Every name up to the newest, not only the ends and the count: a version swapped
        # for another among the old ones by hand changes the forecast as much as a new one
        # (about 1 ms per 20,000 names, once per new listing).
        digest = hashlib.sha256(f"{self.zone_name}\n{self.basis}\n".encode())
        digest.update("\n".join(e.name for e in snap.entries[: newest + 1]).encode())
        if self._unread:
            # Left out only while they cannot be read: the same names with them counted
            # (their mode put right, then another answer or a restart) are another body.
            digest.update(("\nunreadable\n" + "\n".join(sorted(self._unread))).encode())
        newest_name = snap.entries[newest].name
        damaged = sorted(
            n for n in self._damaged_stamps if n <= newest_name and snap.position(n) is not None
        )
        if damaged:
            # Left out while damaged: the same names with one of them put right (its file
            # restored from a backup) are another body.
            digest.update(("\ndamaged\n" + "\n".join(damaged)).encode())
        tag = 'W/"f-' + digest.hexdigest()[:24] + '"'
        version = self._newest_name if result.as_of is not None else None
        not_latest = None if version in (None, newest_name) else self._why_not(newest_name)
        answer = ForecastAnswer(result, tag, newest + 1, version, not_latest)
        self._answer = (snap, newest, answer)
        self._say_left_out(result.left_out)
        return answer

    def _say_left_out(self, left_out: Sequence[str]) -> None:
        """One line when usage windows are first left out of the forecast, again only when
        more are, and one when none are any more (lock held): every new version makes a
        new answer, and a line per answer would repeat itself."""
        count = len(left_out)
        if count > self._left_out_said:
            named = ", ".join(name[:80] for name in left_out[:_NAMED_LEFT_OUT])
            log.warning(
                "%d usage window(s) left out of the forecast and the usage metrics: at "
                "most %d limits are kept, none with a path over %d characters (%s%s); "
                "a snapshot with that many windows is no console's: see what sent it "
                "(they count until retention deletes its version)",
                count,
                MAX_LIMITS,
                MAX_LIMIT_NAME,
                named,
                ", ..." if count > _NAMED_LEFT_OUT else "",
                extra={"event": LIMITS_LEFT_OUT_EVENT},
            )
        elif count == 0 and self._left_out_said:
            log.info("every usage window read is in the forecast again")
        self._left_out_said = count

    def _why_not(self, latest: str) -> str:
        """Why the forecast is not as of the latest version ``latest`` (lock held)."""
        said = f"the latest version, {latest},"
        if latest in self._damaged:
            return f"{said} is damaged; the forecast is of the newest snapshot that is not"
        if latest in self._unread or latest in self._unreadable:
            return f"{said} cannot be read; the forecast is of the newest snapshot that can"
        if latest in self._gone:
            return f"{said} was deleted while it was read"
        obs = self._observations.get(latest)
        if obs is None:
            return f"{said} holds no readable lastUpdated"
        if obs.ran_ahead():
            hours = int(CLOCK_AHEAD.total_seconds() // 3600)
            return (
                f"{said} is dated more than {hours} h after it was stored (its scraper's "
                "clock ran ahead), so it is left out"
            )
        return (
            f"{said} was observed at {format_timestamp(obs.observed_at)}, before this "
            "snapshot (a snapshot sent late)"
        )


def _entry(entries: Sequence[VersionEntry], name: str) -> VersionEntry | None:
    """The entry of version ``name`` in ``entries`` (sorted by name); ``None`` when not
    listed."""
    i = bisect.bisect_left(entries, name, key=lambda e: e.name)
    return entries[i] if i < len(entries) and entries[i].name == name else None


def forecast_of(
    reader: HistoryReader, zone: tzinfo, zone_name: str, now: datetime
) -> ForecastAnswer | None:
    """The forecast of the history ``reader`` reads (read once, nothing kept).

    ``None`` when it holds no version; ``OSError`` when it cannot be read.
    """
    return UsageHistory(HistoryIndex(reader), zone, zone_name).answer(now)


def forecast_json(answer: ForecastAnswer, zone_name: str) -> dict[str, object]:
    """The body of the answer (also what ``ingester forecast --json`` prints)."""
    body = answer.forecast.to_json()
    return {
        "asOf": body["asOf"],
        "version": answer.version,
        "notLatest": answer.not_latest,
        "consoleTimeZone": zone_name,
        "limits": body["limits"],
    }
