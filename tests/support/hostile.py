"""Hostile payloads, and the phrases of Python's parsers no answer may hold."""

from __future__ import annotations

import itertools
import string

# Phrases of Python's json, datetime and int parsers and of pydantic's JSON parser: a
# scraper's author reads "field: words", not the state of a parser.
PYTHON_PHRASES = (
    "Expecting",
    "delimiter",
    "(char ",
    "timedelta",
    "datetime",
    "Invalid JSON",
    "Invalid \\escape",
    "Invalid control",
    "Extra data",
    "Unterminated",
    "sys.",
    "set_int_max_str_digits",
    "Exceeds the limit",
    "must be in 0..",
    "out of range for month",
    "EOF while parsing",
    "Traceback",
)

STAMPED = '{"currentSession": {"resetsIn": "1 hr", "percentageUsed": 12}, "lastUpdated": "%s"}'

HOSTILE: dict[str, bytes] = {
    "gzip body": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xabV" + bytes(20),
    "latin-1 body": '{"a": "é"}'.encode("latin-1"),
    "number 1e999 unclosed": b'{"currentSession": {"percentageUsed": 1e999 "x"}}',
    "trailing data": b'{"a": 1} {"b": 2}',
    "truncated": b'{"lastUpdated": ',
    "single quotes": b"{'a': 1}",
    "leading zero": b'{"a": 01}',
    "bad escape": b'{"a": "\\x"}',
    "bad u escape": b'{"a": "\\u12"}',
    "control character": b'{"a": "\x01"}',
    "unterminated": b'{"a": "b',
    "lone surrogate": b'{"a": "\\ud800"}',
    "NaN": b'{"a": NaN}',
    "number beyond a double": b'{"a": 1e400}',
    "5000 digits": b'{"a": ' + b"9" * 5000 + b"}",
    "binary": bytes(range(1, 40)),
    **{
        f"lastUpdated {stamp}": (STAMPED % stamp).encode()
        for stamp in (
            "2026-01-01T00:00:00+25:00",
            "2026-01-01T00:00:00-24:00",
            "2026-01-01T00:00:00+23:60",
            "2026-01-01T00:00:00+99:99",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:60Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59-23:59",
        )
    },
}


def assert_our_words(reason: str) -> None:
    leaked = [phrase for phrase in PYTHON_PHRASES if phrase in reason]
    assert not leaked, f"{leaked} in {reason!r}"


def many_problems(limit: int = 1 << 20) -> bytes:
    """A payload of at most ``limit`` bytes (default: the default ``--max-bytes``) in
    which every value of ``extractionErrors`` is a number where a string is asked: some
    130,000 problems of its own in 1 MiB."""
    chars = string.ascii_letters + string.digits
    parts: list[str] = []
    size = len('{"extractionErrors":{}}')
    for n in (1, 2, 3):
        for letters in itertools.product(chars, repeat=n):
            part = f'"{"".join(letters)}":1'
            if size + len(part) + 1 > limit:
                break
            parts.append(part)
            size += len(part) + 1
    return ('{"extractionErrors":{' + ",".join(parts) + "}}").encode()
