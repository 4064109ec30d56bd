"""Logging to stderr, one line per event, in a form that suits where it goes.

* ``text`` on a terminal: ``2026-11-29 10:30:00,412 INFO ingested ...``.
* ``text`` under systemd (``JOURNAL_STREAM`` is set): no timestamp, since the journal
  stamps every line itself, and a ``<N>`` syslog priority prefix that journald reads.
* ``json``: one object per line (``ts``, ``level``, ``logger``, ``msg`` and the event's
  fields), for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["LOG_FORMATS", "setup_logging"]

LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else was passed in ``extra=`` and is an event field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127) if code != 9} | {
    10: "\\n",
    13: "\\r",
}

_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class OneLineFormatter(logging.Formatter):
    """One line per event, whatever a drop's name holds: control characters are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).translate(_ESCAPES)


class JournalFormatter(OneLineFormatter):
    """``<priority>level: message``: journald turns the prefix into the entry's priority."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{record.levelname.lower()}: {super().format(record)}"


def setup_logging(verbose: int = 0, fmt: str = "text") -> None:
    """Send the ``ingester`` loggers to stderr at INFO (``-v``: DEBUG)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("ingester")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
