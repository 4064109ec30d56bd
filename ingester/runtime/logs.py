"""Logging to stderr, one line per event, in a form that suits where it goes.

* ``text`` on a terminal: ``2026-11-29 10:30:00,412 INFO ingested ...``.
* ``text`` under systemd (``JOURNAL_STREAM`` names stderr's stream): no timestamp, since
  the journal stamps every line itself, and a ``<N>`` syslog priority prefix that
  journald reads.
* ``json``: one object per line (``ts``, ``level``, ``logger``, ``msg`` and the event's
  fields), for log shippers; under systemd, after the same ``<N>`` prefix.

Both are valid UTF-8 whatever a drop's name holds: a name's undecodable bytes (which
Python carries as lone surrogates) are written as ``\\xNN``. Records of other libraries
(uvicorn's, watchdog's polling observer's) go through the same handler, at WARNING and up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..clock import iso_utc
from ..errors import describe_os_error

__all__ = [
    "LOG_FORMATS",
    "cut",
    "describe_exception",
    "escape_controls",
    "escape_text",
    "escape_values",
    "logs_as_json",
    "logs_to_the_journal",
    "one_line",
    "setup_logging",
    "stderr_is_the_journal",
]

LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else was passed in ``extra=`` and is an event field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127)} | {
    9: "\\t",
    10: "\\n",
    13: "\\r",
}
# Unicode's bidirectional controls (Unicode TR 9): printed, one in a name reverses the
# rest of the line on a terminal, numbers included. Written as Python writes them, which
# is also how JSON escapes a character in a string (so a JSON line parses back to it).
_BIDI_ESCAPES = {
    code: f"\\u{code:04x}"
    for code in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}
# The C1 controls drive a terminal as the C0 ones do (U+009B is CSI, ESC [), and NEL
# (U+0085) with the line and paragraph separators ends a line for many readers of a log
# (Python's splitlines, editors, viewers): a name holding one must stay on its one line.
_C1 = range(0x80, 0xA0)
_SEPARATORS = (0x2028, 0x2029)
_CONTROL_ESCAPES |= {code: f"\\x{code:02x}" for code in _C1}
_CONTROL_ESCAPES |= {code: f"\\u{code:04x}" for code in _SEPARATORS}
_CONTROL_ESCAPES |= _BIDI_ESCAPES
# What JSON with ensure_ascii=False leaves raw of these, as JSON escapes them.
_JSON_ESCAPES = _BIDI_ESCAPES | {code: f"\\u{code:04x}" for code in (*_C1, *_SEPARATORS)}
# A tab keeps a log line one line: it stays a tab there.
_ESCAPES = {code: text for code, text in _CONTROL_ESCAPES.items() if code != 9}


def escape_controls(text: str) -> str:
    """``text`` with each control character written as Python writes it: ``\\n``,
    ``\\t``, ``\\x1b``, so that a name holding one stays on one line of a table."""
    return text.translate(_CONTROL_ESCAPES)


_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def one_line(text: str) -> str:
    """``text`` as one line: each control character but the tab written as Python
    writes it (``\\n``, ``\\x1b``), as the log lines write a file name that holds one."""
    return text.translate(_ESCAPES)


def cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start cut to ``limit``
    with ``...`` at the end: for a line in an answer, whose whole is in the log."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def escape_text(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (lone surrogates) as ``\\xNN``.

    ``os.listdir`` gives a name that is not UTF-8 with each bad byte as a surrogate;
    written as is, a log line would not be valid UTF-8 (or hold ``\\udcff``, which
    names no byte).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")
    return text


def describe_exception(exc: BaseException) -> str:
    """``ValueError: bad thing (at serve.py:123 in handler)``: one line, no traceback."""
    detail = str(exc).replace("\n", " ") or "no detail"
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return f"{type(exc).__name__}: {detail}{where}"


def escape_values(value: Any) -> Any:
    """``value`` (JSON-shaped: dicts, lists, tuples, strings, numbers) with every string
    and key as :func:`escape_text` writes it: JSON's ``"\\udcff"`` names no byte, and
    strict parsers refuse it."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {escape_text(str(k)): escape_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape_values(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_utc(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = json.dumps(
            escape_values(entry), default=lambda v: escape_text(str(v)), ensure_ascii=False
        )
        # JSON leaves these raw (ensure_ascii=False keeps names readable), and a log viewer
        # shows them as the text log would without its escapes.
        return line.translate(_JSON_ESCAPES)


