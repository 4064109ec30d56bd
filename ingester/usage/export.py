"""The history as a table: one flattened row per version, oldest first.

``ingester export`` writes these rows as CSV or JSON Lines, and the page's series
endpoint serves the same rows to the chart. Rows are produced one version at a time
(read, judged, flattened, handed on), so memory does not grow with the history: the
only thing held for the whole run is the sorted list of version names, about a hundred
bytes per version.

A row's cells, in :data:`COLUMNS` order:

* ``ingestedAt``: the version's ingest time from its name (ISO-8601 UTC, ``Z``; names
  carry whole seconds, so the milliseconds are ``.000``);
* ``lastUpdated``: the payload's time, converted to UTC in the same spelling;
* the three windows' ``percentageUsed`` (a number, whole numbers without ``.0``),
  ``resetsIn`` (text) and ``resetsAt`` (that text read as an instant, ISO-8601 UTC, by
  :func:`ingester.usage.resets.parse_resets_in` in the console's time zone; empty/``None``
  when the wording is not one it reads), all empty/``None`` when the payload has no
  such section;
* ``isPartial``: ``True``/``False`` as the payload says, ``None`` when it does not say;
* ``version``: the version file's name.

Versions are read through a :class:`~ingester.history.base.HistoryReader`: the local
folder, or the mirror in an object store. Reading never writes and never takes the
history lock: an export works while a watcher runs and on a read-only copy of the history.
"""

from __future__ import annotations

import bisect
import csv
import io
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import BinaryIO, Final

from ..errors import PayloadRejected, VersionNotFound, VersionTooLarge
from ..history.base import HistoryReader
from ..history.names import format_timestamp, parse_timestamp_from_filename
from ..json_text import json_text
from ..payload.gate import ConsoleUsageDataSync, UsageWindow, read_payload
from .resets import parse_resets_in

__all__ = [
    "COLUMNS",
    "FORMATS",
    "Cell",
    "Row",
    "Skipped",
    "defuse_formulas",
    "export_rows",
    "flatten",
    "inverted_bounds",
    "row_from_bytes",
    "select_versions",
    "write_rows",
]

log = logging.getLogger("ingester.export")

COLUMNS: Final[tuple[str, ...]] = (
    "ingestedAt",
    "lastUpdated",
    "currentSession.percentageUsed",
    "currentSession.resetsIn",
    "currentSession.resetsAt",
    "weeklyLimits.allModels.percentageUsed",
    "weeklyLimits.allModels.resetsIn",
    "weeklyLimits.allModels.resetsAt",
    "weeklyLimits.sonnetOnly.percentageUsed",
    "weeklyLimits.sonnetOnly.resetsIn",
    "weeklyLimits.sonnetOnly.resetsAt",
    "isPartial",
    "version",
)
"""The column names, in order; each keeps its name (as a dotted path) from the payload."""

FORMATS: Final[tuple[str, ...]] = ("csv", "jsonl")

Cell = str | int | float | bool | None
Row = tuple[Cell, ...]

# A spreadsheet runs a field that starts with one of these as a formula (the full-width
# forms too, which some spreadsheets fold to the plain ones); tab, CR and LF are there
# because a spreadsheet may drop them at the start of a field and run what follows.
_FORMULA_TRIGGERS: Final = "=+-@\t\r\n\uff1d\uff0b\uff0d\uff20"
# Where a spreadsheet may start a field inside one of our cells: at ";" in the locales
# whose list separator it is (de, fr, es, it, nl, ...), which do not split at our commas
# or honour our quotes; at "," in the others, where a cell's quotes can come apart; at a
# tab or a line break for a parser that lost track of the quotes. A field may begin
# with spaces and a quote before what it runs.
_FIELD_START: Final = re.compile(f'(^|[,;\t\r\n])([ "]*)(?=[{re.escape(_FORMULA_TRIGGERS)}])')


def defuse_formulas(text: str) -> str:
    """``text`` with an apostrophe put before every formula trigger that starts a field.

    A field starts at the start of ``text`` and after each ``,``, ``;``, tab, CR or LF in
    it, after any spaces and double quotes; a trigger is ``=``, ``+``, ``-``, ``@``, tab,
    CR, LF or a full-width ``=+-@``. Text in a drop comes from a scraper reading a web
    page, so this is the usual defence (OWASP's "CSV injection") applied to every place a
    spreadsheet in a ``,`` or a ``;`` locale would start a field, not only the first.
    ``4 hr;=1+2`` becomes ``4 hr;'=1+2``.
    """
    return _FIELD_START.sub(r"\1\2'", text)


@dataclass(frozen=True)
class Skipped:
    """A version left out of an export: its name and why (one line)."""

    name: str
    reason: str


def _stamp(name: str) -> datetime:
    stamp = parse_timestamp_from_filename(name)
    if stamp is None:  # pragma: no cover - the store lists version names only
        raise ValueError(f"not a version name: {name!r}")
    return stamp


