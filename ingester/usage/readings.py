"""A snapshot as readings: every usage limit in a payload, by its dotted path (pure: no I/O).

A usage window is any object holding a non-empty string ``resetsIn`` and a number from 0
to 100 ``percentageUsed``, at any depth (:func:`usage_windows`). A :class:`Reading` is one
window of one snapshot, its ``resetsIn`` read as a reset time
(:func:`~ingester.usage.resets.parse_resets_in`); an :class:`Observation` is a snapshot's
readings with when it was observed (``lastUpdated``) and stored. A snapshot observed more
than :data:`CLOCK_AHEAD` after it was stored had a wrong clock, and every reader leaves it
out (:func:`ran_ahead`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from .resets import ResetTime, parse_resets_in

__all__ = [
    "CLOCK_AHEAD",
    "Observation",
    "Reading",
    "newer_readings",
    "observe",
    "parse_observed_at",
    "path_part",
    "path_parts",
    "ran_ahead",
    "usage_windows",
]

CLOCK_AHEAD = timedelta(hours=1)
"""A snapshot observed more than this after it was stored has a wrong clock: not used."""

_MAX_DEPTH = 8  # how deep usage windows are looked for in a payload
_MAX_ERRORS = 16  # extractionErrors entries kept per snapshot (enough to name a section)
_MAX_ERROR_TEXT = 160  # characters kept of each message


@dataclass(frozen=True, slots=True)
class Reading:
    """One limit in one snapshot: its dotted path, percentage used, words and reset time."""

    limit: str
    percentage: float
    resets_in: str | None
    reset: ResetTime | None


@dataclass(frozen=True, slots=True)
class Observation:
    """One snapshot: when it was observed (``lastUpdated``, UTC), its readings, when it
    was stored (the version's ingest time; ``None`` when not known), whether it says it is
    partial (``isPartial``) and its ``extractionErrors`` as ``(key, message)`` pairs."""

    observed_at: datetime
    readings: tuple[Reading, ...]
    stored_at: datetime | None = None
    partial: bool = False
    errors: tuple[tuple[str, str], ...] = ()

    def ran_ahead(self, clock_ahead: timedelta = CLOCK_AHEAD) -> bool:
        """Whether it is left out: see :func:`ran_ahead`."""
        return ran_ahead(self.observed_at, self.stored_at, clock_ahead)


def _percentage(window: Mapping[str, Any]) -> float:
    # + 0.0 turns a -0.0 into 0.0, which would otherwise be shown as "-0 %".
    return float(window["percentageUsed"]) + 0.0


def ran_ahead(
    observed_at: datetime, stored_at: datetime | None, clock_ahead: timedelta = CLOCK_AHEAD
) -> bool:
    """Whether a snapshot observed at ``observed_at`` claims a time more than
    ``clock_ahead`` after it was stored (``stored_at``; ``None``: not known, never): its
    scraper's clock ran ahead, so every reader leaves it out."""
    return stored_at is not None and observed_at > stored_at + clock_ahead


def parse_observed_at(value: object) -> datetime | None:
    """``lastUpdated`` as a UTC datetime, or ``None`` when it is not an ISO-8601 time."""
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _is_window(value: Mapping[str, Any]) -> bool:
    # The payload model's rule for its named windows (a non-empty resetsIn, a number
    # from 0 to 100), applied to the ones it does not name: a reading outside it is no
    # usage, and would give rates and projections no limit can have (or an infinite
    # rate, which JSON cannot carry).
    pct = value.get("percentageUsed")
    text = value.get("resetsIn")
    return (
        isinstance(text, str)
        and text != ""
        and isinstance(pct, int | float)
        and not isinstance(pct, bool)
        and 0 <= pct <= 100
    )


def path_part(key: str) -> str:
    """``key`` as one part of a dotted path: as it is, or as a JSON string when it holds
    a dot or starts with a double quote (``"a.b"``), so that a key ``a.b`` and a key
    ``b`` inside ``a`` never share a name (nor ``"a`` with ``b"`` inside it)."""
    if "." in key or key.startswith('"'):
        return json.dumps(key, ensure_ascii=False)
    return key


def path_parts(path: str) -> list[str]:
    """The keys a dotted path names, :func:`path_part` undone: ``'x."y.z"'`` gives
    ``["x", "y.z"]``. A part that starts with a quote but is no JSON string is taken as
    it is written."""
    parts: list[str] = []
    i = 0
    while True:
        if path.startswith('"', i):
            try:
                key, end = _JSON_STRING.raw_decode(path, i)
            except ValueError:
                key, end = None, i
            if isinstance(key, str) and (end == len(path) or path[end] == "."):
                parts.append(key)
                if end == len(path):
                    return parts
                i = end + 1
                continue
        dot = path.find(".", i)
        if dot < 0:
            parts.append(path[i:])
            return parts
        parts.append(path[i:dot])
        i = dot + 1


_JSON_STRING = json.JSONDecoder()


def usage_windows(payload: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every usage window in ``payload``, by dotted path, in the payload's order.

    A window is any object holding a non-empty string ``resetsIn`` and a number from 0 to
    100 ``percentageUsed`` (the payload model's rule for the windows it names), at any
    depth up to 8: ``currentSession``, ``weeklyLimits.allModels``,
    ``weeklyLimits.sonnetOnly``, and whatever the console adds later, a window inside
    another included. A key holding a
    dot is quoted in the path (:func:`path_part`).
    """
    found: list[tuple[str, Mapping[str, Any]]] = []

    def walk(obj: Mapping[str, Any], prefix: str, depth: int) -> None:
        for key, value in obj.items():
            if not isinstance(value, dict) or not isinstance(key, str):
                continue
            path = f"{prefix}{path_part(key)}"
            if _is_window(value):
                found.append((path, value))
            # A window may hold others (extra fields beside a group's own): each counts.
            if depth < _MAX_DEPTH:
                walk(value, path + ".", depth + 1)

    walk(payload, "", 1)
    return found


def observe(
    payload: object, zone: tzinfo, stored_at: datetime | None = None
) -> tuple[Observation | None, list[tuple[str, str]]]:
    """A payload (parsed JSON) as an :class:`Observation`, and its unreadable ``resetsIn``.

    Returns ``(None, [])`` when the payload is not an object with a valid ``lastUpdated``.
    The list names each window whose ``resetsIn`` gave no reset time: ``(path, text)``.
    """
    if not isinstance(payload, dict):
        return None, []
    observed_at = parse_observed_at(payload.get("lastUpdated"))
    if observed_at is None:
        return None, []
    readings = []
    unreadable = []
    for path, window in usage_windows(payload):
        text = window.get("resetsIn")
        reset = parse_resets_in(text, observed_at, zone)
        if reset is None:
            unreadable.append((path, str(text)[:80]))
        words = text if isinstance(text, str) else None
        readings.append(Reading(path, _percentage(window), words, reset))
    found = payload.get("extractionErrors")
    errors = (
        tuple(
            (str(key)[:_MAX_ERROR_TEXT], str(message)[:_MAX_ERROR_TEXT])
            for key, message in list(found.items())[:_MAX_ERRORS]
        )
        if isinstance(found, dict)
        else ()
    )
    partial = payload.get("isPartial") is True
    return Observation(observed_at, tuple(readings), stored_at, partial, errors), unreadable


def newer_readings(
    payload: object,
    zone: tzinfo,
    held: Mapping[str, datetime],
    stored_at: datetime | None = None,
    *,
    clock_ahead: timedelta = CLOCK_AHEAD,
) -> list[tuple[Reading, datetime]]:
    """The readings of ``payload`` observed after ``held[limit]`` (or of a limit not in
    ``held``), each with the payload's ``lastUpdated``.

    What :func:`observe` then :func:`last_readings` give for one snapshot, but ``resetsIn``
    is parsed only for the readings returned: reading a long history newest first, most
    snapshots hold nothing newer, and parsing the reset times is most of the cost. Empty
    when the payload is no snapshot or its clock ran ahead of ``stored_at``.
    """
    if not isinstance(payload, dict):
        return []
    observed_at = parse_observed_at(payload.get("lastUpdated"))
    if observed_at is None or ran_ahead(observed_at, stored_at, clock_ahead):
        return []
    found = []
    for path, window in usage_windows(payload):
        before = held.get(path)
        if before is None or before < observed_at:
            text = window.get("resetsIn")
            reset = parse_resets_in(text, observed_at, zone)
            words = text if isinstance(text, str) else None
            found.append((Reading(path, _percentage(window), words, reset), observed_at))
    return found