class OneLineFormatter(logging.Formatter):
    """One line per event, whatever a drop's name holds: control characters are escaped."""

    _second: int | None = None
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        # Every control character, the tab too: a name holding one must read as it is
        # (a tab would look like spaces), and a log line has no columns of its own.
        return escape_text(escape_controls(super().format(record)))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``logging.Formatter``'s own time text, its seconds part made once per second.

        A backlog logs thousands of lines a second; each would otherwise convert and
        format the same second again.
        """
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        if self.default_msec_format:
            return self.default_msec_format % (self._second_text, record.msecs)
        return self._second_text


def _journal_prefix(record: logging.LogRecord) -> str:
    """``<N>``: the syslog priority of ``record``, which journald turns into the entry's
    priority and removes from its message."""
    return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>"


class JournalFormatter(OneLineFormatter):
    """``<priority>level: message``: journald turns the prefix into the entry's priority."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{_journal_prefix(record)}{record.levelname.lower()}: {super().format(record)}"


class JournalJsonFormatter(JsonFormatter):
    """``<priority>{...}``: the JSON object, its priority given to journald as a text line's
    is; journald removes the prefix, so each entry's message is the object alone."""

    def format(self, record: logging.LogRecord) -> str:
        return _journal_prefix(record) + super().format(record)


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A thread ended by an exception: one log line, never Python's traceback."""
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("ingester").error(
        "thread %s stopped: %s", name, describe_exception(args.exc_value)
    )


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """``logging.StreamHandler`` whose failed write is one short line, never a traceback.

    A log on a full or failing disk (ENOSPC, EIO) makes a write fail. Python's own
    handler then prints ``--- Logging error ---`` and the whole traceback into that same
    stream. Here the line is lost, and one line in the stream's format says so, if the
    stream takes it; if it fails too, nothing more is tried (there is nowhere else to
    say it), and the program goes on.
    """

    def handleError(self, record: logging.LogRecord) -> None:
        _kind, exc, _tb = sys.exc_info()
        cause = describe_os_error(exc) if isinstance(exc, OSError) else type(exc).__name__
        lost = logging.LogRecord(
            "ingester", logging.ERROR, "", 0, "a log line could not be written: %s", (cause,), None
        )
        # The stream is failing: if this line fails too, silence is all that is left.
        with contextlib.suppress(Exception):
            self.stream.write(self.format(lost) + self.terminator)
            self.flush()


def logs_as_json() -> bool:
    """Whether :func:`setup_logging` made the ``ingester`` logger write JSON: what an
    error found once the command's context is gone is written as, to stay in the one
    format a log shipper reads."""
    return any(
        isinstance(handler.formatter, JsonFormatter)
        for handler in logging.getLogger("ingester").handlers
    )


def logs_to_the_journal() -> bool:
    """Whether :func:`setup_logging` made the ``ingester`` logger write journal lines
    (stderr is the journal): an error line a command ends with is then logged, so that
    it carries the priority ``journalctl -p`` filters on."""
    return any(
        isinstance(handler.formatter, JournalFormatter | JournalJsonFormatter)
        for handler in logging.getLogger("ingester").handlers
    )


def stderr_is_the_journal() -> bool:
    """Whether stderr is the journal's stream: ``JOURNAL_STREAM`` (``DEV:INODE``) names it.

    systemd sets the variable for a service whose output goes to the journal, and every
    process started from there inherits it, whatever its own stderr has become (a file a
    shell line sends it to, a terminal under a desktop run as a service); systemd.exec(5)
    says to compare it with the stream itself.
    """
    dev, _colon, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        named = (int(dev), int(ino))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == named


def setup_logging(verbose: int = 0, fmt: str = "text") -> None:
    """Send the ``ingester`` loggers to stderr at INFO (``-v``: DEBUG); a thread that
    dies by an exception is one ERROR line there too, not a traceback, and so is a log
    line that cannot be written (see :class:`_StderrHandler`)."""
    handler = _StderrHandler(sys.stderr)
    journal = stderr_is_the_journal()
    if fmt == "json":
        # Also in the journal: there the priority prefix is what `journalctl -p` filters on.
        handler.setFormatter(JournalJsonFormatter() if journal else JsonFormatter())
    elif journal:
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(message)s"))
    # Facts no formatter here prints, each looked up for every record otherwise: the
    # switches the logging HOWTO's "Optimization" section names for this.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    threading.excepthook = _thread_died
    logger = logging.getLogger("ingester")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    # Everyone else's records (watchdog's among them) through the same handler, so that
    # a JSON stream stays JSON and journald gets a priority; without a handler, Python
    # would print them bare.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