def inverted_bounds(
    since: datetime | None, until: datetime | None, *, names: tuple[str, str]
) -> str | None:
    """Why ``[since, until]`` selects nothing by construction (``since`` after
    ``until``), in words naming the bounds as ``names`` (option or query names); ``None``
    when it is a window. Refused rather than answered empty: the caller swapped them."""
    if since is None or until is None or since <= until:
        return None
    return f"{names[0]} {format_timestamp(since)} is after {names[1]} {format_timestamp(until)}"


def select_versions(
    names: Sequence[str], since: datetime | None = None, until: datetime | None = None
) -> Sequence[str]:
    """The names (sorted, oldest first) whose ingest time is within ``[since, until]``.

    Both ends are inclusive and compared to the second, as names carry it. Finds the
    ends by bisection: names sort in ingest order, so their times never decrease.
    """
    if since is not None:
        # To the second: a name's 14 s covers 14.5 s, so a start within the second
        # still takes it.
        since = since.replace(microsecond=0)
    start = 0 if since is None else bisect.bisect_left(names, since, key=_stamp)
    end = len(names) if until is None else bisect.bisect_right(names, until, key=_stamp)
    return names[start:end]


def _number(value: float) -> int | float:
    # JSON has one number type; 23 reads back as 23.0 through the model, shown as 23.
    return int(value) if value.is_integer() else value


def _window(
    window: UsageWindow | None, observed_at: datetime, zone: tzinfo
) -> tuple[Cell, Cell, Cell]:
    if window is None:
        return None, None, None
    reset = parse_resets_in(window.resetsIn, observed_at, zone)
    at = format_timestamp(reset.at) if reset is not None else None
    return _number(window.percentageUsed), window.resetsIn, at


def flatten(name: str, payload: ConsoleUsageDataSync, zone: tzinfo) -> Row:
    """One row (see :data:`COLUMNS`) for version ``name`` holding ``payload``.

    ``payload``: as the gate reads it (:func:`~ingester.payload.gate.read_payload`: the
    model's values, without pydantic's model machinery).

    ``zone`` is the console's time zone, for absolute ``resetsIn`` wordings.
    """
    weekly = payload.weeklyLimits
    observed_at = payload.lastUpdated.astimezone(UTC)
    return (
        format_timestamp(_stamp(name)),
        format_timestamp(observed_at),
        *_window(payload.currentSession, observed_at, zone),
        *_window(weekly.allModels if weekly else None, observed_at, zone),
        *_window(weekly.sonnetOnly if weekly else None, observed_at, zone),
        payload.isPartial,
        name,
    )


def export_rows(
    reader: HistoryReader,
    names: Iterable[str],
    on_skip: Callable[[Skipped], None] | None = None,
    *,
    zone: tzinfo,
) -> Iterator[Row]:
    """Read, judge and flatten each version in ``names``, in the order given.

    ``zone``: the console's time zone (for ``resetsAt``).

    A damaged or unreadable version yields no row: ``on_skip`` is called with it
    instead. A version deleted since it was listed (retention) is left out silently:
    it is no longer part of the history. Never raises for a version's content.
    """
    for name in names:
        try:
            data = reader.read_version(name)
        except VersionNotFound:
            log.debug("version %s deleted while exporting; left out", name)
            continue
        except VersionTooLarge as exc:  # damaged, as a file the gate refuses
            if on_skip is not None:
                on_skip(Skipped(name, exc.reason))
            continue
        except OSError as exc:
            if on_skip is not None:
                on_skip(Skipped(name, f"unreadable: {exc.strerror}"))
            continue
        try:
            row = row_from_bytes(name, data, zone)
        except PayloadRejected as exc:
            if on_skip is not None:
                on_skip(Skipped(name, exc.reason))
            continue
        yield row


def row_from_bytes(name: str, data: bytes, zone: tzinfo) -> Row:
    """The row for version ``name`` stored as ``data``; :class:`PayloadRejected` if damaged.

    ``zone``: the console's time zone (for ``resetsAt``).
    """
    # The gate, not the model: the same verdict and values, without loading pydantic's model
    # machinery at start-up (about 50 ms; tests/test_gate.py holds the two together).
    return flatten(name, read_payload(data), zone)


def _csv_cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return defuse_formulas(value)
    return repr(value)


def write_rows(rows: Iterable[Row], out: BinaryIO, fmt: str) -> int:
    """Write a header (CSV only) and ``rows`` to ``out`` as UTF-8; return the row count.

    ``fmt`` is ``"csv"`` (RFC 4180: comma, double quotes where needed, CRLF line ends,
    a header row; empty cell for a missing value; ``true``/``false``) or ``"jsonl"``
    (one JSON object per line with the :data:`COLUMNS` as keys, ``null`` for missing).
    ``out`` is flushed, not closed. Errors writing ``out`` propagate as ``OSError``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    count = 0
    try:
        if fmt == "csv":
            writer = csv.writer(text, lineterminator="\r\n")
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([_csv_cell(cell) for cell in row])
                count += 1
        else:
            for row in rows:
                text.write(json_text(dict(zip(COLUMNS, row, strict=True)), separators=None))
                text.write("\n")
                count += 1
        text.flush()
    finally:
        # The caller owns ``out``: let go of it without closing it.
        text.detach()
    return count
